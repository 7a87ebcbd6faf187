"""The node's database: SQLAlchemy 2 models, engine set-up, opening (and migrating) a store.

Everything that crosses a process boundary (serve → worker → send) goes through these tables, so a
restart of any process loses nothing. SQLite (WAL) is the embedded default; PostgreSQL by URL for
several workers.

API
---
``open_store(url, *, schema=None, create=True) -> Store``
    Engine + session factory. ``create=True`` creates the schema or upgrades it to the newest
    Alembic revision (``hexnode.store.migrate``; idempotent; safe for several processes starting
    at once). ``schema`` (PostgreSQL only) puts
    every table in that schema, which tests use to isolate a run.
``Store.transaction()``
    ``with store.transaction() as s:`` → a ``Session`` in one transaction, committed on exit,
    rolled back on an exception. On SQLite every transaction starts with ``BEGIN IMMEDIATE`` (the
    write lock is taken up front, so two writers queue on ``busy_timeout`` instead of failing
    with SQLITE_BUSY on a read→write upgrade). Objects stay readable after commit
    (``expire_on_commit=False``).
``utcnow()``
    Naive UTC ``datetime``; every timestamp column holds naive UTC.

Tables (state machines and transitions live in ``hexnode.store.queue``)
    ``studies``    one row per Study Instance UID, with the answer the PACS holds for it.
    ``series``     one row per Series Instance UID: state, reason, revision (bumped when
                   instances arrive after analysis), last_instance_at (drives completion).
    ``instances``  one row per SOP Instance UID (unique: duplicates are stored once), with the
                   spool path (relative to the spool dir) and the indexed header fields.
    ``jobs``       one per (series, revision): state, attempts, lease_owner/lease_until, error,
                   timings (JSON, seconds per stage), held (its results wait for the study).
    ``results``    produced objects (SEG/SR/SC) with their SOP Instance UID and spool path.
    ``outbox``     one per (result, destination): pending/sending/delivered/failed, attempts,
                   next_attempt_at (back-off), last_error, delivered_at.
    ``events``     audit trail: every state change of a series, job, outbox row or notification.
    ``notifications``  one per (trigger, series, revision, target): alerts and IT warnings
                   (hexnode/notify), with the outbox's retry, lease and maximum-age columns.
    ``stage_beats``  one per running stage process: when it last showed it is alive
                   (hexnode/store/heartbeat.py; `hexnode health`, /metrics).
    ``corrections``  one per received DICOM SEG: a radiologist's reference mask for an analysed
                   series, or why it was kept aside (hexnode/labels; store/corrections.py).

Jobs, outbox rows and notifications share their lease columns through the ``Leased`` mixin, and
outbox rows and notifications their retry columns through ``Delivery``; the steps on those
columns (claim, release, back-off, give up, re-queue) are ``hexnode.store.lease``'s.

No patient name, ID or birth date is stored: nothing here needs them.
"""

from __future__ import annotations

import re
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    DateTime,
    Engine,
    Float,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
    create_engine,
    event,
    false,
    text,
)
from sqlalchemy.orm import DeclarativeBase, Mapped, Session, mapped_column, sessionmaker

from hexnode.config import DatabaseMissing, redact_url
from hexnode.store.spool import uid_hash

# PostgreSQL advisory lock that serialises schema creation and migration between processes
# starting together (the number hexnode has always used, so an older process waits on it too).
PG_SCHEMA_LOCK = 4242001


def utcnow() -> datetime:
    """Naive UTC now: the one clock every timestamp column uses."""
    return datetime.now(UTC).replace(tzinfo=None)


class Base(DeclarativeBase):
    pass


