"""Result objects against real validators: dciodvfy, PixelMed DicomSRValidator, dcmqi, highdicom.

Source CT: a small phantom series (tests/report_helpers.py) written in explicit LE, implicit LE
(slices in descending z) and JPEG-LS, plus a gantry-tilted series; the report is built from
headers read with stop_before_pixels, as the worker passes them. Objects and PNGs of the summary
images are kept in tests/output/report/ for a person to look at.
"""

from __future__ import annotations

import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

import highdicom as hd
import numpy as np
import pydicom
import pytest
import SimpleITK as sitk
from PIL import Image
from pydicom.dataset import Dataset
from report_helpers import (
    MODEL,
    OUTPUT,
    PIXELMED_1410_ON_1411,
    PIXELMED_HEAD_CT_NOT_IN_CID_100,
    Series,
    dciodvfy,
    prediction,
    require,
    sr_validator,
    venv_tool,
    write_series,
)

from hexnode.pipeline.contracts import ModelInfo, Prediction
from hexnode.report import build_not_analysed, build_results, codes, derive_uid
from hexnode.report.common import SEG_SERIES, series_description
from hexnode.report.render import BAND, FRAME, OUTLINE_RGB, SIZE, key_slice, slice_rgb
from hexnode.report.sc import orientation_markers, summary_lines
from hexnode.report.seg import content_description

SELECTION = "series 3 of 4 chosen: soft-tissue kernel, 5 mm"
TILT_NOTE = "gantry tilt 18.0 degrees"
REASON = "bone kernel reconstruction (BONE); a soft-tissue series was analysed instead"
# name -> (transfer syntax, descending z, gantry tilt)
CASES = {
    "explicit": ("explicit", False, 0.0),
    "implicit": ("implicit", True, 0.0),
    "jpegls": ("jpegls", False, 0.0),
    "tilted": ("explicit", True, 18.0),
}


@dataclass
class Built:
    name: str
    series: Series
    sources: list[Dataset]
    prediction: Prediction
    files: dict[str, Path]  # seg, sr, sc, na_sr, na_sc


def _write(objs: list[Dataset], names: list[str], out: Path) -> dict[str, Path]:
    files = {}
    for name, ds in zip(names, objs, strict=True):
        path = out / f"{name}.dcm"
        ds.save_as(path, enforce_file_format=True)
        files[name] = path
    return files


def _png(path: Path, png: Path) -> np.ndarray:
    rgb = pydicom.dcmread(path).pixel_array
    Image.fromarray(rgb).save(png)
    return rgb


