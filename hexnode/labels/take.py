"""The label step: each SEG receive filed (``corrections`` row ``received``) is taken as its
series' reference mask, recognised as hexnode's own, or kept aside with the reason.

Run by `hexnode route` after each series check (``take_received``); reading a SEG's pixels happens
outside any transaction (SQLite's write lock is taken at BEGIN).

* **hexnode's own SEG come back** (a PACS forwarding what hexnode sent): its SOP Instance UID is
  one of hexnode's results; or it is hexnode's automatic segment (algorithm name ``hexnode``)
  with a mask identical to hexnode's, re-identified by a PACS. State ``own``, the file deleted
  (hexnode's copy is in ``results/``). An identical mask from a manual or semi-automatic segment
  is a reader confirming hexnode's mask: a correction with Dice 1. hexnode's automatic segment
  with another mask is hexnode's SEG edited by a viewer that kept the segment's description: a
  correction. An automatic segment of another algorithm (another product's SEG routed along) is
  kept aside: a prediction, not a reference.
* **a correction**: the SEG names a series hexnode analysed and maps onto its slices
  (hexnode/labels/read.py). State ``stored``; its mask mapped onto the slices of hexnode's SEG is
  written to ``labels/<aa>/<sop>.npz`` (``mask`` bit-packed, ``shape``, ``uids``: the source SOP
  Instance UID of each slice); Dice and the volume change (reference − hexnode, ml, on hexnode's
  voxel size) against hexnode's newest SEG of the series are recorded. The newest stored
  correction of a series (by arrival) is its reference; older ones become ``superseded``
  (``superseded_by``), rows and files kept.
* **kept aside**: anything else (unknown or unanalysed series, another Frame of Reference, frames
  that do not map, no single hemorrhage segment, unreadable): state ``aside`` with the reason, the
  file moved to ``corrections/aside/``.

No patient value reaches a log or a label file: series are named by uid_hash, the npz holds
pixels and UIDs only.
"""

from __future__ import annotations

import io
import logging
import os
from dataclasses import dataclass, field
from typing import Any

import numpy as np
from sqlalchemy import select

from hexnode.labels.read import (
    NotTaken,
    Slices,
    check_structure,
    choose_segment,
    dice,
    mask_on,
    open_seg,
    own_mask,
    own_slices,
    referenced_series,
)
from hexnode.store.db import Correction, Event, Instance, Result, Series, Store, utcnow
from hexnode.store.spool import Spool, label_relpath, uid_hash

log = logging.getLogger(__name__)

ALGORITHM_NAME = "hexnode"  # the algorithm name of hexnode's own segment (hexnode/report/common.py)
BATCH = 20  # corrections taken per call (the rest at the next)


@dataclass
class Verdict:
    state: str  # stored | aside | own
    reason: str = ""
    series_id: int | None = None
    source_series_uid: str | None = None
    fields: dict[str, Any] = field(default_factory=dict)


def take_received(store: Store, spool: Spool, *, limit: int = BATCH) -> list[tuple[int, str]]:
    """Take up to `limit` received corrections, oldest first; returns (id, state) of each."""
    with store.transaction() as s:
        ids = list(s.execute(select(Correction.id).where(Correction.state == "received")
                             .order_by(Correction.received_at, Correction.id).limit(limit)).scalars())
    return [(cid, take_one(store, spool, cid)) for cid in ids]


def take_one(store: Store, spool: Spool, correction_id: int) -> str:
    with store.transaction() as s:
        row = s.get(Correction, correction_id)
        if row is None or row.state != "received":
            return row.state if row is not None else "gone"
        sop_uid, relpath = row.sop_instance_uid, row.path
        own_result = s.execute(select(Result.id).where(Result.sop_instance_uid == sop_uid)).scalar_one_or_none()
    if own_result is not None:
        verdict = Verdict("own", "hexnode's own SEG (same SOP Instance UID as one it sent)")
    else:
        try:
            verdict = _check(store, spool, relpath)
        except NotTaken as exc:
            verdict = Verdict("aside", str(exc))
        except Exception as exc:  # MemoryError, a reader's surprise: kept aside, never a dead route tick
            verdict = Verdict("aside", f"could not be read as a segmentation ({type(exc).__name__})")
        if verdict.state == "aside" and not verdict.reason:
            verdict.reason = "not taken"
    return _record(store, spool, correction_id, verdict)


