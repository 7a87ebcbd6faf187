r"""The built-in selection rules as plain data: which series are analysable head NCCT, and why not.

The rule engine is hexnode.series.conditions, the study-level choice hexnode.series.ranking and
hexnode.series.select puts them together (`Selector`).

Rules are plain data, so a site can read and change them in `hexnode.toml` (`[series.selection]`):

```toml
[series.selection]
builtin = true                 # keep the built-in head NCCT rules below (false: only yours)
disable = ["head"]             # switch built-in rules off by name
target_thickness_mm = 5.0      # study-level choice: closest to this thickness wins
soft_kernel_regex = '(?i)soft|standard|^H[1-4]\d|^UB$'   # replaces the vendors' names (hexnode.series.vendors)

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
`Orientation`, `ContrastAgent`, `BodyRegion`) with one of `equals`, `in`, `regex`, `contains`, `range = [lo,
hi]` (either may be omitted with `min`/`max` instead), `present` — or a combination: `all = [...]`
(AND), `any = [...]` (OR), `not = {...}`. A `reason` may contain `{value}` (the attribute's
value). Every failing rule's reason is recorded; the first one is the headline.

Kernel names, dose pages, localizers and reconstruction names are matched as the vendors write
them, whole words (hexnode.series.vendors: "iDose" is not a dose page). The head rule is a hint:
route has no pixels, so a series whose headers name no body part (or a generic one) passes with
`HEAD_NOT_IN_HEADER` in its selection note, and the worker confirms the head from the images;
one whose headers name another body part (CHEST, ABDOMEN, ...) is refused.
"""


from __future__ import annotations

from typing import Any

from hexnode.series import vendors
from hexnode.series.header import MAX_SLICES
from hexnode.sop import CT_SOP_CLASSES

# Words that say "head" in a body part, description or protocol (any language a site writes).
HEAD = r"(?i)head|brain|cerebr|skull|cran|sch(ae|ä)del|kopf|hirn|neuro|\bcct\b|ncct|\bich\b|stroke"
# Words that name another part of the body. Body Part Examined or a description that names one
# (and nothing names the head) is not a head scan; one that names nothing, or something generic
# (OTHER, UNKNOWN, WHOLEBODY, a site's own code), is not refused here: the worker checks the images.
OTHER_REGION = vendors.any_of(
    vendors.starts("chest", "thora", "abdom", "pelvi", "lumb", "sacr", "cocc", "extremit", "cardi", "corona",
                   "aort", "kidney", "renal", "urogra", "colon", "pancrea", "breast", "mammo", "shoulder",
                   "paranasal", "mandib", "maxill", "dentascan"),
    vendors.words("abd", "lung", "lungs", "spine", "[clt]-?spine", "neck", "knee", "hip", "elbow", "wrist", "hand",
                  "foot", "ankle", "leg", "arm", "heart", "liver", "bladder", "sinus", "sinuses", "orbit", "orbits",
                  "face", "facial", "jaw", "dental", "tmj"),
)
HEADER_TEXTS = ("BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName")
# The head named by the headers: what the selection note says when it is not.
HEAD_IN_HEADER: dict[str, Any] = {"any": [{"attr": a, "regex": HEAD} for a in HEADER_TEXTS]}
HEAD_NOT_IN_HEADER = ("head not confirmed by the header (no Body Part Examined, or a generic one, and no head "
                      "in the descriptions): the images are checked for a head")

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
    # Route has no pixels: the headers are a hint. A series they say nothing about passes (the
    # worker confirms a head from the images); one they say is another body part does not.
    {"name": "head", "any": [HEAD_IN_HEADER, {"not": {"any": [{"attr": a, "regex": OTHER_REGION} for a in HEADER_TEXTS]}}],
     "reason": "not a head scan ({value})", "value_attr": "BodyRegion"},
    {"name": "thickness", "attr": "SliceThickness", "range": [0.5, 10.0],
     "reason": "slice thickness {value} mm outside 0.5-10 mm"},
    {"name": "slice-count", "attr": "SliceCount", "range": [10, MAX_SLICES],
     "reason": "{value} slices, outside 10-2000"},
]

_DESC = ("SeriesDescription", "ProtocolName")


def _desc_any(pattern: str) -> dict[str, Any]:
    return {"any": [{"attr": a, "regex": pattern} for a in _DESC]}


BUILTIN_EXCLUDE: list[dict[str, Any]] = [
    {"name": "scout", "any": [{"attr": "ImageType", "contains": "LOCALIZER"}, _desc_any(vendors.LOCALIZER)],
     "reason": "localizer/scout image"},
    {"name": "cta", **_desc_any(r"(?i)\bcta\b|angio|arterial|venogra|\bcta_|_cta"),
     "reason": "CT angiography series"},
    {"name": "perfusion", "any": [{"attr": "ImageType", "contains": "PERFUSION"},
                                  _desc_any(r"(?i)perfusion|\bperf\b|\bctp\b|\bcbf\b|\bcbv\b|\bmtt\b")],
     "reason": "perfusion series"},
    {"name": "bone-kernel", "any": [{"attr": "ConvolutionKernel", "regex": vendors.SHARP_KERNEL},
                                    _desc_any(vendors.SHARP_DESCRIPTION)],
     "reason": "bone or sharp kernel reconstruction ({value})", "value_attr": "ConvolutionKernel"},
    {"name": "dose-report", "any": [
        _desc_any(vendors.DOSE_PAGE), {"attr": "ImageType", "contains": "SCREEN SAVE"}, {"attr": "ImageType", "contains": "DOSE_INFO"}],
     "reason": "dose report / screen capture"},
]

# Soft-tissue kernels as vendors name them (hexnode.series.vendors): the study-level choice prefers them.
DEFAULT_SOFT_KERNEL = vendors.SOFT_KERNEL
