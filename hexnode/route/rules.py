"""The built-in selection rules as plain data: which series are analysable head NCCT, and why not.

The rule engine is hexnode.route.conditions, the study-level choice hexnode.route.ranking and
hexnode.route.select puts them together (`Selector`).

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

from typing import Any

from hexnode.pipeline.load import MAX_SLICES
from hexnode.sop import CT_SOP_CLASSES

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
