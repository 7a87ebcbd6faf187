"""The rule engine: a rule's condition checked when the configuration is read, and evaluated
against one series (the condition language is described in hexnode.series.rules)."""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from hexnode.series.info import SeriesInfo, as_number, as_text


class SelectionConfigError(ValueError):
    """A selection rule in hexnode.toml is malformed; the message says which and why."""



_LEAF_OPS = ("equals", "in", "regex", "contains", "range", "min", "max", "present")


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    cond: Mapping[str, Any]
    value_attr: str | None = None


def check_cond(cond: Any, where: str) -> None:
    if not isinstance(cond, Mapping):
        raise SelectionConfigError(f"{where}: a condition must be a table")
    combos = [k for k in ("all", "any", "not") if k in cond]
    if len(combos) > 1:
        raise SelectionConfigError(f"{where}: use one of all/any/not per table")
    if combos:
        inner = cond[combos[0]]
        if combos[0] == "not":
            check_cond(inner, f"{where}.not")
        else:
            if not isinstance(inner, list) or not inner:
                raise SelectionConfigError(f"{where}.{combos[0]}: a non-empty list of conditions")
            for i, c in enumerate(inner):
                check_cond(c, f"{where}.{combos[0]}[{i}]")
        return
    if "attr" not in cond:
        raise SelectionConfigError(f"{where}: needs attr (or all/any/not)")
    ops = [k for k in _LEAF_OPS if k in cond]
    if not ops:
        raise SelectionConfigError(f"{where}: attr {cond['attr']!r} needs one of {', '.join(_LEAF_OPS)}")
    unknown = set(cond) - set(_LEAF_OPS) - {"attr", "name", "reason", "value_attr"}
    if unknown:
        raise SelectionConfigError(f"{where}: unknown keys {', '.join(sorted(unknown))}")
    if "regex" in cond:
        try:
            re.compile(cond["regex"])
        except re.error as exc:
            raise SelectionConfigError(f"{where}.regex: {exc}") from None
    if "range" in cond and (not isinstance(cond["range"], list) or len(cond["range"]) != 2):
        raise SelectionConfigError(f"{where}.range: [min, max]")



def evaluate(cond: Mapping[str, Any], info: SeriesInfo) -> bool:
    if "all" in cond:
        return all(evaluate(c, info) for c in cond["all"])
    if "any" in cond:
        return any(evaluate(c, info) for c in cond["any"])
    if "not" in cond:
        return not evaluate(cond["not"], info)
    value = info.value(cond["attr"])
    text = as_text(value)
    ok = True
    if "present" in cond:
        ok = ok and (text != "") == bool(cond["present"])
    if "equals" in cond:
        want = cond["equals"]
        num = as_number(value)
        ok = ok and (num == float(want) if isinstance(want, int | float) and num is not None else text == str(want))
    if "in" in cond:
        ok = ok and text in [str(v) for v in cond["in"]]
    if "regex" in cond:
        ok = ok and re.search(cond["regex"], text) is not None
    if "contains" in cond:
        items = value if isinstance(value, list) else [text]
        ok = ok and str(cond["contains"]).upper() in [str(v).strip().upper() for v in items]
    lo = cond["range"][0] if "range" in cond else cond.get("min")
    hi = cond["range"][1] if "range" in cond else cond.get("max")
    if lo is not None or hi is not None:
        num = as_number(value)
        ok = ok and num is not None and (lo is None or num >= float(lo)) and (hi is None or num <= float(hi))
    return ok


def _first_attr(cond: Mapping[str, Any]) -> str | None:
    if "attr" in cond:
        return str(cond["attr"])
    for key in ("all", "any"):
        if key in cond and cond[key]:
            return _first_attr(cond[key][0])
    if "not" in cond:
        return _first_attr(cond["not"])
    return None


def parse_rules(raw: Sequence[Mapping[str, Any]], kind: str) -> list[Rule]:
    out = []
    for i, r in enumerate(raw):
        where = f"series.selection.{kind}[{i}]"
        if not isinstance(r, Mapping):
            raise SelectionConfigError(f"{where}: expected a table")
        cond = {k: v for k, v in r.items() if k not in ("name", "reason", "value_attr")}
        check_cond(cond, where)
        name = str(r.get("name", f"{kind}-{i}"))
        out.append(Rule(name=name, reason=str(r.get("reason", f"rule {name} ({kind})")), cond=cond,
                        value_attr=r.get("value_attr") or _first_attr(cond)))
    return out
