"""When a series is complete (route's first step each tick), and what arrived after a decision.

A series is *complete* `stable_seconds` after its last instance, or sooner when it is provably
whole: every instance carries the same Images in Acquisition (0020,1002) and that many have
arrived; or it is one Enhanced CT multi-frame object; or its positions are contiguous, evenly
spaced and cover a whole head (≥ `WHOLE_HEAD_MM`) and nothing has arrived for half the stable time. Instance
counts alone never decide (PACS resend and send in any order).

Receive only records and counts; `settle_arrivals` rejects a series that is not CT at once, and
re-opens a series that got instances after it was decided (revision + 1), which then comes through
completion and the study decision (hexnode.route.decide) again to a new job and a corrected result set.
"""

from __future__ import annotations

import logging
from datetime import datetime, timedelta

import numpy as np
from sqlalchemy import select
from sqlalchemy.orm import Session

from hexnode.config import Config
from hexnode.sop import is_ct, sop_class_name
from hexnode.store.db import Instance, Series
from hexnode.store.queue import reopen_series, series_instances, transition
from hexnode.store.spool import uid_hash

log = logging.getLogger(__name__)

# Skull base to vertex is 120-160 mm; a contiguous stack this long is a whole head.
WHOLE_HEAD_MM = 150.0
# Even a provably whole series waits this long after its last instance (a burst may not be over;
# an instance after it re-opens the series and a corrected result follows). A sender's instances
# follow each other within milliseconds: 0.25 s is still a hundred such gaps.
MIN_QUIET_SECONDS = 0.25
# A series whose own headers say it is incomplete (Images in Acquisition not reached) waits this
# many stable periods before it is completed anyway: a sender or node that died mid-series resends
# within that time (Orthanc's routing retries after 1, 2, 4, 8 s), and completing early would send
# a "not analysed"/partial result first and a corrected one later (two result sets in the PACS).
INCOMPLETE_WAIT_FACTOR = 6.0


def whole_reason(instances: list[Instance]) -> str | None:
    """Why the series is provably whole already, or None."""
    if not instances:
        return None
    if len(instances) == 1 and (instances[0].number_of_frames or 1) > 1:
        return "one multi-frame object"
    expected = {i.images_in_acquisition for i in instances}
    if len(expected) == 1:
        n = expected.pop()
        if n and len(instances) >= n:
            return f"Images in Acquisition ({n}) reached"
    return _coverage_reason(instances)


def _coverage_reason(instances: list[Instance]) -> str | None:
    if len(instances) < 3:
        return None
    orients = {tuple(round(float(v), 4) for v in (i.orientation or ())) for i in instances}
    if len(orients) != 1:
        return None
    o = np.array(orients.pop(), dtype=np.float64)
    if o.shape != (6,) or any(i.position is None or len(i.position) != 3 for i in instances):
        return None
    normal = np.cross(o[:3], o[3:])
    d = np.sort(np.array([i.position for i in instances], dtype=np.float64) @ normal)
    steps = np.diff(d)
    if steps.min() <= 0.01:
        return None
    step = float(np.median(steps))
    if steps.max() > 1.1 * step or steps.min() < 0.9 * step:
        return None
    extent = float(d[-1] - d[0])
    if extent >= WHOLE_HEAD_MM:
        return f"contiguous slices cover {extent:.0f} mm"
    return None


def announced_missing(instances: list[Instance]) -> bool:
    """Fewer instances than the Images in Acquisition (0020,1002) they all announce."""
    expected = {i.images_in_acquisition for i in instances}
    if len(expected) != 1:
        return False
    n = expected.pop()
    return bool(n) and len(instances) < (n or 0)


class CountWatch:
    """When each received series' instance count last changed, as this process has seen it.

    `last_instance_at` is the C-STORE time of the newest *indexed* instance; when the indexer lags
    behind a fast sender (thousands of instances in seconds), rows keep appearing with old
    timestamps, and the stable time alone would complete the series mid-indexing. A series is
    therefore quiet only when its count has also not changed for the same time. Kept in memory:
    after a restart every series waits one more quiet period, which errs on the safe side.
    """

    def __init__(self) -> None:
        self._seen: dict[int, tuple[int, datetime]] = {}

    def changed_at(self, series_id: int, count: int, now: datetime) -> datetime:
        last = self._seen.get(series_id)
        if last is None or last[0] != count:
            self._seen[series_id] = (count, now)
            return now
        return last[1]

    def keep_only(self, series_ids: set[int]) -> None:
        for sid in set(self._seen) - series_ids:
            del self._seen[sid]


