"""Which series are analysable head NCCT, why the others are not, and which one of a study to analyse.

Rules are plain data, so a site can read and change them in `hexnode.toml` (`[series.selection]`):

```toml
[series.selection]
builtin = true                 # keep the built-in head NCCT rules below (false: only yours)
disable = ["head"]             # switch built-in rules off by name
target_thickness_mm = 5.0      # study-level choice: closest to this thickness wins
soft_kernel_regex = "(?i)soft|std|standard|brain|head|^H[1-4]\\d|^J[3-4]\\d|^Br[2-4]|^Hr[2-4]|FC2\\d|UB|^B$|^C$"

[[series.selection.require]]   # every `require` rule must match, else the series is rejected
name = "my scanner"
reason = "not from the stroke-unit scanner"
any = [ { attr = "StationName", regex = "(?i)^CT-STROKE" }, { attr = "InstitutionName", equals = "X" } ]

[[series.selection.exclude]]   # any `exclude` rule that matches rejects the series
name = "research"
reason = "research protocol"
attr = "ProtocolName"
regex = "(?i)research"
```

A condition is either a leaf — `attr` (a DICOM keyword or a derived value: `SliceCount`,
`Orientation`, `ContrastAgent`) with one of `equals`, `in`, `regex`, `contains`, `range = [lo,
hi]` (either may be omitted with `min`/`max` instead), `present` — or a combination: `all = [...]`
(AND), `any = [...]` (OR), `not = {...}`. A `reason` may contain `{value}` (the attribute's
value). Every failing rule's reason is recorded; the first one is the headline.
"""

from __future__ import annotations

import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from pydicom.dataset import Dataset

from hexnode.series.volume import CT_SOP_CLASSES, MAX_SLICES

# A head CT may be tilted up to about 30 degrees and still be axial.
AXIAL_MAX_DEG = 35.0

BUILTIN_REQUIRE: list[dict[str, Any]] = [
    {"name": "modality", "attr": "Modality", "equals": "CT", "reason": "modality {value} is not CT"},
    {"name": "sop-class", "attr": "SOPClassUID", "in": sorted(CT_SOP_CLASSES),
     "reason": "SOP class {value} is not a CT image"},
    {"name": "original-primary", "all": [{"attr": "ImageType", "contains": "ORIGINAL"},
                                         {"attr": "ImageType", "contains": "PRIMARY"}],
     "reason": "image type {value} is not ORIGINAL\\PRIMARY"},
    {"name": "axial", "attr": "Orientation", "equals": "axial", "reason": "{value} slices, not axial"},
    {"name": "no-contrast", "attr": "ContrastAgent", "equals": "",
     "reason": "contrast agent given ({value}): not a non-contrast CT"},
    {"name": "head", "any": [
        {"attr": "BodyPartExamined", "regex": r"(?i)head|brain|skull|neuro|cerebr|cran"},
        {"attr": "SeriesDescription", "regex": r"(?i)head|brain|cerebr|skull|cran|sch(ae|ä)del|kopf|neuro|\bcct\b|ncct|\bich\b|stroke"},
        {"attr": "StudyDescription", "regex": r"(?i)head|brain|cerebr|skull|cran|sch(ae|ä)del|kopf|neuro|\bcct\b|ncct|\bich\b|stroke"},
        {"attr": "ProtocolName", "regex": r"(?i)head|brain|cerebr|skull|cran|sch(ae|ä)del|kopf|neuro|\bcct\b|ncct|\bich\b|stroke"},
    ], "reason": "not a head scan (body part {value})", "value_attr": "BodyPartExamined"},
    {"name": "thickness", "attr": "SliceThickness", "range": [0.5, 10.0],
     "reason": "slice thickness {value} mm outside 0.5-10 mm"},
    {"name": "slice-count", "attr": "SliceCount", "range": [10, MAX_SLICES],
     "reason": "{value} slices, outside 10-2000"},
]

_DESC = ("SeriesDescription", "ProtocolName")


def _desc_any(pattern: str) -> dict[str, Any]:
    return {"any": [{"attr": a, "regex": pattern} for a in _DESC]}