class Leased:
    """Columns of a row that one process at a time works on (jobs, outbox, notifications): the
    claimer counts an attempt and holds a lease until lease_until; hexnode.store.lease takes back
    the lease of a claimer that died."""

    attempts: Mapped[int] = mapped_column(Integer, default=0)
    lease_owner: Mapped[str | None] = mapped_column(String(128), nullable=True)
    lease_until: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Delivery(Leased):
    """Columns of a row delivered to a peer with retries (outbox, notifications): its
    pending/sending/delivered/failed state, when it is next due (back-off), the last error.
    Each table adds its own ``queued_at`` (the maximum age counts from it), whose nullability
    differs between the two."""

    state: Mapped[str] = mapped_column(String(16), default="pending")
    next_attempt_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_error: Mapped[str | None] = mapped_column(Text, nullable=True)
    delivered_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Meta(Base):
    """Small node-wide settings by key (the active model version, the outcomes' drift state).

    Before Alembic it also held ``schema_version``; the legacy_v1_v4 revision reads and removes it."""

    __tablename__ = "hexnode_meta"
    key: Mapped[str] = mapped_column(String(64), primary_key=True)
    value: Mapped[str] = mapped_column(Text)


def _hash_of(column: str) -> Any:
    """Column default: the 10-character hash logs and `hexnode status` name a row by (uid_hash)."""
    return lambda ctx: uid_hash(ctx.get_current_parameters()[column])


def _accession(ctx: Any) -> str | None:
    """Column default: the Accession Number (0008,0050) in the series header receive indexed."""
    header = ctx.get_current_parameters().get("header")
    try:
        value = str(header["00080050"]["Value"][0]).strip() if header else ""
    except (KeyError, IndexError, TypeError):
        value = ""
    return value[:64] or None


class Study(Base):
    __tablename__ = "studies"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # Text, not String(64): malformed over-long UIDs are indexed as received (and flagged by select).
    study_uid: Mapped[str] = mapped_column(Text, unique=True)
    # uid_hash(study_uid): the name logs use ("study 2382d58a10"), so an admin can look it up.
    uid_hash: Mapped[str | None] = mapped_column(String(10), nullable=True, index=True,
                                                 default=_hash_of("study_uid"))
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # The study is the unit of the answer: what the PACS holds as hexnode's answer for it now
    # ("result" of the chosen series, or "not analysed"), named by its SR, which the next answer
    # (after a late series re-opened the study) names as its predecessor.
    answer_kind: Mapped[str | None] = mapped_column(String(16), nullable=True)
    answer_sr_uid: Mapped[str | None] = mapped_column(Text, nullable=True)
    answer_sr_series_uid: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Revision of the next study-level "not analysed" report (its UIDs derive from it).
    report_revision: Mapped[int] = mapped_column(Integer, default=0)


class Series(Base):
    __tablename__ = "series"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_uid: Mapped[str] = mapped_column(Text, unique=True)
    # uid_hash(series_uid): the name logs, status and notifications use (`hexnode series HASH`).
    uid_hash: Mapped[str | None] = mapped_column(String(10), nullable=True, index=True,
                                                 default=_hash_of("series_uid"))
    study_id: Mapped[int] = mapped_column(ForeignKey("studies.id"), index=True)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    modality: Mapped[str | None] = mapped_column(String(16), nullable=True)
    sop_class_uid: Mapped[str | None] = mapped_column(Text, nullable=True)
    series_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # received | complete | queued | running | reported | delivered | rejected | failed
    state: Mapped[str] = mapped_column(String(16), default="received", index=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    # None until select has run; True for the series chosen for analysis in its study.
    selected: Mapped[bool | None] = mapped_column(Boolean, nullable=True)
    instance_count: Mapped[int] = mapped_column(Integer, default=0)
    # instance_count when the series last left "received" (route decided it). Receive only counts;
    # a count above this is an instance that arrived after the decision, and route re-opens the
    # series (hexnode.route.completion.settle_arrivals). None while the series has not been decided.
    decided_count: Mapped[int | None] = mapped_column(Integer, nullable=True)
    first_instance_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    last_instance_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)
    state_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    # A sender stopped part-way (A-ABORT, or an association that ended with failed C-STOREs) while
    # sending this series: when, and what happened ("10 instances arrived before the association
    # was aborted"). Completion then waits [series] aborted_wait_seconds, and the series is
    # analysed only if it is whole by positions and coverage.
    aborted_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    aborted_note: Mapped[str | None] = mapped_column(Text, nullable=True)
    # The series-level header route selects on, indexed once by receive from the series' first
    # instance: DICOM JSON without pixels, bulk data, private tags or the Patient module (group
    # 0010: no name, ID or birth date in the database). Route overlays the middle instance's own
    # indexed values (orientation, thickness, image type …). None: indexed before this column, or
    # not convertible; route then reads the middle instance's header from the spool.
    header: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # The Accession Number from that header (an order number, no patient value), for
    # `hexnode series ACCESSION`; None when the header has none or was not indexed.
    accession_number: Mapped[str | None] = mapped_column(String(64), nullable=True, index=True,
                                                         default=_accession)


