"""The IT status page (GET / of `[http]`) and a series' history page (GET /series/ID), as plain HTML.

The page opens with what needs attention — one red, amber or green box, each item a line
(hexnode/health.py's `attention`: a PACS down or deliveries retried, a stage not beating, the
spool's disk low, failed analyses, studies not analysed …) — then the stages' heartbeats, the
destinations, the recent series with their state (each a link to its history), then the queue
and the details. Server-rendered, no script, no external resource (the Content-Security-Policy
allows only this style sheet, by its hash): it opens in any browser on an air-gapped network.
Series are named by their short UID hash only, as in `hexnode status`; every value is escaped
(error texts come from peers and exceptions).
"""

from __future__ import annotations

import base64
import hashlib
from html import escape
from typing import Any

from hexnode.health import duration

REFRESH_SECONDS = 10

_STYLE = """body{font:14px system-ui,sans-serif;margin:1.5em;background:#fafafa;color:#222}
h1{font-size:20px;margin:0 0 .3em}h2{font-size:16px;margin-top:1.6em}table{border-collapse:collapse;margin:.4em 0}
td,th{border:1px solid #ccc;padding:3px 8px;text-align:left;vertical-align:top}th{background:#eee}
.none{color:#777}.bad{color:#b00020}.meta{color:#555;margin:0 0 1em}
.summary{border:2px solid;border-radius:6px;padding:.6em 1em;margin:.6em 0 1.2em;max-width:70em}
.summary h2{margin:0 0 .3em;font-size:18px}.summary ul{margin:.2em 0;padding-left:1.2em}
.green{border-color:#2e7d32;background:#e8f5e9}.amber{border-color:#b26a00;background:#fff4e0}
.red{border-color:#b00020;background:#fdecee}
.lv{display:inline-block;min-width:4.2em;font-weight:600;font-size:12px;padding:0 .4em;border-radius:3px;color:#fff}
.lv.red{background:#b00020}.lv.amber{background:#b26a00}.lv.green{background:#2e7d32}
td.s-delivered,td.s-reported{color:#2e7d32}td.s-failed{color:#b00020;font-weight:600}td.s-rejected{color:#6d4c00}
a{color:#0b57d0}"""
# The Content-Security-Policy names the style sheet by its hash (web/server.py): no inline style may
# be added anywhere else on these pages.
STYLE_HASH = "sha256-" + base64.b64encode(hashlib.sha256(_STYLE.encode()).digest()).decode()

_HEADLINE = {"green": "All clear", "amber": "Needs a look", "red": "Needs attention now"}


def _text(v: Any) -> str:
    return escape("" if v is None else str(v))


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
    body = "".join("<tr>" + "".join(f"<td{cls}>{_text(r.get(c))}</td>" for c in columns) + "</tr>" for r in rows)
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


def _corrections(cs: dict[str, Any]) -> str:
    """Reference masks readers sent back as DICOM SEG: the latest, with Dice and volume change, or why kept aside."""
    rows = [{"id": c["id"], "series": c["series"], "state": c["state"], "from": f"{c['calling_ae']} ({c['peer']})",
             "Dice": None if c["dice"] is None else f"{c['dice']:.3f}",
             "volume change ml": None if c["volume_change_ml"] is None else f"{c['volume_change_ml']:+.2f}",
             "reason": c["reason"], "received": c["received"]} for c in cs.get("latest") or []]
    states = ", ".join(f"{k} {v}" for k, v in sorted((cs.get("states") or {}).items())) or "none"
    return _table(f"Corrections received as DICOM SEG ({states})", rows,
                  ["id", "series", "state", "from", "Dice", "volume change ml", "reason", "received"])


def _ago(seconds: float | None, never: str = "never") -> str:
    return never if seconds is None else f"{duration(seconds)} ago"


def _summary(st: dict[str, Any]) -> str:
    level = st.get("overall", "green")
    items = st.get("attention") or []
    lis = "".join(f"<li><span class='lv {escape(a['level'])}'>{escape(a['level'].upper())}</span> "
                  f"<b>{escape(a['what'])}</b>: {escape(a['detail'])}</li>" for a in items)
    if not items:
        lis = ("<li>every stage beats, nothing waits too long, every delivery went through, the spool has room"
               "</li>")
    day = st.get("last_day") or {}
    rejected = ""
    if day.get("rejected_series"):
        reasons = "; ".join(f"{escape(r['reason'])} ({int(r['count'])})" for r in day.get("rejected_reasons", []))
        rejected = (f"<p class='meta'>Rejected without a report in the last 24 h (expected for scouts, bone kernels, "
                    f"reformats): {int(day['rejected_series'])}: {reasons}</p>")
    return (f"<section class='summary {escape(level)}' id='summary'><h2><span class='lv {escape(level)}'>"
            f"{escape(level.upper())}</span> {escape(_HEADLINE.get(level, level))}</h2><ul>{lis}</ul>{rejected}"
            "</section>")


def _stages(st: dict[str, Any]) -> str:
    stages = st.get("stages") or {}
    if not stages:
        return ""
    rows = "".join(
        f"<tr><td>{escape(k)}</td><td>{escape(_ago(v['age_seconds']))}</td><td>{int(v['processes'])}</td>"
        f"<td>{escape('on a job for ' + duration(v['busy_seconds']) if v['busy_seconds'] is not None else 'idle')}"
        "</td></tr>" for k, v in stages.items())
    return ("<h2>Stages</h2><table><tr><th>stage</th><th>last heartbeat</th><th>processes beating</th>"
            f"<th>now</th></tr>{rows}</table>")


