"""The study as the unit of the answer (docs/architecture.md §4 "Not analysed"): the rules.

What goes back to the PACS is decided per study: the chosen series' result set (or its own
"not analysed" report), or ONE study-level "not analysed" SR + SC listing what arrived and why.
Series that are never candidates — localizers, dose reports / screen captures, objects that are not
CT images — are recorded with their reason and never cause a report, nor re-open an answered study.
The database side (jobs, the `studies` row) is hexnode.route.study and hexnode.store.answers.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

from hexnode.series.select import Decision
from hexnode.sop import CT_SOP_CLASSES

# Built-in rules whose failure means the series was never meant to be analysed.
NEVER_CANDIDATE_RULES = frozenset({"scout", "dose-report", "modality", "sop-class"})
# The headline of a study-level report when several series arrived and none fits.
NO_ANALYSABLE = "no axial soft-tissue head non-contrast CT in this study"


class Indexed(Protocol):
    """What receive recorded of a series that this rule reads (a `series` row satisfies it)."""

    @property
    def modality(self) -> str | None: ...

    @property
    def sop_class_uid(self) -> str | None: ...


def never_candidate(series: Indexed, decision: Decision | None) -> bool:
    """A localizer, dose report, or anything that is not a CT image: never worth a report."""
    if (series.modality or "").upper() != "CT" or (series.sop_class_uid or "") not in CT_SOP_CLASSES:
        return True
    return decision is not None and any(r in NEVER_CANDIDATE_RULES for r in decision.rules)


@dataclass(frozen=True)
class Answer:
    """What the PACS holds as hexnode's answer for a study (None fields: nothing yet)."""

    kind: str | None = None  # "result" | "not analysed"
    sr_uid: str | None = None
    sr_series_uid: str | None = None