def settle_arrivals(s: Session) -> tuple[list[str], list[str]]:
    """Decide what receive only recorded: (re-opened, rejected) series UIDs.

    A series whose SOP class is not a CT image is rejected at once with the reason (it never waits
    for the stable time, and is never a candidate). A CT series that has more instances than the
    ones it was decided on (`decided_count`) got a late instance: it re-opens as a new revision
    and comes through completion and selection again."""
    reopened, rejected = [], []
    fresh = s.execute(select(Series).where(Series.state == "received", Series.decided_count.is_(None))).scalars()
    for series in fresh:
        if not is_ct(series.sop_class_uid):
            series.reason = f"{sop_class_name(series.sop_class_uid or '')} is not CT: not analysed"
            transition(s, series, "rejected", series.reason)
            rejected.append(series.series_uid)
    late = s.execute(select(Series).where(Series.state != "received", Series.decided_count.is_not(None),
                                          Series.instance_count > Series.decided_count)).scalars()
    for series in late:
        if not is_ct(series.sop_class_uid):
            series.decided_count = series.instance_count  # never a candidate: nothing to re-decide
            continue
        was = series.state
        reopen_series(s, series, f"new instance after the series was {was}")
        log.info("series %s: re-opened as revision %d (%d instances after it was %s)", uid_hash(series.series_uid),
                 series.revision, series.instance_count - (series.decided_count or 0), was)
        reopened.append(series.series_uid)
    return reopened, rejected


def complete_ready(s: Session, cfg: Config, now: datetime, watch: CountWatch | None = None) -> list[str]:
    """received → complete for every series that is stable or provably whole."""
    done = []
    stable_before = now - timedelta(seconds=cfg.series.stable_seconds)
    quiet_before = now - timedelta(seconds=min(MIN_QUIET_SECONDS, cfg.series.stable_seconds))
    received = s.execute(select(Series).where(Series.state == "received")).scalars().all()
    incomplete_before = now - timedelta(seconds=INCOMPLETE_WAIT_FACTOR * cfg.series.stable_seconds)
    coverage_before = now - timedelta(seconds=max(MIN_QUIET_SECONDS, cfg.series.stable_seconds / 2))
    if watch is not None:
        watch.keep_only({x.id for x in received})
    aborted_before = now - timedelta(seconds=cfg.series.aborted_wait_seconds)
    for series in received:
        last = series.last_instance_at
        if watch is not None:
            last = max(last, watch.changed_at(series.id, series.instance_count, now))
        if series.aborted_at is not None:
            # The sender stopped part-way: wait for the rest (a PACS resends what failed) unless
            # the series' own headers prove it whole; the worker then analyses it only if it is
            # whole by positions and coverage.
            why = whole_reason(series_instances(s, series.id)) or ""
            if why.startswith("contiguous") or not why:
                if last > aborted_before:
                    continue
                why = (f"no instance for {cfg.series.aborted_wait_seconds:g} s after the sender stopped part-way")
            elif last > quiet_before:  # whole by its own count, but a burst may not be over
                continue
        elif last <= stable_before:
            if last > incomplete_before and announced_missing(series_instances(s, series.id)):
                continue
            why = f"no instance for {cfg.series.stable_seconds:g} s"
        elif last <= quiet_before or (watch is not None and series.last_instance_at <= quiet_before):
            why = whole_reason(series_instances(s, series.id)) or ""
            if not why:
                continue
            # Coverage is a weaker proof than a count: a scanner that sends slice by slice as it
            # reconstructs may still be going. Half the stable time still saves most of the wait.
            if why.startswith("contiguous") and last > coverage_before:
                continue
        else:
            continue
        transition(s, series, "complete", f"complete: {why} ({series.instance_count} instances)")
        log.info("series %s complete: %s", uid_hash(series.series_uid), why)
        done.append(series.series_uid)
    return done
