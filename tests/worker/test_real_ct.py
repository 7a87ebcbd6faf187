"""What real scanners and real senders do on day one, through the real SCP with the real models.

- GE's head protocol: 4 mm slices through the posterior fossa, 7 mm above, in one series (tilted
  18.5 degrees): analysed, every slice with its own extent, and the report says so.
- A sender that stops part-way: `assoc.abort()` after 10 of 28 instances → after
  `[series] aborted_wait_seconds` a not-analysed report saying so, never a result; the same
  start followed by the rest on a second association within the wait → analysed.
- A 10-slice stub at the skull base, sent whole: "incomplete coverage", never "no hemorrhage".
- Real exports' quirks at once: GE's 7 mm run overlapping the 4 mm run (a 1.08 mm step), a
  negative tilt, no Body Part Examined nor any description, no Frame of Reference UID: analysed,
  the tilt's sign kept, the report saying the head was not confirmed by the header and which
  Frame of Reference the results use.
- A Philips study with a Surview and an "iDose" series: the iDose series is analysed.

Every object written passes dciodvfy.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pydicom
import pytest
from node_helpers import CALLING, Node, dciodvfy_errors, series_uid_of
from sqlalchemy import select

from hexnode.devtools.demo import sr_summary
from hexnode.store.db import Event, Series
from hexnode.synth.dicom import write_case
from hexnode.synth.phantom import generate_case

pytestmark = pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="dcmtk not installed")

ABORT_WAIT = 4.0


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    n = Node(tmp_path_factory.mktemp("realct"), series_extra=f"aborted_wait_seconds = {ABORT_WAIT}")
    try:
        yield n
    finally:
        n.stop()


def _case(tmp: Path, seed: int, index: int, header: dict[str, object] | None = None,
          drop: tuple[str, ...] = (), **kw: object) -> tuple[list[Path], object]:
    case = generate_case(seed, index, **kw)  # type: ignore[arg-type]
    paths = write_case(case, tmp / f"case-{seed}-{index}", header=header, drop=drop)
    return sorted(paths, key=lambda p: p.name), case


def _assert_valid(paths: dict[str, Path]) -> None:
    for kind, path in paths.items():
        assert dciodvfy_errors(path) == [], (kind, dciodvfy_errors(path))


def _send_then_abort(node: Node, paths: list[Path]) -> None:
    from pynetdicom import AE

    ae = AE(ae_title=CALLING)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="HEXNODE")
    assert assoc.is_established
    for p in paths:
        status = assoc.send_c_store(pydicom.dcmread(p))
        assert status and int(status.Status) == 0
    assoc.abort()


def test_ge_mixed_4_and_7_mm_tilted_series_is_analysed(node: Node, tmp_path: Path) -> None:
    paths, case = _case(tmp_path, 61, 3, mixed=((4.0, 14), (7.0, 14)), tilt_deg=18.5)  # a 27.5 ml lobar bleed
    out = node.process(paths)
    assert out.state == "reported", out
    assert out.kinds == ["SC", "SEG", "SR"]
    _assert_valid(out.paths)
    sr = pydicom.dcmread(out.paths["SR"])
    summary = sr_summary(sr)
    text = " ".join(summary["comments"])
    assert "slice thickness 4 mm (14 slices) and 7 mm (14 slices)" in text, text
    assert "gantry tilt 18.5 degrees" in text
    truth = case.truth.volume_ml  # type: ignore[attr-defined]
    assert summary["volume_ml"] == pytest.approx(truth, rel=0.15), (summary, truth)
    # the SEG has one frame per source slice, each referencing its own CT image
    seg = pydicom.dcmread(out.paths["SEG"])
    sources = {str(pydicom.dcmread(p, stop_before_pixels=True).SOPInstanceUID) for p in paths}
    refs = [str(f.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)
            for f in seg.PerFrameFunctionalGroupsSequence]
    assert len(refs) == 28 and set(refs) == sources


def test_sender_that_aborts_part_way_gets_a_not_analysed_report(node: Node, tmp_path: Path) -> None:
    paths, _ = _case(tmp_path, 62, 1)
    paths = paths[:28] if len(paths) >= 28 else paths
    uid = series_uid_of(paths[0])
    _send_then_abort(node, paths[:10])
    node.wait_decided([uid], timeout=90 + ABORT_WAIT)
    node.drain()
    out = node.outcome(uid)
    assert out.state == "rejected" and "SEG" not in out.kinds, out
    assert out.reason.startswith("the sender stopped part-way: 10 instances arrived before the association was aborted")
    assert "incomplete coverage" in out.reason
    _assert_valid(out.paths)
    summary = sr_summary(pydicom.dcmread(out.paths["SR"]))
    assert summary.get("status") is not None and "volume_ml" not in summary, summary
    with node.store.transaction() as s:
        series = s.execute(select(Series).where(Series.series_uid == uid)).scalar_one()
        detail = [e.detail or "" for e in s.execute(
            select(Event).where(Event.entity == "series", Event.entity_id == series.id)).scalars()]
    assert any(f"sender {CALLING} stopped part-way" in d for d in detail), detail
    assert "aborted the association after 10 instances" in node.log.read_text()
    from hexnode.admin.status import collect, render
    from hexnode.store.spool import uid_hash

    text = render(collect(node.store))
    assert f"{uid_hash(uid)} from {CALLING}: 10 instances arrived before the association was aborted (rejected)" in text, text


def test_sender_that_aborts_then_sends_the_rest_is_analysed(node: Node, tmp_path: Path) -> None:
    paths, case = _case(tmp_path, 62, 3)
    uid = series_uid_of(paths[0])
    _send_then_abort(node, paths[:10])
    proc = node.storescu(paths[10:])  # the PACS resends what failed, within the wait
    assert proc.returncode == 0, proc.stderr[-2000:]
    node.wait_decided([uid], timeout=90 + ABORT_WAIT)
    node.drain()
    out = node.outcome(uid)
    assert out.state == "reported" and out.kinds == ["SC", "SEG", "SR"], out
    text = " ".join(sr_summary(pydicom.dcmread(out.paths["SR"]))["comments"])
    assert "the sender stopped part-way (10 instances arrived before the association was aborted)" in text
    _assert_valid(out.paths)


def test_skull_base_stub_is_incomplete_coverage_never_no_hemorrhage(node: Node, tmp_path: Path) -> None:
    paths, _ = _case(tmp_path, 63, 4)
    stub = paths[:10]  # the 10 lowest slices: skull base and posterior fossa, sent whole
    out = node.process(stub)
    assert out.state == "rejected" and "SEG" not in out.kinds, out
    assert out.reason.startswith("incomplete coverage: 10 slices cover 50 mm, the brain extends beyond the top slice"), out
    _assert_valid(out.paths)


def test_real_exports_quirks_overlap_negative_tilt_no_body_part_no_frame_of_reference(node: Node, tmp_path: Path) -> None:
    from hexnode.report.uids import results_frame_of_reference_uid
    from hexnode.series.rules import HEAD_NOT_IN_HEADER
    from hexnode.synth.dicom import VENDORS

    bare = ("BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName", "FrameOfReferenceUID")
    paths, case = _case(tmp_path, 66, 3, header=VENDORS["ge"], drop=bare,  # a 10.4 ml lobar bleed
                        mixed=((4.0, 14), (7.0, 14, 4.42)), tilt_deg=-18.5)
    out = node.process(paths)
    assert out.state == "reported" and out.kinds == ["SC", "SEG", "SR"], out
    _assert_valid(out.paths)
    summary = sr_summary(pydicom.dcmread(out.paths["SR"]))
    text = " ".join(summary["comments"])
    assert "slices overlap along the slice normal at 1 place (step 1.02 mm)" in text, text
    assert "gantry tilt -18.5 degrees" in text and "slice thickness 4 mm (14 slices) and 7 mm (14 slices)" in text
    assert HEAD_NOT_IN_HEADER in text
    frame = results_frame_of_reference_uid(series_uid_of(paths[0]))
    assert f"The source series has no Frame of Reference UID: the segmentation uses frame of reference {frame}" in text
    truth = case.truth.volume_ml  # type: ignore[attr-defined]
    assert summary["volume_ml"] == pytest.approx(truth, rel=0.2), (summary, truth)
    seg = pydicom.dcmread(out.paths["SEG"])
    assert seg.FrameOfReferenceUID == frame
    headers = {str(h.SOPInstanceUID): h for h in (pydicom.dcmread(p, stop_before_pixels=True) for p in paths)}
    for item in seg.PerFrameFunctionalGroupsSequence:  # each frame on its own slice, at its position
        source = headers[str(item.DerivationImageSequence[0].SourceImageSequence[0].ReferencedSOPInstanceUID)]
        assert [float(v) for v in item.PlanePositionSequence[0].ImagePositionPatient] == \
            pytest.approx([float(v) for v in source.ImagePositionPatient], abs=1e-4)
    assert len(seg.PerFrameFunctionalGroupsSequence) == 28


def test_philips_idose_series_beside_its_surview_is_analysed(node: Node, tmp_path: Path) -> None:
    """Before, "iDose" matched the dose-page rule: the series was never a candidate and the study
    answered with nothing analysable."""
    from hexnode.synth.dicom import VENDORS, write_series

    philips = {**VENDORS["philips"], "SeriesDescription": "STD BRAIN 5MM, iDose"}
    paths, case = _case(tmp_path, 62, 2, header=philips)
    surview = write_series(case, tmp_path / "surview", series_number=1,  # type: ignore[arg-type]
                           header={**philips, "SeriesDescription": "Surview", "ImageType": ["ORIGINAL", "PRIMARY", "LOCALIZER"]})
    for extra in surview[1:]:
        extra.unlink()
    proc = node.storescu([surview[0], *paths])
    assert proc.returncode == 0, proc.stderr[-2000:]
    uid, scout = series_uid_of(paths[0]), series_uid_of(surview[0])
    node.wait_decided([uid, scout])
    node.drain()
    out = node.outcome(uid)
    assert out.state == "reported" and out.kinds == ["SC", "SEG", "SR"], out
    _assert_valid(out.paths)
    text = " ".join(sr_summary(pydicom.dcmread(out.paths["SR"]))["comments"])
    assert "analysed series #2 ('STD BRAIN 5MM, iDose', kernel UB" in text, text
    assert node.outcome(scout).reason == "localizer/scout image"