@pytest.fixture(scope="module", params=list(CASES))
def built(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Built:
    name = request.param
    syntax, descending, tilt = CASES[name]
    series = write_series(tmp_path_factory.mktemp(name) / "ct", syntax=syntax, descending=descending, tilt_deg=tilt)
    sources = series.headers()
    notes = (TILT_NOTE,) if tilt else ()
    pred = prediction(series, notes=notes)
    out = OUTPUT / "report" / name
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files = _write(build_results(sources, series.hu, series.mask, pred, selection_note=SELECTION), ["seg", "sr", "sc"], out)
    files |= _write(build_not_analysed(sources, REASON, MODEL), ["na_sr", "na_sc"], out)
    _png(files["sc"], out / "sc.png")
    _png(files["na_sc"], out / "na_sc.png")
    return Built(name, series, sources, pred, files)


def _texts(ds: Dataset) -> list[str]:
    found: list[str] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.ValueType == "TEXT":
                found.append(str(item.TextValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(list(ds.ContentSequence))
    return found


def _comments(ds: Dataset) -> list[str]:
    """The TEXT items of the Qualitative Evaluations container, in order."""
    container = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "C0034375")
    return [str(i.TextValue) for i in container.ContentSequence]


def test_sources_are_headers_only(built: Built) -> None:
    # The worker passes headers without pixels; the report must never need them.
    assert all("PixelData" not in ds for ds in built.sources)


@pytest.mark.parametrize("kind", ["seg", "sr", "sc", "na_sr", "na_sc"])
def test_dciodvfy_zero_errors(built: Built, kind: str) -> None:
    require("dciodvfy")
    errors, text = dciodvfy(built.files[kind])
    assert errors == [], text
    # Sanity: dciodvfy really parsed the object (it names the IOD it checked).
    iod = {"seg": "Segmentation", "sr": "Comprehensive3DSR", "sc": "SCImage", "na_sr": "Comprehensive3DSR",
           "na_sc": "SCImage"}[kind]
    assert iod.lower() in text.replace(" ", "").lower()


# Not the tilted case: an ITK image cannot hold a sheared grid, so dcmqi resamples it.
@pytest.mark.parametrize("built", ["explicit", "implicit", "jpegls"], indirect=True)
def test_seg_roundtrip_dcmqi_voxel_for_voxel(built: Built, tmp_path: Path) -> None:
    tool = venv_tool("segimage2itkimage")  # PyPI dcmqi, installed by `make install`
    proc = subprocess.run(
        [tool, "--inputDICOM", str(built.files["seg"]), "--outputDirectory", str(tmp_path), "-t", "nrrd"],
        capture_output=True, text=True, timeout=120,
    )
    assert proc.returncode == 0, proc.stdout + proc.stderr
    img = sitk.ReadImage(str(tmp_path / "1.nrrd"))
    arr = sitk.GetArrayFromImage(img)  # (z, y, x) in dcmqi's own slice order
    assert arr.shape == built.series.mask.shape
    iop = np.array([float(v) for v in built.sources[0].ImageOrientationPatient])
    direction = np.array(img.GetDirection()).reshape(3, 3)
    np.testing.assert_allclose(direction[:, 0], iop[:3], atol=1e-5)
    np.testing.assert_allclose(direction[:, 1], iop[3:], atol=1e-5)
    seen = set()
    for k, ds in enumerate(built.sources):
        # Where does source slice k's first pixel land in dcmqi's image? Exactly on (0, 0, z).
        cont = img.TransformPhysicalPointToContinuousIndex([float(v) for v in ds.ImagePositionPatient])
        np.testing.assert_allclose(cont[:2], (0.0, 0.0), atol=1e-3)
        z = int(round(cont[2]))
        assert abs(cont[2] - z) < 1e-3
        seen.add(z)
        np.testing.assert_array_equal(arr[z] > 0, built.series.mask[k] > 0, err_msg=f"slice {k}")
    assert seen == set(range(len(built.sources)))
    assert int((arr > 0).sum()) == int(built.series.mask.sum()) > 0


def test_sr_values_reread_by_highdicom(built: Built) -> None:
    sr = hd.sr.srread(built.files["sr"])
    seg = pydicom.dcmread(built.files["seg"], stop_before_pixels=True)
    groups = sr.content.get_volumetric_roi_measurement_groups()
    assert len(groups) == 1
    g = groups[0]
    pred = built.prediction
    volume = g.get_measurements(name=codes.VOLUME)[0]
    assert volume.value == round(pred.volume_ml, 2) and volume.value > 0
    assert volume.unit.value == "cm3" and volume.unit.scheme_designator == "UCUM"
    prob = g.get_measurements(name=codes.HE_PROBABILITY)[0]
    assert prob.value == round(pred.probability * 100, 1) == 61.2
    assert (prob.unit.value, prob.unit.scheme_designator) == ("%", "UCUM")
    thr = g.get_measurements(name=codes.HE_THRESHOLD)[0]
    assert thr.value == MODEL.threshold * 100 and thr.unit.value == "%"
    risk = g.get_qualitative_evaluations(name=codes.HE_RISK)[0].value
    assert (risk.value, risk.scheme_designator) == ("75540009", "SCT")  # 0.612 >= 0.35: High
    assert g.finding_type.value == "50960005"  # category only in the SEG: "Hemorrhage" says it here
    # every NCCT expansion sign as a coded finding, Present or Absent as measured, evidence in the comments
    assert len(pred.signs) == 6
    for sign in pred.signs:
        value = g.get_qualitative_evaluations(name=codes.SIGN_CODES[sign.name])[0].value
        assert (value.value, value.scheme_designator) == (("52101004" if sign.present else "2667000"), "SCT")
        assert any(sign.evidence in t for t in _comments(sr))
    ref = g.referenced_segment
    assert ref[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == seg.SOPInstanceUID
    assert ref[0].ReferencedSOPSequence[0].ReferencedSegmentNumber == 1
    assert g.tracking_uid == seg.SegmentSequence[0].TrackingUID  # SEG segment and SR group pair up
    # Title, procedure, template
    assert sr.ConceptNameCodeSequence[0].CodeValue == "126000"
    assert sr.ContentTemplateSequence[0].TemplateIdentifier == "1500"
    # Every CT image in the Image Library and in the evidence, with the SEG.
    evidence = {
        s.ReferencedSOPInstanceUID
        for study in sr.CurrentRequestedProcedureEvidenceSequence
        for series in study.ReferencedSeriesSequence
        for s in series.ReferencedSOPSequence
    }
    assert evidence == {ds.SOPInstanceUID for ds in built.sources} | {seg.SOPInstanceUID}
    texts = _texts(sr)
    assert _comments(sr)[0] == (f"Hematoma {round(pred.volume_ml, 1):.1f} ml; expansion probability 61 % "
                                "(threshold 35 %): High risk. Synthetic-trained model, not for clinical use.")
    assert any("not for clinical use" in t.lower() and "synthetic" in t.lower() for t in texts)
    assert SELECTION in texts
    assert (TILT_NOTE in texts) == (built.name == "tilted")
    assert any(MODEL.name in t and MODEL.version in t for t in texts)


def _inside_polygon(pts: np.ndarray, x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """Even-odd rule (ray casting along +x) for points (x, y) against a closed polygon."""
    inside = np.zeros(x.shape, dtype=bool)
    for (x0, y0), (x1, y1) in zip(pts[:-1], pts[1:], strict=True):
        if y0 == y1:
            continue
        crosses = (y0 > y) != (y1 > y)
        x_at = x0 + (y - y0) * (x1 - x0) / (y1 - y0)
        inside ^= crosses & (x < x_at)
    return inside


def _kothari_abc2(sources: list[Dataset], mask: np.ndarray, a_mm: float, b_mm: float) -> float:
    """ABC/2 recomputed here from the headers: C = weighted slice count x spacing along the normal."""
    iop = np.array([float(v) for v in sources[0].ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    z = np.array([np.dot([float(v) for v in ds.ImagePositionPatient], normal) for ds in sources])
    spacing = float(np.median(np.abs(np.diff(z))))  # uniform in these phantoms
    areas = mask.reshape(len(mask), -1).sum(axis=1)
    ratio = areas / areas.max()
    c_mm = spacing * float(np.sum(np.where(ratio >= 0.75, 1.0, np.where(ratio >= 0.25, 0.5, 0.0))))
    return a_mm * b_mm * c_mm / 2000.0


def test_sr_key_slice_outline(built: Built) -> None:
    """TID 1410 on the key slice: a closed outline of exactly the mask, area, axes, ABC/2."""
    sr = hd.sr.srread(built.files["sr"])
    planar = sr.content.get_planar_roi_measurement_groups()
    assert len(planar) == 1
    g = planar[0]
    k = key_slice(built.series.mask)
    key = built.sources[k]
    roi = g.roi
    assert roi is not None and roi.graphic_type == hd.sr.GraphicTypeValues.POLYLINE
    pts = roi.value
    np.testing.assert_array_equal(pts[0], pts[-1])  # closed
    assert roi.ContentSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == key.SOPInstanceUID
    assert pts.min() >= 0 and pts[:, 0].max() <= key.Columns and pts[:, 1].max() <= key.Rows
    # the polygon encloses exactly the mask's pixels: rasterise it at pixel centres
    cols, rows = np.meshgrid(np.arange(key.Columns) + 0.5, np.arange(key.Rows) + 0.5)
    inside = _inside_polygon(pts, cols, rows)
    np.testing.assert_array_equal(inside, built.series.mask[k] > 0)
    row_mm, col_mm = (float(v) for v in key.PixelSpacing)
    area = g.get_measurements(name=codes.AREA)[0]
    assert area.value == round(float(built.series.mask[k].sum()) * row_mm * col_mm / 100.0, 2)
    assert area.unit.value == "cm2"
    # long axis: the longest distance between two corners of mask pixels (computed independently)
    r, c = np.nonzero(built.series.mask[k])
    corners = np.unique(np.concatenate([np.c_[c + dc, r + dr] for dc in (0, 1) for dr in (0, 1)]), axis=0)
    mm = corners * np.array([col_mm, row_mm])
    d = np.linalg.norm(mm[:, None] - mm[None], axis=-1)
    i, j = np.unravel_index(int(np.argmax(d)), d.shape)
    long_axis = g.get_measurements(name=codes.LONG_AXIS)[0]
    assert long_axis.value == pytest.approx(d[i, j], abs=0.051) and long_axis.unit.value == "mm"
    u = (mm[j] - mm[i]) / d[i, j]
    across = mm @ np.array([-u[1], u[0]])
    short_axis = g.get_measurements(name=codes.SHORT_AXIS)[0].value
    assert short_axis == pytest.approx(across.max() - across.min(), abs=0.051) and 0 < short_axis <= long_axis.value
    abc2 = g.get_measurements(name=codes.ABC2_VOLUME)[0]
    assert abc2.value == pytest.approx(_kothari_abc2(built.sources, built.series.mask, long_axis.value, short_axis),
                                       rel=0.01)
    assert abc2.unit.value == "cm3"
    # one finding measured two ways: the planar group shares the volumetric group's (and the SEG
    # segment's) tracking UID, so a viewer labels the outline with the volume and probability
    vol = sr.content.get_volumetric_roi_measurement_groups()[0]
    assert g.tracking_uid == vol.tracking_uid == derive_uid(str(key.SeriesInstanceUID), MODEL.version, "tracking")
    assert vol.get_measurements(name=codes.VOLUME) and vol.get_measurements(name=codes.HE_PROBABILITY)
    assert any(t.startswith(f"Key slice {k + 1} of {len(built.sources)}") for t in _comments(sr))


def test_abc2_depth_weighs_each_slice_by_its_own_spacing() -> None:
    from hexnode.report.outline import kothari_depth_mm, slice_steps

    # 4 mm slices then 7 mm slices: each slice's share is half the gaps to its neighbours
    z = [0.0, 4.0, 8.0, 13.5, 20.5, 27.5]
    assert slice_steps(z, 5.0) == [4.0, 4.0, 4.75, 6.25, 7.0, 7.0]
    # weights 0 (< 25 % of the largest), 0.5 (25-75 %), 1 (>= 75 %)
    areas = [10.0, 30.0, 80.0, 100.0, 50.0, 20.0]
    assert kothari_depth_mm(areas, slice_steps(z, 5.0)) == pytest.approx(0.5 * 4.0 + 4.75 + 6.25 + 0.5 * 7.0)
    assert slice_steps([3.0], 5.0) == [5.0] and kothari_depth_mm([0.0], [5.0]) == 0.0


def test_sr_image_library_lists_every_ct_image(built: Built) -> None:
    sr = pydicom.dcmread(built.files["sr"])
    library = [i for i in sr.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "111028"]
    assert len(library) == 1
    listed = [
        e.ReferencedSOPSequence[0].ReferencedSOPInstanceUID
        for group in library[0].ContentSequence
        for e in group.ContentSequence
        if e.ValueType == "IMAGE"
    ]
    assert sorted(listed) == sorted(ds.SOPInstanceUID for ds in built.sources)


def test_air_contributing_equipment_and_patient_module(built: Built) -> None:
    src = built.sources[0]
    for kind in ("seg", "sr", "sc", "na_sr", "na_sc"):
        ds = pydicom.dcmread(built.files[kind], stop_before_pixels=True)
        air = [
            e for e in ds.ContributingEquipmentSequence
            if e.PurposeOfReferenceCodeSequence[0].CodeValue == "1630"
            and e.PurposeOfReferenceCodeSequence[0].CodingSchemeDesignator == "99IHE"
        ]
        assert len(air) == 1, kind
        assert air[0].Manufacturer == "hexnode" and MODEL.version in air[0].SoftwareVersions
        assert pydicom.uid.UID(air[0].DeviceUID).is_valid
        for keyword in ("PatientName", "PatientID", "PatientBirthDate", "PatientSex", "StudyInstanceUID",
                        "AccessionNumber", "StudyID", "StudyDate", "StudyTime"):
            assert ds[keyword].value == src[keyword].value, (kind, keyword)
        assert ds.SeriesInstanceUID != src.SeriesInstanceUID
        assert str(ds.SeriesDescription).startswith("hexnode")


def test_series_descriptions(built: Built) -> None:
    seg, sr, sc = (pydicom.dcmread(built.files[k], stop_before_pixels=True) for k in ("seg", "sr", "sc"))
    assert (seg.SeriesDescription, sr.SeriesDescription, sc.SeriesDescription) == (
        "hexnode hematoma SEG, not for clinical use", "hexnode HE risk SR", "hexnode summary")
    assert len({seg.SeriesNumber, sr.SeriesNumber, sc.SeriesNumber, built.sources[0].SeriesNumber}) == 4


def test_seg_carries_the_disclaimer_within_long_string_limits(built: Built) -> None:
    """Series description, segment label and content description of the SEG say "not for clinical
    use" (a viewer showing only the overlay shows one of them), each within LO's 64 characters,
    whatever the revision or the model version's length."""
    seg = pydicom.dcmread(built.files["seg"], stop_before_pixels=True)
    texts = (seg.SeriesDescription, seg.SegmentSequence[0].SegmentLabel, seg.ContentDescription)
    for text in texts:
        assert "not for clinical use" in text and len(text) <= 64, text
    for revision in (1, 12, 999):
        text = series_description(SEG_SERIES, revision, disclaimer=True)
        assert "not for clinical use" in text and "corrected, rev" in text and len(text) <= 64, text
    for version in ("0.3", "synth-20261201-s1-7f004d54", "x" * 80):
        text = content_description(ModelInfo(name="hexnode-he", version=version, threshold=0.3))
        assert "not for clinical use" in text and len(text) <= 64, text


def test_seg_segment_and_frames(built: Built) -> None:
    seg = pydicom.dcmread(built.files["seg"])
    assert seg.SegmentationType == "BINARY"
    assert seg.NumberOfFrames == len(built.sources)  # empty frames kept
    segment = seg.SegmentSequence[0]
    assert segment.SegmentedPropertyTypeCodeSequence[0].CodeValue == "50960005"
    assert segment.SegmentedPropertyCategoryCodeSequence[0].CodeValue == "49755003"
    assert segment.AnatomicRegionSequence[0].CodeValue == "12738006"
    assert segment.SegmentAlgorithmType == "AUTOMATIC" and segment.SegmentAlgorithmName == "hexnode"
    algorithm = segment.SegmentationAlgorithmIdentificationSequence[0]
    assert algorithm.AlgorithmName == "hexnode" and algorithm.AlgorithmVersion == MODEL.version
    assert algorithm.AlgorithmFamilyCodeSequence[0].CodeValue == "123110"  # Artificial Intelligence
    # highdicom may store frames in its own spatial order: each frame must name its source image,
    # sit at that image's position and hold that image's mask slice.
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(built.sources)}
    frames = seg.pixel_array.reshape(len(built.sources), *built.series.mask.shape[1:])
    seen = set()
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = index[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        seen.add(k)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in built.sources[k].ImagePositionPatient], atol=1e-4)
        np.testing.assert_array_equal(frames[f], built.series.mask[k])
    assert seen == set(range(len(built.sources)))


def test_summary_image(built: Built) -> None:
    sc = pydicom.dcmread(built.files["sc"])
    rgb = sc.pixel_array
    side = SIZE + 2 * FRAME
    assert rgb.shape[1] == side + BAND and rgb.shape[0] >= side and sc.PhotometricInterpretation == "RGB"
    assert sc.BurnedInAnnotation == "YES"
    k = key_slice(built.series.mask)
    assert built.series.mask[k].sum() == built.series.mask.reshape(len(built.sources), -1).sum(axis=1).max()
    assert sc.SourceImageSequence[0].ReferencedSOPInstanceUID == built.sources[k].SOPInstanceUID
    # The slice is there pixel for pixel: outline drawn, and no letter on the anatomy (issue 34).
    bare = slice_rgb(built.series.hu[k], built.series.mask[k])
    outline = np.all(bare == OUTLINE_RGB, axis=-1)
    assert outline.sum() > 100
    assert np.array_equal(rgb[FRAME:FRAME + SIZE, FRAME:FRAME + SIZE], bare)
    # Text in the band beside it, at its top (the result) and at its foot (the disclaimer).
    band = rgb[:, side + 1:]
    lit = band.max(axis=-1) > 128
    assert lit[:60].sum() > 200 and lit[-60:].sum() > 100
    # Neutral colours: the risk line is white whatever the risk, nothing anywhere is green.
    headline = band[:40][lit[:40]].astype(int)
    assert (headline.max(axis=-1) - headline.min(axis=-1)).max() < 30
    pixels = rgb.reshape(-1, 3).astype(int)
    green = (pixels[:, 1] > pixels[:, 0] + 40) & (pixels[:, 1] > pixels[:, 2] + 40)
    assert not green.any()
    # Orientation markers in the frame around the slice (R left, L right, A top, P bottom).
    frame = rgb.max(axis=-1) > 128
    mid = slice(FRAME + SIZE // 2 - 12, FRAME + SIZE // 2 + 12)
    for region in (frame[mid, :FRAME], frame[mid, FRAME + SIZE:side], frame[:FRAME, mid], frame[FRAME + SIZE:side, mid]):
        assert region.sum() > 10


@pytest.mark.parametrize(("iop", "expected"), [
    ([1, 0, 0, 0, 1, 0], ("R", "L", "A", "P")),  # standard axial, radiological view
    ([-1, 0, 0, 0, -1, 0], ("L", "R", "P", "A")),  # rotated 180 degrees
    ([1, 0, 0, 0, 0.974, 0.225], ("R", "L", "A", "P")),  # tilted gantry: still axial
    ([0, 1, 0, 0, 0, -1], ("A", "P", "H", "F")),  # sagittal
])
def test_orientation_markers_follow_the_image_orientation(iop: list[float], expected: tuple[str, ...]) -> None:
    ds = Dataset()
    ds.ImageOrientationPatient = iop
    m = orientation_markers(ds)
    assert (m.left, m.right, m.top, m.bottom) == expected


def test_not_analysed_sr_says_why(built: Built) -> None:
    ds = pydicom.dcmread(built.files["na_sr"])
    texts = _texts(ds)
    assert f"Not analysed: {REASON}" in texts
    codes_found = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            if item.ValueType == "CODE":
                codes_found.append((item.ConceptNameCodeSequence[0].CodeValue, item.ConceptCodeSequence[0].CodeValue))
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(list(ds.ContentSequence))
    assert (codes.ANALYSIS_STATUS.value, codes.NOT_ANALYSED.value) in codes_found
    assert ds.SeriesDescription == "hexnode HE risk SR (not analysed)"
    sc = pydicom.dcmread(built.files["na_sc"])
    assert sc.SeriesDescription == "hexnode summary (not analysed)"
    assert (sc.pixel_array.max(axis=-1) > 100).sum() > 1000  # text is there


def _with_groups(path: Path, out: Path, keep: str) -> Path:
    """A copy of the SR whose Imaging Measurements hold only the planar ('scoord') or only the
    volumetric ('segment') measurement group."""
    ds = pydicom.dcmread(path)
    measurements = next(i for i in ds.ContentSequence if i.ConceptNameCodeSequence[0].CodeValue == "126010")

    def kind(group: Dataset) -> str:
        return "scoord" if any(i.ValueType == "SCOORD" for i in group.ContentSequence) else "segment"

    measurements.ContentSequence = [g for g in measurements.ContentSequence if kind(g) == keep]
    ds.save_as(out, enforce_file_format=True)
    return out


def _explained(errors: list[str]) -> list[str]:
    return [e for e in errors if e != PIXELMED_HEAD_CT_NOT_IN_CID_100]


# One JVM run (~15 s) per SR kind keeps the suite fast; the tilted case carries every optional item.
@pytest.mark.parametrize("built", ["tilted"], indirect=True)
def test_pixelmed_sr_validator_zero_errors(built: Built, tmp_path: Path) -> None:
    require("DicomSRValidator")
    planar_only = _with_groups(built.files["sr"], tmp_path / "planar.dcm", "scoord")
    volumetric_only = _with_groups(built.files["sr"], tmp_path / "volumetric.dcm", "segment")
    for path in (planar_only, volumetric_only, built.files["na_sr"]):
        errors, text = sr_validator(path)
        assert _explained(errors) == [], text
        assert PIXELMED_HEAD_CT_NOT_IN_CID_100 in errors, text  # the one allowed line is the one seen
        assert "Found Root Template TID_1500" in text and "IOD validation complete" in text
    errors, text = sr_validator(built.files["sr"])
    assert "Found Root Template TID_1500" in text and "IOD validation complete" in text
    # the volumetric group is the first (1.8.1, the Image Library being last): the planar one
    # (1.8.2) passes TID 1410
    unexplained = [e for e in _explained(errors) if not (e.startswith(PIXELMED_1410_ON_1411) and "within 1.8.1:" in e)]
    assert unexplained == [], text
    assert len(errors) <= 3


def test_rerun_gives_identical_uids(built: Built) -> None:
    s, p = built.series, built.prediction
    first = [pydicom.dcmread(f, stop_before_pixels=True) for f in (built.files["seg"], built.files["sr"], built.files["sc"])]
    again = build_results(built.sources, s.hu, s.mask, p, selection_note=SELECTION)
    assert [d.SOPInstanceUID for d in again] == [d.SOPInstanceUID for d in first]
    assert [d.SeriesInstanceUID for d in again] == [d.SeriesInstanceUID for d in first]
    na = build_not_analysed(built.sources, REASON, MODEL)
    assert [d.SOPInstanceUID for d in na] == [
        pydicom.dcmread(built.files[k], stop_before_pixels=True).SOPInstanceUID for k in ("na_sr", "na_sc")
    ]


def test_no_hemorrhage(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", n=8, size=96)
    empty = np.zeros_like(series.mask)
    pred = Prediction(volume_ml=0.0, probability=0.02, model=MODEL, hemorrhage_detected=False)
    seg, sr, sc = build_results(series.headers(), series.hu, empty, pred)
    out = OUTPUT / "report" / "no-hemorrhage"
    out.mkdir(parents=True, exist_ok=True)
    files = _write([seg, sr, sc], ["seg", "sr", "sc"], out)
    _png(files["sc"], out / "sc.png")
    for path in files.values():
        errors, text = dciodvfy(path)
        assert errors == [], text
    assert seg.NumberOfFrames == 8  # an empty segment is still a valid SEG, every frame kept
    assert not np.any(hd.seg.segread(files["seg"]).get_volume(combine_segments=False).array)
    g = hd.sr.srread(files["sr"]).content.get_volumetric_roi_measurement_groups()[0]
    assert g.get_measurements(name=codes.VOLUME)[0].value == 0.0
    # no hematoma, nothing to expand: neither High nor Low (a "Low" reads as a statement on a bleed)
    assert g.get_qualitative_evaluations(name=codes.HE_RISK)[0].value.value == "385432009"  # Not applicable
    assert "No hemorrhage detected." in _texts(sr)
    # nothing to outline: no planar group, and the summary says so first
    assert hd.sr.srread(files["sr"]).content.get_planar_roi_measurement_groups() == []
    assert _comments(sr)[0].startswith("No hemorrhage detected (hematoma 0.0 ml): expansion risk not applicable.")
    assert not any("Low risk" in t or "High risk" in t for t in _comments(sr))
    assert not any("Smallest hemorrhage reported" in t for t in _comments(sr))  # this model names no limit


def test_no_hemorrhage_names_the_model_sets_smallest_reported_hemorrhage(tmp_path: Path) -> None:
    from dataclasses import replace

    series = write_series(tmp_path / "ct", n=8, size=96)
    pred = Prediction(volume_ml=0.0, probability=0.02, model=replace(MODEL, min_lesion_ml=0.1),
                      hemorrhage_detected=False)
    _seg, sr, _sc = build_results(series.headers(), series.hu, np.zeros_like(series.mask), pred)
    errors, text = dciodvfy(_write([sr], ["sr"], tmp_path)["sr"])
    assert errors == [], text
    assert "Smallest hemorrhage reported: 0.1 ml (isolated islands of suspected blood below it are not called a " \
           "hemorrhage)." in _comments(sr)
    # the SC says the same floor under its headline, and states no volume or risk as found
    top, _bottom = summary_lines(pred, None, 4, 8)
    assert [line.text for line in top[:1]] == ["No hemorrhage detected"]
    assert "Smallest hemorrhage reported: 0.1 ml" in [line.text for line in top]
    assert not any("HIGH" in line.text or "LOW" in line.text for line in top)
    assert "Hematoma volume 0.0 ml; expansion risk not applicable" in [line.text for line in top]


def test_revision_supersedes(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", n=6, size=64)
    sources = series.headers()
    pred = prediction(series)
    r0 = build_results(sources, series.hu, series.mask, pred)
    r1 = build_results(sources, series.hu, series.mask, pred, revision=1)
    assert {d.SOPInstanceUID for d in r0}.isdisjoint({d.SOPInstanceUID for d in r1})
    sr1 = r1[1]
    pred_ref = sr1.PredecessorDocumentsSequence[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0]
    assert pred_ref.ReferencedSOPInstanceUID == r0[1].SOPInstanceUID
    assert any("supersedes" in t for t in _texts(sr1))
    assert "revision 1" in sr1.SeriesDescription
    # A not-analysed report takes the same SR slot, so a corrected result names it as predecessor.
    na0 = build_not_analysed(sources, "incomplete series", MODEL)
    assert na0[0].SOPInstanceUID == r0[1].SOPInstanceUID
    errors, text = dciodvfy(_write([sr1], ["sr1"], tmp_path)["sr1"])
    assert errors == [], text


def test_derive_uid_is_deterministic_and_distinct() -> None:
    a = derive_uid("1.2.3", "1.0", "seg")
    assert a == derive_uid("1.2.3", "1.0", "seg") and pydicom.uid.UID(a).is_valid and len(a) <= 64
    others = {derive_uid("1.2.3", "1.0", "sr"), derive_uid("1.2.3", "1.1", "seg"), derive_uid("1.2.4", "1.0", "seg"),
              derive_uid("1.2.3", "1.0", "seg", revision=1)}
    assert a not in others and len(others) == 4
    with pytest.raises(ValueError):
        derive_uid("1.2.3", "1.0", "nonsense")


def test_mismatched_mask_is_refused(tmp_path: Path) -> None:
    series = write_series(tmp_path / "ct", n=4, size=64)
    with pytest.raises(ValueError):
        build_results(series.headers()[:3], series.hu, series.mask, prediction(series))


def test_enhanced_ct_multiframe_source(tmp_path: Path) -> None:
    # Frames stored in descending z; the loader's z order (and the mask's) is ascending.
    series = write_series(tmp_path / "ct", n=8, size=64, descending=True)
    full = [pydicom.dcmread(p) for p in series.paths]
    enhanced = hd.legacy.LegacyConvertedEnhancedCTImage(full, hd.UID(), 5, hd.UID(), 1)
    enhanced.save_as(tmp_path / "enhanced.dcm", enforce_file_format=True)
    header = pydicom.dcmread(tmp_path / "enhanced.dcm", stop_before_pixels=True)
    order = np.argsort([float(ds.ImagePositionPatient[2]) for ds in full], kind="stable")  # frame of each z
    hu_z, mask_z = series.hu[order], series.mask[order]
    objs = build_results([header], hu_z, mask_z, prediction(series))
    out = OUTPUT / "report" / "enhanced"
    out.mkdir(parents=True, exist_ok=True)
    files = _write(objs, ["seg", "sr", "sc"], out)
    for path in files.values():
        errors, text = dciodvfy(path)
        assert errors == [], text
    seg = pydicom.dcmread(files["seg"])
    frames = seg.pixel_array.reshape(8, 64, 64)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        source_frame = int(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        np.testing.assert_array_equal(frames[f], series.mask[source_frame - 1])  # file order = frame order
    sc = pydicom.dcmread(files["sc"], stop_before_pixels=True)
    k = key_slice(mask_z)
    assert int(sc.SourceImageSequence[0].ReferencedFrameNumber) == int(order[k]) + 1


def test_not_analysed_from_odd_headers(tmp_path: Path) -> None:
    """A rejected series may be a dose report, and headers may lack type 2 attributes."""
    series = write_series(tmp_path / "ct", n=3, size=64)
    ct = series.headers()[0]
    dose = Dataset()
    for keyword in ("StudyInstanceUID", "PatientID", "PatientName", "StudyDate", "StudyTime", "AccessionNumber"):
        setattr(dose, keyword, ct[keyword].value)
    dose.SOPClassUID = "1.2.840.10008.5.1.4.1.1.88.67"  # X-Ray Radiation Dose SR
    dose.SOPInstanceUID = pydicom.uid.generate_uid()
    dose.SeriesInstanceUID = pydicom.uid.generate_uid()
    dose.Modality, dose.SeriesNumber, dose.SeriesDescription = "SR", 997, "Dose Report"
    sr, sc = build_not_analysed([dose], "not a CT image series (dose report)", MODEL)
    assert "PatientSex" not in dose  # the caller's header is left alone
    files = _write([sr, sc], ["na_sr", "na_sc"], tmp_path)
    for path in files.values():
        errors, text = dciodvfy(path)
        assert errors == [], text
    assert sr.PatientID == ct.PatientID and not sr.PatientSex  # present, empty (type 2)
    assert "PatientSex" in sr
    assert "Not analysed: not a CT image series (dose report)" in _texts(sr)


def test_synth_series_through_load_volume(tmp_path: Path) -> None:
    """The worker's real path: hexnode.synth files -> load_volume headers -> report."""
    from hexnode.pipeline.load import load_volume
    from hexnode.synth.dicom import write_series as synth_write
    from hexnode.synth.phantom import generate_case

    case = generate_case(5, 2, tilt_deg=12.0)
    vol = load_volume(synth_write(case, tmp_path / "ct", transfer_syntax="implicit"))
    assert "PixelData" not in vol.headers[0]
    mask = case.mask  # written most inferior first; the loader's z order is the same
    np.testing.assert_array_equal(vol.hu.astype(np.int16), case.hu)
    pred = Prediction(volume_ml=float(mask.sum()) * vol.voxel_ml, probability=0.2, model=MODEL, notes=vol.notes)
    objs = build_results(vol.headers, vol.hu, mask, pred, selection_note=SELECTION)
    out = OUTPUT / "report" / "synth"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    files = _write(objs, ["seg", "sr", "sc"], out)
    _png(files["sc"], out / "sc.png")
    for path in files.values():
        errors, text = dciodvfy(path)
        assert errors == [], text
    assert any("tilt" in note for note in vol.notes)
    assert set(vol.notes) <= set(_texts(objs[1]))
    seg = pydicom.dcmread(files["seg"])
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(vol.headers)}
    frames = seg.pixel_array.reshape(mask.shape)
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = index[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        np.testing.assert_array_equal(frames[f], mask[k])


@pytest.mark.parametrize("charset", ["ISO_IR 100", "ISO_IR 192", None])
def test_character_sets(tmp_path: Path, charset: str | None) -> None:
    """Patient names keep the source's character set; our own notes encode under any of them."""
    name = "Doe^Jane" if charset is None else "M\u00fcller^J\u00fcrgen"
    series = write_series(tmp_path / "ct", n=4, size=64, patient_name=name, charset=charset)
    pred = prediction(series, notes=("gantry tilt 18.0\u00b0 \u2013 analysed on tilted slices",))
    objs = build_results(series.headers(), series.hu, series.mask, pred)
    objs += build_not_analysed(series.headers(), "gap in slice positions \u2013 3 missing", MODEL)
    files = _write(objs, ["seg", "sr", "sc", "na_sr", "na_sc"], tmp_path)
    for kind, path in files.items():
        errors, text = dciodvfy(path)
        assert errors == [], text
        ds = pydicom.dcmread(path, stop_before_pixels=True)
        assert str(ds.PatientName) == name, kind
    assert "gantry tilt 18.0 deg - analysed on tilted slices" in _texts(pydicom.dcmread(files["sr"]))


def _frames_match_their_sources(seg: Dataset, sources: list[Dataset], mask: np.ndarray) -> None:
    """Each SEG frame names its own source image, sits at its position and holds its mask slice."""
    index = {ds.SOPInstanceUID: k for k, ds in enumerate(sources)}
    frames = seg.pixel_array.reshape(len(sources), *mask.shape[1:])
    seen = set()
    for f, item in enumerate(seg.PerFrameFunctionalGroupsSequence):
        k = index[item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID]
        seen.add(k)
        position = [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient]
        np.testing.assert_allclose(position, [float(v) for v in sources[k].ImagePositionPatient], atol=1e-4)
        np.testing.assert_array_equal(frames[f], mask[k])
    assert seen == set(range(len(sources)))


def test_source_without_frame_of_reference(tmp_path: Path) -> None:
    """Some exports drop the (mandatory) Frame of Reference UID: the results get their own, the SEG
    still references each source image, the SR says so, and nothing raises."""
    from hexnode.report.uids import results_frame_of_reference_uid

    series = write_series(tmp_path / "ct", n=8, size=64)
    for p in series.paths:
        ds = pydicom.dcmread(p)
        del ds.FrameOfReferenceUID, ds.PositionReferenceIndicator
        ds.save_as(p)
    sources = series.headers()
    seg, sr, sc = build_results(sources, series.hu, series.mask, prediction(series))
    expected = results_frame_of_reference_uid(str(sources[0].SeriesInstanceUID))
    assert seg.FrameOfReferenceUID == expected and pydicom.uid.UID(expected).is_valid
    assert all("FrameOfReferenceUID" not in ds for ds in sources)  # the caller's headers untouched
    _frames_match_their_sources(seg, sources, series.mask)
    note = next(t for t in _comments(sr) if t.startswith("The source series has no Frame of Reference UID"))
    assert expected in note and "references each source image by its SOP Instance UID" in note
    # the SR's image library describes the source images as they are: no Frame of Reference there
    assert not any(getattr(item, "UID", None) == expected for item in _items(sr))
    files = _write([seg, sr, sc], ["seg", "sr", "sc"], tmp_path)
    for path in files.values():
        errors, text = dciodvfy(path)
        assert errors == [], text
    assert build_results(sources, series.hu, series.mask, prediction(series))[0].FrameOfReferenceUID == expected


def _items(ds: Dataset) -> list[Dataset]:
    out: list[Dataset] = []

    def walk(items: list[Dataset]) -> None:
        for item in items:
            out.append(item)
            if "ContentSequence" in item:
                walk(item.ContentSequence)

    walk(list(ds.ContentSequence))
    return out


def test_overlapping_mixed_thickness_volume_sr_and_seg_agree(tmp_path: Path) -> None:
    """GE's 4 + 7 mm runs, the 7 mm run starting 1.08 mm above the last 4 mm slice: the volume
    (each slice's own share of the axis), the SR's volume and the SEG read back all say the same."""
    from hexnode.models.segment import volume_ml
    from hexnode.pipeline.load import load_volume, slice_extents

    thickness = [4.0] * 14 + [7.0] * 14
    series = write_series(tmp_path / "ct", n=28, size=64, thickness_mm=thickness)
    centres = [4.0 * i for i in range(14)] + [52.0 + 1.08 + 7.0 * i for i in range(14)]
    for p, z in zip(series.paths, centres, strict=True):
        ds = pydicom.dcmread(p)
        ds.ImagePositionPatient = [ds.ImagePositionPatient[0], ds.ImagePositionPatient[1], z]
        ds.SliceLocation = z
        ds.save_as(p)
    vol = load_volume(series.paths)
    assert vol.extents is not None and [h.SOPInstanceUID for h in vol.headers] == \
        [pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID for p in series.paths]
    volume = volume_ml(series.mask, vol.spacing, vol.extents)
    pred = Prediction(volume_ml=volume, probability=0.4, model=MODEL, hemorrhage_detected=True, notes=vol.notes)
    seg, sr, sc = build_results(vol.headers, vol.hu, series.mask, pred)
    _frames_match_their_sources(seg, vol.headers, series.mask)
    # a reader weighs each frame by the slab of the source image it references, as the loader did
    items = seg.PerFrameFunctionalGroupsSequence
    by_uid = {str(h.SOPInstanceUID): float(h.SliceThickness) for h in vol.headers}
    thick = [by_uid[str(i.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)] for i in items]
    z = [float(i.PlanePositionSequence[0].ImagePositionPatient[2]) for i in items]
    order = np.argsort(z)
    counts = seg.pixel_array.reshape(28, -1).sum(axis=1)[order]
    extents = slice_extents(np.array(z)[order], np.array(thick)[order])
    row, col = (float(v) for v in seg.SharedFunctionalGroupsSequence[0].PixelMeasuresSequence[0].PixelSpacing)
    seg_ml = float(np.dot(counts, extents)) * row * col / 1000.0
    assert seg_ml == pytest.approx(volume, rel=1e-9)
    g = hd.sr.srread(_write([sr], ["sr"], tmp_path)["sr"]).content.get_volumetric_roi_measurement_groups()[0]
    assert g.get_measurements(name=codes.VOLUME)[0].value == pytest.approx(round(volume, 2))
    assert any(t.startswith("slices overlap along the slice normal at 1 place (step 1.08 mm)") for t in _comments(sr))
    for path in _write([seg, sr, sc], ["seg", "sr", "sc"], tmp_path).values():
        errors, text = dciodvfy(path)
        assert errors == [], text


@pytest.mark.parametrize("sex,written", [("0000", ""), ("m", "M"), ("U", "")])
def test_patient_sex_outside_m_f_o_never_stops_a_report(tmp_path: Path, sex: str, written: str) -> None:
    """A real Philips export writes Patient's Sex '0000' (highdicom refuses it): the report goes back
    with Patient's Sex empty (unknown), or the value it clearly meant."""
    series = write_series(tmp_path / "ct", n=6, size=64)
    for p in series.paths:
        ds = pydicom.dcmread(p)
        ds.PatientSex = sex
        ds.save_as(p)
    sources = series.headers()
    made = [*build_results(sources, series.hu, series.mask, prediction(series)),
            *build_not_analysed(sources, "not a head scan (body part CHEST)", MODEL)]
    assert all(str(ds.PatientSex) == sex for ds in sources)  # the caller's headers untouched
    for i, ds in enumerate(made):
        assert str(ds.get("PatientSex", "") or "") == written
        errors, text = dciodvfy(_write([ds], [f"o{i}"], tmp_path)[f"o{i}"])
        assert errors == [], text


def test_source_modules_real_exports_break_are_mended_in_the_results(tmp_path: Path) -> None:
    """What the results copy from the source must be valid: real exports say Patient Identity
    Removed YES without the method, leave type 3 sequences empty and pad codes with NUL."""
    from hexnode.report.common import DEIDENTIFICATION_UNSTATED

    series = write_series(tmp_path / "ct", n=6, size=64)
    for p in series.paths:
        ds = pydicom.dcmread(p)
        ds.PatientIdentityRemoved = "YES"
        ds.ReferencedStudySequence = []
        code = Dataset()
        code.CodeValue = "CTHEAD1\x00"  # padded with NUL instead of a space, as a real export writes it
        code.CodingSchemeDesignator, code.CodeMeaning = "BROKER", "CAT SCAN"
        ds.ProcedureCodeSequence = [code]
        ds.save_as(p)
    sources = series.headers()
    made = [*build_results(sources, series.hu, series.mask, prediction(series)),
            *build_not_analysed(sources, "not a head scan (body part CHEST)", MODEL)]
    assert "DeidentificationMethod" not in sources[0] and len(sources[0].ReferencedStudySequence) == 0
    for i, ds in enumerate(made):
        path = _write([ds], [f"o{i}"], tmp_path)[f"o{i}"]
        errors, text = dciodvfy(path)
        assert errors == [], text
        back = pydicom.dcmread(path)
        assert back.DeidentificationMethod == DEIDENTIFICATION_UNSTATED
        assert back.ProcedureCodeSequence[0].CodeValue == "CTHEAD1"
        assert "ReferencedStudySequence" not in back or len(back.ReferencedStudySequence) > 0