class Instance(Base):
    __tablename__ = "instances"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(Text, unique=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    sop_class_uid: Mapped[str] = mapped_column(Text)
    transfer_syntax: Mapped[str] = mapped_column(Text)
    path: Mapped[str] = mapped_column(Text)  # relative to the spool dir
    size_bytes: Mapped[int] = mapped_column(Integer, default=0)
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    instance_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    position: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)  # (0020,0032)
    orientation: Mapped[list[float] | None] = mapped_column(JSON, nullable=True)  # (0020,0037)
    rows: Mapped[int | None] = mapped_column(Integer, nullable=True)
    columns: Mapped[int | None] = mapped_column(Integer, nullable=True)
    number_of_frames: Mapped[int | None] = mapped_column(Integer, nullable=True)
    slice_thickness: Mapped[float | None] = mapped_column(Float, nullable=True)
    images_in_acquisition: Mapped[int | None] = mapped_column(Integer, nullable=True)  # (0020,1002)
    image_type: Mapped[str | None] = mapped_column(Text, nullable=True)  # (0008,0008), values joined by "\\"
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Job(Leased, Base):
    __tablename__ = "jobs"
    __table_args__ = (UniqueConstraint("series_id", "revision"), Index("ix_jobs_state_id", "state", "id"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    # Set: the job answers for the whole study (one "not analysed" report for a study without an
    # analysable series) at this study revision; series_id is then the series that completed the
    # decision, which the report is filed under.
    study_revision: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # queued | running | done | failed | superseded
    state: Mapped[str] = mapped_column(String(16), default="queued")
    # attempts, lease_owner, lease_until: Leased
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    timings: Mapped[dict[str, float] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # True: the study has not settled and a better series of it may still come (route chose this
    # series early, hexnode.route.hold): its results and notifications wait, unsent, until route
    # releases them (False) or supersedes them (outbox rows → superseded, never sent).
    held: Mapped[bool] = mapped_column(Boolean, default=False, server_default=false())


class Result(Base):
    __tablename__ = "results"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    job_id: Mapped[int] = mapped_column(ForeignKey("jobs.id"), index=True)
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), index=True)
    kind: Mapped[str] = mapped_column(String(8))  # SEG | SR | SC
    # Derived deterministically by the report: the same object re-sent has the same UID.
    sop_instance_uid: Mapped[str] = mapped_column(Text, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(Text, default="")
    path: Mapped[str] = mapped_column(Text)  # relative to the spool dir
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Outbox(Delivery, Base):
    __tablename__ = "outbox"
    __table_args__ = (
        UniqueConstraint("result_id", "destination"),
        Index("ix_outbox_state_due", "state", "next_attempt_at"),
    )
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    # state (pending | sending | delivered | failed), attempts, next_attempt_at, lease_owner,
    # lease_until, created_at, last_error, delivered_at: Delivery
    result_id: Mapped[int] = mapped_column(ForeignKey("results.id"), index=True)
    destination: Mapped[str] = mapped_column(String(64))
    # Start of the current delivery period: the maximum age counts from here (reset by resend).
    queued_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True, default=utcnow)


class Event(Base):
    __tablename__ = "events"
    __table_args__ = (Index("ix_events_entity", "entity", "entity_id"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    entity: Mapped[str] = mapped_column(String(16))  # series | job | outbox
    entity_id: Mapped[int] = mapped_column(Integer)
    from_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    to_state: Mapped[str] = mapped_column(String(16))
    detail: Mapped[str | None] = mapped_column(Text, nullable=True)
    at: Mapped[datetime] = mapped_column(DateTime, default=utcnow, index=True)


class StageBeat(Base):
    """One running stage process's heartbeat (hexnode/store/heartbeat.py): each receive, route,
    worker and send process writes its row every few seconds from its own work loop, so a process
    that is alive but wedged stops beating. ``busy_since``: a worker on a job since then (its loop
    does not beat while the job runs). The row is deleted on a clean stop."""

    __tablename__ = "stage_beats"
    instance: Mapped[str] = mapped_column(String(160), primary_key=True)  # host:pid:random
    stage: Mapped[str] = mapped_column(String(16), index=True)
    host: Mapped[str] = mapped_column(String(128))
    pid: Mapped[int] = mapped_column(Integer)
    started_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    beat_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    busy_since: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)


class Scan(Base):
    """An analysed (or not analysable) NCCT of a known patient, for follow-up linking
    (hexnode/series/followup.py). The patient is only its keyed hash: never an ID in clear."""

    __tablename__ = "scans"
    __table_args__ = (Index("ix_scans_patient_role", "patient_key", "role"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    patient_key: Mapped[str] = mapped_column(String(64))  # HMAC-SHA256 hex
    series_id: Mapped[int] = mapped_column(ForeignKey("series.id"), unique=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    acquired_at: Mapped[datetime] = mapped_column(DateTime)  # the scan's own time (scanner local)
    role: Mapped[str] = mapped_column(String(16))  # baseline | followup | repeat
    baseline_id: Mapped[int | None] = mapped_column(ForeignKey("scans.id"), nullable=True, index=True)
    analysed: Mapped[bool] = mapped_column(Boolean, default=True)
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)  # why not analysed
    hemorrhage: Mapped[bool] = mapped_column(Boolean, default=False)
    volume_ml: Mapped[float | None] = mapped_column(Float, nullable=True)
    probability: Mapped[float | None] = mapped_column(Float, nullable=True)
    threshold: Mapped[float | None] = mapped_column(Float, nullable=True)
    model_version: Mapped[str] = mapped_column(Text, default="")
    study_uid: Mapped[str] = mapped_column(Text, default="")
    series_uid: Mapped[str] = mapped_column(Text, default="")
    seg_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # spool-relative
    key_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # key slice (npz), spool-relative
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)


class Outcome(Base):
    """One baseline/follow-up pair: the baseline's prediction and what the follow-up measured."""

    __tablename__ = "outcomes"
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    baseline_id: Mapped[int] = mapped_column(ForeignKey("scans.id"), index=True)
    followup_id: Mapped[int] = mapped_column(ForeignKey("scans.id"), unique=True)
    hours: Mapped[float] = mapped_column(Float)
    baseline_ml: Mapped[float] = mapped_column(Float)
    followup_ml: Mapped[float] = mapped_column(Float)
    growth_ml: Mapped[float] = mapped_column(Float)
    growth_pct: Mapped[float | None] = mapped_column(Float, nullable=True)
    category: Mapped[str] = mapped_column(String(16))  # yes | no | decreased
    expansion: Mapped[bool] = mapped_column(Boolean)
    definition: Mapped[str] = mapped_column(String(32))
    # the baseline's prediction, as reported
    model_version: Mapped[str] = mapped_column(Text)
    probability: Mapped[float] = mapped_column(Float)
    threshold: Mapped[float] = mapped_column(Float)
    baseline_at: Mapped[datetime] = mapped_column(DateTime)
    created_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)

class Correction(Base):
    """A DICOM SEG received for a series: a reference mask a reader corrected (or confirmed), or
    one kept aside with the reason. Receive files it (``received``); the label step
    (hexnode/labels/take.py) checks it against hexnode's own SEG of the series and sets the state:

    ``stored``      the series' reference mask (the newest stored one; an older one becomes
                    ``superseded``, kept for the history), with Dice and volume against hexnode's mask;
    ``aside``       not taken (unknown series, another Frame of Reference, frames that do not map,
                    no single hemorrhage segment, unreadable): ``reason`` says which;
    ``own``         hexnode's own SEG come back (a PACS forwarding it): not a correction.
    """

    __tablename__ = "corrections"
    __table_args__ = (Index("ix_corrections_state", "state"),)
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    sop_instance_uid: Mapped[str] = mapped_column(Text, unique=True)
    sop_class_uid: Mapped[str] = mapped_column(Text, default="")
    path: Mapped[str] = mapped_column(Text)  # the SEG, relative to the spool dir
    calling_ae: Mapped[str] = mapped_column(String(16), default="")
    peer: Mapped[str] = mapped_column(String(64), default="")  # the sender's address
    received_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)
    state: Mapped[str] = mapped_column(String(16), default="received")  # received | stored | superseded | aside | own
    reason: Mapped[str | None] = mapped_column(Text, nullable=True)
    checked_at: Mapped[datetime | None] = mapped_column(DateTime, nullable=True)
    # the source series it names (Referenced Series Sequence) and, when hexnode knows it, its row
    source_series_uid: Mapped[str | None] = mapped_column(Text, nullable=True)
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True, index=True)
    segment_number: Mapped[int | None] = mapped_column(Integer, nullable=True)
    segment_label: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # what it was compared with: hexnode's SEG (results row) and the model version that made it
    result_id: Mapped[int | None] = mapped_column(ForeignKey("results.id"), nullable=True)
    model_version: Mapped[str | None] = mapped_column(Text, nullable=True)
    frames: Mapped[int | None] = mapped_column(Integer, nullable=True)  # source slices the mask covers
    dice: Mapped[float | None] = mapped_column(Float, nullable=True)
    hexnode_ml: Mapped[float | None] = mapped_column(Float, nullable=True)
    reference_ml: Mapped[float | None] = mapped_column(Float, nullable=True)
    volume_change_ml: Mapped[float | None] = mapped_column(Float, nullable=True)  # reference - hexnode
    mask_path: Mapped[str | None] = mapped_column(Text, nullable=True)  # the mapped mask (npz), spool-relative
    superseded_by: Mapped[int | None] = mapped_column(ForeignKey("corrections.id"), nullable=True)


