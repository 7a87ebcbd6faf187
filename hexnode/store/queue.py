"""State machines of series, jobs and outbox rows, and the job queue (claim / lease / heartbeat).

Every function takes a ``Session`` that the caller opened with ``store.transaction()`` and does
not commit: the caller decides what is atomic (e.g. the worker adds results, outbox rows and
completes the job in one transaction). Every state change goes through :func:`transition`, which
writes an ``events`` row (the audit trail) in the same transaction.

States
------
series  received → complete → queued → running → reported → delivered, or rejected / failed.
        Any state → received when a new instance arrives after completion (``reopen_series``:
        revision + 1, queued jobs of the old revision superseded).
job     queued → running → done | failed; running → queued (retry or expired lease);
        queued/running → superseded (the series was re-opened); failed → queued (manual retry).
outbox  pending → sending → delivered | pending (back-off) | failed; sending → pending (expired
        lease: the sender died); failed → pending (``hexnode resend``); pending → superseded (a
        held job's results that a better series of the study replaced: never sent).

Queue API
---------
``enqueue_job(s, series, detail=None) -> Job``
    Job for the series' current revision (idempotent), series → queued.
``claim_job(s, owner, lease_seconds, *, max_attempts, now=None) -> Job | None``
    Reclaims expired leases, then claims the oldest queued job: PostgreSQL
    ``SELECT … FOR UPDATE SKIP LOCKED``; SQLite relies on ``BEGIN IMMEDIATE`` (one writer).
    attempts + 1, lease set, series → running. The job is committed with the transaction.
``heartbeat(s, job_id, owner, lease_seconds, now=None) -> bool``
    Extends the lease; False when the lease was lost (reclaimed by another worker): stop work.
``complete_job(s, job_id, owner, *, timings=None, series_state="reported", reason=None) -> Job``
    job → done; the series → ``series_state`` (reported, or rejected with a reason for a "not
    analysed" report) unless it was re-opened meanwhile. Raises ``LeaseLost``.
``fail_job(s, job_id, owner, error, *, max_attempts, retry=True) -> Job``
    job → queued again (retry) while attempts < max_attempts, else job and series → failed.
``reclaim_expired(s, *, max_attempts, now=None) -> list[int]``
    Running jobs whose lease expired, or whose owner ("[name@]host:pid") is a dead process on
    this host (``owner_is_dead``) → queued (or failed at max attempts).
``add_result(s, job, kind, sop_instance_uid, path, destinations, sop_class_uid="") -> Result``
    Records a produced object and one pending outbox row per destination; idempotent on the
    SOP Instance UID (a retry of the same job re-uses the rows).
``reopen_series(s, series, detail) -> None``
``transition(s, obj, to_state, detail=None) -> Event | None``
``drop_held(s, job, detail) -> int``
    A held job's unsent results and notifications → superseded (never sent); a queued or running
    held job → superseded (its worker's commit then raises ``LeaseLost``).
``series_instances(s, series_id) -> list[Instance]`` (ordered by instance number, then id)
"""

from __future__ import annotations

from datetime import datetime, timedelta

from sqlalchemy import func, select, update
from sqlalchemy.orm import Session

from hexnode.store.db import Event, Instance, Job, Notification, Outbox, Result, Series, utcnow
from hexnode.store.lease import owner_is_dead, stale, take

__all__ = ["owner_is_dead"]  # re-exported: it lived here before hexnode.store.lease

SERIES_TRANSITIONS: dict[str, set[str]] = {
    "received": {"complete", "rejected", "failed"},
    "complete": {"queued", "rejected", "failed", "received"},
    "queued": {"running", "rejected", "failed", "received"},
    "running": {"reported", "rejected", "failed", "queued", "received"},
    "reported": {"delivered", "failed", "received", "rejected"},
    "delivered": {"received"},
    "rejected": {"delivered", "received", "queued"},
    "failed": {"received", "queued"},
}
JOB_TRANSITIONS: dict[str, set[str]] = {
    "queued": {"running", "superseded", "failed"},
    "running": {"done", "failed", "queued", "superseded"},
    "failed": {"queued"},
    "done": set(),
    "superseded": set(),
}
OUTBOX_TRANSITIONS: dict[str, set[str]] = {
    "pending": {"sending", "failed", "superseded"},
    "sending": {"delivered", "pending", "failed"},
    "failed": {"pending", "superseded"},
    "delivered": set(),
    "superseded": set(),
}
_TABLES: dict[type, tuple[str, dict[str, set[str]]]] = {
    Series: ("series", SERIES_TRANSITIONS),
    Job: ("job", JOB_TRANSITIONS),
    Outbox: ("outbox", OUTBOX_TRANSITIONS),
}


