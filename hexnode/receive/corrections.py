"""A received DICOM SEG is filed as a correction, not indexed as a series.

A reader who edits hexnode's SEG in a viewer sends the corrected SEG back to hexnode's AE (or the
PACS routes it). Receive stores it like any instance and answers Success; the indexer then files
it here instead of recording a series for it: the file moves from ``instances/`` to
``corrections/<aa>/<sop>.dcm`` and a ``corrections`` row (state ``received``) records who sent it
(calling AE, peer address) and when. Receive decides nothing about it: whether it maps onto an
analysed series, is hexnode's own SEG come back, or is kept aside is the label step's
(hexnode/labels/take.py), which reads pixels; here only the header the indexer already read is used.

The move is a hard link, then the row, then the ``instances/`` name is removed: a crash in between
leaves the file under ``instances/`` for the indexer's recovery, which files it again (a row that
exists already is kept; the link that exists already is reused), never a row without a file.
"""

from __future__ import annotations

import logging
import os
import shutil
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.store.db import Correction, Event
from hexnode.store.spool import Spool, correction_relpath, uid_hash

log = logging.getLogger(__name__)

@dataclass(frozen=True)
class Filed:
    correction_id: int
    created: bool  # False: this SOP Instance UID was filed before (a re-send)
    relpath: str


def link_into_corrections(spool: Spool, relpath: str, sop_uid: str) -> str:
    """Hard-link the spooled file at `relpath` to its corrections/ name; returns that name."""
    dest_rel = correction_relpath(sop_uid)
    dest = spool.path(dest_rel)
    dest.parent.mkdir(parents=True, exist_ok=True)
    try:
        os.link(spool.path(relpath), dest)
    except FileExistsError:
        pass  # filed before a crash, or a re-send of the same object: the first copy is kept
    except OSError:  # a file system without hard links: a copy, renamed into place whole
        tmp = dest.with_name(dest.name + ".filing")
        shutil.copyfile(spool.path(relpath), tmp)
        os.replace(tmp, dest)
    return dest_rel


def file_correction(s: Session, spool: Spool, *, relpath: str, sop_uid: str, sop_class_uid: str,
                    calling_ae: str, peer: str, received_at: datetime) -> Filed:
    """Record the SEG spooled at `relpath` as a received correction (in the caller's transaction).
    The caller removes `relpath` after the commit."""
    dest_rel = link_into_corrections(spool, relpath, sop_uid)
    row = s.execute(select(Correction).where(Correction.sop_instance_uid == sop_uid)).scalar_one_or_none()
    if row is not None:
        return Filed(row.id, False, row.path)
    row = Correction(sop_instance_uid=sop_uid, sop_class_uid=sop_class_uid, path=dest_rel,
                     calling_ae=calling_ae[:16], peer=peer[:64], received_at=received_at, state="received")
    s.add(row)
    s.flush()
    s.add(Event(entity="correction", entity_id=row.id, from_state=None, to_state="received",
                detail=f"SEG {uid_hash(sop_uid)} from {calling_ae or 'unknown AE'} ({peer or 'unknown address'})"))
    log.info("SEG %s from %s filed as a correction", uid_hash(sop_uid), calling_ae or "unknown AE")
    return Filed(row.id, True, dest_rel)
