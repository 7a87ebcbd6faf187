"""The worker's follow-up step: link an analysed scan to its patient's baseline, add the follow-up
report, record the scan and the outcome pair (rule: hexnode/series/followup.py).

`prepare` runs after the series was analysed, outside any transaction (it reads the baseline and
builds the report); `record` runs inside the worker's commit transaction, so the scan, the outcome
and the result objects exist together or not at all. A failure of this step never costs the
series its own result: it is logged (no identifiers) and the series is reported as usual.

Patients are known only by `patient_key` (HMAC-SHA256 under the site secret): the Patient ID is
read from the header the worker loads and never leaves this process in clear.
"""

from __future__ import annotations

import io
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.config import Config, FollowupConfig
from hexnode.pipeline.run import KeySlice, Produced, headers_of, kind_of
from hexnode.series import followup as rule
from hexnode.store.db import Scan, Series, Store
from hexnode.store.outcomes import check_drift, record_outcome, save_drift
from hexnode.store.spool import Spool, uid_hash

log = logging.getLogger(__name__)


@dataclass
class Recorded:
    """A follow-up's outcome as recorded: its growth, and the drift its pair revealed, if any."""

    growth: rule.Growth | None = None
    hours: float = 0.0
    drift_version: str | None = None
    drift_pairs: int = 0
    drift_reasons: list[str] = field(default_factory=list)


@dataclass
class Pending:
    """What `record` writes: the scan's row, and its outcome when it is a follow-up."""

    patient_key: str
    acquired_at: datetime
    link: rule.Link
    revision: int
    analysed: bool
    reason: str | None = None
    hemorrhage: bool = False
    volume_ml: float | None = None
    probability: float | None = None
    threshold: float | None = None
    model_version: str = ""
    study_uid: str = ""
    series_uid: str = ""
    key_path: str | None = None
    growth: rule.Growth | None = None
    extra_kinds: list[str] = field(default_factory=list)


def load_key(spool: Spool, relpath: str | None) -> KeySlice | None:
    if not relpath:
        return None
    try:
        with np.load(spool.path(relpath)) as z:
            return KeySlice(z["hu"], z["mask"].astype(bool), (float(z["spacing"][0]), float(z["spacing"][1])),
                            int(z["index"]), int(z["n_slices"]), str(z["sop"]))
    except (OSError, KeyError, ValueError):
        return None


def _key_bytes(key: KeySlice) -> bytes:
    buf = io.BytesIO()
    np.savez_compressed(buf, hu=key.hu, mask=key.mask, spacing=np.array(key.spacing), index=key.index,
                        n_slices=key.n_slices, sop=key.sop_instance_uid)
    return buf.getvalue()


def referenced_images(seg: Dataset) -> list[Dataset]:
    """The CT instances a SEG was made from (Study/Series/SOP UIDs): the baseline series' evidence."""
    out = []
    for series in seg.get("ReferencedSeriesSequence", []):
        for ref in series.get("ReferencedInstanceSequence", []):
            ds = Dataset()
            ds.StudyInstanceUID = seg.StudyInstanceUID
            ds.SeriesInstanceUID = series.SeriesInstanceUID
            ds.SOPClassUID = ref.ReferencedSOPClassUID
            ds.SOPInstanceUID = ref.ReferencedSOPInstanceUID
            out.append(ds)
    return out


