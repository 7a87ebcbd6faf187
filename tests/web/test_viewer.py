"""hexnode's SEG, SR and SC in OHIF, in a real headless chromium (issue 18).

Orthanc (started here, Debian's, with its DICOMweb plugin) holds a phantom CT study and the
result objects hexnode builds for it; hexnode.viewer serves the pinned OHIF build same-origin.
Playwright drives Debian's /usr/bin/chromium (no browser download). Geometry is checked through
OHIF's own viewport transform (cornerstone `worldToCanvas`, reached via `window.services`):
(a) the SEG overlay's pixel bounding box lies within 2 px of the mask projected that way, for an
axial, a gantry-tilted, a mixed-thickness (4 mm + 7 mm), an overlapping 4 + 7 mm (as GE writes it)
and a series without Frame of Reference UID; (b) the SR opens without a page error, its outline is drawn
on the key slice where the projected outline lies, and the label carries volume and probability;
(c) the SC opens. Screenshots go to tests/output/viewer/.
"""

from __future__ import annotations

import io
import json
import re
import shutil
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import playwright.sync_api as playwright  # installed by `make install`; it drives Debian's chromium
import pydicom
import pytest
from PIL import Image
from pydicom.dataset import Dataset
from report_helpers import OUTPUT, Series, prediction, write_series
from viewer_helpers import CHROMIUM, PROJECT_JS, launch, open_ohif, wait_for_sop

from hexnode.devtools.net import free_port
from hexnode.devtools.orthanc import Orthanc, OrthancConfig
from hexnode.pipeline.contracts import Findings
from hexnode.report import build_results
from hexnode.report.render import key_slice
from hexnode.viewer import ViewerServer, ohif_installed

SHOTS = OUTPUT / "viewer"
FINDINGS = Findings(side="left", location="lobar", site="parietal", ivh_ml=1.4, midline_shift_mm=-2.6, oedema_ml=5.2)


@dataclass
class Study:
    series: Series
    sources: list[Dataset]
    files: dict[str, Path]
    uid: str


@dataclass
class Viewer:
    orthanc: Orthanc
    server: ViewerServer
    studies: dict[str, Study]
    browser: Any
    errors: list[str] = field(default_factory=list)


def _study(out: Path, tilt: float = 0.0, thickness: list[float] | None = None, *,
           centres: list[float] | None = None, no_frame_of_reference: bool = False, findings: bool = False) -> Study:
    """`centres`: each slice's position along z instead of contiguous slabs (overlapping runs);
    `no_frame_of_reference`: the source images without one (the results get their own); `findings`:
    the SR carries the findings' TID 1501 groups, as the worker reports them."""
    series = write_series(out / "ct", n=12, size=128, tilt_deg=tilt, thickness_mm=thickness)
    for k, path in enumerate(series.paths):
        if centres is None and not no_frame_of_reference:
            break
        ds = pydicom.dcmread(path)
        if centres is not None:
            ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], centres[k]]
            ds.SliceLocation = centres[k]
        if no_frame_of_reference:
            del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator
        ds.save_as(path)
    sources = series.headers()
    files = {}
    pred = replace(prediction(series), findings=FINDINGS if findings else None)
    for name, ds in zip(("seg", "sr", "sc"), build_results(sources, series.hu, series.mask, pred), strict=True):
        files[name] = out / f"{name}.dcm"
        ds.save_as(files[name], enforce_file_format=True)
    return Study(series, sources, files, str(sources[0].StudyInstanceUID))


