"""`hexnode worker`: claim a job, analyse the series, write SEG/SR/SC to the spool, queue them for sending.

One process per GPU. ONNX Runtime sessions are created once per process (`Models.load`); a lease
with a heart-beat thread marks the job as ours, so a `kill -9` leaves it to be reclaimed by
another worker after `lease_seconds`. Results, outbox rows and the job's completion are one
transaction: either all of them exist or none (and the derived UIDs make a rerun identical).
A claimed job comes as one `Task` (hexnode.pipeline.task), read from its row in the claim's
transaction; the worker knows nothing of how route decided.

The study is the unit of the answer (hexnode.series.answer): the chosen series that cannot be loaded
as a volume (gap, duplicates, missing decoder …) or is incomplete gets a "not analysed" SR + SC
with the reason; a study-level job builds one "not analysed" SR + SC for a study with no analysable
series (`pipeline.run.produce_study`; `[report] per_series_not_analysed`: one per rejected series instead). Each answer names
the study's previous one (a late series re-opened it) as its predecessor. An unexpected error is retried
up to `max_attempts`; the last failure sends a "not analysed" report too, so the reader never
waits for a result that will not come.
"""

from __future__ import annotations

import argparse
import logging
import os
import socket
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from hexnode import notify
from hexnode.config import Config
from hexnode.pipeline.contracts import Analyser, Prediction
from hexnode.pipeline.run import Produced, encode, kind_of, not_analysed, produce, produce_study
from hexnode.pipeline.task import Task
from hexnode.report.study import PreviousAnswer, name_predecessor
from hexnode.report.uids import derive_uid
from hexnode.report.warm import warm_up
from hexnode.store.answers import record_answer
from hexnode.store.db import Job, Store
from hexnode.store.doorbell import Doorbell, ring
from hexnode.store.process import stage_process
from hexnode.store.queue import (
    LeaseLost,
    add_result,
    claim_job,
    complete_job,
    fail_job,
    heartbeat,
)
from hexnode.store.spool import Spool

if TYPE_CHECKING:
    from hexnode.pipeline.followup import Pending

log = logging.getLogger(__name__)


def destinations_for(cfg: Config, calling_ae: str) -> list[str]:
    """Destination names for a series from `calling_ae` (empty `for_calling_aes` = every series)."""
    return [d.name for d in cfg.destinations if not d.for_calling_aes or calling_ae in d.for_calling_aes]


class _Heartbeat:
    """Extends the lease every `heartbeat_seconds` until stopped; remembers a lost lease."""

    def __init__(self, store: Store, job_id: int, owner: str, cfg: Config) -> None:
        self.store, self.job_id, self.owner, self.cfg = store, job_id, owner, cfg
        self.lost = False
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"heartbeat-{job_id}", daemon=True)

    def __enter__(self) -> _Heartbeat:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.wait(self.cfg.worker.heartbeat_seconds):
            try:
                with self.store.transaction() as s:
                    ok = heartbeat(s, self.job_id, self.owner, self.cfg.worker.lease_seconds)
            except Exception:  # the database may be briefly away; the lease has slack
                log.warning("job %d: heartbeat failed", self.job_id, exc_info=True)
                continue
            if not ok:
                self.lost = True
                log.warning("job %d: lease lost (reclaimed by another worker)", self.job_id)
                return


@dataclass
class JobOutcome:
    job_id: int
    series: str  # UID hash
    state: str  # reported | rejected | retry | failed | lost
    reason: str | None = None
    timings: dict[str, float] = field(default_factory=dict)
    prediction: Prediction | None = None


