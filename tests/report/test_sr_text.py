"""The SR as a text-only PACS shows it (issue 24): rendered by dcmtk's dsr2html and dsrdump.

A 24-slice series without a Series Number, reported with the committed model set's own threshold
and held-out figures. The rendered text must put the findings and the summary first (the image
library after them, issue 34; no per-image footnotes anywhere), print every value with its name
and a unit that reads (no bare UCUM "1"), and open the comments with the one-line summary and
what the risk means. The HTML is kept in tests/output/sr-text/ for a person to open.
"""

from __future__ import annotations

import html
import re
import subprocess
from pathlib import Path

import pydicom
import pytest
from pydicom.dataset import Dataset
from report_helpers import MODEL, OUTPUT, prediction, require, write_series

from hexnode.models.registry import load_manifest
from hexnode.pipeline.contracts import ModelInfo, Prediction
from hexnode.report import build_not_analysed, build_results
from hexnode.report.common import series_number_text

MODELS = Path(__file__).resolve().parents[2] / "models"

OUT = OUTPUT / "sr-text"
SCREEN = {"width": 1920, "height": 1080}  # a reading-room desktop screen


def _numbers(ds: Dataset) -> list[tuple[str, str, str]]:
    """(concept meaning, value, unit code) of every NUM item outside the Image Library."""
    found: list[tuple[str, str, str]] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.ConceptNameCodeSequence[0].CodeValue == "111028":  # Image Library
                continue
            if item.ValueType == "NUM":
                mv = item.MeasuredValueSequence[0]
                found.append((str(item.ConceptNameCodeSequence[0].CodeMeaning), str(mv.NumericValue),
                              str(mv.MeasurementUnitsCodeSequence[0].CodeValue)))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(list(ds.ContentSequence))
    return found


def committed_model() -> ModelInfo:
    """The committed model set as the node reports it (its threshold and held-out figures)."""
    manifest = load_manifest(MODELS, verify=False)
    return ModelInfo(name=manifest.name, version=manifest.version, threshold=manifest.threshold,
                     synthetic_trained=manifest.synthetic_trained, operating_point=manifest.operating_point)


@pytest.fixture(scope="module")
def rendered(tmp_path_factory: pytest.TempPathFactory) -> tuple[Dataset, str, str]:
    require("dsr2html")
    require("dsrdump")
    tmp = tmp_path_factory.mktemp("srtext")
    series = write_series(tmp / "ct", n=24, size=96)
    for path in series.paths:  # a series without a Series Number, as some scanners send
        ds = pydicom.dcmread(path)
        del ds.SeriesNumber
        ds.save_as(path, enforce_file_format=True)
    base = prediction(series, probability=0.732)
    pred = Prediction(volume_ml=base.volume_ml, probability=base.probability, model=committed_model(),
                      hemorrhage_detected=base.hemorrhage_detected, signs=base.signs)
    seg, sr, _sc = build_results(series.headers(), series.hu, series.mask, pred,
                                 selection_note="analysed series without number ('Head 5mm soft tissue', 5 mm, 24 slices)")
    OUT.mkdir(parents=True, exist_ok=True)
    sr.save_as(OUT / "sr.dcm", enforce_file_format=True)
    page = subprocess.run(["dsr2html", str(OUT / "sr.dcm")], capture_output=True, text=True, check=True).stdout
    (OUT / "sr.html").write_text(page)
    dump = subprocess.run(["dsrdump", "+Pl", str(OUT / "sr.dcm")], capture_output=True, text=True, check=True).stdout
    (OUT / "sr.txt").write_text(dump)
    text = re.sub(r"\s+", " ", html.unescape(re.sub(r"<[^>]+>", " ", page)))
    return pydicom.dcmread(OUT / "sr.dcm"), text, dump


def test_findings_and_summary_come_before_the_image_library(rendered: tuple[Dataset, str, str]) -> None:
    _, text, _ = rendered
    findings = text.index("Imaging Measurements")
    summary = text.index("Qualitative Evaluations Comment: Hematoma ")
    library = text.index("Image Library")
    assert "Image Position" not in text and "Footnote" not in text
    # before the library, one image only: the key slice the outline is drawn on
    assert text[:library].count("CT image") == 1 and "Acquisition Context" not in text[:library]
    assert findings < summary < library
    assert text.index("What the risk means") < library
    # after them, the evidence: the images as one running list (one paragraph, not a line and a
    # footnote each), the shared descriptors once per group, whatever the slice count
    evidence = text[library:]
    assert re.search(r"(CT image ){24}", evidence + " ")
    assert evidence.count("Acquisition Context :") <= 3, evidence


def test_procedure_reported_is_a_head_ct(rendered: tuple[Dataset, str, str]) -> None:
    ds, text, dump = rendered
    assert "Procedure reported = CT Head WO contrast (30799-1, LN)" in text
    assert "unspecified body region" not in text
    performed = ds.PerformedProcedureCodeSequence[0]
    assert (performed.CodeValue, performed.CodingSchemeDesignator) == ("30799-1", "LN")


