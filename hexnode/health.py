"""What needs attention, from the database and the spool's disk: stage heartbeats, queue ages, free
disk, each destination's last delivery; `hexnode health STAGE` for health checks.

``sections(s, cfg, now)`` adds to `hexnode status` (`hexnode/admin/status.py`), `/status`, `/metrics`
and the status page:

* ``stages``: per stage (receive, route, worker, send) the age of its freshest heartbeat
  (`hexnode/store/heartbeat.py`), how many processes beat within the limit, and whether a worker
  is on a job (and for how long);
* ``queues``: per queue and waiting state, how many and the age of the oldest;
* ``destinations``: per destination its last successful delivery, deliveries being retried and
  failed, the last error;
* ``disk``: free and total bytes of the spool's file system and the receiver's floor
  (`[dicom] min_free_disk_mb`);
* ``recent_series``: the last series to change state, by UID hash, with their reason;
* ``last_day``: failures and "not analysed" answers of the last 24 h.

``attention(st)`` turns a collected status into red/amber items (what a person should look at),
``overall(items)`` into one of green, amber, red.

`hexnode health STAGE` (exit 0 healthy, 1 not): for receive, route, worker and send the freshest
heartbeat of that stage on this host (``--any-host``: anywhere) must be younger than
``--max-age`` — or, for a worker on a job, the job younger than ``--max-busy``; receive also
answers a C-ECHO at its own AE title and port; web answers GET /healthz. Each compose service's
health check runs it for its own stage: a process alive but wedged turns unhealthy.
"""

from __future__ import annotations

import argparse
import shutil
import socket
import sys
from collections import Counter
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from hexnode.config import Config, load_config
from hexnode.store.db import Event, Job, Notification, Outbox, Series, open_store, utcnow
from hexnode.store.heartbeat import STAGES, beats
from hexnode.store.spool import uid_hash

# A stage whose freshest beat is older than this is not beating (stages beat every 5 s).
MAX_BEAT_AGE_SECONDS = 60.0
# A worker on one job for longer than this is stuck (a CPU job takes about a minute).
MAX_JOB_SECONDS = 900.0
# Deliveries to one destination retried for longer than this: it is down, not hiccuping.
DESTINATION_DOWN_SECONDS = 600.0
# A job queued this long: the workers do not keep up (or none runs).
JOB_WAIT_SECONDS = 600.0
RECENT_SERIES = 20
LAST_DAY = timedelta(hours=24)

# The waiting (non-final) states of each queue, and the column their age counts from.
_WAITING: tuple[tuple[str, Any, tuple[str, ...], Any], ...] = (
    ("series", Series, ("received", "complete", "queued", "running", "reported"), Series.state_at),
    ("jobs", Job, ("queued",), Job.created_at),
    ("jobs", Job, ("running",), Job.started_at),
    ("deliveries", Outbox, ("pending", "sending"), Outbox.queued_at),
    ("notifications", Notification, ("pending", "sending"), Notification.queued_at),
)


def _iso(t: datetime | None) -> str | None:
    return t.isoformat(timespec="seconds") + "Z" if t else None


def _age(now: datetime, t: datetime | None) -> float | None:
    return None if t is None else round(max(0.0, (now - t).total_seconds()), 1)


def stage_section(s: Session, now: datetime, *, host: str | None = None) -> dict[str, dict[str, Any]]:
    out: dict[str, dict[str, Any]] = {}
    rows = [b for b in beats(s, now) if host is None or b.host == host]
    for stage in STAGES:
        mine = [b for b in rows if b.stage == stage]
        fresh = [b for b in mine if b.age_seconds <= MAX_BEAT_AGE_SECONDS]
        busy = [b.busy_seconds for b in fresh if b.busy_seconds is not None]
        best = mine[0] if mine else None
        out[stage] = {
            "age_seconds": None if best is None else round(best.age_seconds, 1),
            "processes": len(fresh),
            "busy_seconds": round(max(busy), 1) if busy else None,
            "started_at": _iso(best.started_at) if best else None,
        }
    return out


def _stage_verdict(st: dict[str, Any], *, max_age: float = MAX_BEAT_AGE_SECONDS,
                   max_busy: float = MAX_JOB_SECONDS) -> str | None:
    """None when the stage beats within the limits, else why not."""
    age, busy = st.get("age_seconds"), st.get("busy_seconds")
    if age is None:
        return "no heartbeat recorded (not running, or never reached its loop)"
    if busy is not None:
        return None if busy <= max_busy else f"on one job for {duration(busy)} (limit {duration(max_busy)})"
    if age > max_age:
        return f"last heartbeat {duration(age)} ago (limit {duration(max_age)})"
    return None


