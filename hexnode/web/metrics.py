"""The Prometheus metrics of /metrics, declared once: the collector and the documentation table
(docs/operations.md, "Monitoring") are both made from `METRICS`.

Every metric is a gauge read from the database (and the spool's disk) at scrape time: each
process writes the database, none holds a count a restart would reset. "Never" (a stage that
never beat, a destination never delivered to) is +Inf, so a `> limit` alert fires on it too.

`hexnode metrics` prints the table; `--write [DOC]` replaces it in the document between
``BEGIN GENERATED metrics`` / ``END GENERATED metrics``, `--check [DOC]` exits 1 when that copy
is stale (tests/web/test_web.py runs it).
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

INF = float("inf")
Samples = Iterable[tuple[tuple[str, ...], float]]


@dataclass(frozen=True)
class Metric:
    name: str
    help: str
    labels: tuple[str, ...]
    samples: Callable[[dict[str, Any]], Samples]


def _by(key: str) -> Callable[[dict[str, Any]], Samples]:
    return lambda st: (((k,), float(v)) for k, v in sorted((st.get(key) or {}).items()))


def _stages(field: str, never: float) -> Callable[[dict[str, Any]], Samples]:
    def samples(st: dict[str, Any]) -> Samples:
        for stage, d in (st.get("stages") or {}).items():
            v = d.get(field)
            yield (stage,), never if v is None else float(v)
    return samples


def _queues(field: str) -> Callable[[dict[str, Any]], Samples]:
    return lambda st: (((q["queue"], q["state"]), float(q[field] or 0)) for q in st.get("queues") or [])


def _dest(field: str, never: float = 0.0) -> Callable[[dict[str, Any]], Samples]:
    def samples(st: dict[str, Any]) -> Samples:
        for name, d in sorted((st.get("destinations") or {}).items()):
            v = d.get(field)
            yield (name,), never if v is None else float(v)
    return samples


def _disk(field: str) -> Callable[[dict[str, Any]], Samples]:
    return lambda st: [((), float(st["disk"][field]))] if st.get("disk") else []


def _versions(field: str) -> Callable[[dict[str, Any]], Samples]:
    def samples(st: dict[str, Any]) -> Samples:
        for version, d in sorted(((st.get("outcomes") or {}).get("versions") or {}).items()):
            yield (version,), float(d[field])
    return samples


def _attention(st: dict[str, Any]) -> Samples:
    items = st.get("attention") or []
    return [((level,), float(sum(a["level"] == level for a in items))) for level in ("red", "amber")]


METRICS: tuple[Metric, ...] = (
    Metric("hexnode_status", "What needs attention overall: 0 green, 1 amber, 2 red (the status page's summary).",
           (), lambda st: [((), float({"green": 0, "amber": 1, "red": 2}.get(st.get("overall", "green"), 2)))]),
    Metric("hexnode_attention_items", "Items on the status page's summary, by level.", ("level",), _attention),
    Metric("hexnode_stage_heartbeat_age_seconds",
           "Seconds since the freshest heartbeat of the stage (+Inf: never beat). Stages beat every 5 s.",
           ("stage",), _stages("age_seconds", INF)),
    Metric("hexnode_stage_processes", "Processes of the stage that beat in the last 60 s.", ("stage",),
           _stages("processes", 0.0)),
    Metric("hexnode_stage_busy_seconds", "Seconds the longest-running job of the stage's processes has run "
           "(worker; 0: idle).", ("stage",), _stages("busy_seconds", 0.0)),
    Metric("hexnode_queue_items", "Items waiting, per queue (series, jobs, deliveries, notifications) and state.",
           ("queue", "state"), _queues("count")),
    Metric("hexnode_queue_oldest_age_seconds", "Age of the oldest item waiting in that queue and state (0: empty).",
           ("queue", "state"), _queues("oldest_seconds")),
    Metric("hexnode_spool_free_bytes", "Free bytes of the file system that holds the spool.", (), _disk("free_bytes")),
    Metric("hexnode_spool_size_bytes", "Size of the file system that holds the spool.", (), _disk("total_bytes")),
    Metric("hexnode_spool_min_free_bytes", "The receiver's floor ([dicom] min_free_disk_mb): below it, "
           "C-STORE is answered 0xA700.", (), _disk("min_free_bytes")),
    Metric("hexnode_destination_last_delivery_age_seconds",
           "Seconds since the last object delivered to the destination (+Inf: never).", ("destination",),
           _dest("last_delivered_seconds", INF)),
    Metric("hexnode_destination_retrying", "Deliveries to the destination being retried after a failure.",
           ("destination",), _dest("retrying")),
    Metric("hexnode_destination_failed", "Deliveries to the destination given up ([send] max_age_seconds; "
           "`hexnode resend`).", ("destination",), _dest("failed")),
    Metric("hexnode_series", "Series by state.", ("state",), _by("series")),
    Metric("hexnode_jobs", "Jobs by state.", ("state",), _by("jobs")),
    Metric("hexnode_deliveries", "Outbox deliveries by state.", ("state",), _by("outbox")),
    Metric("hexnode_queue_depth", "Jobs queued or running; deliveries pending or sending.", ("queue",),
           _by("queue_depth")),
    Metric("hexnode_stage_median_seconds", "Median seconds per pipeline step over the last finished jobs.",
           ("stage",), _by("median_seconds")),
    Metric("hexnode_notifications", "Notifications (alerts, IT warnings) by state.", ("state",),
           lambda st: (((k,), float(v)) for k, v in sorted(((st.get("notifications") or {}).get("states")
                                                             or {}).items()))),
    Metric("hexnode_quarantined_instances", "Received files whose header could not be read (all time).", (),
           lambda st: [((), float(st.get("quarantined_instances", 0)))]),
    Metric("hexnode_outcomes_drift", "1 when a model version's follow-up outcomes drift (observed expansion rate "
           "outside the predicted 95 % interval, or ECE too high).", ("model_version",),
           lambda st: (((v,), 1.0 if d["drift"] else 0.0)
                       for v, d in sorted(((st.get("outcomes") or {}).get("versions") or {}).items()))),
    Metric("hexnode_outcome_pairs", "Scored follow-up outcome pairs per model version.", ("model_version",),
           _versions("pairs")),
    Metric("hexnode_corrections", "DICOM SEGs readers sent back, by state (stored, superseded, aside, own, "
           "received).", ("state",),
           lambda st: (((k,), float(v)) for k, v in sorted(((st.get("corrections") or {}).get("states")
                                                             or {}).items()))),
)


class StatusCollector:
    """prometheus_client collector over a status snapshot: every scrape reads the database once."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        st = self.snapshot()
        for m in METRICS:
            family = GaugeMetricFamily(m.name, m.help, labels=list(m.labels))
            for labels, value in m.samples(st):
                family.add_metric(list(labels), value)
            yield family