def test_what_the_risk_means_uses_the_model_sets_own_figures(rendered: tuple[Dataset, str, str]) -> None:
    """The expansion definition, the threshold and its held-out figures as the committed manifest
    records them (no figure of the report's own), and the disclaimer: on one line, second."""
    _, text, _ = rendered
    manifest = load_manifest(MODELS, verify=False)
    op = manifest.operating_point
    assert op is not None, "the committed model set records its test split's sensitivity and specificity"
    line = text[text.index("What the risk means"):]
    line = line[: line.index("Comment:")].strip()
    assert "expansion = hematoma growth > 6 ml or > 33 % on follow-up CT" in line
    assert f"High = probability {manifest.threshold * 100:.1f} % or more, which on {op.n} held-out synthetic " \
           f"test cases had sensitivity {op.sensitivity * 100:.0f} %, specificity {op.specificity * 100:.0f} %" in line
    assert ("NPV" in line) == (op.npv is not None)
    assert line.endswith("Synthetic-trained: not for clinical use.")
    comments = text[text.index("Qualitative Evaluations"):].split("Comment:")
    assert comments[2].strip().startswith("What the risk means"), comments[:3]


def test_every_value_is_printed_with_its_name(rendered: tuple[Dataset, str, str]) -> None:
    ds, text, dump = rendered
    numbers = _numbers(ds)
    names = {name for name, _, _ in numbers}
    assert {"Volume", "Probability of hematoma expansion", "Hematoma expansion probability threshold",
            "Hematoma volume by ABC/2", "Area", "Long axis", "Short axis"} <= names
    for name, value, unit in numbers:
        assert unit != "1", (name, value)
        assert f"{name}: {value} {unit}" in text, (name, value, unit)
        assert f'NUM:(,,"{name}")="{value}" ({unit},UCUM' in dump, (name, value, unit)
    assert "Probability of hematoma expansion: 73.2 %" in text
    assert f"Hematoma expansion probability threshold: {committed_model().threshold * 100:.1f} %" in text
    assert "Risk of hematoma expansion: High" in text
    # no number followed by a bare "1" unit anywhere in the findings
    assert not re.search(r"\d \b1\b(?! ?(of|mm|ml|cm))", text[text.index("Imaging Measurements"):])


def test_summary_is_the_first_comment(rendered: tuple[Dataset, str, str]) -> None:
    ds, text, dump = rendered
    volume = next(v for n, v, _ in _numbers(ds) if n == "Volume")
    threshold = committed_model().threshold * 100
    summary = (f"Hematoma {float(volume):.1f} ml; expansion probability 73 % (threshold {threshold:.0f} %): High risk. "
               "Synthetic-trained model, not for clinical use.")
    comments = text[text.index("Qualitative Evaluations"):]
    assert comments.startswith(f"Qualitative Evaluations Comment: {summary}"), comments[:300]
    assert f'TEXT:(,,"Comment")="{summary}"' in dump
    assert "series without number" in comments and "#?" not in text


def test_not_analysed_names_a_series_without_number(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", n=3, size=64)
    headers = series.headers()
    for ds in headers:
        del ds.SeriesNumber
    assert series_number_text(headers[0]) == "series without number"
    sr, _ = build_not_analysed(headers, "incomplete series", MODEL)
    sr.save_as(tmp_path / "na.dcm", enforce_file_format=True)
    dump = subprocess.run(["dsrdump", "+Pl", str(tmp_path / "na.dcm")], capture_output=True, text=True,
                          check=True).stdout
    assert "Source: series without number 'Head 5mm soft tissue'" in dump


def test_findings_on_the_first_screen_in_a_browser(rendered: tuple[Dataset, str, str]) -> None:
    """dsr2html's page in chromium on a 1920 x 1080 screen: the volume and probability are visible without
    scrolling (the library above them is a few lines, whatever the slice count)."""
    import playwright.sync_api as pw_api  # installed by `make install`
    from viewer_helpers import launch
    with pw_api.sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport=SCREEN)
            page.goto((OUT / "sr.html").resolve().as_uri())
            page.screenshot(path=str(OUT / "sr-first-screen.png"))
            tops = {
                label: page.get_by_text(label, exact=False).first.bounding_box()
                for label in ("Volume", "Probability of hematoma expansion", "Risk of hematoma expansion")
            }
        finally:
            browser.close()
    for label, box in tops.items():
        assert box is not None and box["y"] + box["height"] <= SCREEN["height"], (label, box)


def test_selection_note_names_a_series_without_number(tmp_path: Path) -> None:
    from hexnode.series.info import SeriesInfo
    from hexnode.series.ranking import describe

    header = write_series(tmp_path / "ct", n=2, size=32).headers()[0]
    del header.SeriesNumber
    text = describe(SeriesInfo(series_uid=str(header.SeriesInstanceUID), header=header, instance_count=24))
    assert text.startswith("without number (") and "#?" not in text
    assert f"analysed series {text}".startswith("analysed series without number ('Head 5mm soft tissue'")
