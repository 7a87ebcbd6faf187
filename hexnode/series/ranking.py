"""The study-level choice: of a study's accepted series, which one is analysed, and the note the
report carries about it (soft-tissue kernel first, then the thickness closest to the target)."""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass, field

from hexnode.series.info import SeriesInfo, as_number, as_text
from hexnode.series.rules import DEFAULT_SOFT_KERNEL


@dataclass(frozen=True)
class Choice:
    """The study-level outcome: which series is analysed and what becomes of the others."""

    chosen: SeriesInfo | None
    note: str  # for the report: which series, of how many candidates, and why
    rejected: dict[str, str] = field(default_factory=dict)  # series UID → reason


@dataclass(frozen=True)
class Ranking:
    target_thickness_mm: float = 5.0
    soft_kernel_regex: str = DEFAULT_SOFT_KERNEL

    def key(self, info: SeriesInfo) -> tuple[int, float, int, float, str]:
        kernel = as_text(info.value("ConvolutionKernel"))
        soft = 0 if kernel and re.search(self.soft_kernel_regex, kernel) else 1
        thick = as_number(info.value("SliceThickness"))
        dist = abs(thick - self.target_thickness_mm) if thick is not None else math.inf
        number = as_number(info.value("SeriesNumber"))
        return soft, dist, -info.instance_count, number if number is not None else math.inf, info.series_uid

    def choose(self, accepted: Sequence[SeriesInfo], rejected: dict[str, str]) -> Choice:
        """Pick one of the `accepted` series; `rejected` (series UID → reason) gains the others."""
        if not accepted:
            return Choice(chosen=None, note="no analysable head non-contrast CT series in the study",
                          rejected=rejected)
        ranked = sorted(accepted, key=self.key)
        chosen = ranked[0]
        desc = describe(chosen)
        if len(accepted) == 1:
            note = f"analysed series {desc}"
        else:
            why = []
            ranks = [self.key(i) for i in ranked]
            if ranks[0][0] < max(r[0] for r in ranks):
                why.append("soft-tissue kernel")
            if any(r[1] != ranks[0][1] for r in ranks[1:] if r[0] == ranks[0][0]):
                why.append(f"slice thickness closest to {self.target_thickness_mm:g} mm")
            if not why:
                why.append("most slices, then lowest series number")
            note = f"analysed series {desc}, chosen from {len(accepted)} candidate series: {', '.join(why)}"
        for other in ranked[1:]:
            rejected[other.series_uid] = f"another series of the study was analysed ({desc})"
        return Choice(chosen=chosen, note=note, rejected=rejected)


def describe(info: SeriesInfo) -> str:
    """Series number, description, kernel and thickness — no patient identifiers."""
    parts = []
    number = info.value("SeriesNumber")
    parts.append(f"#{number}" if number not in (None, "") else "without number")  # not "#?"
    desc = as_text(info.value("SeriesDescription"))
    if desc:
        parts.append(f"'{desc[:64]}'")
    kernel = as_text(info.value("ConvolutionKernel"))
    if kernel:
        parts.append(f"kernel {kernel[:32]}")
    thick = as_number(info.value("SliceThickness"))
    if thick is not None:
        parts.append(f"{thick:g} mm")
    parts.append(f"{info.value('SliceCount')} slices")
    return " ".join(parts[:1]) + " (" + ", ".join(parts[1:]) + ")"