def queue_section(s: Session, now: datetime) -> list[dict[str, Any]]:
    out = []
    for queue, table, states, since in _WAITING:
        rows = s.execute(select(table.state, func.count(), func.min(since))
                         .where(table.state.in_(states)).group_by(table.state)).all()
        found = {state: (int(n), oldest) for state, n, oldest in rows}
        for state in states:
            n, oldest = found.get(state, (0, None))
            out.append({"queue": queue, "state": state, "count": n, "oldest_seconds": _age(now, oldest) if n else None})
    return out


def destination_section(s: Session, cfg: Config | None, now: datetime) -> dict[str, dict[str, Any]]:
    names = [d.name for d in cfg.destinations] if cfg is not None else []
    out: dict[str, dict[str, Any]] = {
        n: {"last_delivered_at": None, "last_delivered_seconds": None, "retrying": 0, "retrying_since": None,
            "failed": 0, "pending": 0, "last_error": None} for n in names}
    for name, last in s.execute(select(Outbox.destination, func.max(Outbox.delivered_at))
                                .where(Outbox.state == "delivered").group_by(Outbox.destination)).all():
        d = out.setdefault(name, {"last_delivered_at": None, "last_delivered_seconds": None, "retrying": 0,
                                  "retrying_since": None, "failed": 0, "pending": 0, "last_error": None})
        d["last_delivered_at"], d["last_delivered_seconds"] = _iso(last), _age(now, last)
    # grouped by the attempt count itself (a handful of values): PostgreSQL does not match a
    # GROUP BY `attempts > $2` with the selected `attempts > $1`
    for name, state, attempts, n, oldest in s.execute(
            select(Outbox.destination, Outbox.state, Outbox.attempts, func.count(), func.min(Outbox.queued_at))
            .where(Outbox.state.in_(("pending", "sending", "failed")))
            .group_by(Outbox.destination, Outbox.state, Outbox.attempts)).all():
        d = out.setdefault(name, {"last_delivered_at": None, "last_delivered_seconds": None, "retrying": 0,
                                  "retrying_since": None, "failed": 0, "pending": 0, "last_error": None})
        if state == "failed":
            d["failed"] += int(n)
        elif attempts:
            d["retrying"] += int(n)
            since = _age(now, oldest)
            d["retrying_since"] = max(d["retrying_since"] or 0.0, since or 0.0)
        else:
            d["pending"] += int(n)
    for name in out:
        err = s.execute(select(Outbox.last_error).where(Outbox.destination == name, Outbox.last_error.is_not(None),
                                                         Outbox.state != "delivered")
                        .order_by(Outbox.id.desc()).limit(1)).scalar_one_or_none()
        out[name]["last_error"] = err
    return out


def disk_section(cfg: Config | None) -> dict[str, Any] | None:
    """Free and total bytes where the spool lives (its nearest existing folder)."""
    if cfg is None:
        return None
    path = cfg.spool_path
    while not path.exists() and path != path.parent:
        path = path.parent
    usage = shutil.disk_usage(path)
    return {"free_bytes": int(usage.free), "total_bytes": int(usage.total),
            "min_free_bytes": int(cfg.dicom.min_free_disk_mb) * 1024 * 1024}


def recent_series(s: Session, limit: int = RECENT_SERIES) -> list[dict[str, Any]]:
    rows = s.execute(select(Series).order_by(Series.state_at.desc(), Series.id.desc()).limit(limit)).scalars()
    return [{"id": x.id, "series": uid_hash(x.series_uid), "state": x.state, "reason": x.reason,
             "modality": x.modality, "instances": x.instance_count, "calling_ae": x.calling_ae,
             "selected": x.selected, "received_at": _iso(x.first_instance_at), "state_at": _iso(x.state_at)}
            for x in rows]


def last_day_section(s: Session, now: datetime) -> dict[str, Any]:
    since = now - LAST_DAY
    rejected = Counter(r for (r,) in s.execute(
        select(Series.reason).where(Series.state == "rejected", Series.state_at >= since)).all())
    return {
        "failed_jobs": int(s.execute(select(func.count()).select_from(Job).where(
            Job.state == "failed", Job.finished_at >= since)).scalar_one()),
        "failed_series": int(s.execute(select(func.count()).select_from(Series).where(
            Series.state == "failed", Series.state_at >= since)).scalar_one()),
        # studies with no analysable series: their one "not analysed" answer was built
        "studies_not_analysed": int(s.execute(select(func.count()).select_from(Job).where(
            Job.study_revision.is_not(None), Job.state == "done", Job.finished_at >= since)).scalar_one()),
        "stopped_senders": int(s.execute(select(func.count()).select_from(Series).where(
            Series.aborted_at >= since)).scalar_one()),
        "quarantined": int(s.execute(select(func.count()).select_from(Event).where(
            Event.entity == "instance", Event.to_state == "rejected", Event.at >= since)).scalar_one()),
        "rejected_series": sum(rejected.values()),
        "rejected_reasons": [{"reason": r or "", "count": n} for r, n in rejected.most_common(5)],
    }