def _destinations(st: dict[str, Any]) -> str:
    dests = st.get("destinations") or {}
    if not dests:
        return "<h2>Destinations</h2><p class='none'>none configured</p>"
    rows = "".join(
        f"<tr><td>{escape(k)}</td><td>{escape(_ago(d['last_delivered_seconds']))}</td><td>{int(d['pending'])}</td>"
        f"<td{' class=bad' if d['retrying'] else ''}>{int(d['retrying'])}</td>"
        f"<td{' class=bad' if d['failed'] else ''}>{int(d['failed'])}</td><td>{_text(d['last_error'])}</td></tr>"
        for k, d in sorted(dests.items()))
    return ("<h2>Destinations</h2><table><tr><th>destination</th><th>last delivery</th><th>pending</th>"
            f"<th>being retried</th><th>failed</th><th>last error</th></tr>{rows}</table>")


def _recent(st: dict[str, Any]) -> str:
    rows = st.get("recent_series") or []
    if not rows:
        return "<h2>Recent series</h2><p class='none'>none received yet</p>"
    body = "".join(
        f"<tr><td><a href='/series/{int(r['id'])}'>{escape(r['series'])}</a></td>"
        f"<td class='s-{escape(r['state'])}'>{escape(r['state'])}</td><td>{_text(r['reason'])}</td>"
        f"<td>{_text(r['modality'])}</td><td>{int(r['instances'])}</td><td>{_text(r['calling_ae'])}</td>"
        f"<td>{_text(r['received_at'])}</td><td>{_text(r['state_at'])}</td></tr>" for r in rows)
    return ("<h2>Recent series</h2><table><tr><th>series</th><th>state</th><th>reason / note</th><th>modality</th>"
            "<th>instances</th><th>from AE</th><th>first instance</th><th>last change</th></tr>" + body + "</table>")


def _queues(st: dict[str, Any]) -> str:
    depth = st.get("queue_depth", {})
    rows = "".join(f"<tr><td>{escape(q['queue'])}</td><td>{escape(q['state'])}</td><td>{int(q['count'])}</td>"
                   f"<td>{escape(_ago(q['oldest_seconds'], '-'))}</td></tr>"
                   for q in st.get("queues") or [] if q["count"])
    disk = st.get("disk")
    disk_html = ""
    if disk:
        disk_html = (f"<p>Spool disk: {disk['free_bytes'] / 1024 ** 3:.1f} GB free of {disk['total_bytes'] / 1024 ** 3:.1f} GB "
                     f"(the receiver refuses below {disk['min_free_bytes'] / 1024 ** 2:.0f} MB)</p>")
    return ("<h2>Queue depth</h2><table><tr><th>queue</th><th>depth</th></tr>"
            f"<tr><td>jobs (queued + running)</td><td>{int(depth.get('jobs', 0))}</td></tr>"
            f"<tr><td>deliveries (pending + sending)</td><td>{int(depth.get('outbox', 0))}</td></tr></table>"
            + (("<table><tr><th>queue</th><th>waiting in</th><th>items</th><th>oldest since</th></tr>"
                f"{rows}</table>") if rows else "<p class='none'>nothing waiting</p>") + disk_html)


def _page(title: str, body: str, refresh_s: int | None) -> str:
    refresh = f"<meta http-equiv='refresh' content='{int(refresh_s)}'>" if refresh_s else ""
    return ("<!doctype html><html lang='en'><head><meta charset='utf-8'>" + refresh
            + f"<title>{escape(title)}</title><style>{_STYLE}</style></head><body>{body}</body></html>")


def status_html(st: dict[str, Any], *, generated_at: str, refresh_s: int = REFRESH_SECONDS) -> str:
    stages = st.get("median_seconds", {})
    stage_rows = "".join(f"<tr><td>{escape(k)}</td><td>{float(v):.2f} s</td></tr>" for k, v in stages.items())
    parts = [
        "<h1>hexnode status</h1>",
        f"<p class='meta'>generated {escape(generated_at)}; refreshes every {int(refresh_s)} s. "
        "Series are named by a hash of their UID; no patient data is shown.</p>",
        _summary(st),
        _stages(st),
        _destinations(st),
        _recent(st),
        _queues(st),
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
        _corrections(st.get("corrections") or {}),
    ]
    return _page("hexnode status", "".join(parts), refresh_s)


def series_html(h: dict[str, Any]) -> str:
    facts = [("series", h["series"]), ("study", h["study"]), ("state", h["state"]), ("reason / note", h["reason"]),
             ("revision", h["revision"]), ("modality", h["modality"]), ("series number", h["series_number"]),
             ("instances", h["instances"]), ("from AE", h["calling_ae"]), ("chosen for its study", h["selected"]),
             ("first instance", h["received_at"]), ("last instance", h["last_instance_at"]),
             ("sender stopped part-way", h["stopped"]), ("the study's answer", h["study_answer"])]
    rows = "".join(f"<tr><th>{escape(k)}</th><td>{_text(v)}</td></tr>" for k, v in facts)
    viewer = (f"<p><a href='{escape(h['viewer_url'], quote=True)}' rel='noreferrer'>open the study in the viewer</a></p>"
              if h.get("viewer_url") else "")
    body = "".join([
        f"<p><a href='/'>&larr; status</a></p><h1>series {escape(h['series'])}</h1>",
        f"<table>{rows}</table>{viewer}",
        _table("Jobs", h["jobs"], ["job", "revision", "state", "attempts", "error", "created_at", "finished_at",
                                   "study_report"]),
        _table("Deliveries", h["deliveries"], ["id", "kind", "destination", "state", "attempts", "error",
                                               "delivered_at"]),
        _table("Notifications", h["notifications"], ["id", "trigger", "target", "state", "attempts", "error"]),
        _table("History", h["events"], ["at", "entity", "entity_id", "from", "to", "detail"]),
    ])
    return _page(f"hexnode series {h['series']}", body, None)
