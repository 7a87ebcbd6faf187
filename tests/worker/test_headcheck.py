"""Look before speaking (hexnode.models.headcheck): what is not a non-contrast human head is refused
from its pixels with a reason that names what was seen, through the real pipeline (real models,
a not-analysed SR + SC that dciodvfy accepts), and plain heads that resemble those are not.

The look-alikes come from hexnode.synth.lookalikes: a plastic QA phantom (air- or water-filled), a
contrast-enhanced head with no contrast word in its header, a chest and an abdomen without Body
Part Examined; and plain heads with dense sinuses or a calcified falx.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from report_helpers import dciodvfy

from hexnode.models import brain
from hexnode.models.headcheck import check_head, contrast_hint
from hexnode.synth.lookalikes import generate_lookalike, write_lookalike

REPO = Path(__file__).resolve().parents[2]
SEED = 3101  # not a seed any training or evaluation run uses


@pytest.fixture(scope="module")
def models() -> Any:
    from hexnode.models.analyser import Models

    return Models.load(REPO / "models", ["CPUExecutionProvider"])


def _texts(ds: pydicom.Dataset) -> list[str]:
    out = []
    for item in ds.get("ContentSequence", []):
        if "TextValue" in item:
            out.append(str(item.TextValue))
        out += _texts(item)
    return out


def _refused(kind: str, index: int, models: Any, tmp_path: Path, *, cli: bool = False) -> tuple[str, Any]:
    """Write the look-alike (`cli`: with `hexnode synth --lookalike`), run the worker's pipeline on
    it, check the not-analysed SR and SC; (the reason, the case)."""
    from hexnode.pipeline.run import encode, produce

    case = generate_lookalike(kind, SEED, index)
    if cli:
        from hexnode.cli import main

        assert main(["synth", "--lookalike", kind, "--n", str(index + 1), "--seed", str(SEED),
                     "--out", str(tmp_path / kind)]) == 0
        paths = sorted((tmp_path / kind / f"case-{index:04d}" / "series").glob("*.dcm"))
        assert len(paths) == case.hu.shape[0]
        assert (pydicom.dcmread(paths[0]).pixel_array.astype(np.int32) - 1024 == case.hu[0]).all()
    else:
        paths = write_lookalike(case, tmp_path / kind)
    out = produce(paths, models)
    assert not out.analysed and out.prediction is None, f"{kind} was analysed"
    assert out.reason is not None and "segmentation" not in out.timings  # refused before any statement
    assert len(out.datasets) == 2  # the not-analysed SR and SC, no SEG
    for i, ds in enumerate(out.datasets):
        f = tmp_path / f"{kind}-{i}.dcm"
        f.write_bytes(encode(ds))
        errors, text = dciodvfy(f)
        assert errors == [], text
    sr = next(d for d in out.datasets if d.Modality == "SR")
    assert any(out.reason in t for t in _texts(sr)), _texts(sr)
    return out.reason, case


def test_a_plastic_qa_phantom_is_refused_as_no_brain(models: Any, tmp_path: Path) -> None:
    fills = set()
    for index in (0, 1):  # an air-filled and a water-filled one
        reason, case = _refused("qa-phantom", index, models, tmp_path / str(index))
        fills.add(case.extra["fill"])
        assert reason.startswith("no brain tissue inside the skull: phantom or not a patient"), reason
        m = re.search(r"; (\d+)% air, (\d+)% water-like\)$", reason)
        assert m is not None, reason
        assert int(m.group(1) if case.extra["fill"] == "air" else m.group(2)) >= 50, reason  # what filled it
    assert fills == {"air", "water"}


def test_a_contrast_head_without_contrast_tags_is_refused(models: Any, tmp_path: Path) -> None:
    reason, _ = _refused("contrast", 0, models, tmp_path)
    assert reason.startswith("contrast-enhanced: dural sinuses at "), reason
    hu = float(reason.split(" at ")[1].split(" HU")[0])
    assert 120.0 <= hu <= 200.0
    assert "header" not in reason  # nothing in the header said so: the pixels did
    ds = pydicom.dcmread(tmp_path / "contrast" / "series" / "IM0001.dcm", stop_before_pixels=True)
    assert "ContrastBolusAgent" not in ds and "CONTRAST" not in str(ds.StudyDescription).upper()


@pytest.mark.parametrize("kind", ["chest", "abdomen"])
def test_a_body_part_without_a_skull_is_refused_as_no_head(kind: str, models: Any, tmp_path: Path) -> None:
    reason, _ = _refused(kind, 0, models, tmp_path, cli=kind == "chest")
    assert reason.startswith("no head in the images: "), reason
    first = next((tmp_path / kind).rglob("IM0001.dcm"))
    assert "BodyPartExamined" not in pydicom.dcmread(first, stop_before_pixels=True)  # the header is silent


@pytest.mark.parametrize("kind", ["sinus-clot", "calcified-falx"])
def test_plain_heads_with_dense_sinuses_or_a_calcified_falx_are_not_refused(kind: str, models: Any) -> None:
    case = generate_lookalike(kind, SEED, 2)
    hu = case.hu.astype(np.float32)
    cav = brain.intracranial(hu, case.spacing)
    seen = check_head(hu, case.spacing, cav)
    assert seen.problem is None, seen.summary()
    if kind == "sinus-clot":  # the nearest to the sinus limit: through the whole analysis too
        assert seen.sinus_hu is not None and 60.0 <= seen.sinus_hu <= 110.0, seen.summary()
        a = models.analyse(hu, case.spacing)
        assert {"head check", "segmentation"} <= set(a.timings)  # analysed: a statement was made


def test_the_header_is_a_hint_never_proof() -> None:
    """Contrast words lower the sinus limit, but a plain head with them is not refused; and the
    contrast head is refused with or without them."""
    plain = generate_lookalike("calcified-falx", SEED, 3)
    hu = plain.hu.astype(np.float32)
    cav = brain.intracranial(hu, plain.spacing)
    seen = check_head(hu, plain.spacing, cav, hints=("CT HEAD C+ 150cc", "agent:OMNIPAQUE 350"))
    assert seen.hint is not None and seen.problem is None, seen.summary()
    enhanced = generate_lookalike("contrast", SEED, 3)
    hu = enhanced.hu.astype(np.float32)
    cav = brain.intracranial(hu, enhanced.spacing)
    quiet = check_head(hu, enhanced.spacing, cav)
    told = check_head(hu, enhanced.spacing, cav, hints=("KOPF mit KM",))
    assert quiet.problem is not None and quiet.problem.startswith("contrast-enhanced")
    assert told.problem is not None and told.problem.endswith("the header says mit KM")


@pytest.mark.parametrize("text", ["CT HEAD C+", "Schaedel mit KM", "HEAD 150cc", "CTA CIRCLE OF WILLIS",
                                  "Kopf Kontrast", "HEAD POST", "CT VENOGRAM", "cerebro mdc", "agent:Omnipaque 350"])
def test_contrast_words_are_read_as_hints(text: str) -> None:
    assert contrast_hint([text]) is not None


@pytest.mark.parametrize("text", ["CT HEAD WO CONTRAST", "Schaedel ohne KM", "non-contrast head", "HEAD W/O CONTRAST",
                                  "STD BRAIN 5MM, iDose", "HEAD 5mm H30s", "Kopf nativ", "HEAD POST-OP",
                                  "tete sans contraste", "agent:NONE", "agent:", "1A TRAUMA/PLAIN HEAD DM",
                                  "1.25mm (enhanced conversion)"])
def test_words_that_are_not_contrast_are_not_hints(text: str) -> None:
    assert contrast_hint([text]) is None
