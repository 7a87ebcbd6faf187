"""The selector: a series accepted or rejected by the rules (with every reason), and one series
of a study chosen for analysis.

The rule data is hexnode.series.rules (also how to write site rules in `[series.selection]`), the
rule engine hexnode.series.conditions, what is known about a series hexnode.series.info and the
study-level ranking hexnode.series.ranking.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from hexnode.series.conditions import Rule, SelectionConfigError, evaluate, parse_rules
from hexnode.series.info import SeriesInfo, as_text
from hexnode.series.ranking import Choice, Ranking
from hexnode.series.rules import (
    BUILTIN_EXCLUDE,
    BUILTIN_REQUIRE,
    DEFAULT_SOFT_KERNEL,
    HEAD_IN_HEADER,
    HEAD_NOT_IN_HEADER,
)

__all__ = ["Choice", "Decision", "SelectionConfigError", "Selector", "SeriesInfo"]


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reasons: tuple[str, ...] = ()  # every failed rule, headline first
    rules: tuple[str, ...] = ()  # the names of those rules, in the same order

    @property
    def reason(self) -> str:
        return self.reasons[0] if self.reasons else ""


_SETTINGS = {"builtin", "disable", "require", "exclude", "target_thickness_mm", "soft_kernel_regex"}


@dataclass(frozen=True)
class Selector:
    require: tuple[Rule, ...]
    exclude: tuple[Rule, ...]
    target_thickness_mm: float = 5.0
    soft_kernel_regex: str = DEFAULT_SOFT_KERNEL

    @classmethod
    def from_config(cls, selection: Mapping[str, Any] | None) -> Selector:
        """Build from `cfg.series.selection` (the `[series.selection]` table); empty → built-ins."""
        sel = dict(selection or {})
        unknown = set(sel) - _SETTINGS
        if unknown:
            raise SelectionConfigError(f"series.selection: unknown keys {', '.join(sorted(unknown))} "
                                       f"(known: {', '.join(sorted(_SETTINGS))})")
        builtin = bool(sel.get("builtin", True))
        disable = set(sel.get("disable", []))
        names = {r["name"] for r in BUILTIN_REQUIRE + BUILTIN_EXCLUDE}
        if disable - names:
            raise SelectionConfigError(f"series.selection.disable: unknown rules {', '.join(sorted(disable - names))}")
        req = [r for r in BUILTIN_REQUIRE if r["name"] not in disable] if builtin else []
        exc = [r for r in BUILTIN_EXCLUDE if r["name"] not in disable] if builtin else []
        soft = str(sel.get("soft_kernel_regex", DEFAULT_SOFT_KERNEL))
        try:
            re.compile(soft)
        except re.error as e:
            raise SelectionConfigError(f"series.selection.soft_kernel_regex: {e}") from None
        return cls(require=tuple(parse_rules(req + list(sel.get("require", [])), "require")),
                   exclude=tuple(parse_rules(exc + list(sel.get("exclude", [])), "exclude")),
                   target_thickness_mm=float(sel.get("target_thickness_mm", 5.0)),
                   soft_kernel_regex=soft)

    def decide(self, info: SeriesInfo) -> Decision:
        # Exclusions first: "localizer/scout image" says more than "1 slices, outside 10-2000".
        failed = [rule for rule in self.exclude if evaluate(rule.cond, info)]
        failed += [rule for rule in self.require if not evaluate(rule.cond, info)]
        return Decision(accepted=not failed, reasons=tuple(self._reason(r, info) for r in failed),
                        rules=tuple(r.name for r in failed))

    @staticmethod
    def _reason(rule: Rule, info: SeriesInfo) -> str:
        value = as_text(info.value(rule.value_attr)) if rule.value_attr else ""
        return rule.reason.replace("{value}", value or "none")

    def choose(self, candidates: Sequence[SeriesInfo]) -> Choice:
        """Decide every series of one study and pick one to analyse (soft kernel, then ~5 mm)."""
        rejected: dict[str, str] = {}
        accepted = []
        for info in candidates:
            d = self.decide(info)
            if d.accepted:
                accepted.append(info)
            else:
                rejected[info.series_uid] = d.reason
        choice = Ranking(self.target_thickness_mm, self.soft_kernel_regex).choose(accepted, rejected)
        if choice.chosen is not None and not head_in_header(choice.chosen):
            # the report says so, and the worker's image check is what confirms the head
            choice = replace(choice, note=f"{choice.note}; {HEAD_NOT_IN_HEADER}")
        return choice


def head_in_header(info: SeriesInfo) -> bool:
    """Do the headers name the head (body part, a description or the protocol)?"""
    return evaluate(HEAD_IN_HEADER, info)