@pytest.fixture(scope="module")
def viewer(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Viewer]:
    if not Path(CHROMIUM).exists():
        pytest.fail(f"{CHROMIUM} missing: run `make install` (scripts/bootstrap.sh installs Debian chromium)")
    if not ohif_installed():
        pytest.fail("OHIF is not unpacked: run `make install` (scripts/bootstrap.sh fetches @ohif/app from npm)")
    work = tmp_path_factory.mktemp("viewer")
    studies = {
        "axial": _study(work / "axial"),
        "tilted": _study(work / "tilted", tilt=18.0),
        # a reconstruction of two slice thicknesses (4 mm then 7 mm), as real scanners send
        "mixed": _study(work / "mixed", thickness=[4.0] * 6 + [7.0] * 6),
        # GE writes the 7 mm run starting 1.08 mm above the last 4 mm slice: the slabs overlap
        "overlap": _study(work / "overlap", thickness=[4.0] * 6 + [7.0] * 6,
                          centres=[4.0 * i for i in range(6)] + [21.08 + 7.0 * i for i in range(6)]),
        "no-frame-of-reference": _study(work / "noframe", no_frame_of_reference=True),
        "findings": _study(work / "findings", findings=True),
    }
    cfg = OrthancConfig(workdir=work / "orthanc", http_port=free_port(), dicom_port=free_port(), hexnode_port=1)
    orthanc = Orthanc.start(cfg, route_to=("NOBODY", "127.0.0.1", 1))  # REST uploads are never routed
    server = None
    try:
        for study in studies.values():
            for path in [*study.series.paths, *study.files.values()]:
                orthanc.upload(path)
        server = ViewerServer(orthanc.cfg.url).start()
        shutil.rmtree(SHOTS, ignore_errors=True)
        SHOTS.mkdir(parents=True)
        with playwright.sync_playwright() as pw:
            browser = launch(pw)
            yield Viewer(orthanc, server, studies, browser)
            browser.close()
    finally:
        if server is not None:
            server.stop()
        orthanc.stop()


def _open(viewer: Viewer, study: Study) -> Any:
    return open_ohif(viewer.browser, viewer.server.study_url(study.uid), viewer.errors)


def _world(ds: Dataset, xy: np.ndarray) -> list[list[float]]:
    """Patient coordinates of image coordinates (column, row), (0, 0) the top-left pixel's corner."""
    ipp = np.array([float(v) for v in ds.ImagePositionPatient])
    iop = np.array([float(v) for v in ds.ImageOrientationPatient])
    row_mm, col_mm = (float(v) for v in ds.PixelSpacing)
    # ImagePositionPatient is the centre of the first pixel: corner coordinates are shifted by half a pixel
    cols, rows = xy[:, 0] - 0.5, xy[:, 1] - 0.5
    pts = ipp + np.outer(cols * col_mm, iop[:3]) + np.outer(rows * row_mm, iop[3:])
    return pts.tolist()


def _mask_corners(mask2d: np.ndarray) -> np.ndarray:
    r, c = np.nonzero(mask2d)
    return np.unique(np.concatenate([np.c_[c + dc, r + dr] for dc in (0, 1) for dr in (0, 1)]), axis=0).astype(float)


def _record(check: str, **figures: Any) -> None:
    """What each geometry check measured, kept beside the screenshots."""
    with open(SHOTS / "geometry.jsonl", "a") as fh:
        fh.write(json.dumps({"check": check, **figures}) + "\n")


def _canvas_rgb(page: Any, rect: list[float]) -> np.ndarray:
    x, y, w, h = rect
    png = page.screenshot(clip={"x": x, "y": y, "width": w, "height": h})
    return np.asarray(Image.open(io.BytesIO(png)).convert("RGB")).astype(int)


@pytest.mark.parametrize("name", ["axial", "tilted", "mixed", "overlap", "no-frame-of-reference"])
def test_seg_overlay_lies_on_the_mask(viewer: Viewer, name: str) -> None:
    study = viewer.studies[name]
    page = _open(viewer, study)
    page.get_by_text("hexnode hematoma SEG").dblclick()
    page.get_by_role("button", name="Yes").click(timeout=30_000)  # "open this segmentation?"
    # OHIF jumps to the segment; wait until the viewport shows a slice with hematoma
    with_mask = {ds.SOPInstanceUID for ds, m in zip(study.sources, study.series.mask, strict=True) if m.any()}
    sop, rect = wait_for_sop(page, with_mask)
    assert sop in with_mask, "the viewport never showed a slice of the segment"
    page.wait_for_timeout(3000)  # labelmap rendering
    k = next(i for i, ds in enumerate(study.sources) if ds.SOPInstanceUID == sop)
    page.screenshot(path=str(SHOTS / f"seg-{name}.png"))
    projected = np.array(page.evaluate(PROJECT_JS, _world(study.sources[k], _mask_corners(study.series.mask[k]))))
    want = np.r_[projected.min(axis=0), projected.max(axis=0)]  # x0, y0, x1, y1 in canvas pixels
    rgb = _canvas_rgb(page, rect)
    # the segment's yellow (R, G high, B low) where the CT is grey; searched near the projection so
    # that a misplaced overlay shows as a wrong box, not as a far-off one
    overlay = (rgb[..., 0] - rgb[..., 2] > 60) & (rgb[..., 1] - rgb[..., 2] > 40)
    x0, y0, x1, y1 = (int(v) for v in (want[0] - 30, want[1] - 30, want[2] + 30, want[3] + 30))
    near = np.zeros_like(overlay)
    near[max(y0, 0):y1, max(x0, 0):x1] = True
    ys, xs = np.nonzero(overlay & near)
    assert xs.size > 200, f"no segment overlay near the hematoma (screenshot {SHOTS / f'seg-{name}.png'})"
    got = np.array([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1], dtype=float)
    _record(f"seg-{name}", overlay_box=got.tolist(), projected_box=want.round(2).tolist(),
            max_px=float(np.abs(got - want).max()))
    assert np.all(np.abs(got - want) <= 2.0), f"overlay box {got} vs projected mask {want.round(1)}"
    assert viewer.errors == []
    page.close()