def sections(s: Session, cfg: Config | None = None, now: datetime | None = None) -> dict[str, Any]:
    now = now or utcnow()
    return {"stages": stage_section(s, now), "queues": queue_section(s, now),
            "destinations": destination_section(s, cfg, now), "disk": disk_section(cfg),
            "recent_series": recent_series(s), "last_day": last_day_section(s, now)}


@dataclass(frozen=True)
class Attention:
    level: str  # red | amber
    what: str
    detail: str

    def as_dict(self) -> dict[str, str]:
        return {"level": self.level, "what": self.what, "detail": self.detail}


def duration(seconds: float | None) -> str:
    """A span as a person reads it: 45 s, 12 min, 3.5 h, 2 days."""
    if seconds is None:
        return "-"
    s = float(seconds)
    if s < 120:
        return f"{s:.0f} s"
    if s < 7200:
        return f"{s / 60:.0f} min"
    if s < 172800:
        return f"{s / 3600:.1f} h"
    return f"{s / 86400:.0f} days"


def _mb(n: float) -> str:
    return f"{n / 1024 / 1024:,.0f} MB"


def attention(st: dict[str, Any]) -> list[Attention]:
    """What a person should look at, red first (see the module docstring)."""
    out: list[Attention] = []
    for name, d in sorted((st.get("destinations") or {}).items()):
        if d["failed"]:
            out.append(Attention("red", f"deliveries to {name} failed",
                                 f"{d['failed']} given up after [send] max_age_seconds; fix the destination, then "
                                 f"`hexnode resend --all-failed`. Last error: {d['last_error'] or '-'}"))
        if d["retrying"]:
            down = (d["retrying_since"] or 0) >= DESTINATION_DOWN_SECONDS
            last = d["last_delivered_seconds"]
            out.append(Attention("red" if down else "amber",
                                 f"{name} down? deliveries being retried" if down else f"deliveries to {name} retried",
                                 f"{d['retrying']} retried for {duration(d['retrying_since'] or 0)}; last delivery "
                                 + (f"{duration(last)} ago" if last is not None else "never")
                                 + f". Last error: {d['last_error'] or '-'}"))
    for stage, d in (st.get("stages") or {}).items():
        why = _stage_verdict(d)
        if why is not None:
            out.append(Attention("red", f"{stage} is not beating", why))
    disk = st.get("disk")
    if disk:
        free, floor = disk["free_bytes"], disk["min_free_bytes"]
        if free < floor:
            out.append(Attention("red", "spool disk full", f"{_mb(free)} free, under the floor of {_mb(floor)}: "
                                 "the receiver answers every C-STORE with 0xA700 (Out of Resources)"))
        elif free < 2 * floor:
            out.append(Attention("amber", "spool disk low", f"{_mb(free)} free; the receiver refuses below {_mb(floor)}"))
    day = st.get("last_day") or {}
    if day.get("failed_jobs") or day.get("failed_series"):
        out.append(Attention("red", "analyses failed (24 h)",
                             f"{day.get('failed_jobs', 0)} jobs, {day.get('failed_series', 0)} series failed; "
                             "see Last errors"))
    nt = st.get("notifications") or {}
    if nt.get("failed"):
        out.append(Attention("red", "notifications failed", f"{len(nt['failed'])} not delivered; "
                             "`hexnode resend --notification ID`"))
    if nt.get("retrying"):
        out.append(Attention("amber", "notifications retried", f"{len(nt['retrying'])} being retried"))
    for q in st.get("queues") or []:
        if q["queue"] == "jobs" and q["state"] == "queued" and (q["oldest_seconds"] or 0) >= JOB_WAIT_SECONDS:
            out.append(Attention("amber", "jobs waiting", f"{q['count']} queued, the oldest for {duration(q['oldest_seconds'])}"))
    if day.get("studies_not_analysed"):
        out.append(Attention("amber", "studies not analysed (24 h)",
                             f"{day['studies_not_analysed']} studies had no analysable series (see Recent series "
                             "for the reasons)"))
    if day.get("stopped_senders"):
        out.append(Attention("amber", "senders stopped part-way (24 h)", f"{day['stopped_senders']} series"))
    if day.get("quarantined"):
        out.append(Attention("amber", "files quarantined (24 h)", f"{day['quarantined']} received files unreadable"))
    if (st.get("outcomes") or {}).get("drift"):
        out.append(Attention("amber", "outcomes drift", "follow-up outcomes disagree with the predictions "
                             "(see Follow-up outcomes)"))
    return sorted(out, key=lambda a: a.level != "red")