class Notification(Delivery, Base):
    """One message to one notification target (hexnode/notify): an alert, a correction, an IT warning.

    ``key`` is the idempotency key (trigger, subject — the series UID, or the series and the
    destination for a failed delivery —, revision, target): a restart or a re-run never creates a
    second row, so never a second alert. ``payload`` is the finding (volume, probability, risk,
    accession number, viewer link …), never a patient name, ID or birth date: a target that turns
    such a field on gets it read from the spool at send time, not stored here."""

    __tablename__ = "notifications"
    __table_args__ = (Index("ix_notifications_state_due", "state", "next_attempt_at"),
                      Index("ix_notifications_study", "study_id", "trigger", "target"))
    id: Mapped[int] = mapped_column(Integer, primary_key=True)
    key: Mapped[str] = mapped_column(Text, unique=True)
    target: Mapped[str] = mapped_column(String(64))
    kind: Mapped[str] = mapped_column(String(16))  # webhook | email | hl7
    trigger: Mapped[str] = mapped_column(String(32))
    series_id: Mapped[int | None] = mapped_column(ForeignKey("series.id"), nullable=True, index=True)
    study_id: Mapped[int | None] = mapped_column(ForeignKey("studies.id"), nullable=True)
    revision: Mapped[int] = mapped_column(Integer, default=0)
    # True: it corrects an alert already delivered for the study (a re-analysed or superseding result).
    correction: Mapped[bool] = mapped_column(Boolean, default=False)
    payload: Mapped[dict[str, Any]] = mapped_column(JSON)
    # Delivery: state (pending | sending | delivered | failed | superseded: a newer result came
    # before it was sent), attempts, next_attempt_at, lease_owner, lease_until, created_at,
    # last_error, delivered_at
    queued_at: Mapped[datetime] = mapped_column(DateTime, default=utcnow)  # the maximum age counts from here


