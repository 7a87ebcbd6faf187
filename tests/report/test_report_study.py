"""The study-level "not analysed" report (hexnode.report.study): valid for dciodvfy, UIDs derived
from the study and its revision, a revision naming its predecessor, the listing on SR and SC."""

from __future__ import annotations

from pathlib import Path

import pydicom
import pytest
from node_helpers import DCIODVFY, dciodvfy_errors
from pydicom.uid import generate_uid
from report_helpers import MODEL
from series_helpers import write_series

from hexnode.devtools.demo import sr_summary
from hexnode.pipeline.run import headers_of
from hexnode.report.study import (
    SC_MAX_SERIES,
    Listed,
    PreviousAnswer,
    build_study_not_analysed,
    study_uids,
)

pytestmark = pytest.mark.skipif(not Path(DCIODVFY).exists(), reason="dicom3tools not installed")


def _study(tmp_path: Path, n_series: int) -> tuple[str, list[pydicom.Dataset], list[Listed]]:
    study = generate_uid()
    sources, listed = [], []
    for i in range(n_series):
        paths = write_series(tmp_path / f"s{i}", n=3 if i else 2, rows=16, cols=16, study_uid=study, SeriesNumber=i + 1,
                             ConvolutionKernel="H70h", SeriesDescription=f"Head bone {i}")
        sources += headers_of(paths)
        listed.append(Listed(f"#{i + 1} ('Head bone {i}', kernel H70h, 5 mm, 3 slices)",
                             "bone or sharp kernel reconstruction (H70h)"))
    return study, sources, listed


def _save(objs: list[pydicom.Dataset], out: Path, tag: str) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    paths = []
    for kind, ds in zip(("SR", "SC"), objs, strict=True):
        p = out / f"{tag}-{kind}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def test_study_report_lists_every_series_and_is_valid(tmp_path: Path) -> None:
    study, sources, listed = _study(tmp_path, 2)
    sr, sc = build_study_not_analysed(sources, listed, MODEL)
    for p in _save([sr, sc], tmp_path / "out", "r0"):
        assert dciodvfy_errors(p) == [], p
    uids = study_uids(study, MODEL.version, 0)
    assert (str(sr.SOPInstanceUID), str(sc.SOPInstanceUID)) == (uids["SR"], uids["SC"])
    assert sr.StudyInstanceUID == study and sc.StudyInstanceUID == study
    source_series = {str(d.SeriesInstanceUID) for d in sources}
    assert str(sr.SeriesInstanceUID) not in source_series and "PredecessorDocumentsSequence" not in sr
    comments = sr_summary(sr)["comments"]
    assert "Not analysed: no axial soft-tissue head non-contrast CT in this study" in comments
    assert [c for c in comments if c.startswith("series #")] == [x.line for x in listed]
    # evidence: every instance of both series
    evidence = {ref.ReferencedSOPInstanceUID for st in sr.CurrentRequestedProcedureEvidenceSequence
                for ser in st.ReferencedSeriesSequence for ref in ser.ReferencedSOPSequence}
    assert evidence == {str(d.SOPInstanceUID) for d in sources}
    # deterministic: a retry builds the same identities
    again = build_study_not_analysed(sources, listed, MODEL)
    assert [str(d.SOPInstanceUID) for d in again] == [uids["SR"], uids["SC"]]


def test_study_report_revision_supersedes_the_previous_answer(tmp_path: Path) -> None:
    study, sources, listed = _study(tmp_path, 1)
    r0 = build_study_not_analysed(sources, listed, MODEL)
    prev = PreviousAnswer(study, str(r0[0].SeriesInstanceUID), str(r0[0].SOPInstanceUID))
    r1 = build_study_not_analysed(sources, listed, MODEL, revision=1, previous=prev)
    for p in _save(r1, tmp_path / "out", "r1"):
        assert dciodvfy_errors(p) == [], p
    assert str(r1[0].SOPInstanceUID) == study_uids(study, MODEL.version, 1)["SR"] != str(r0[0].SOPInstanceUID)
    pred = r1[0].PredecessorDocumentsSequence
    assert pred[0].StudyInstanceUID == study
    assert pred[0].ReferencedSeriesSequence[0].ReferencedSOPSequence[0].ReferencedSOPInstanceUID == prev.sop_uid
    comments = sr_summary(r1[0])["comments"]
    assert "Not analysed: bone or sharp kernel reconstruction (H70h)" in comments  # one series: its own reason
    assert any("supersedes hexnode's previous answer for this study" in c for c in comments)
    assert "corrected" in str(r1[1].SeriesDescription).lower()


def test_many_series_fit_on_the_sc(tmp_path: Path) -> None:
    _, sources, listed = _study(tmp_path, SC_MAX_SERIES + 3)
    sr, sc = build_study_not_analysed(sources, listed, MODEL)
    for p in _save([sr, sc], tmp_path / "out", "many"):
        assert dciodvfy_errors(p) == [], p
    text = "\n".join(sr_summary(sr)["comments"])
    assert all(x.label in text for x in listed)  # the SR lists them all; the SC says how many more
    assert sc.Rows == 512 and sc.pixel_array.any()
