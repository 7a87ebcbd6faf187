"""The SR as a text-only PACS shows it (issue 24): rendered by dcmtk's dsr2html and dsrdump.

A 24-slice series without a Series Number. The rendered text must put the findings on the first
screen (no per-image footnotes before them), print every value with its name and a unit that reads
(no bare UCUM "1"), and open the comments with the one-line summary. The HTML is kept in
tests/output/sr-text/ for a person to open.
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

from hexnode.report import build_not_analysed, build_results
from hexnode.report.common import series_number_text

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
    pred = prediction(series, probability=0.732)
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


def test_findings_come_before_any_image_footnote(rendered: tuple[Dataset, str, str]) -> None:
    _, text, _ = rendered
    findings = text.index("Imaging Measurements")
    assert "Image Position" not in text and "Footnote" not in text[:findings]
    # before the findings: header, observer, a few shared descriptors and the images as one
    # running list (one paragraph, not a line and a footnote each)
    before = text[:findings]
    assert re.search(r"(CT image ){24}", before + " ")
    # the shared descriptors once per group, whatever the slice count
    assert before.count("Acquisition Context :") <= 3, before


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
    assert "Hematoma expansion probability threshold: 35.0 %" in text
    assert "Risk of hematoma expansion: High" in text
    # no number followed by a bare "1" unit anywhere in the findings
    assert not re.search(r"\d \b1\b(?! ?(of|mm|ml|cm))", text[text.index("Imaging Measurements"):])


def test_summary_is_the_first_comment(rendered: tuple[Dataset, str, str]) -> None:
    ds, text, dump = rendered
    volume = next(v for n, v, _ in _numbers(ds) if n == "Volume")
    summary = (f"Hematoma {float(volume):.1f} ml; expansion probability 73 % (threshold 35 %): High risk. "
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
    from hexnode.route.info import SeriesInfo
    from hexnode.route.ranking import describe

    header = write_series(tmp_path / "ct", n=2, size=32).headers()[0]
    del header.SeriesNumber
    text = describe(SeriesInfo(series_uid=str(header.SeriesInstanceUID), header=header, instance_count=24))
    assert text.startswith("without number (") and "#?" not in text
    assert f"analysed series {text}".startswith("analysed series without number ('Head 5mm soft tissue'")