@dataclass
class Store:
    """Engine + sessions; the one handle every process passes around."""

    engine: Engine
    sessions: sessionmaker[Session]
    url: str = ""  # what open_store was given, so another process can open the same store
    schema: str | None = None

    @property
    def dialect(self) -> str:
        return self.engine.dialect.name

    @contextmanager
    def transaction(self) -> Iterator[Session]:
        with self.sessions.begin() as session:
            yield session

    def dispose(self) -> None:
        self.engine.dispose()


_SCHEMA_NAME = re.compile(r"^[a-z_][a-z0-9_]{0,62}$")


def make_engine(url: str, *, schema: str | None = None) -> Engine:
    """An engine configured for the node's concurrency model (see module docstring)."""
    if url.startswith("sqlite"):
        engine = create_engine(url, connect_args={"timeout": 30.0, "check_same_thread": False})
        _configure_sqlite(engine)
        return engine
    connect_args: dict[str, Any] = {}
    if schema:
        if not _SCHEMA_NAME.match(schema):
            raise ValueError(f"schema name {schema!r}: lower-case letters, digits, underscore")
        connect_args["options"] = f"-csearch_path={schema}"
    return create_engine(url, connect_args=connect_args, pool_pre_ping=True)


def _configure_sqlite(engine: Engine) -> None:
    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Let SQLAlchemy's "begin" event issue BEGIN itself (pysqlite's implicit BEGIN is deferred).
        dbapi_conn.isolation_level = None
        cur = dbapi_conn.cursor()
        cur.execute("PRAGMA journal_mode=WAL")
        # NORMAL in WAL mode: a commit survives a process kill; only an OS crash can lose the last
        # transactions, and the spool files (fsynced) let a restart re-index them.
        cur.execute("PRAGMA synchronous=NORMAL")
        cur.execute("PRAGMA busy_timeout=30000")
        cur.execute("PRAGMA foreign_keys=ON")
        cur.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Any) -> None:
        conn.exec_driver_sql("BEGIN IMMEDIATE")