def metrics_text(st: dict[str, Any]) -> str:
    """Prometheus exposition format of a `collect()` result (prometheus_client's own writer)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: st))
    return generate_latest(registry).decode()


DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "operations.md"
BEGIN = "<!-- BEGIN GENERATED metrics: `hexnode metrics --write` rewrites this table -->"
END = "<!-- END GENERATED metrics -->"
_BLOCK = re.compile(r"<!-- BEGIN GENERATED metrics:[^\n]*-->\n.*?<!-- END GENERATED metrics -->", re.S)


def table() -> str:
    rows = ["| metric | labels | meaning |", "|---|---|---|"]
    rows += [f"| `{m.name}` | {', '.join(f'`{x}`' for x in m.labels) or '-'} | {m.help.replace('|', '/')} |"
             for m in METRICS]
    return "\n".join(rows) + "\n"


def block() -> str:
    return f"{BEGIN}\n{table()}{END}"


def add_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", nargs="?", const=str(DOCUMENT), metavar="DOC",
                       help="replace the generated table in DOC (default docs/operations.md)")
    group.add_argument("--check", nargs="?", const=str(DOCUMENT), metavar="DOC",
                       help="exit 1 when DOC's copy of the table is stale")


def run_metrics(args: argparse.Namespace) -> int:
    target = args.write or args.check
    if not target:
        print(table(), end="")
        return 0
    path = Path(target)
    text = path.read_text()
    if not _BLOCK.search(text):
        print(f"{path}: no '{BEGIN}' ... '{END}' block")
        return 1
    new = _BLOCK.sub(lambda _: block(), text)
    if args.check:
        if new != text:
            print(f"{path}: the metrics table is stale (run hexnode metrics --write {path})")
            return 1
        return 0
    path.write_text(new)
    return 0