def overall(items: list[Attention]) -> str:
    levels = {a.level for a in items}
    return "red" if "red" in levels else "amber" if "amber" in levels else "green"


def _echo(cfg: Config) -> str | None:
    """A C-ECHO to our own SCP at its configured AE title and port; None when it answered Success.
    With DICOM TLS on, only that the port accepts a connection (an echo needs a client certificate
    the health check may not have)."""
    host = cfg.dicom.bind if cfg.dicom.bind not in ("0.0.0.0", "::", "") else "127.0.0.1"
    if cfg.dicom.tls.enabled:
        try:
            with socket.create_connection((host, cfg.dicom.port), timeout=5):
                return None
        except OSError as exc:
            return f"port {cfg.dicom.port}: {exc}"
    from pynetdicom import AE

    calling = cfg.dicom.allowed_calling_aes[0] if cfg.dicom.allowed_calling_aes else "HEALTHCHECK"
    ae = AE(ae_title=calling)
    ae.add_requested_context("1.2.840.10008.1.1")
    ae.acse_timeout = ae.network_timeout = ae.dimse_timeout = 5
    assoc = ae.associate(host, cfg.dicom.port, ae_title=cfg.dicom.ae_title)
    if not assoc.is_established:
        return f"C-ECHO: no association with {cfg.dicom.ae_title} at {host}:{cfg.dicom.port}"
    try:
        status = assoc.send_c_echo()
        return None if status and status.Status == 0 else "C-ECHO: no Success"
    finally:
        assoc.release()


def _web(cfg: Config) -> str | None:
    import http.client

    host = cfg.http.bind if cfg.http.bind not in ("0.0.0.0", "::", "") else "127.0.0.1"
    conn = http.client.HTTPConnection(host, cfg.http.port, timeout=5)
    try:
        conn.request("GET", "/healthz", headers={"Host": "127.0.0.1"})
        resp = conn.getresponse()
        body = resp.read()
    except OSError as exc:
        return f"GET /healthz: {exc}"
    finally:
        conn.close()
    return None if resp.status == 200 and body.strip() == b"ok" else f"GET /healthz: {resp.status}"


def check(cfg: Config, stage: str, *, max_age: float = MAX_BEAT_AGE_SECONDS, max_busy: float = MAX_JOB_SECONDS,
          any_host: bool = False) -> tuple[bool, str]:
    """(healthy, one line) for `hexnode health STAGE`."""
    if stage == "web":
        why = _web(cfg)
        return why is None, why or "GET /healthz answered ok"
    url = cfg.database_url
    if url.startswith("sqlite:///") and not Path(url[len("sqlite:///"):]).is_file():
        return False, f"no database at {url[len('sqlite:///'):]}"
    try:
        store = open_store(url, create=False)
    except Exception as exc:
        return False, f"database: {type(exc).__name__}: {exc}"
    try:
        with store.transaction() as s:
            st = stage_section(s, utcnow(), host=None if any_host else socket.gethostname()[:128])[stage]
    except Exception as exc:  # the table missing (an old schema), the database away
        return False, f"database: {type(exc).__name__}: {str(exc).splitlines()[0]}"
    finally:
        store.dispose()
    why = _stage_verdict(st, max_age=max_age, max_busy=max_busy)
    if why is None and stage == "receive":
        why = _echo(cfg)
    if why is not None:
        return False, why
    if st["busy_seconds"] is not None:
        return True, f"on a job for {st['busy_seconds']:.0f} s (limit {max_busy:.0f} s)"
    return True, f"last heartbeat {st['age_seconds']:.1f} s ago (limit {max_age:.0f} s)"


def add_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("stage", choices=[*STAGES, "web"])
    p.add_argument("--max-age", type=float, default=MAX_BEAT_AGE_SECONDS, metavar="S",
                   help=f"the stage's last heartbeat must be younger (default {MAX_BEAT_AGE_SECONDS:g} s)")
    p.add_argument("--max-busy", type=float, default=MAX_JOB_SECONDS, metavar="S",
                   help=f"a worker's job must be younger (default {MAX_JOB_SECONDS:g} s)")
    p.add_argument("--any-host", action="store_true",
                   help="a process of the stage on any host (default: on this host, i.e. this container)")


def run_health(args: argparse.Namespace) -> int:
    cfg = load_config(getattr(args, "config", None))
    ok, line = check(cfg, args.stage, max_age=args.max_age, max_busy=args.max_busy, any_host=args.any_host)
    print(f"{args.stage}: {'healthy' if ok else 'UNHEALTHY'}: {line}", file=sys.stdout if ok else sys.stderr)
    return 0 if ok else 1
