"""Vendors' kernel and series names through the real rule engine (hexnode.series.vendors.NAMES), the
synthetic vendors' series, and the head rule as a hint when the headers name no body part."""

from __future__ import annotations

import tomllib
from pathlib import Path

import pytest
from pydicom.uid import generate_uid
from series_helpers import base_header

from hexnode.series.answer import NEVER_CANDIDATE_RULES
from hexnode.series.info import SeriesInfo
from hexnode.series.ranking import Ranking
from hexnode.series.rules import DEFAULT_SOFT_KERNEL, HEAD_NOT_IN_HEADER
from hexnode.series.select import Selector, head_in_header
from hexnode.series.vendors import NAMES, Name

BUILTIN = Selector.from_config({})


def info(count: int = 30, **over: object) -> SeriesInfo:
    ds = base_header("1.2.3", generate_uid(), **over)  # type: ignore[arg-type]
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    if "SliceThickness" not in ds:
        ds.SliceThickness = 5.0
    return SeriesInfo(series_uid=ds.SeriesInstanceUID, header=ds, instance_count=count)


def _named(name: Name) -> SeriesInfo:
    """A head NCCT series carrying `name` where the vendor writes it."""
    if name.attr == "ConvolutionKernel":
        kernel: object = name.text.split("\\") if "\\" in name.text else name.text
        return info(ConvolutionKernel=kernel, SeriesDescription="Head routine")
    count = 1 if name.kind in ("dose", "localizer") else 30
    return info(count=count, SeriesDescription=name.text, ConvolutionKernel="H30s")


@pytest.mark.parametrize("name", [n for n in NAMES if n.kind == "soft"], ids=lambda n: f"{n.vendor}:{n.text}")
def test_soft_kernel_is_accepted_and_preferred(name: Name) -> None:
    soft = _named(name)
    assert BUILTIN.decide(soft).accepted, BUILTIN.decide(soft).reasons
    other = info(ConvolutionKernel="XYZ", SeriesDescription="Head routine", SliceThickness=5.0)
    soft.header.SliceThickness = 1.0  # the kernel must win over the thickness closer to 5 mm
    choice = BUILTIN.choose([other, soft])
    assert choice.chosen is soft and "soft-tissue kernel" in choice.note


@pytest.mark.parametrize("name", [n for n in NAMES if n.kind == "sharp"], ids=lambda n: f"{n.vendor}:{n.text}")
def test_sharp_kernel_is_refused(name: Name) -> None:
    d = BUILTIN.decide(_named(name))
    assert not d.accepted and d.rules == ("bone-kernel",), d.reasons
    assert d.reason.startswith("bone or sharp kernel reconstruction (")


@pytest.mark.parametrize("name", [n for n in NAMES if n.kind == "iterative"], ids=lambda n: f"{n.vendor}:{n.text}")
def test_reconstruction_names_are_not_dose_pages_or_anything_else(name: Name) -> None:
    """iDose is not "dose", IMR/ASiR/SAFIRE/ADMIRE/AIDR/AiCE/DLIR/KARL say nothing against a series."""
    d = BUILTIN.decide(_named(name))
    assert d.accepted, d.reasons


@pytest.mark.parametrize("name", [n for n in NAMES if n.kind == "dose"], ids=lambda n: f"{n.vendor}:{n.text}")
def test_dose_page_is_never_a_candidate(name: Name) -> None:
    d = BUILTIN.decide(_named(name))
    assert "dose-report" in d.rules and d.reason == "dose report / screen capture", d.reasons
    assert NEVER_CANDIDATE_RULES & set(d.rules)


@pytest.mark.parametrize("name", [n for n in NAMES if n.kind == "localizer"], ids=lambda n: f"{n.vendor}:{n.text}")
def test_localizer_is_never_a_candidate(name: Name) -> None:
    d = BUILTIN.decide(_named(name))
    assert d.rules[0] == "scout" and d.reason == "localizer/scout image", d.reasons


def test_every_vendor_has_every_kind() -> None:
    kinds = {(n.vendor, n.kind) for n in NAMES}
    for vendor in ("GE", "Siemens", "Philips", "Canon", "UIH"):
        for kind in ("soft", "sharp", "iterative", "dose", "localizer"):
            assert (vendor, kind) in kinds, (vendor, kind)