BUILTIN_EXCLUDE: list[dict[str, Any]] = [
    {"name": "scout", "any": [{"attr": "ImageType", "contains": "LOCALIZER"},
                              _desc_any(r"(?i)scout|topo|surview|locali[sz]er|scanogram|pilot")],
     "reason": "localizer/scout image"},
    {"name": "cta", **_desc_any(r"(?i)\bcta\b|angio|arterial|venogra|\bcta_|_cta"),
     "reason": "CT angiography series"},
    {"name": "perfusion", "any": [{"attr": "ImageType", "contains": "PERFUSION"},
                                  _desc_any(r"(?i)perfusion|\bperf\b|\bctp\b|\bcbf\b|\bcbv\b|\bmtt\b")],
     "reason": "perfusion series"},
    {"name": "bone-kernel", "any": [
        {"attr": "ConvolutionKernel", "regex": r"(?i)bone|lung|sharp|edge|detail|^H[6-9]\d|^B[6-9]\d|^[BHQ]r[6-9]\d|^Hr[6-9]|^FC[3-8]\d|^YC|^D$"},
        _desc_any(r"(?i)\bbone\b|knochen|\bosseous|bone window|\blung\b")],
     "reason": "bone or sharp kernel reconstruction ({value})", "value_attr": "ConvolutionKernel"},
    {"name": "dose-report", "any": [_desc_any(r"(?i)dose|patient protocol|exam summary"),
                                    {"attr": "ImageType", "contains": "SCREEN SAVE"}],
     "reason": "dose report / screen capture"},
]

DEFAULT_SOFT_KERNEL = (r"(?i)soft|std|standard|brain|head|cerebr|^H[1-4]\d|^J[3-4]\d|^[BHQ]r[2-4]\d|"
                       r"^FC[1-2]\d|^UB|^[BC]$|^Hr\d\d|^H\d\ds")


class SelectionConfigError(ValueError):
    """A selection rule in hexnode.toml is malformed; the message says which and why."""


@dataclass(frozen=True)
class SeriesInfo:
    """What selection knows about one series: one representative header and how many instances."""

    series_uid: str
    header: Dataset
    instance_count: int
    ref: Any = None  # caller's handle (e.g. a database id), carried through unchanged

    def value(self, attr: str) -> Any:
        if attr == "SliceCount":
            frames = int(self.header.get("NumberOfFrames", 1) or 1)
            return frames if frames > 1 else self.instance_count
        if attr == "Orientation":
            return orientation_label(self.header)
        if attr == "ContrastAgent":
            return contrast_agent(self.header)
        if attr == "SliceThickness" and "SliceThickness" not in self.header:
            return _enhanced_thickness(self.header)
        value = self.header.get(attr)
        if value is None:
            return None
        if hasattr(value, "__iter__") and not isinstance(value, str | bytes):
            return [str(v) for v in value]
        return value


def _enhanced_thickness(ds: Dataset) -> Any:
    shared = ds.get("SharedFunctionalGroupsSequence")
    try:
        return shared[0].PixelMeasuresSequence[0].SliceThickness if shared else None
    except (AttributeError, IndexError):
        return None


def _iop(ds: Dataset) -> Any:
    if "ImageOrientationPatient" in ds:
        return ds.ImageOrientationPatient
    shared = ds.get("SharedFunctionalGroupsSequence")
    try:
        return shared[0].PlaneOrientationSequence[0].ImageOrientationPatient if shared else None
    except (AttributeError, IndexError):
        pf = ds.get("PerFrameFunctionalGroupsSequence")
        try:
            return pf[0].PlaneOrientationSequence[0].ImageOrientationPatient if pf else None
        except (AttributeError, IndexError):
            return None


def orientation_label(ds: Dataset) -> str:
    """axial / coronal / sagittal / oblique / unknown, from the slice normal."""
    iop = _iop(ds)
    try:
        r = [float(v) for v in iop]
    except (TypeError, ValueError):
        return "unknown"
    if len(r) != 6:
        return "unknown"
    n = (r[1] * r[5] - r[2] * r[4], r[2] * r[3] - r[0] * r[5], r[0] * r[4] - r[1] * r[3])
    norm = math.sqrt(sum(v * v for v in n)) or 1.0
    angles = [math.degrees(math.acos(min(1.0, abs(v) / norm))) for v in n]
    if angles[2] <= AXIAL_MAX_DEG:
        return "axial"
    if angles[1] <= 20:
        return "coronal"
    if angles[0] <= 20:
        return "sagittal"
    return "oblique"


def contrast_agent(ds: Dataset) -> str:
    """The contrast agent named in the header, '' when none (a bare 'NONE'/'NO' counts as none)."""
    parts = [str(ds.get("ContrastBolusAgent", "") or "").strip()]
    for item in ds.get("ContrastBolusAgentSequence", []) or []:
        parts.append(str(item.get("CodeMeaning", "") or "contrast"))
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and shared[0].get("ContrastBolusUsageSequence"):
        for item in shared[0].ContrastBolusUsageSequence:
            if str(item.get("ContrastBolusAgentAdministered", "")).upper() == "YES":
                parts.append("contrast")
    agent = "; ".join(p for p in parts if p and p.upper() not in ("NONE", "NO", "N", "0", "NIL", "-"))
    return agent


# --- the rule engine -----------------------------------------------------------------------------

_LEAF_OPS = ("equals", "in", "regex", "contains", "range", "min", "max", "present")


@dataclass(frozen=True)
class Rule:
    name: str
    reason: str
    cond: Mapping[str, Any]
    value_attr: str | None = None