def test_sr_opens_with_outline_and_label(viewer: Viewer) -> None:
    study = viewer.studies["axial"]
    page = _open(viewer, study)
    page.get_by_text("hexnode HE risk SR").dblclick()
    k = key_slice(study.series.mask)
    key = study.sources[k]
    sop, _ = wait_for_sop(page, {key.SOPInstanceUID})
    assert sop == key.SOPInstanceUID, "the SR did not open on its key slice"
    outline = page.locator("svg.svg-layer polyline").first
    outline.wait_for(timeout=30_000)
    page.wait_for_timeout(1000)
    page.screenshot(path=str(SHOTS / "sr.png"))
    assert viewer.errors == [] and "Something went wrong" not in page.content()
    # the drawn outline is the SR's polygon through the viewer's own transform
    sr = pydicom.dcmread(study.files["sr"])
    measurements = next(i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")
    # the key-slice group: the one with an outline (the findings' groups have none)
    scoord = next(i for g in measurements.ContentSequence for i in g.ContentSequence if i.ValueType == "SCOORD")
    polygon = np.array([float(v) for v in scoord.GraphicData]).reshape(-1, 2)
    expected = np.array(page.evaluate(PROJECT_JS, _world(key, polygon)))
    drawn = np.array([float(v) for v in outline.get_attribute("points").replace(",", " ").split()]).reshape(-1, 2)
    assert len(drawn) >= len(polygon) - 1
    gap = np.linalg.norm(drawn[:, None, :] - expected[None, :, :], axis=-1).min(axis=1)
    _record("sr-outline", vertices=len(drawn), max_px=float(gap.max()), mean_px=float(gap.mean()))
    assert gap.max() <= 2.0, f"outline drawn up to {gap.max():.1f} px from the SR's polygon"
    label = " ".join(page.locator("svg.svg-layer text").all_text_contents())
    volume = next(float(i.MeasuredValueSequence[0].NumericValue) for i in measurements.ContentSequence[0]
                  .ContentSequence if i.ValueType == "NUM" and i.ConceptNameCodeSequence[0].CodeValue == "118565006")
    # OHIF prints two decimals: "61.20 %"
    assert f"Volume: {volume:.2f} cm3" in label, label
    assert re.search(r"Probability of hematoma expansion: 61\.20? %", label), label
    page.close()


def test_sr_with_findings_opens_on_its_key_slice(viewer: Viewer) -> None:
    study = viewer.studies["findings"]
    page = _open(viewer, study)
    page.get_by_text("hexnode HE risk SR").dblclick()
    key = study.sources[key_slice(study.series.mask)]
    sop, _ = wait_for_sop(page, {key.SOPInstanceUID})
    page.screenshot(path=str(SHOTS / "sr-findings.png"))
    page.close()
    assert sop == key.SOPInstanceUID, "the SR with findings did not open on its key slice"


def test_sc_opens(viewer: Viewer) -> None:
    study = viewer.studies["axial"]
    page = _open(viewer, study)
    page.get_by_text("hexnode summary").dblclick()
    sc = pydicom.dcmread(study.files["sc"], stop_before_pixels=True)
    sop, rect = wait_for_sop(page, {sc.SOPInstanceUID})
    assert sop == sc.SOPInstanceUID
    page.wait_for_timeout(2000)
    page.screenshot(path=str(SHOTS / "sc.png"))
    rgb = _canvas_rgb(page, rect)
    # the amber disclaimer burned in (the risk itself is white: no colour code, issue 34)
    amber = (rgb[..., 0] > 200) & (rgb[..., 1] > 120) & (rgb[..., 1] < 210) & (rgb[..., 2] < 110)
    assert amber.sum() > 100
    assert viewer.errors == []
    page.close()