class Worker:
    def __init__(self, store: Store, spool: Spool, cfg: Config, models: Analyser, owner: str | None = None) -> None:
        self.store, self.spool, self.cfg, self.models = store, spool, cfg, models
        self.owner = owner or f"{socket.gethostname()}:{os.getpid()}"
        # [followup] enabled: later scans of a patient are measured against the baseline (hexnode/pipeline/followup.py)
        from hexnode.pipeline.followup import FollowupStep

        self.followup = FollowupStep.from_config(cfg, spool)
        self._models_checked = 0.0
        # called once a job is claimed (the stage heartbeat marks the process busy: its loop does not
        # beat while the job runs)
        self.on_claim: Callable[[], None] | None = None

    def sync_models(self, every: float = 5.0) -> None:
        """Load the activated model version (`hexnode models activate`) before the next job."""
        now = time.monotonic()
        if now - self._models_checked < every:
            return
        self._models_checked = now
        from hexnode.store.model_versions import active

        current = active(self.store)
        if current is None or current[0] == self.models.info.version:
            return
        from hexnode.models.analyser import Models

        self.models = Models.load(current[1], self.cfg.models.providers)
        log.info("worker %s: switched to model version %s", self.owner, self.models.info.version)

    def run_once(self) -> JobOutcome | None:
        """Claim and process one job; None when the queue is empty."""
        self.sync_models()
        with self.store.transaction() as s:
            job = claim_job(s, self.owner, self.cfg.worker.lease_seconds, max_attempts=self.cfg.worker.max_attempts)
            if job is None:
                return None
            task = Task.from_job(s, job, self.spool)
        if self.on_claim is not None:
            self.on_claim()
        # the idle check above runs every few seconds; a job claimed within them of an activation
        # must still run on the version active now (one read of a row; the load only on a change)
        self.sync_models(every=0.0)
        log.info("job %d: series %s revision %d, %d instances, attempt %d%s", task.job_id, task.name, task.revision,
                 len(task.paths), task.attempts,
                 "" if task.study_revision is None else f", study report revision {task.study_revision}")
        t0 = time.perf_counter()
        pending: Pending | None = None
        with _Heartbeat(self.store, task.job_id, self.owner, self.cfg) as hb:
            try:
                if task.study_revision is not None:
                    produced = produce_study(task.listed, self.models, revision=task.study_revision,
                                             previous=_standing(task))
                elif task.selected is False:
                    produced = produce(task.paths, self.models, revision=task.revision,
                                       rejected=task.note or "not selected")
                else:
                    previous = self._superseded(task)
                    note = task.note
                    if previous is not None:
                        note = f"{task.note or 'analysed'}; {SUPERSEDES_STUDY_ANSWER}"
                    produced = produce(task.paths, self.models, revision=task.revision, selection_note=note,
                                       stopped=task.stopped)
                    _name_predecessor(produced, previous)
                    if self.followup is not None:
                        pending = self.followup.prepare(self.store, task.paths, produced, task.series_uid,
                                                        task.revision)
            except Exception as exc:  # a bug or a resource problem: retry, and on the last attempt report it
                return self._failed(task, exc)
        if hb.lost:
            return JobOutcome(task.job_id, task.name, "lost", "lease lost")
        produced.timings["total"] = time.perf_counter() - t0
        return self._commit(task, produced, pending)

    def _superseded(self, task: Task) -> PreviousAnswer | None:
        """The study's standing answer when it came from elsewhere than this series' own previous
        revision (which the report names already): a late series' answer supersedes it."""
        a = task.answer
        if a.sr_uid is None or a.sr_series_uid is None:
            return None
        version = self.models.info.version
        own = {derive_uid(task.series_uid, version, "sr", r) for r in range(task.revision + 1)}
        if a.sr_uid in own:
            return None
        return PreviousAnswer(task.study_uid, a.sr_series_uid, a.sr_uid)

    def _write(self, series_uid: str, revision: int, produced: Produced) -> list[tuple[str, str, str, str]]:
        rows = []
        for ds in produced.datasets:
            kind = kind_of(ds)
            sop = str(ds.SOPInstanceUID)
            rel = self.spool.result_relpath(series_uid, f"{kind}-r{revision}-{sop}.dcm")
            self.spool.write_bytes(rel, encode(ds))
            rows.append((kind, sop, rel, str(ds.SOPClassUID)))
        return rows

    def _commit(self, task: Task, produced: Produced, pending: Pending | None) -> JobOutcome:
        job_id, name, revision = task.job_id, task.name, task.revision
        t = time.perf_counter()
        rows = self._write(task.series_uid, revision, produced)
        produced.timings["write"] = time.perf_counter() - t
        dests = destinations_for(self.cfg, task.calling_ae)
        state = "reported" if produced.analysed else "rejected"
        try:
            with self.store.transaction() as s:
                job = s.get(Job, job_id)
                assert job is not None
                for kind, sop, rel, sop_class in rows:
                    add_result(s, job, kind, sop, rel, dests, sop_class_uid=sop_class)
                study_job = task.study_report
                # a study report's reason is the study's: the series it is filed under keeps its own
                complete_job(s, job_id, self.owner, timings=produced.timings, series_state=state,
                             reason=None if produced.analysed or study_job else produced.reason)
                # read under the job's lock (PostgreSQL: complete_job's FOR UPDATE): route releases
                # a held job either before this commit (held is False now) or after it (route then
                # records the answer itself, hexnode.route.hold.release)
                s.refresh(job, ["held"])
                if task.answers and not job.held:
                    _record_answer(s, task, produced)
                if pending is not None and self.followup is not None:
                    recorded = self.followup.record(s, job.series_id, pending, rows)
                    notify.on_followup(s, self.cfg, series_id=job.series_id, revision=revision, produced=produced,
                                       recorded=recorded)
                if not study_job:  # alerts, corrections, not-analysed notices: with the result or not at all
                    notify.on_result(s, self.cfg, series_id=job.series_id, revision=revision, produced=produced,
                                     answers=task.answers)
        except LeaseLost as exc:
            log.warning("job %d: %s; its results were not recorded", job_id, exc)
            return JobOutcome(job_id, name, "lost", str(exc))
        if produced.prediction is not None:
            p = produced.prediction
            log.info("job %d: series %s reported: %.1f ml, p=%.2f (%s), %.2f s", job_id, name, p.volume_ml,
                     p.probability, p.risk, produced.timings["total"])
        elif task.study_revision is not None:
            log.info("job %d: study report revision %d (filed under series %s), not analysed: %s", job_id,
                     task.study_revision, name, produced.reason)
        else:
            log.info("job %d: series %s not analysed: %s", job_id, name, produced.reason)
        return JobOutcome(job_id, name, state, produced.reason, produced.timings, produced.prediction)

    def _failed(self, task: Task, exc: Exception) -> JobOutcome:
        job_id, name, attempts = task.job_id, task.name, task.attempts
        error = f"{type(exc).__name__}: {str(exc)[:300]}"
        log.error("job %d: series %s failed (attempt %d): %s", job_id, name, attempts, error, exc_info=True)
        final = attempts >= self.cfg.worker.max_attempts
        rows: list[tuple[str, str, str, str]] = []
        # A study report that cannot be built has no per-series fallback (it would be a report of
        # one series the reader never expected); the failure stays in the job and the log.
        if final and task.study_revision is None:
            try:
                produced = not_analysed(task.paths, f"analysis failed: {error}", self.models, revision=task.revision)
                rows = self._write(task.series_uid, task.revision, produced)
            except Exception:
                log.exception("job %d: cannot build the not-analysed report either", job_id)
        try:
            with self.store.transaction() as s:
                job = fail_job(s, job_id, self.owner, error, max_attempts=self.cfg.worker.max_attempts)
                if job.state == "failed" and rows:
                    job_row = s.get(Job, job_id)
                    assert job_row is not None
                    for kind, sop, rel, sop_class in rows:
                        add_result(s, job_row, kind, sop, rel, destinations_for(self.cfg, task.calling_ae),
                                   sop_class_uid=sop_class)
        except LeaseLost as lost:
            return JobOutcome(job_id, name, "lost", str(lost))
        return JobOutcome(job_id, name, "failed" if final else "retry", error)