def check_exists(url: str, *, schema: str | None = None) -> None:
    """Raise DatabaseMissing unless `url` holds a hexnode database (any revision); creates nothing."""
    where = redact_url(url)
    if url.startswith("sqlite:///"):
        from pathlib import Path

        db_file = url[len("sqlite:///"):]
        if not db_file or db_file == ":memory:" or not Path(db_file).is_file():
            raise DatabaseMissing(f"no database at {where}")
    engine = make_engine(url, schema=schema)
    try:
        with engine.connect() as conn:
            from sqlalchemy import inspect

            found = inspect(conn).has_table("series") or inspect(conn).has_table("hexnode_meta")
    except Exception as exc:  # server down, database or role missing: say so, never a traceback
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else ""
        raise DatabaseMissing(f"cannot open the database at {where}: {type(exc).__name__}: {first}") from None
    finally:
        engine.dispose()
    if not found:
        raise DatabaseMissing(f"the database at {where} has no hexnode tables")


def open_existing(url: str, *, schema: str | None = None) -> Store:
    """Open the node's database for a command that reads it (status, series, outcomes ...):
    upgraded to the head revision like any process's, but never created. A wrong `--config`, or
    none, must not answer from a fresh empty database as if the node had nothing."""
    check_exists(url, schema=schema)
    return open_store(url, schema=schema)


def open_store(url: str, *, schema: str | None = None, create: bool = True) -> Store:
    """Open (and by default create, or upgrade to the head revision) the database at `url`."""
    engine = make_engine(url, schema=schema)
    if url.startswith("sqlite:///"):
        from pathlib import Path

        db_file = url[len("sqlite:///"):]
        if db_file and db_file != ":memory:":
            Path(db_file).parent.mkdir(parents=True, exist_ok=True)
    if schema and engine.dialect.name == "postgresql":
        with engine.begin() as conn:
            # IF NOT EXISTS is not safe against a concurrent CREATE (a unique violation on
            # pg_namespace): processes starting together take the migration lock for it too
            conn.execute(text(f"SELECT pg_advisory_xact_lock({PG_SCHEMA_LOCK})"))
            conn.execute(text(f'CREATE SCHEMA IF NOT EXISTS "{schema}"'))
    store = Store(engine, sessionmaker(engine, expire_on_commit=False), url=url, schema=schema)
    if create:
        from hexnode.store.migrate import upgrade  # Alembic is imported only by who migrates

        upgrade(store)
    return store
