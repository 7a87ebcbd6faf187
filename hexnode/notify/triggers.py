"""When a notification is due, and what its finding says.

`enqueue` is the one entry point (the worker, the sender and the follow-up feature call it inside
their own transaction, so the alert exists exactly when the result it reports does). The
helpers below turn a worker outcome or a failed delivery into findings.
"""

from __future__ import annotations

from dataclasses import replace
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

from pydicom import dcmread
from pydicom.dataset import Dataset
from sqlalchemy.orm import Session

from hexnode.config import Config
from hexnode.notify import state
from hexnode.notify.message import Finding
from hexnode.store.db import Series
from hexnode.store.spool import uid_hash

if TYPE_CHECKING:
    from hexnode.pipeline.followup import Recorded
    from hexnode.pipeline.run import Produced


class Trigger(StrEnum):
    HIGH_RISK = "high_risk"  # the study's result is High risk (a later Low / not-analysed result corrects it)
    EXPANSION_OBSERVED = "expansion_observed"  # a follow-up scan shows growth (the follow-up feature)
    NOT_ANALYSED = "not_analysed"  # incomplete coverage, or the sender stopped part-way: no result will come
    DELIVERY_FAILED = "delivery_failed"  # an outbox row reached `failed` (for IT)
    DRIFT_WARNING = "drift_warning"  # the model's inputs or outputs drifted (the follow-up feature)


# A later result for the study corrects what these said; IT warnings and drift stand alone.
CORRECTABLE = frozenset({Trigger.HIGH_RISK, Trigger.EXPANSION_OBSERVED, Trigger.NOT_ANALYSED})


def enqueue(s: Session, cfg: Config, *, trigger: Trigger | str, series_id: int | None, revision: int,
            finding: Finding, subject: str | None = None, study_id: int | None = None,
            retraction: bool = False) -> list[int]:
    """Queue `finding` for every `[[notifications]]` target listening to `trigger`; returns the row ids.

    Idempotent per (trigger, subject, revision, target): calling it again (a retried job, a
    restarted process) returns the rows already there. `subject` defaults to the series' UID
    (give one for a finding without a series, e.g. a drift warning: "model <version> <day>").
    A row for a study that already had a delivered notification of the same trigger and target
    is a correction of it. `retraction`: `finding` is not an alarm (a revised Low result); it is
    queued only where it corrects an alarm that was delivered. No patient identifier belongs in
    `finding`: the tests check every message body for them."""
    trigger = Trigger(trigger)
    calling_ae = ""
    if series_id is not None:
        series = s.get(Series, series_id)
        if series is None:
            raise ValueError(f"series {series_id} does not exist")
        subject = subject or series.series_uid
        study_id = study_id if study_id is not None else series.study_id
        calling_ae = series.calling_ae
    if not subject:
        raise ValueError("a notification without a series needs a subject")
    ids = []
    for target in cfg.notifications:
        if trigger.value not in target.triggers:
            continue
        if target.for_calling_aes and calling_ae not in target.for_calling_aes:
            continue
        row = state.add(s, target, trigger=trigger.value, subject=subject, revision=revision, finding=finding,
                        series_id=series_id, study_id=study_id, retraction=retraction,
                        corrects=trigger in CORRECTABLE)
        if row is not None:
            ids.append(row.id)
    return ids


def _about(ds: Dataset | None, series: Series) -> Finding:
    """A finding's study and series fields (its headline is set by the caller): the accession
    number and Study Instance UID from a result object or a source header, the series as its hash."""
    acc = str(ds.get("AccessionNumber", "") or "") if ds is not None else ""
    study = str(ds.get("StudyInstanceUID", "") or "") if ds is not None else ""
    return Finding(headline="", accession_number=acc, study_uid=study, series=uid_hash(series.series_uid),
                   calling_ae=series.calling_ae)


