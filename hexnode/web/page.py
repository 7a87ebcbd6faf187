"""The IT status page (GET / of `[http]`): `collect()`'s facts as plain HTML that refreshes itself.

Server-rendered, no script, no external resource: it opens in any browser on an air-gapped
network. Series are named by their short UID hash only, as in `hexnode status`; every value is
escaped (error texts come from peers and exceptions).
"""

from __future__ import annotations

from html import escape
from typing import Any

REFRESH_SECONDS = 10

_STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:20px}h2{font-size:16px;margin-top:1.6em}table{border-collapse:collapse;margin:.4em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left}th{background:#eee}
.none{color:#777}.bad{color:#b00020}"""


def _counts(title: str, counts: dict[str, int]) -> str:
    if not counts:
        return f"<h2>{escape(title)}</h2><p class='none'>none</p>"
    rows = "".join(f"<tr><td>{escape(str(k))}</td><td>{int(v)}</td></tr>" for k, v in sorted(counts.items()))
    return f"<h2>{escape(title)}</h2><table><tr><th>state</th><th>count</th></tr>{rows}</table>"


def _table(title: str, rows: list[dict[str, Any]], columns: list[str], *, bad: bool = False) -> str:
    if not rows:
        return f"<h2>{escape(title)}</h2><p class='none'>none</p>"
    head = "".join(f"<th>{escape(c)}</th>" for c in columns)
    cls = " class='bad'" if bad else ""
    body = "".join(
        "<tr>" + "".join(f"<td{cls}>{escape('' if r.get(c) is None else str(r.get(c)))}</td>" for c in columns) + "</tr>"
        for r in rows
    )
    return f"<h2>{escape(title)}</h2><table><tr>{head}</tr>{body}</table>"


def _outcomes(oc: dict[str, Any]) -> str:
    """Follow-up outcomes: pairs and the drift state per model version (figures: GET /outcomes)."""
    rows = [{"model version": v, "pairs": d.get("pairs"), "expansions": d.get("events"),
             "observed rate": d.get("observed_rate"), "predicted rate": d.get("predicted_rate"),
             "ECE": d.get("ece"), "drift": "; ".join(d.get("reasons") or []) or "no"}
            for v, d in sorted((oc.get("versions") or {}).items())]
    title = f"Follow-up outcomes ({int(oc.get('pairs_recorded', 0))} pairs recorded; AUC and CI: /outcomes)"
    return _table(title, rows, ["model version", "pairs", "expansions", "observed rate", "predicted rate", "ECE",
                                "drift"], bad=bool(oc.get("drift")))


def status_html(st: dict[str, Any], *, generated_at: str, refresh_s: int = REFRESH_SECONDS) -> str:
    depth = st.get("queue_depth", {})
    stages = {k: v for k, v in st.get("median_seconds", {}).items()}
    stage_rows = "".join(f"<tr><td>{escape(k)}</td><td>{float(v):.2f} s</td></tr>" for k, v in stages.items())
    parts = [
        "<!doctype html><html lang='en'><head><meta charset='utf-8'>",
        f"<meta http-equiv='refresh' content='{int(refresh_s)}'>",
        "<title>hexnode status</title>",
        f"<style>{_STYLE}</style></head><body>",
        "<h1>hexnode status</h1>",
        f"<p>generated {escape(generated_at)}; refreshes every {int(refresh_s)} s. "
        "Series are named by a hash of their UID; no patient data is shown.</p>",
        "<h2>Queue depth</h2><table><tr><th>queue</th><th>depth</th></tr>"
        f"<tr><td>jobs (queued + running)</td><td>{int(depth.get('jobs', 0))}</td></tr>"
        f"<tr><td>deliveries (pending + sending)</td><td>{int(depth.get('outbox', 0))}</td></tr></table>",
        _counts("Series by state", st.get("series", {})),
        _counts("Jobs by state", st.get("jobs", {})),
        _counts("Deliveries by state", st.get("outbox", {})),
        f"<h2>Stage times (median of the last {int(st.get('median_over_jobs', 0))} jobs)</h2>"
        + (f"<table><tr><th>stage</th><th>median</th></tr>{stage_rows}</table>" if stage_rows
           else "<p class='none'>no finished job yet</p>"),
        _table("Last errors", st.get("job_errors", []), ["job", "series", "state", "attempts", "error", "at"], bad=True),
        _table("Failed deliveries (re-send with `hexnode resend`)", st.get("failed_deliveries", []),
               ["id", "destination", "kind", "series", "attempts", "error", "since"], bad=True),
        _table("Deliveries being retried", st.get("retrying_deliveries", []),
               ["id", "destination", "attempts", "error", "next_attempt"]),
        _table("Rejected or failed series", st.get("rejected_series", []), ["series", "reason", "at"]),
        _counts("Notifications by state", st.get("notifications", {}).get("states", {})),
        _table("Failed notifications (re-send with `hexnode resend --notification ID`)",
               st.get("notifications", {}).get("failed", []),
               ["id", "trigger", "target", "kind", "series", "attempts", "error", "since"], bad=True),
        f"<h2>Quarantined instances</h2><p>{int(st.get('quarantined_instances', 0))}</p>",
        _outcomes(st.get("outcomes") or {}),
        "</body></html>",
    ]
    return "".join(parts)
