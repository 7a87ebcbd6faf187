"""One study, one answer (issue 26), through the SCP: `hexnode serve` as a process, dcmtk's
storescu as the PACS routing whole studies, the worker in this process with the real models.

- a five-series study (scout, axial 5 mm soft tissue, bone kernel, coronal reformat, thin 1 mm)
  → exactly one result set, for the 5 mm series; the others recorded with their reasons, no report;
- a study of scout + bone only → exactly one "not analysed" SR + SC naming both;
- a late axial series after that → one corrected result set whose SR supersedes that report;
- hexnode's own SEG/SR/SC routed back to it → recorded, ignored: no job, no report, no loop.

Every object written passes dciodvfy.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import badinput as bad
import pydicom
import pytest
from node_helpers import Node, dciodvfy_errors
from pydicom.uid import generate_uid
from sqlalchemy import func, select

from hexnode.devtools.demo import sr_summary
from hexnode.report.study import study_uids
from hexnode.store.db import Correction, Job, Result, Series, Study

pytestmark = pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="dcmtk not installed")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    # receive may take a storescu release for an abort (see test_bad_input's node): the series
    # then waits aborted_wait_seconds; keep that short here so that it costs seconds, not minutes
    n = Node(tmp_path_factory.mktemp("study"), series_extra="aborted_wait_seconds = 6.0")
    yield n
    alive = n.alive()
    n.stop()
    assert alive, "hexnode serve died during the study tests"


def scout(out: Path, study: str) -> list[Path]:
    return bad.good(out, n=2, study_uid=study, SeriesNumber=1, ImageType=["ORIGINAL", "PRIMARY", "LOCALIZER"],
                    SeriesDescription="Topogram 0.6 T20s")


def axial5(out: Path, study: str, number: int = 2) -> list[Path]:
    return bad.good(out, study_uid=study, SeriesNumber=number, SeriesDescription="Head 5mm soft")


def bone(out: Path, study: str) -> list[Path]:
    return bad.good(out, study_uid=study, SeriesNumber=3, ConvolutionKernel="H70h", SeriesDescription="Head 5mm bone")


def coronal(out: Path, study: str) -> list[Path]:
    paths = bad.good(out, study_uid=study, SeriesNumber=4, SeriesDescription="Head coronal MPR 3mm",
                     ImageType=["DERIVED", "SECONDARY", "MPR"])
    for i, p in enumerate(paths):  # a reformat: coronal planes stacked front to back
        ds = pydicom.dcmread(p)
        ds.ImageOrientationPatient = [1, 0, 0, 0, 0, -1]
        ds.ImagePositionPatient = [-16.0, -16.0 + 3.0 * i, 30.0]
        ds.save_as(p, enforce_file_format=True)
    return paths


def thin(out: Path, study: str) -> list[Path]:
    return bad.good(out, study_uid=study, SeriesNumber=5, dz=1.0, SeriesDescription="Head 1mm soft")


def uid_of(paths: list[Path]) -> str:
    return str(pydicom.dcmread(paths[0], stop_before_pixels=True).SeriesInstanceUID)


def send(node: Node, *series: list[Path]) -> list[str]:
    """Each series in its own association, one after another (as a PACS routes a study)."""
    for paths in series:
        proc = node.storescu(paths)
        assert proc.returncode == 0, proc.stderr[-2000:]
    return [uid_of(p) for p in series]


def study_results(node: Node, study_uid: str) -> list[tuple[str, str, Path]]:
    """(series UID the result is filed under, kind, file) of every object made for the study."""
    with node.store.transaction() as s:
        rows = s.execute(select(Series.series_uid, Result.kind, Result.path).join(Series, Series.id == Result.series_id)
                         .join(Study, Study.id == Series.study_id).where(Study.study_uid == study_uid)
                         .order_by(Result.id)).all()
    return [(uid, kind, node.spool.path(rel)) for uid, kind, rel in rows]


def settle(node: Node, series_uids: list[str]) -> None:
    """Every series decided (a study job is queued in the same transaction), the worker drained."""
    node.wait_decided(series_uids, 90)
    node.drain()


def reasons(node: Node, uids: list[str]) -> dict[str, tuple[str, str]]:
    with node.store.transaction() as s:
        rows = s.execute(select(Series.series_uid, Series.state, Series.reason).where(Series.series_uid.in_(uids))).all()
    return {u: (st, r or "") for u, st, r in rows}


def all_valid(results: list[tuple[str, str, Path]]) -> None:
    for _, kind, path in results:
        assert dciodvfy_errors(path) == [], (kind, path)


def sr_json(path: Path) -> str:
    return json.dumps(pydicom.dcmread(path).to_json_dict(), ensure_ascii=False)


def test_five_series_study_gets_exactly_one_result_set(node: Node, tmp_path: Path) -> None:
    study = generate_uid()
    series = [scout(tmp_path / "scout", study), axial5(tmp_path / "ax", study), bone(tmp_path / "bone", study),
              coronal(tmp_path / "cor", study), thin(tmp_path / "thin", study)]
    uids = send(node, *series)
    settle(node, uids)
    results = study_results(node, study)
    assert sorted(k for _, k, _ in results) == ["SC", "SEG", "SR"], results
    assert {u for u, _, _ in results} == {uids[1]}  # the axial 5 mm soft-tissue series
    all_valid(results)
    sr = next(p for _, k, p in results if k == "SR")
    summary = sr_summary(pydicom.dcmread(sr))
    assert "volume_ml" in summary and "probability" in summary  # a result, not a "not analysed"
    # chosen as soon as it was complete (the best kind: its answer is not held), so its note names
    # the candidates known then; the thin one, later, names it in its reason
    assert any(c.startswith("analysed series #2") for c in summary["comments"]), summary["comments"]
    why = reasons(node, uids)
    assert why[uids[0]] == ("rejected", "localizer/scout image")
    assert why[uids[2]][0] == "rejected" and why[uids[2]][1].startswith("bone or sharp kernel reconstruction (H70h)")
    assert why[uids[3]][0] == "rejected" and ("not axial" in why[uids[3]][1] or "ORIGINAL" in why[uids[3]][1])
    assert why[uids[4]][0] == "rejected" and why[uids[4]][1].startswith("another series of the study was analysed (#2")
    with node.store.transaction() as s:
        answer = s.execute(select(Study).where(Study.study_uid == study)).scalar_one()
    assert answer.answer_kind == "result" and answer.answer_sr_uid == str(pydicom.dcmread(sr).SOPInstanceUID)


def test_scout_and_bone_only_then_a_late_axial_series(node: Node, tmp_path: Path) -> None:
    study = generate_uid()
    uids = send(node, scout(tmp_path / "scout", study), bone(tmp_path / "bone", study))
    settle(node, uids)
    results = study_results(node, study)
    assert sorted(k for _, k, _ in results) == ["SC", "SR"], results  # ONE not-analysed pair for the study
    all_valid(results)
    sr_path = next(p for _, k, p in results if k == "SR")
    sr = pydicom.dcmread(sr_path)
    version = node.models.info.version
    assert str(sr.SOPInstanceUID) == study_uids(study, version, 0)["SR"]  # keyed on the study, revision 0
    text = sr_summary(sr)["comments"]
    assert "Not analysed: no axial soft-tissue head non-contrast CT in this study" in text, text
    listed = [c for c in text if c.startswith("series #")]
    assert len(listed) == 2, text
    assert "'Topogram 0.6 T20s'" in listed[0] and listed[0].endswith("localizer/scout image"), listed
    assert "kernel H70h" in listed[1] and "bone or sharp kernel reconstruction (H70h)" in listed[1], listed
    sc = pydicom.dcmread(next(p for _, k, p in results if k == "SC"))
    assert "not analysed" in str(sc.SeriesDescription).lower() and sc.StudyInstanceUID == study
    assert {st for st, _ in reasons(node, uids).values()} == {"rejected"}

    # the axial series arrives after the answer: the study re-opens, one corrected result set
    late = send(node, axial5(tmp_path / "late", study, number=6))
    settle(node, late)
    new = [r for r in study_results(node, study) if r not in results]
    assert sorted(k for _, k, _ in new) == ["SC", "SEG", "SR"], new
    assert {u for u, _, _ in new} == set(late)
    all_valid(new)
    result_sr = pydicom.dcmread(next(p for _, k, p in new if k == "SR"))
    predecessors = [ref.ReferencedSOPInstanceUID for st in result_sr.PredecessorDocumentsSequence
                    for ser in st.ReferencedSeriesSequence for ref in ser.ReferencedSOPSequence]
    assert predecessors == [str(sr.SOPInstanceUID)]  # it supersedes the study's not-analysed report
    comments = sr_summary(result_sr)["comments"]
    assert any("supersedes hexnode's previous answer for this study" in c for c in comments), comments
    assert len(study_results(node, study)) == 5  # nothing else: no report for the old series again


def test_own_results_routed_back_are_ignored(node: Node, tmp_path: Path) -> None:
    study = generate_uid()
    uids = send(node, axial5(tmp_path / "ax", study))
    settle(node, uids)
    results = study_results(node, study)
    assert sorted(k for _, k, _ in results) == ["SC", "SEG", "SR"]
    with node.store.transaction() as s:
        jobs_before = s.execute(select(func.count()).select_from(Job)).scalar_one()
        answer_before = s.execute(select(Study.answer_sr_uid).where(Study.study_uid == study)).scalar_one()
    # a careless routing rule sends hexnode's own SEG/SR/SC back to it
    # (-R: propose exactly the files' SOP classes; storescu's default list has no Segmentation)
    proc = node.storescu([p for _, _, p in results], extra=["-R"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    # the SR and SC become series of their own, rejected as not CT; the SEG is filed as a reader's
    # correction and recognised as hexnode's own (hexnode/labels/take.py), never a series
    seg_uid = next(str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for _, k, p in results if k == "SEG")
    back = sorted({str(pydicom.dcmread(p, stop_before_pixels=True).SeriesInstanceUID)
                   for _, k, p in results if k != "SEG"})
    node.wait_decided(back, 30)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        with node.store.transaction() as s:
            seg_state = s.execute(select(Correction.state).where(Correction.sop_instance_uid == seg_uid)
                                  ).scalar_one_or_none()
        if seg_state not in (None, "received"):
            break
        time.sleep(0.2)
    assert seg_state == "own", seg_state
    time.sleep(2 * node.cfg.series.study_settle_seconds)  # past the study's settle time: nothing follows
    node.drain()
    assert study_results(node, study) == results  # no new report
    with node.store.transaction() as s:
        assert s.execute(select(func.count()).select_from(Job)).scalar_one() == jobs_before
        assert s.execute(select(Study.answer_sr_uid).where(Study.study_uid == study)).scalar_one() == answer_before
    states = reasons(node, back)
    assert len(states) == 2 and {st for st, _ in states.values()} == {"rejected"}, states
    assert all("is not CT" in r for _, r in states.values()), states


def test_per_series_not_analysed_reports_when_the_site_wants_them(tmp_path_factory: pytest.TempPathFactory,
                                                                  tmp_path: Path) -> None:
    """`[report] per_series_not_analysed = true`: each rejected CT series its own report, as before;
    a localizer still none, and no study-level report besides."""
    n = Node(tmp_path_factory.mktemp("perseries"), series_extra="aborted_wait_seconds = 6.0",
             extra_toml="[report]\nper_series_not_analysed = true")
    try:
        study = generate_uid()
        uids = send(n, scout(tmp_path / "scout", study), bone(tmp_path / "bone", study))
        settle(n, uids)
        results = study_results(n, study)
        assert sorted((u, k) for u, k, _ in results) == [(uids[1], "SC"), (uids[1], "SR")], results
        all_valid(results)
        sr = pydicom.dcmread(next(p for _, k, p in results if k == "SR"))
        assert "Not analysed: bone or sharp kernel reconstruction (H70h)" in sr_summary(sr)["comments"]
        with n.store.transaction() as s:
            assert s.execute(select(func.count()).select_from(Job).where(Job.study_revision.is_not(None))).scalar_one() == 0
        assert n.alive()
    finally:
        n.stop()