class FollowupStep:
    def __init__(self, cfg: FollowupConfig, spool: Spool) -> None:
        if not cfg.secret:
            raise ValueError("follow-up linking needs [followup] secret")
        self.cfg, self.spool = cfg, spool
        self.window = rule.Window(cfg.min_hours, cfg.max_hours)

    @classmethod
    def from_config(cls, cfg: Config, spool: Spool) -> FollowupStep | None:
        return cls(cfg.followup, spool) if cfg.followup.enabled else None

    # --- before the commit ------------------------------------------------------------------
    def prepare(self, store: Store, paths: Sequence[Path], produced: Produced, series_uid: str,
                revision: int) -> Pending | None:
        try:
            return self._prepare(store, paths, produced, series_uid, revision)
        except Exception:  # the series keeps its own result; the pair is missing, and the log says why
            log.exception("series %s: follow-up step failed; the series is reported without it", uid_hash(series_uid))
            return None

    def _prepare(self, store: Store, paths: Sequence[Path], produced: Produced, series_uid: str,
                 revision: int) -> Pending | None:
        name = uid_hash(series_uid)
        sources = headers_of(paths)
        if not sources:
            return None
        head = sources[0]
        key = rule.header_patient_key(self.cfg.secret, head)
        if key is None:
            log.info("series %s: no Patient ID, not linked to other scans", name)
            return None
        when = rule.acquired_at(head)
        if when is None:
            log.info("series %s: no acquisition, series or study date: not linked to other scans", name)
            return None
        with store.transaction() as s:
            own = s.execute(select(Series.id).where(Series.series_uid == series_uid)).scalar_one()
            baselines = [rule.Candidate(row.id, row.acquired_at) for row in s.execute(
                select(Scan).where(Scan.patient_key == key, Scan.role == rule.BASELINE, Scan.analysed.is_(True),
                                   Scan.series_id != own)).scalars()]
        link = rule.link(when, baselines, self.window)
        p = produced.prediction
        pending = Pending(key, when, link, revision, produced.analysed, produced.reason, study_uid=str(head.StudyInstanceUID),
                          series_uid=series_uid)
        if p is None:
            if link.role == rule.BASELINE:
                return None  # nothing to follow, nothing followed
            log.info("series %s: follow-up (%.1f h after its baseline) not analysed: %s; no outcome recorded",
                     name, link.hours or 0.0, produced.reason)
            return pending
        pending.hemorrhage, pending.volume_ml = p.hemorrhage_detected, p.volume_ml if p.hemorrhage_detected else 0.0
        pending.probability, pending.threshold, pending.model_version = p.probability, p.threshold, p.model.version
        if produced.key is not None:
            pending.key_path = self.spool.result_relpath(series_uid, f"keyslice-r{revision}.npz")
            self.spool.write_bytes(pending.key_path, _key_bytes(produced.key))
        if link.role == rule.BASELINE and not p.hemorrhage_detected:
            # no blood: no episode to follow (a later scan with blood is the baseline)
            pending.link = rule.Link("none", why="no hemorrhage: not a baseline")
        if link.role == rule.FOLLOWUP:
            self._report(store, pending, produced, sources, revision)
        log.info("series %s: %s", name, pending.link.why if pending.growth is None
                 else f"{pending.link.why}; {pending.growth.line(link.hours or 0.0)}")
        return pending

    def _report(self, store: Store, pending: Pending, produced: Produced, sources: list[Dataset], revision: int) -> None:
        from hexnode.report.followup import BaselinePrediction, Side, build_followup

        assert pending.link.baseline_id is not None and produced.prediction is not None
        with store.transaction() as s:
            base = s.get(Scan, pending.link.baseline_id)
            assert base is not None
            base_row = {c: getattr(base, c) for c in ("acquired_at", "volume_ml", "probability", "threshold",
                                                      "model_version", "seg_path", "key_path")}
        if not base_row["seg_path"]:
            raise RuntimeError("the baseline's SEG is not in the spool")
        base_seg = pydicom.dcmread(self.spool.path(base_row["seg_path"]))
        seg = next(ds for ds in produced.datasets if kind_of(ds) == "SEG")
        g = rule.growth(float(base_row["volume_ml"] or 0.0), float(pending.volume_ml or 0.0), self.cfg.definition)
        pred = BaselinePrediction(float(base_row["probability"]), float(base_row["threshold"]),
                                  float(base_row["probability"]) >= float(base_row["threshold"]),
                                  str(base_row["model_version"]))
        baseline = Side(base_row["acquired_at"], float(base_row["volume_ml"] or 0.0), base_seg,
                        referenced_images(base_seg), load_key(self.spool, base_row["key_path"]))
        followup = Side(pending.acquired_at, float(pending.volume_ml or 0.0), seg, sources, produced.key)
        hours = float(pending.link.hours or 0.0)
        objects = build_followup(sources, baseline, followup, g, hours, pred, produced.prediction.model,
                                 revision=revision)
        produced.datasets.extend(objects)
        pending.growth = g
        pending.extra_kinds = [kind_of(ds) for ds in objects]

    # --- inside the commit ------------------------------------------------------------------
    def record(self, s: Session, series_id: int, pending: Pending, rows: Sequence[tuple[str, str, str, str]]) -> Recorded:
        """Insert or update the scan (a revision re-analysed replaces its values) and its outcome;
        returns what the stroke team and the site are told about (notify.on_followup)."""
        seg_path = next((rel for kind, _sop, rel, _cls in rows if kind == "SEG"), None)
        scan = s.execute(select(Scan).where(Scan.series_id == series_id)).scalar_one_or_none()
        if scan is None:
            scan = Scan(series_id=series_id)
            s.add(scan)
        scan.patient_key, scan.revision, scan.acquired_at = pending.patient_key, pending.revision, pending.acquired_at
        scan.role, scan.baseline_id = pending.link.role, pending.link.baseline_id
        scan.analysed, scan.reason, scan.hemorrhage = pending.analysed, pending.reason, pending.hemorrhage
        scan.volume_ml, scan.probability, scan.threshold = pending.volume_ml, pending.probability, pending.threshold
        scan.model_version, scan.study_uid, scan.series_uid = pending.model_version, pending.study_uid, pending.series_uid
        scan.seg_path, scan.key_path = seg_path, pending.key_path
        s.flush()
        if pending.growth is not None and pending.link.baseline_id is not None:
            base = s.get(Scan, pending.link.baseline_id)
            assert base is not None
            record_outcome(s, base, scan, pending.growth, float(pending.link.hours or 0.0))
            s.flush()
            state = check_drift(s, base.model_version, drift_min_pairs=self.cfg.drift_min_pairs,
                                drift_max_ece=self.cfg.drift_max_ece)
            save_drift(s, state)
            recorded = Recorded(growth=pending.growth, hours=float(pending.link.hours or 0.0))
            if state.drift:
                log.warning("outcomes drift: model %s, %d pairs: %s", state.model_version, state.pairs,
                            "; ".join(state.drift_reasons))
                recorded.drift_version, recorded.drift_pairs = state.model_version, state.pairs
                recorded.drift_reasons = list(state.drift_reasons)
            if pending.growth.expansion:
                log.info("expansion observed on a follow-up (%s)", pending.growth.line(float(pending.link.hours or 0.0)))
            return recorded
        return Recorded()