def _check(store: Store, spool: Spool, relpath: str) -> Verdict:
    path = spool.path(relpath)
    if not path.is_file():
        raise NotTaken("its file is missing from the spool")
    seg = open_seg(path)
    check_structure(seg)
    named = referenced_series(seg)
    if not named:
        raise NotTaken("it names no source series (Referenced Series Sequence)")
    with store.transaction() as s:
        known = list(s.execute(select(Series).where(Series.series_uid.in_(named))).scalars())
        if not known:
            return Verdict("aside", f"it references series {', '.join(uid_hash(u) for u in named[:3])}, "
                                    "which hexnode never received", source_series_uid=named[0])
        analysed = []
        for series in known:
            own = s.execute(select(Result).where(Result.series_id == series.id, Result.kind == "SEG")
                            .order_by(Result.id.desc())).scalars().first()
            if own is not None:
                analysed.append((series, own))
        if not analysed:
            series = known[0]
            why = f" ({series.reason})" if series.reason else ""
            return Verdict("aside", f"series {uid_hash(series.series_uid)} has no hexnode segmentation: it was "
                                    f"{series.state}{why}", series_id=series.id, source_series_uid=series.series_uid)
        if len(analysed) > 1:
            raise NotTaken(f"it references {len(analysed)} analysed series; which one is not guessed")
        series, own = analysed[0]
        series_id, series_uid, own_path, own_id = series.id, series.series_uid, own.path, own.id
        positions = {uid: tuple(p) for uid, p in s.execute(
            select(Instance.sop_instance_uid, Instance.position).where(Instance.series_id == series_id)).all()
            if p is not None and len(p) == 3}
    where = Verdict("aside", series_id=series_id, source_series_uid=series_uid)
    try:
        own_seg = open_seg(spool.path(own_path))
        slices = own_slices(own_seg, positions)  # type: ignore[arg-type]
        mine = own_mask(own_seg, slices)
        segment = choose_segment(seg)
        reference = mask_on(seg, segment.number, slices)
    except NotTaken as exc:
        where.reason = str(exc)
        return where
    model_version = str(own_seg.get("DeviceSerialNumber", "") or "")  # hexnode's SEG: the model version
    if segment.automatic_by == ALGORITHM_NAME and np.array_equal(reference, mine):
        return Verdict("own", "hexnode's own segmentation under another SOP Instance UID (identical mask)",
                       series_id=series_id, source_series_uid=series_uid)
    if segment.automatic_by and segment.automatic_by != ALGORITHM_NAME:
        # another product's SEG the PACS routed along: a prediction, not a reader's reference
        where.reason = (f"an automatic segmentation by another algorithm ({segment.automatic_by[:64]}), "
                        "not a reader's correction")
        return where
    d = dice(reference, mine)
    ref_ml, own_ml = float(reference.sum()) * slices.voxel_ml, float(mine.sum()) * slices.voxel_ml
    return Verdict("stored", series_id=series_id, source_series_uid=series_uid, fields={
        "segment_number": segment.number, "segment_label": segment.label, "result_id": own_id,
        "model_version": model_version or None, "frames": int(reference.any(axis=(1, 2)).sum()),
        "dice": round(d, 4), "hexnode_ml": round(own_ml, 3), "reference_ml": round(ref_ml, 3),
        "volume_change_ml": round(ref_ml - own_ml, 3), "_mask": reference, "_slices": slices})


def _write_mask(spool: Spool, sop_uid: str, mask: np.ndarray, slices: Slices) -> str:
    rel = label_relpath(sop_uid)
    buf = io.BytesIO()
    np.savez_compressed(buf, mask=np.packbits(mask.astype(bool), axis=None), shape=np.asarray(mask.shape),
                        uids=np.asarray(slices.uids), voxel_ml=np.asarray(slices.voxel_ml))
    spool.write_bytes(rel, buf.getvalue())
    return rel


def read_mask(spool: Spool, relpath: str) -> tuple[np.ndarray, list[str]]:
    """A stored correction's mask (slice, row, column) and the source SOP Instance UID of each slice."""
    with np.load(spool.path(relpath)) as z:
        shape = tuple(int(v) for v in z["shape"])
        mask = np.unpackbits(z["mask"], count=int(np.prod(shape))).reshape(shape).astype(np.uint8)
        return mask, [str(u) for u in z["uids"]]


def _record(store: Store, spool: Spool, correction_id: int, v: Verdict) -> str:
    mask = v.fields.pop("_mask", None)
    slices = v.fields.pop("_slices", None)
    with store.transaction() as s:
        row = s.get(Correction, correction_id)
        if row is None or row.state != "received":
            return row.state if row is not None else "gone"
        row.checked_at = utcnow()
        row.series_id, row.source_series_uid = v.series_id, v.source_series_uid
        name = uid_hash(v.source_series_uid) if v.source_series_uid else "?"
        detail = v.reason
        if v.state == "stored":
            assert mask is not None and slices is not None
            row.mask_path = _write_mask(spool, row.sop_instance_uid, mask, slices)
            for k, value in v.fields.items():
                setattr(row, k, value)
            row.state = "stored"
            _supersede(s, row)
            detail = (f"reference mask for series {name} from {row.calling_ae or 'unknown AE'}: Dice "
                      f"{row.dice:.3f}, {row.reference_ml:.2f} ml against hexnode's {row.hexnode_ml:.2f} ml")
            if row.state == "superseded":
                detail += " (a later correction of the series arrived first)"
            log.info("correction %d: %s", row.id, detail)
        elif v.state == "own":
            spool.path(row.path).unlink(missing_ok=True)
            row.state, row.reason = "own", v.reason
            log.info("correction %d: not a correction: %s", row.id, v.reason)
        else:
            row.path = _set_aside(spool, row.path)
            row.state, row.reason = "aside", v.reason
            log.warning("SEG %s from %s kept aside: %s", uid_hash(row.sop_instance_uid),
                        row.calling_ae or "unknown AE", v.reason)
        s.add(Event(entity="correction", entity_id=row.id, from_state="received", to_state=row.state, detail=detail))
        return row.state


def _supersede(s: Any, row: Correction) -> None:
    """The newest stored correction of the series (by arrival) is its reference; the others are superseded."""
    stored = list(s.execute(select(Correction).where(Correction.series_id == row.series_id,
                                                     Correction.state == "stored")).scalars())
    if row not in stored:
        stored.append(row)
    newest = max(stored, key=lambda c: (c.received_at, c.id))
    for c in stored:
        if c is not newest:
            c.state, c.superseded_by = "superseded", newest.id
            s.add(Event(entity="correction", entity_id=c.id, from_state="stored", to_state="superseded",
                        detail=f"superseded by correction {newest.id}"))


def _set_aside(spool: Spool, relpath: str) -> str:
    name = os.path.basename(relpath)
    dest_rel = f"corrections/aside/{name}"
    dest = spool.path(dest_rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.replace(spool.path(relpath), dest)
    except FileNotFoundError:
        return relpath
    return dest_rel
