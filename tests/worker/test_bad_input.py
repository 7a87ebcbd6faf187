"""Bad input, each kind a test: a recorded reason, a "not analysed" report where a study would
otherwise get no answer (each series here is a study of its own, so its study-level report is
about it), no crash, other series unaffected.

Receive-level inputs go through the real SCP (`hexnode serve` as a process) with dcmtk's
`/usr/bin/storescu`, or with a pynetdicom SCU where storescu will not send the file (a broken data
set is sent byte for byte from a file path). Series-level inputs then go on through the scheduler
(completion + selection: route, under serve), the worker (in this process, real ONNX models) and the
database: state, reason, result objects in the spool; every not-analysed SR and SC passes
`dciodvfy`. One server and one worker are shared by the module. Each test appends its outcome to
a table written to tests/output/bad_input_table.md (kind → outcome) for the operations notes.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import badinput as bad
import numpy as np
import pydicom
import pytest
from node_helpers import CALLING, Node, Outcome, dciodvfy_errors, series_uid_of
from plumbing_helpers import models_dir
from sqlalchemy import select

from hexnode.devtools.demo import sr_summary
from hexnode.store.db import Instance, Series

REPO = Path(__file__).resolve().parents[2]
TABLE_PATH = REPO / "tests" / "output" / "bad_input_table.md"
TABLE: list[tuple[str, str, str]] = []  # (kind, level, outcome)

pytestmark = pytest.mark.skipif(not Path("/usr/bin/storescu").exists(), reason="dcmtk not installed")



def record(kind: str, level: str, outcome: str) -> None:
    TABLE.append((kind, level, outcome))


def assert_not_analysed(out: Outcome, reason_part: str) -> None:
    """Rejected with the reason recorded, and an SR + SC saying so, both valid for dciodvfy."""
    assert out.state == "rejected", out
    assert reason_part in out.reason, out.reason
    assert out.kinds == ["SC", "SR"], out
    for kind in ("SR", "SC"):
        assert dciodvfy_errors(out.paths[kind]) == [], kind
    assert "Not analysed" in out.sr_text()


def assert_analysed(out: Outcome) -> dict[str, Any]:
    assert out.state == "reported", out
    assert out.kinds == ["SC", "SEG", "SR"], out
    return sr_summary(pydicom.dcmread(out.paths["SR"]))


def not_analysed_row(kind: str, out: Outcome, level: str = "series: storescu → serve → worker") -> None:
    record(kind, level, f"not analysed, SR+SC sent: \"{out.reason}\"")


def analysed_row(kind: str, out: Outcome, summary: dict[str, Any], extra: str = "",
                 level: str = "series: storescu → serve → worker") -> None:
    vol = summary.get("volume_ml")
    record(kind, level, f"analysed (SEG+SR+SC, {vol:.1f} ml){'; ' + extra if extra else ''}")


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Node]:
    # receive may take a storescu release for an abort (pynetdicom sets is_released only after
    # the release response is out, and storescu closes at once): such a series waits
    # aborted_wait_seconds (120 s by default, past wait_decided's timeout); keep it short here
    n = Node(tmp_path_factory.mktemp("badinput"), series_extra="aborted_wait_seconds = 6.0")
    yield n
    alive = n.alive()
    n.stop()
    assert alive, "hexnode serve died during the bad-input tests"


@pytest.fixture(scope="module", autouse=True)
def table() -> Iterator[None]:
    yield
    TABLE_PATH.parent.mkdir(parents=True, exist_ok=True)
    lines = ["| input | tested at | outcome |", "|---|---|---|"]
    lines += [f"| {k} | {lvl} | {o.replace('|', '/')} |" for k, lvl, o in TABLE]
    TABLE_PATH.write_text("\n".join(lines) + "\n")


# --- receive level --------------------------------------------------------------------------------

def test_control_series_before(node: Node, tmp_path: Path) -> None:
    out = node.process(bad.good(tmp_path / "control"))
    analysed_row("control (valid head NCCT, before the bad inputs)", out, assert_analysed(out))


def test_zero_byte_and_truncated_datasets_on_the_wire(node: Node, tmp_path: Path) -> None:
    """A C-STORE whose data set is empty, or cut inside the header: refused 0xC000, nothing stored."""
    src = bad.good(tmp_path / "src", n=1)[0]
    body = bad.header_bytes(src)
    empty = bad.wire_payload(tmp_path / "w", "empty", b"")
    cut = bad.wire_payload(tmp_path / "w", "cut-header", body[:90])
    before, stored = len(node.quarantined()), node.instance_count()
    statuses = node.pynetdicom_send([empty, cut])
    assert statuses == [0xC000, 0xC000], statuses
    assert node.alive() and node.instance_count() == stored and len(node.quarantined()) == before
    record("0-byte data set (C-STORE)", "receive: pynetdicom SCU (storescu will not send it)",
           f"status 0x{statuses[0]:04X} (Cannot Understand: no SOP Class, SOP Instance, Study, Series UID); nothing stored")
    record("truncated header (C-STORE)", "receive: pynetdicom SCU",
           f"status 0x{statuses[1]:04X} (Cannot Understand); nothing stored")


def test_not_dicom_on_the_wire(node: Node, tmp_path: Path) -> None:
    garbage = bad.wire_payload(tmp_path / "w", "garbage", os.urandom(2048))
    before, stored = len(node.quarantined()), node.instance_count()
    statuses = node.pynetdicom_send([garbage])
    assert statuses == [0xC000], statuses
    assert node.alive() and node.instance_count() == stored and len(node.quarantined()) == before
    record("not DICOM (random bytes as the data set)", "receive: pynetdicom SCU",
           f"status 0x{statuses[0]:04X} (Cannot Understand); nothing stored")


def test_truncated_pixel_data(node: Node, tmp_path: Path) -> None:
    """Header intact, pixel data cut: indexed, then not analysed (the worker cannot load it)."""
    paths = bad.good(tmp_path / "s")
    cut = bad.truncated(paths[4], tmp_path / "cut", 0.6)
    paths[4].unlink()
    cut.rename(paths[4])
    out = node.process(paths, via="pynetdicom")
    assert out.state in ("rejected", "failed"), out
    assert out.kinds == ["SC", "SR"], out
    for kind in ("SR", "SC"):
        assert dciodvfy_errors(out.paths[kind]) == [], kind
    not_analysed_row("truncated file (pixel data cut)", out, "series: pynetdicom SCU → serve → worker")


@pytest.mark.parametrize(("kind", "sop_class", "modality"), [
    ("MR", bad.MR_IMAGE, "MR"), ("RT Dose", bad.RT_DOSE, "RTDOSE"), ("SR", bad.COMPREHENSIVE_SR, "SR")])
def test_wrong_sop_class(node: Node, tmp_path: Path, kind: str, sop_class: str, modality: str) -> None:
    paths = bad.wrong_sop(tmp_path / kind, sop_class, modality)
    proc = node.storescu(paths)
    assert proc.returncode == 0, proc.stderr
    uid = series_uid_of(paths[0])
    node.wait_decided([uid])
    node.drain()
    out = node.outcome(uid)
    assert out.state == "rejected" and "is not CT" in out.reason, out
    assert out.kinds == []  # nothing to report back on an MR/RT/SR series
    record(f"wrong SOP class: {kind}", "receive: storescu → serve",
           f"stored, series rejected without report: \"{out.reason}\"")


def test_compressed_syntax_without_decoder(node: Node, tmp_path: Path) -> None:
    """Refused at association negotiation (the sender can convert); offline: not analysed."""
    paths = bad.missing_decoder(tmp_path / "j2kmc")
    before = node.instance_count()
    proc = node.storescu(paths[:2])
    from pynetdicom import AE

    ae = AE(ae_title=CALLING)
    ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", [bad.MISSING_DECODER_TS])
    assoc = ae.associate("127.0.0.1", node.port, ae_title="HEXNODE")
    established = assoc.is_established
    accepted = list(assoc.accepted_contexts) if established else []
    if established:
        assoc.release()
    assert proc.returncode != 0 or "Presentation Context" in proc.stderr + proc.stdout
    assert accepted == []  # no presentation context for a syntax we could not decode later
    assert node.instance_count() == before
    # the same files in an offline folder (hexnode run / worker code path): not analysed, with why
    from hexnode.pipeline.run import produce

    produced = produce(paths, node.models)
    assert produced.prediction is None and "cannot decode pixel data" in (produced.reason or "")
    record("compressed syntax without decoder (JPEG 2000 Part 2)", "receive: storescu + pynetdicom; offline produce()",
           f"presentation context rejected (storescu exit {proc.returncode}; pynetdicom: "
           f"{'association accepted, context rejected' if established else 'association rejected'}), nothing stored; offline: not analysed "
           f"\"{produced.reason}\"")


# --- series level ---------------------------------------------------------------------------------

@pytest.mark.parametrize(("kind", "maker", "reason"), [
    ("CTA (contrast agent set)", bad.cta, "contrast agent given"),
    ("bone kernel only", bad.bone_kernel, "bone or sharp kernel"),
    ("missing slices (gap)", bad.gap, "gap in slice positions"),
    ("duplicated positions, different UIDs", bad.duplicate_positions, "duplicate slice positions"),
    ("mixed orientations", bad.mixed_orientation, "mixed image orientations"),
    ("mixed image sizes", bad.mixed_sizes, "mixed image sizes"),
    ("1 slice", bad.one_slice, "1 slices, outside"),
])
def test_not_analysable_series(node: Node, tmp_path: Path, kind: str, maker: Any, reason: str) -> None:
    out = node.process(maker(tmp_path / "s"))
    assert_not_analysed(out, reason)
    not_analysed_row(kind, out)


def test_localizer_alone_is_recorded_without_report(node: Node, tmp_path: Path) -> None:
    """A localizer is never a candidate: nobody waits for a result on it, so nothing goes back."""
    out = node.process(bad.localizer(tmp_path / "scout"))
    assert out.state == "rejected" and out.reason == "localizer/scout image", out
    assert out.kinds == [], out
    record("CT localizer/scout (alone in its study)", "series: storescu → serve → worker",
           f"rejected without report (never a candidate): \"{out.reason}\"")


def test_more_than_2000_slices(node: Node, tmp_path: Path) -> None:
    paths = bad.too_many_slices(tmp_path / "many")
    proc = node.storescu(tmp_path / "many")  # +sd: storescu scans the folder
    assert proc.returncode == 0, proc.stderr[-2000:]
    uid = series_uid_of(paths[0])
    node.wait_decided([uid], 180)
    node.drain()
    out = node.outcome(uid)
    sets = out.kinds.count("SR")
    record("> 2,000 slices (2001 × 16²)", "series: storescu → serve → worker",
           f"not analysed, SR+SC sent: \"{out.reason}\"" + ("" if sets == 1 else
           f"; DEFECT: {sets} revisions, {sets} SR+SC sets (series completed while still being indexed)"))
    assert_not_analysed(out, "2001 slices, outside 10-2000")


def test_gantry_tilt_is_analysed_and_reported(node: Node, tmp_path: Path) -> None:
    out = node.process(bad.tilted(tmp_path / "tilt", 20.0))
    summary = assert_analysed(out)
    assert any("gantry tilt 20.0 degrees" in c for c in summary["comments"]), summary["comments"]
    analysed_row("gantry tilt 20°", out, summary, "SR says \"gantry tilt 20.0 degrees ...\"")


@pytest.mark.parametrize(("kind", "rows", "cols"), [("non-square 64×48", 64, 48), ("256×256", 256, 256)])
def test_matrix_sizes(node: Node, tmp_path: Path, kind: str, rows: int, cols: int) -> None:
    out = node.process(bad.matrix(tmp_path / "m", rows, cols))
    summary = assert_analysed(out)
    seg = pydicom.dcmread(out.paths["SEG"])
    assert (int(seg.Rows), int(seg.Columns)) == (rows, cols)  # the mask is on the source grid
    extra = "SR notes the non-square matrix" if rows != cols else ""
    if rows != cols:
        assert any("non-square matrix" in c for c in summary["comments"]), summary["comments"]
    analysed_row(kind, out, summary, extra)


def _spooled_hu(node: Node, series_uid: str) -> np.ndarray:
    from hexnode.pipeline.load import load_volume

    with node.store.transaction() as s:
        sid = s.execute(select(Series.id).where(Series.series_uid == series_uid)).scalar_one()
        rels = list(s.execute(select(Instance.path).where(Instance.series_id == sid)).scalars())
    return load_volume([node.spool.path(r) for r in rels]).hu


@pytest.mark.parametrize("value", [-2000, -3024])
def test_pixel_padding(node: Node, tmp_path: Path, value: int) -> None:
    paths = bad.padding(tmp_path / "p", value)
    out = node.process(paths)
    summary = assert_analysed(out)
    hu = _spooled_hu(node, series_uid_of(paths[0]))
    assert float(hu.min()) == -1024.0  # padding became air, never tissue darker than air
    analysed_row(f"pixel padding {value}", out, summary, "padding read as air (min −1024 HU)")


def test_signed_and_unsigned_pixel_representation(node: Node, tmp_path: Path) -> None:
    signed = bad.pixel_representation(tmp_path / "signed", True)
    unsigned = bad.pixel_representation(tmp_path / "unsigned", False)
    outs = [node.process(signed), node.process(unsigned)]
    sums = [assert_analysed(o) for o in outs]
    a, b = (_spooled_hu(node, series_uid_of(p[0])) for p in (signed, unsigned))
    np.testing.assert_allclose(a, b, atol=0.5)
    assert sums[0]["volume_ml"] == pytest.approx(sums[1]["volume_ml"], abs=0.05)
    analysed_row("signed pixels (PixelRepresentation 1, intercept 0)", outs[0], sums[0])
    analysed_row("unsigned pixels (PixelRepresentation 0, intercept −1024)", outs[1], sums[1], "same HU and volume as signed")


@pytest.mark.parametrize(("kind", "maker"), [("implicit VR little endian", bad.implicit_vr),
                                             ("explicit VR big endian", bad.big_endian)])
def test_transfer_syntaxes(node: Node, tmp_path: Path, kind: str, maker: Any) -> None:
    paths = maker(tmp_path / "ts")
    out = node.process(paths)
    summary = assert_analysed(out)
    with node.store.transaction() as s:
        arrived = set(s.execute(select(Instance.transfer_syntax).join(Series, Series.id == Instance.series_id)
                                .where(Series.series_uid == series_uid_of(paths[0]))).scalars())
    analysed_row(kind, out, summary, f"arrived as {', '.join(pydicom.uid.UID(t).name for t in arrived)}")


def test_enhanced_ct_multiframe(node: Node, tmp_path: Path) -> None:
    out = node.process(bad.enhanced_ct(tmp_path / "enh"))
    summary = assert_analysed(out)
    assert any("Enhanced CT multi-frame" in c for c in summary["comments"]), summary["comments"]
    analysed_row("Enhanced CT multi-frame (12 frames)", out, summary)


def test_malformed_uids_and_overlong_strings(node: Node, tmp_path: Path) -> None:
    """UIDs with letters or over 64 characters are refused 0xC000 (Cannot Understand), as dcmtk's
    storescp does: a UID is what the spool, the database and the PACS file the instance under."""
    paths = bad.malformed_strings(tmp_path / "mal")
    uid = series_uid_of(paths[0])
    stored = node.instance_count()
    statuses = node.pynetdicom_send(paths)
    assert statuses == [0xC000] * len(paths), statuses
    assert node.instance_count() == stored and node.alive()
    with node.store.transaction() as s:
        assert s.execute(select(Series).where(Series.series_uid == uid)).scalar_one_or_none() is None
    record("malformed UIDs (letters, leading zeros, > 64 chars), over-long strings", "receive: pynetdicom SCU",
           f"status 0x{statuses[0]:04X} (Cannot Understand: not a valid UID); nothing stored")


def test_study_with_several_series(node: Node, tmp_path: Path) -> None:
    paths, uids = bad.several_series(tmp_path / "study")
    proc = node.storescu(paths)
    assert proc.returncode == 0, proc.stderr[-2000:]
    node.wait_decided(list(uids.values()), 120)
    node.drain()
    soft5, soft1, bone5 = (node.outcome(uids[k]) for k in ("soft5", "soft1", "bone5"))
    summary = assert_analysed(soft5)
    note = next((c for c in summary["comments"] if c.startswith("analysed series #2")), "")
    # chosen as soon as it was complete, or with the others in one tick: the note then says why
    assert note and ("chosen from" not in note or "slice thickness closest to 5 mm" in note), summary["comments"]
    assert soft1.state == "rejected" and soft1.reason.startswith("another series of the study was analysed (#2"), soft1
    assert soft1.kinds == []  # passed over: no report of its own, the chosen one says why
    # the study is the unit of the answer: the bone reconstruction gets no report of its own
    assert bone5.state == "rejected" and bone5.reason.startswith("bone or sharp kernel"), bone5
    assert bone5.kinds == [], bone5
    record("study with several series (soft 5 mm, soft 1 mm, bone 5 mm)", "series: storescu → serve → worker",
           f"#2 soft 5 mm analysed, SR says \"{note}\"; #3 closed: \"{soft1.reason[:60]}…\"; "
           f"#4 bone closed: \"{bone5.reason[:40]}…\" (no report: the study has its answer)")


def test_no_hematoma(node: Node, tmp_path: Path) -> None:
    out = node.process(bad.no_hematoma(tmp_path / "clean"))
    summary = assert_analysed(out)
    said = "No hemorrhage detected." in summary["comments"]
    analysed_row("no hematoma at all", out, summary, "SR: \"No hemorrhage detected.\"" if said else
                 f"FAILED: the model segmented {summary['volume_ml']:.1f} ml in a head without blood")
    assert summary["volume_ml"] == 0.0, summary
    assert said, summary["comments"]


@pytest.mark.parametrize("which", ["utf8", "jis"])
def test_non_ascii_patient_name(node: Node, tmp_path: Path, which: str) -> None:
    paths, name = bad.charset(tmp_path / which, which)
    out = node.process(paths)
    summary = assert_analysed(out)
    for kind in ("SR", "SC", "SEG"):
        ds = pydicom.dcmread(out.paths[kind])
        assert str(ds.PatientName) == name, (kind, ds.PatientName, ds.get("SpecificCharacterSet"))
    cs = "ISO_IR 192" if which == "utf8" else "ISO 2022 IR 87"
    analysed_row(f"PatientName non-ASCII, {cs}", out, summary, "name round-trips into SEG/SR/SC")


def test_offline_folder_with_zero_byte_truncated_and_non_dicom_files(node: Node, tmp_path: Path,
                                                                     capsys: pytest.CaptureFixture[str]) -> None:
    """`hexnode run` on a folder: broken files are skipped and counted, the series is analysed."""
    import argparse

    from hexnode.pipeline.offline import run_offline

    folder = tmp_path / "folder"
    paths = bad.good(folder)
    bad.zero_byte(folder)
    bad.truncated(paths[0], folder, 0.05)  # cut inside the header
    bad.not_dicom(folder)
    code = run_offline(argparse.Namespace(series_dir=str(folder), out=str(tmp_path / "out"),
                                          models=str(models_dir()), config=None))
    text = capsys.readouterr().out
    assert code == 0, text
    assert "4 non-DICOM files skipped" in text, text
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["SC.dcm", "SEG.dcm", "SR.dcm"]
    record("0-byte file, truncated file, not DICOM (txt, png) in a folder", "offline: hexnode run",
           "skipped and counted (\"4 non-DICOM files skipped\"); the series beside them analysed")


def test_control_series_after_and_node_alive(node: Node, tmp_path: Path) -> None:
    out = node.process(bad.good(tmp_path / "control2"))
    analysed_row("control (valid head NCCT, after the bad inputs)", out, assert_analysed(out))
    assert node.alive()
    with node.store.transaction() as s:
        open_series = s.execute(select(Series.state).where(
            Series.state.in_(("received", "complete", "queued", "running")))).scalars().all()
        no_reason = s.execute(select(Series.series_uid).where(
            Series.state.in_(("rejected", "failed")), Series.reason.is_(None))).scalars().all()
    assert open_series == [] and no_reason == []