def on_result(s: Session, cfg: Config, *, series_id: int, revision: int, produced: Produced,
              answers: bool) -> list[int]:
    """The worker stored a series' result (same transaction): High risk alarms, corrections, not analysed.

    `answers`: this result is the study's answer (a retraction is only sent for the study's answer)."""
    if not cfg.notifications:
        return []
    from hexnode.pipeline.run import kind_of

    series = s.get(Series, series_id)
    assert series is not None
    base = _about(next((ds for ds in produced.datasets if kind_of(ds) == "SR"), None), series)
    p = produced.prediction
    ids: list[int] = []
    if p is not None:
        numbers = replace(base, volume_ml=round(p.volume_ml, 2), probability=round(p.probability, 4),
                          threshold=round(p.threshold, 4), model=f"{p.model.name} {p.model.version}")
        if p.high_risk:
            f = replace(numbers, headline="High risk of hematoma expansion", risk="High", positive=True)
            return enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=revision, finding=f)
        if answers:
            what = "Low risk" if p.hemorrhage_detected else "no hemorrhage detected"
            f = replace(numbers, headline=f"No longer High risk: the revised result is {what}",
                        risk="Low" if p.hemorrhage_detected else None)
            ids += enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=revision, finding=f,
                           retraction=True)
        return ids
    if answers:
        f = replace(base, headline="No longer High risk: the revised study could not be analysed",
                    reason=produced.reason)
        ids += enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=revision, finding=f,
                       retraction=True)
    if produced.cause in ("incomplete_coverage", "sender_stopped"):
        headline = ("Not analysed: the series does not cover the brain" if produced.cause == "incomplete_coverage"
                    else "Not analysed: the sender stopped part-way")
        f = replace(base, headline=headline, reason=produced.reason)
        ids += enqueue(s, cfg, trigger=Trigger.NOT_ANALYSED, series_id=series_id, revision=revision, finding=f)
    return ids


def on_delivery_failed(s: Session, cfg: Config, *, series_id: int, destination: str, kind: str, outbox_id: int,
                       error: str, result_file: Path | None = None) -> list[int]:
    """An outbox row reached `failed` (the sender, same transaction): one IT warning per series
    revision and destination, however many of its objects failed. `result_file`: the object in the
    spool, for its accession number."""
    if not cfg.notifications:
        return []
    header = None
    if result_file is not None:
        try:
            header = dcmread(result_file, stop_before_pixels=True, specific_tags=["AccessionNumber", "StudyInstanceUID"])
        except Exception:  # the warning goes out without the accession number
            header = None
    series = s.get(Series, series_id)
    assert series is not None
    f = replace(_about(header, series), headline=f"Result not delivered to {destination}", reason=error[:500],
                facts={"Destination": destination, "Object": kind, "Outbox id": str(outbox_id),
                       "Action": f"fix the destination, then `hexnode resend {outbox_id}` (or --all-failed)"})
    # keyed per destination too
    return enqueue(s, cfg, trigger=Trigger.DELIVERY_FAILED, series_id=series_id, revision=series.revision,
                   finding=f, subject=f"{series.series_uid}>{destination}")


def on_followup(s: Session, cfg: Config, *, series_id: int, revision: int, produced: Produced,
                recorded: Recorded) -> list[int]:
    """The worker recorded a follow-up's outcome (same transaction): expansion observed, for the
    stroke team (a revised follow-up without expansion corrects a delivered alarm), and a drift
    warning for the site, once per model version and day."""
    if not cfg.notifications or recorded.growth is None:
        return []
    from hexnode.pipeline.run import kind_of

    series = s.get(Series, series_id)
    assert series is not None
    g = recorded.growth
    base = _about(next((ds for ds in produced.datasets if kind_of(ds) == "SR"), None), series)
    facts = {"Growth": g.line(recorded.hours), "Baseline volume": f"{g.baseline_ml:.1f} ml",
             "Follow-up volume": f"{g.followup_ml:.1f} ml", "Definition": g.definition}
    f = replace(base, volume_ml=round(g.followup_ml, 2), facts=facts)
    ids: list[int] = []
    if g.expansion:
        ids += enqueue(s, cfg, trigger=Trigger.EXPANSION_OBSERVED, series_id=series_id, revision=revision,
                       finding=replace(f, headline="Hematoma expansion observed on the follow-up scan", positive=True))
    else:
        ids += enqueue(s, cfg, trigger=Trigger.EXPANSION_OBSERVED, series_id=series_id, revision=revision,
                       finding=replace(f, headline=f"No longer expansion: the revised follow-up shows {g.category}"),
                       retraction=True)
    if recorded.drift_version is not None:
        day = produced_day()
        drift = Finding(headline=f"Model drift on this site's outcomes: {recorded.drift_version}",
                        model=recorded.drift_version, reason="; ".join(recorded.drift_reasons),
                        facts={"Outcome pairs": str(recorded.drift_pairs),
                               "Action": "review `hexnode outcomes`; `hexnode recalibrate` when enough pairs"})
        ids += enqueue(s, cfg, trigger=Trigger.DRIFT_WARNING, series_id=None, revision=0, finding=drift,
                       subject=f"drift {recorded.drift_version} {day}")
    return ids


def produced_day() -> str:
    """UTC date: one drift warning per model version and day, however many pairs confirm it."""
    from datetime import UTC, datetime

    return datetime.now(UTC).strftime("%Y-%m-%d")