def test_philips_idose_study_answers_with_the_idose_series() -> None:
    """The real Philips phantom study's series (names as exported): the 1 mm iDose series is a
    candidate like any other, not silently dropped as a dose page; the Exam Summary is."""
    five = info(count=28, SeriesNumber=201, SeriesDescription="STD BRAIN 5MM", ConvolutionKernel="UB",
                BodyPartExamined="BRAIN", ProtocolName="1A TRAUMA/PLAIN HEAD DM /Head")
    idose = info(count=140, SeriesNumber=202, SeriesDescription="STD BRAIN 1MM, iDose", ConvolutionKernel="UB",
                 BodyPartExamined="BRAIN", SliceThickness=1.0, ProtocolName="1A TRAUMA/PLAIN HEAD DM /Head")
    bone = info(count=140, SeriesNumber=203, SeriesDescription="BONE BRAIN 1MM", ConvolutionKernel="YA",
                BodyPartExamined="BRAIN", SliceThickness=1.0)
    summary = info(count=1, SeriesNumber=401, SeriesDescription="Exam Summary", ConvolutionKernel="",
                   ImageType=["DERIVED", "SECONDARY", "DOSE_INFO"])
    assert BUILTIN.decide(idose).accepted
    c = BUILTIN.choose([five, idose, bone, summary])
    assert c.chosen is five  # both soft: 5 mm is closer to the target thickness
    assert c.rejected[idose.series_uid].startswith("another series of the study was analysed")
    assert c.rejected[bone.series_uid] == "bone or sharp kernel reconstruction (YA)"
    assert "dose-report" in BUILTIN.decide(summary).rules
    only = BUILTIN.choose([idose, summary])
    assert only.chosen is idose


def test_synthetic_vendor_series_are_accepted_as_soft_tissue(tmp_path: Path) -> None:
    from hexnode.synth.dicom import VENDORS

    for vendor, header in VENDORS.items():
        i = info(**header)
        assert BUILTIN.decide(i).accepted, (vendor, BUILTIN.decide(i).reasons)
        assert Ranking().key(i)[0] == 0, vendor  # a soft-tissue kernel
        assert head_in_header(i), vendor


# --- the head rule is a hint: route has no pixels -------------------------------------------------
@pytest.mark.parametrize("over", [
    {"BodyPartExamined": "", "SeriesDescription": "Axial 5mm", "StudyDescription": "", "ProtocolName": ""},
    {"BodyPartExamined": "OTHER", "SeriesDescription": "5.0 mm", "StudyDescription": ""},
    {"BodyPartExamined": "UNKNOWN", "SeriesDescription": "", "StudyDescription": "CT"},
    {"BodyPartExamined": "WHOLEBODY", "SeriesDescription": "1.25mm STND"},
])
def test_no_or_generic_body_part_passes_with_a_hint(over: dict[str, object]) -> None:
    i = info(**over)
    if not over.get("BodyPartExamined"):
        del i.header.BodyPartExamined
    d = BUILTIN.decide(i)
    assert d.accepted, d.reasons
    c = BUILTIN.choose([i])
    assert c.chosen is i and c.note.endswith(HEAD_NOT_IN_HEADER)


@pytest.mark.parametrize("over,reason", [
    ({"BodyPartExamined": "CHEST", "SeriesDescription": "Thorax 5mm"}, "not a head scan (body part CHEST)"),
    ({"BodyPartExamined": "ABDOMENPELVIS", "SeriesDescription": "5mm"}, "not a head scan (body part ABDOMENPELVIS)"),
    ({"BodyPartExamined": "CSPINE", "SeriesDescription": "5mm"}, "not a head scan (body part CSPINE)"),
    ({"BodyPartExamined": "", "SeriesDescription": "CT THORAX 5mm B31f"},
     "not a head scan (no body part; series description names THORAX)"),
    ({"BodyPartExamined": "OTHER", "SeriesDescription": "5mm", "ProtocolName": "Abdomen routine"},
     "not a head scan (body part OTHER; protocol names ABDOMEN)"),
])
def test_another_body_part_named_in_the_headers_is_refused(over: dict[str, object], reason: str) -> None:
    i = info(**over)
    d = BUILTIN.decide(i)
    assert not d.accepted and d.reason == reason and d.rules == ("head",), d.reasons


@pytest.mark.parametrize("over", [
    {"BodyPartExamined": "HEAD", "SeriesDescription": "5mm"},
    {"BodyPartExamined": "HEADNECK", "SeriesDescription": "5mm"},
    {"BodyPartExamined": "", "SeriesDescription": "CT SCHAEDEL nativ"},
    {"BodyPartExamined": "CHEST", "SeriesDescription": "Brain 5mm"},  # a wrong body part under a head protocol
])
def test_head_in_the_headers_is_confirmed_without_a_hint(over: dict[str, object]) -> None:
    i = info(**over)
    assert BUILTIN.decide(i).accepted
    assert HEAD_NOT_IN_HEADER not in BUILTIN.choose([i]).note


def test_deploy_toml_documents_the_default_soft_kernel_regex() -> None:
    text = (Path(__file__).resolve().parents[2] / "deploy" / "hexnode.toml").read_text()
    line = next(x for x in text.splitlines() if x.startswith("# soft_kernel_regex = "))
    assert tomllib.loads(line[2:])["soft_kernel_regex"] == DEFAULT_SOFT_KERNEL
