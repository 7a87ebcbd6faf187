"""Selection rules: built-in head NCCT rules with reasons, site rules from TOML, study-level choice."""

from __future__ import annotations

import tomllib

import pytest
from pydicom.uid import generate_uid
from series_helpers import base_header

from hexnode.series.conditions import SelectionConfigError
from hexnode.series.info import SeriesInfo
from hexnode.series.select import Selector


def info(count: int = 30, **over: object) -> SeriesInfo:
    ds = base_header("1.2.3", over.pop("uid", None) or generate_uid(), **over)  # type: ignore[arg-type]
    ds.ImageOrientationPatient = over.get("ImageOrientationPatient", [1, 0, 0, 0, 1, 0])
    if "SliceThickness" not in ds:
        ds.SliceThickness = 5.0
    return SeriesInfo(series_uid=ds.SeriesInstanceUID, header=ds, instance_count=count)


BUILTIN = Selector.from_config({})


def test_head_ncct_accepted() -> None:
    d = BUILTIN.decide(info())
    assert d.accepted and d.reasons == ()


@pytest.mark.parametrize(
    "over,reason",
    [
        ({"Modality": "MR"}, "modality MR is not CT"),
        ({"ImageType": ["DERIVED", "SECONDARY", "AXIAL"]}, "image type DERIVED\\SECONDARY\\AXIAL is not ORIGINAL\\PRIMARY"),
        ({"ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"], "SeriesDescription": "Topogram 0.6"}, "localizer/scout image"),
        ({"ContrastBolusAgent": "Iomeprol 350"}, "contrast agent given (Iomeprol 350)"),
        ({"SeriesDescription": "CTA Willis", "ContrastBolusAgent": ""}, "CT angiography series"),
        ({"SeriesDescription": "Perfusion 4D"}, "perfusion series"),
        ({"ConvolutionKernel": "H70h", "SeriesDescription": "Head"}, "bone or sharp kernel reconstruction (H70h)"),
        ({"ConvolutionKernel": "BONE", "SeriesDescription": "Head"}, "bone or sharp kernel reconstruction (BONE)"),
        ({"SeriesDescription": "Dose Report", "ImageType": ["ORIGINAL", "PRIMARY", "AXIAL"]}, "dose report"),
        ({"BodyPartExamined": "ABDOMEN", "SeriesDescription": "Abd venous"}, "not a head scan (body part ABDOMEN)"),
        ({"SliceThickness": 0.3}, "slice thickness 0.3 mm outside"),
        ({"ImageOrientationPatient": [0, 1, 0, 0, 0, -1]}, "sagittal slices, not axial"),
    ],
)
def test_builtin_rejections_record_reason(over: dict[str, object], reason: str) -> None:
    d = BUILTIN.decide(info(**over))
    assert not d.accepted
    assert any(r.startswith(reason) for r in d.reasons), d.reasons


def test_slice_count_limits_and_tilted_axial_accepted() -> None:
    assert "1 slices, outside 10-2000" in BUILTIN.decide(info(count=1)).reasons
    assert not BUILTIN.decide(info(count=2001)).accepted
    tilted = info(ImageOrientationPatient=[1, 0, 0, 0, 0.9063, -0.4226])  # 25 degrees
    assert BUILTIN.decide(tilted).accepted
    assert BUILTIN.decide(info(ContrastBolusAgent="NONE")).accepted


SITE = """
[series.selection]
disable = ["head"]
target_thickness_mm = 2.5

[[series.selection.require]]
name = "stroke scanner"
reason = "not from the stroke-unit scanner ({value})"
any = [ { attr = "StationName", regex = "(?i)^ct-stroke" }, { attr = "InstitutionName", equals = "Unit B" } ]

[[series.selection.require]]
name = "kvp"
reason = "tube voltage {value} kV"
attr = "KVP"
range = [80, 140]

[[series.selection.exclude]]
name = "research"
reason = "research protocol"
not = { attr = "ProtocolName", regex = "(?i)^clinical" }
"""


def test_site_rules_from_toml() -> None:
    sel = Selector.from_config(tomllib.loads(SITE)["series"]["selection"])
    ok = info(StationName="CT-STROKE-1", ProtocolName="Clinical head", BodyPartExamined="", SeriesDescription="x")
    assert sel.decide(ok).accepted  # head rule disabled: no body part needed
    bad = info(StationName="OTHER", ProtocolName="Research 7", KVP=150)
    d = sel.decide(bad)
    assert d.reasons == ("research protocol", "not from the stroke-unit scanner (OTHER)", "tube voltage 150 kV")
    assert sel.target_thickness_mm == 2.5


@pytest.mark.parametrize(
    "raw,msg",
    [({"bogus": 1}, "unknown keys bogus"), ({"disable": ["nope"]}, "unknown rules nope"),
     ({"require": [{"attr": "Modality"}]}, "needs one of"),
     ({"exclude": [{"attr": "X", "regex": "("}]}, "regex"),
     ({"require": [{"any": []}]}, "non-empty list")],
)
def test_bad_rules_are_config_errors(raw: dict[str, object], msg: str) -> None:
    with pytest.raises(SelectionConfigError, match=msg):
        Selector.from_config(raw)


def test_study_choice_soft_kernel_then_thickness() -> None:
    bone = info(SeriesNumber=2, ConvolutionKernel="H70h", SeriesDescription="Head bone")
    thin = info(SeriesNumber=3, ConvolutionKernel="H30s", SliceThickness=1.0, count=150)
    five = info(SeriesNumber=4, ConvolutionKernel="H30s", SliceThickness=5.0, SeriesDescription="Head 5mm")
    sharp_five = info(SeriesNumber=5, ConvolutionKernel="Xyz", SliceThickness=5.0)
    scout = info(SeriesNumber=1, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"], count=1)
    c = BUILTIN.choose([bone, thin, five, sharp_five, scout])
    assert c.chosen is five
    assert "#4 ('Head 5mm', kernel H30s, 5 mm, 30 slices)" in c.note
    assert "soft-tissue kernel" in c.note and "closest to 5 mm" in c.note and "3 candidate" in c.note
    assert c.rejected[bone.series_uid].startswith("bone or sharp kernel")
    assert c.rejected[thin.series_uid].startswith("another series of the study was analysed (#4")
    assert c.rejected[scout.series_uid].startswith("image type") or "localizer" in c.rejected[scout.series_uid]
    assert set(c.rejected) == {bone.series_uid, thin.series_uid, sharp_five.series_uid, scout.series_uid}


def test_study_with_nothing_analysable() -> None:
    c = BUILTIN.choose([info(Modality="MR"), info(ContrastBolusAgent="Iodine")])
    assert c.chosen is None and len(c.rejected) == 2 and "no analysable" in c.note


@pytest.mark.parametrize("kernel", ["H30s", "H31s", "FC21", "STANDARD", "J30s", "Br40d", "SOFT"])
def test_soft_tissue_kernels_are_accepted_and_preferred(kernel: str) -> None:
    soft = info(ConvolutionKernel=kernel, SeriesDescription=f"HEAD 5mm {kernel} TILT", SliceThickness=2.0)
    other = info(ConvolutionKernel="XYZ", SliceThickness=5.0)
    assert BUILTIN.decide(soft).accepted
    assert BUILTIN.choose([other, soft]).chosen is soft  # kernel before thickness