# Said in the result of a series that arrived after the study was answered (e.g. "not analysed").
SUPERSEDES_STUDY_ANSWER = "it supersedes hexnode's previous answer for this study"


def _sr_of(produced: Produced) -> Dataset | None:
    return next((ds for ds in produced.datasets if kind_of(ds) == "SR"), None)


def _name_predecessor(produced: Produced, previous: PreviousAnswer | None) -> None:
    sr = _sr_of(produced)
    if previous is not None and sr is not None:
        name_predecessor(sr, previous)


def _standing(task: Task) -> PreviousAnswer | None:
    """The study's answer the PACS holds, as the study report names its predecessor; None: none yet."""
    a = task.answer
    if not a.sr_uid or not a.sr_series_uid:
        return None
    return PreviousAnswer(task.study_uid, a.sr_series_uid, a.sr_uid)


def _record_answer(s: Session, task: Task, produced: Produced) -> None:
    sr = _sr_of(produced)
    if sr is None:
        return
    record_answer(s, task.study_id, "result" if produced.analysed else "not analysed", str(sr.SOPInstanceUID),
                  str(sr.SeriesInstanceUID), task.study_revision)


def load_models(cfg: Config, store: Store | None = None) -> Analyser:
    from hexnode.models.analyser import Models
    from hexnode.store.model_versions import active_dir

    return Models.load(active_dir(store, cfg) if store is not None else cfg.models_path, cfg.models.providers)


def run_worker(args: argparse.Namespace) -> int:
    with stage_process(args, "worker") as proc:  # a stop signal lets the running job finish
        cfg, store, spool, stop, beater = proc.cfg, proc.store, proc.spool, proc.stop, proc.beater
        (spool.root / "results").mkdir(parents=True, exist_ok=True)  # not prepare(): that clears receive's files
        models = load_models(cfg, store)  # verifies sha256 and opens the ONNX sessions, once per process
        try:  # highdicom's tables and the font, loaded now: the first report costs what later ones do
            warm_up(models.info)
        except Exception as exc:  # only a speed-up: the first job then loads them itself
            log.warning("report warm-up failed (%s); the first report loads its tables itself", type(exc).__name__)
        worker = Worker(store, spool, cfg, models)
        beater.start()
        worker.on_claim = beater.busy
        log.info("worker %s ready (models %s %s)", worker.owner, models.info.name, models.info.version)
        with Doorbell(cfg.data_path, "worker") as bell:  # route rings it when it queues a job
            while not stop.is_set():
                try:
                    outcome = worker.run_once()
                except Exception:  # the database away for a moment: the job's lease brings it back later
                    log.exception("worker loop: claim or commit failed; retrying")
                    beater.idle()
                    stop.wait(max(2.0, 10 * cfg.worker.poll_seconds))
                    continue
                if outcome is not None:
                    ring(cfg.data_path, "send")  # its results are in the outbox now
                    beater.idle()
                    continue
                beater.beat()
                if getattr(args, "once", False):
                    break
                bell.wait(stop, cfg.worker.poll_seconds)
    return 0