class InvalidTransition(ValueError):
    """A state change the state machine does not allow (a bug, not bad input)."""


class LeaseLost(RuntimeError):
    """The job is no longer ours: its lease expired and it was reclaimed, or it was superseded."""


def transition(s: Session, obj: Series | Job | Outbox, to_state: str, detail: str | None = None) -> Event | None:
    """Move `obj` to `to_state` and record the event; a no-op (None) if it is already there."""
    entity, allowed = _TABLES[type(obj)]
    from_state = obj.state
    if from_state == to_state:
        return None
    if to_state not in allowed.get(from_state, set()):
        raise InvalidTransition(f"{entity} {obj.id}: {from_state} → {to_state} is not allowed")
    now = utcnow()
    obj.state = to_state
    if isinstance(obj, Series):
        obj.state_at = now
        if from_state == "received":  # decided on this many: more indexed later re-open it
            obj.decided_count = obj.instance_count
    if obj.id is None:
        s.flush()
    ev = Event(entity=entity, entity_id=obj.id, from_state=from_state, to_state=to_state, detail=detail, at=now)
    s.add(ev)
    return ev


def enqueue_job(s: Session, series: Series, detail: str | None = None) -> Job:
    job = s.execute(
        select(Job).where(Job.series_id == series.id, Job.revision == series.revision)
    ).scalar_one_or_none()
    if job is None:
        job = Job(series_id=series.id, revision=series.revision, state="queued", attempts=0)
        s.add(job)
        s.flush()
        s.add(Event(entity="job", entity_id=job.id, from_state=None, to_state="queued", detail=detail, at=utcnow()))
    _supersede_old_jobs(s, series)
    if series.state != "queued":
        transition(s, series, "queued", detail)
    return job


def _supersede_old_jobs(s: Session, series: Series) -> None:
    old = s.execute(
        select(Job).where(
            Job.series_id == series.id, Job.revision < series.revision, Job.state.in_(("queued", "failed"))
        )
    ).scalars()
    for job in old:
        if job.state == "queued":
            transition(s, job, "superseded", f"series revision {series.revision}")
    # results of an older revision that were held for the study are never sent: the new revision answers
    held = s.execute(select(Job).where(Job.series_id == series.id, Job.revision < series.revision,
                                       Job.held.is_(True))).scalars()
    for job in held:
        drop_held(s, job, f"series revision {series.revision}")


def drop_held(s: Session, job: Job, detail: str) -> int:
    """A held job replaced before it was released: its outbox rows and notifications → superseded
    (never sent), the job itself → superseded if not finished. Returns the outbox rows dropped."""
    from hexnode.notify.state import transition as notification_transition

    if job.state in ("queued", "running"):
        transition(s, job, "superseded", detail)
        job.lease_owner = None
        job.lease_until = None
    rows = s.execute(select(Outbox).join(Result, Result.id == Outbox.result_id)
                     .where(Result.job_id == job.id, Outbox.state.in_(("pending", "failed")))).scalars().all()
    for row in rows:
        transition(s, row, "superseded", detail)
    notes = s.execute(select(Notification).where(Notification.series_id == job.series_id,
                                                 Notification.revision == job.revision,
                                                 Notification.state.in_(("pending", "failed")))).scalars()
    for note in notes:
        notification_transition(s, note, "superseded", detail)
    return len(rows)


def reopen_series(s: Session, series: Series, detail: str) -> None:
    """A new instance arrived after the series was completed: analyse again as a new revision."""
    if series.state == "received":
        return
    series.revision += 1
    series.selected = None
    series.reason = None
    transition(s, series, "received", detail)
    _supersede_old_jobs(s, series)


def claim_job(
    s: Session, owner: str, lease_seconds: float, *, max_attempts: int, now: datetime | None = None
) -> Job | None:
    reclaim_expired(s, max_attempts=max_attempts, now=now)
    q = select(Job).where(Job.state == "queued").order_by(Job.id).limit(1)
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    job = s.execute(q).scalar_one_or_none()
    if job is None:
        return None
    # the clock is read once the job is found: read before the query, it could precede the
    # job's created_at when the enqueue committed in between (the demo showed queue wait -0.02 s)
    now = now or utcnow()
    take(job, owner, lease_seconds, now)
    job.started_at = now
    job.error = None
    transition(s, job, "running", f"claimed by {owner}, attempt {job.attempts}")
    series = s.get(Series, job.series_id)
    if series is not None and series.revision == job.revision and series.state in ("queued", "complete"):
        transition(s, series, "running", f"job {job.id}")
    return job