def _check_cond(cond: Any, where: str) -> None:
    if not isinstance(cond, Mapping):
        raise SelectionConfigError(f"{where}: a condition must be a table")
    combos = [k for k in ("all", "any", "not") if k in cond]
    if len(combos) > 1:
        raise SelectionConfigError(f"{where}: use one of all/any/not per table")
    if combos:
        inner = cond[combos[0]]
        if combos[0] == "not":
            _check_cond(inner, f"{where}.not")
        else:
            if not isinstance(inner, list) or not inner:
                raise SelectionConfigError(f"{where}.{combos[0]}: a non-empty list of conditions")
            for i, c in enumerate(inner):
                _check_cond(c, f"{where}.{combos[0]}[{i}]")
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


def _as_text(value: Any) -> str:
    if value is None:
        return ""
    if isinstance(value, list):
        return "\\".join(_as_text(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value).strip()


def _as_number(value: Any) -> float | None:
    if isinstance(value, list):
        value = value[0] if value else None
    try:
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def evaluate(cond: Mapping[str, Any], info: SeriesInfo) -> bool:
    if "all" in cond:
        return all(evaluate(c, info) for c in cond["all"])
    if "any" in cond:
        return any(evaluate(c, info) for c in cond["any"])
    if "not" in cond:
        return not evaluate(cond["not"], info)
    value = info.value(cond["attr"])
    text = _as_text(value)
    ok = True
    if "present" in cond:
        ok = ok and (text != "") == bool(cond["present"])
    if "equals" in cond:
        want = cond["equals"]
        num = _as_number(value)
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
        num = _as_number(value)
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


def _rules(raw: Sequence[Mapping[str, Any]], kind: str) -> list[Rule]:
    out = []
    for i, r in enumerate(raw):
        where = f"series.selection.{kind}[{i}]"
        if not isinstance(r, Mapping):
            raise SelectionConfigError(f"{where}: expected a table")
        cond = {k: v for k, v in r.items() if k not in ("name", "reason", "value_attr")}
        _check_cond(cond, where)
        name = str(r.get("name", f"{kind}-{i}"))
        out.append(Rule(name=name, reason=str(r.get("reason", f"rule {name} ({kind})")), cond=cond,
                        value_attr=r.get("value_attr") or _first_attr(cond)))
    return out


@dataclass(frozen=True)
class Decision:
    accepted: bool
    reasons: tuple[str, ...] = ()  # every failed rule, headline first
    rules: tuple[str, ...] = ()  # the names of those rules, in the same order

    @property
    def reason(self) -> str:
        return self.reasons[0] if self.reasons else ""


@dataclass(frozen=True)
class Choice:
    """The study-level outcome: which series is analysed and what becomes of the others."""

    chosen: SeriesInfo | None
    note: str  # for the report: which series, of how many candidates, and why
    rejected: dict[str, str] = field(default_factory=dict)  # series UID → reason


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
        return cls(require=tuple(_rules(req + list(sel.get("require", [])), "require")),
                   exclude=tuple(_rules(exc + list(sel.get("exclude", [])), "exclude")),
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
        value = _as_text(info.value(rule.value_attr)) if rule.value_attr else ""
        return rule.reason.replace("{value}", value or "none")

    def _rank(self, info: SeriesInfo) -> tuple[int, float, int, float, str]:
        kernel = _as_text(info.value("ConvolutionKernel"))
        soft = 0 if kernel and re.search(self.soft_kernel_regex, kernel) else 1
        thick = _as_number(info.value("SliceThickness"))
        dist = abs(thick - self.target_thickness_mm) if thick is not None else math.inf
        number = _as_number(info.value("SeriesNumber"))
        return soft, dist, -info.instance_count, number if number is not None else math.inf, info.series_uid

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
        if not accepted:
            return Choice(chosen=None, note="no analysable head non-contrast CT series in the study",
                          rejected=rejected)
        ranked = sorted(accepted, key=self._rank)
        chosen = ranked[0]
        desc = describe(chosen)
        if len(accepted) == 1:
            note = f"analysed series {desc}"
        else:
            why = []
            ranks = [self._rank(i) for i in ranked]
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
    parts.append(f"#{number}" if number not in (None, "") else "without number")  # not "#?" (issue 24)
    desc = _as_text(info.value("SeriesDescription"))
    if desc:
        parts.append(f"'{desc[:64]}'")
    kernel = _as_text(info.value("ConvolutionKernel"))
    if kernel:
        parts.append(f"kernel {kernel[:32]}")
    thick = _as_number(info.value("SliceThickness"))
    if thick is not None:
        parts.append(f"{thick:g} mm")
    parts.append(f"{info.value('SliceCount')} slices")
    return " ".join(parts[:1]) + " (" + ", ".join(parts[1:]) + ")"