def heartbeat(s: Session, job_id: int, owner: str, lease_seconds: float, now: datetime | None = None) -> bool:
    now = now or utcnow()
    res = s.execute(
        update(Job)
        .where(Job.id == job_id, Job.lease_owner == owner, Job.state == "running")
        .values(lease_until=now + timedelta(seconds=lease_seconds))
        .execution_options(synchronize_session=False)
    )
    return bool(res.rowcount == 1)  # type: ignore[attr-defined]


def _own_running_job(s: Session, job_id: int, owner: str) -> Job:
    q = select(Job).where(Job.id == job_id)
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update()
    job = s.execute(q).scalar_one()
    if job.state != "running" or job.lease_owner != owner:
        raise LeaseLost(f"job {job_id} is {job.state}, owned by {job.lease_owner}, not {owner}")
    return job


def complete_job(
    s: Session,
    job_id: int,
    owner: str,
    *,
    timings: dict[str, float] | None = None,
    series_state: str = "reported",
    reason: str | None = None,
) -> Job:
    job = _own_running_job(s, job_id, owner)
    now = utcnow()
    job.timings = dict(timings or {})
    job.finished_at = now
    job.lease_until = None
    transition(s, job, "done", reason)
    series = s.get(Series, job.series_id)
    if series is not None and series.revision == job.revision:
        if reason is not None:
            series.reason = reason
        transition(s, series, series_state, reason)
    return job


def fail_job(s: Session, job_id: int, owner: str, error: str, *, max_attempts: int, retry: bool = True) -> Job:
    job = _own_running_job(s, job_id, owner)
    job.error = error
    job.lease_until = None
    _retry_or_fail(s, job, error, max_attempts=max_attempts, retry=retry)
    return job


def _retry_or_fail(s: Session, job: Job, error: str, *, max_attempts: int, retry: bool) -> None:
    series = s.get(Series, job.series_id)
    current = series is not None and series.revision == job.revision
    if retry and job.attempts < max_attempts:
        transition(s, job, "queued", f"retry after attempt {job.attempts}: {error}")
        job.lease_owner = None
        if current and series is not None and series.state == "running":
            transition(s, series, "queued", f"job {job.id} retry")
        return
    job.finished_at = utcnow()
    reason = f"{error} (after {job.attempts} attempts)"
    transition(s, job, "failed", reason)
    if current and series is not None and series.state in ("queued", "running", "complete"):
        series.reason = reason
        transition(s, series, "failed", reason)


def reclaim_expired(s: Session, *, max_attempts: int, now: datetime | None = None) -> list[int]:
    """Running jobs whose lease expired, or whose owner died on this host → retry or fail."""
    now = now or utcnow()
    q = select(Job).where(Job.state == "running").order_by(Job.id)
    if s.get_bind().dialect.name == "postgresql":
        q = q.with_for_update(skip_locked=True)
    ids = []
    for job in s.execute(q).scalars():
        why = stale(job, now)
        if why is None:
            continue
        error = f"lease of {job.lease_owner} expired" if why == "expired" else f"owner {job.lease_owner} died"
        job.error = error
        job.lease_until = None
        _retry_or_fail(s, job, error, max_attempts=max_attempts, retry=True)
        ids.append(job.id)
    return ids


def add_result(
    s: Session,
    job: Job,
    kind: str,
    sop_instance_uid: str,
    path: str,
    destinations: list[str],
    sop_class_uid: str = "",
) -> Result:
    result = s.execute(select(Result).where(Result.sop_instance_uid == sop_instance_uid)).scalar_one_or_none()
    if result is None:
        result = Result(
            job_id=job.id,
            series_id=job.series_id,
            kind=kind,
            sop_instance_uid=sop_instance_uid,
            sop_class_uid=sop_class_uid,
            path=path,
        )
        s.add(result)
        s.flush()
    else:
        # A retried job rebuilt the same object (deterministic UID): point at the latest file.
        result.job_id = job.id
        result.path = path
    have = set(s.execute(select(Outbox.destination).where(Outbox.result_id == result.id)).scalars())
    for dest in destinations:
        if dest in have:
            continue
        row = Outbox(result_id=result.id, destination=dest, state="pending", next_attempt_at=utcnow())
        s.add(row)
        s.flush()
        s.add(Event(entity="outbox", entity_id=row.id, from_state=None, to_state="pending", detail=f"{kind} → {dest}"))
    return result


def series_instances(s: Session, series_id: int) -> list[Instance]:
    q = select(Instance).where(Instance.series_id == series_id).order_by(Instance.instance_number, Instance.id)
    return list(s.execute(q).scalars())


def counts_by_state(s: Session, model: type[Series] | type[Job] | type[Outbox]) -> dict[str, int]:
    rows = s.execute(select(model.state, func.count()).group_by(model.state)).all()
    return {state: int(n) for state, n in rows}
