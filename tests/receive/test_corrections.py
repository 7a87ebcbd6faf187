"""Corrections come back over DICOM, and the site data set they make.

One node (`hexnode serve`: receive + route as processes, the real ONNX models in a worker here)
analyses a synthetic baseline and its follow-up (the follow-up rule on, so the baseline gets an
outcome). A reader's corrected SEG, built with highdicom from hexnode's own mask changed, goes
back through the real SCP with dcmtk's storescu; so do SEGs that must not be taken (unknown
series, another Frame of Reference, a malformed one, hexnode's own SEG echoed back). Then
`hexnode dataset export` writes the site data set and hexnode/train/data.py loads it.
"""

from __future__ import annotations

import copy
import csv
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import highdicom as hd
import numpy as np
import pydicom
import pytest
from node_helpers import Node, dciodvfy_errors, series_uid_of
from plumbing_helpers import storescu
from pydicom.uid import generate_uid
from scipy import ndimage
from sqlalchemy import select

from hexnode.devtools.reader_seg import reader_seg
from hexnode.store.db import Correction, Event, Result, Series

SECRET = "test-site-secret-0123456789abcdef"
FU_TOML = f"""[followup]
enabled = true
secret = "{SECRET}"
"""
READER = "READER"
SEG_CLASS = "1.2.840.10008.5.1.4.1.1.66.4"


@dataclass
class Site:
    node: Node
    root: Path
    base: list[Path]
    base_uid: str
    own_seg: Path
    fu: list[Path]
    fu_own_seg: Path


@pytest.fixture(scope="module")
def site(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Site]:
    from hexnode.synth.dicom import write_case
    from hexnode.synth.phantom import generate_case, generate_followup

    root = tmp_path_factory.mktemp("corrections")
    case = generate_case(41, 3)
    base = write_case(case, root / "base")
    fu = write_case(generate_followup(case), root / "followup")
    (root / "node").mkdir()
    node = Node(root / "node", extra_toml=FU_TOML)
    try:
        out = node.process(base)
        assert out.state in ("reported", "delivered") and "SEG" in out.kinds, out
        later = node.process(fu)
        assert later.state in ("reported", "delivered") and "SEG" in later.kinds, later
        yield Site(node, root, base, series_uid_of(base[0]), out.paths["SEG"], fu, later.paths["SEG"])
    finally:
        node.stop()


def _sources(paths: list[Path]) -> list[pydicom.Dataset]:
    return [pydicom.dcmread(p) for p in paths]


def _own_mask(site: Site, sources: list[pydicom.Dataset], own_seg: Path | None = None) -> np.ndarray:
    own = hd.seg.segread(str(own_seg or site.own_seg))
    px = own.get_pixels_by_source_instance([str(d.SOPInstanceUID) for d in sources], segment_numbers=[1],
                                           dtype=np.uint8)
    return (np.asarray(px)[..., 0] > 0).astype(np.uint8)


def _send(site: Site, ds: pydicom.Dataset, name: str) -> Path:
    path = site.root / f"{name}.dcm"
    ds.save_as(path, enforce_file_format=True)
    proc = _storescu(site, path, READER)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return path


def _storescu(site: Site, path: Path, aet: str) -> subprocess.CompletedProcess[str]:
    # -R: propose the file's own SOP class (dcmtk's default list has no Segmentation Storage)
    return storescu(site.node.port, [path], aec="HEXNODE", aet=aet, extra=["-R"])


def _wait_taken(site: Site, sop_uid: str, timeout: float = 60.0) -> Correction:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        assert site.node.alive(), site.node.log.read_text()[-3000:]
        with site.node.store.transaction() as s:
            row = s.execute(select(Correction).where(Correction.sop_instance_uid == sop_uid)).scalar_one_or_none()
            if row is not None and row.state != "received":
                return row
        time.sleep(0.2)
    raise TimeoutError(f"SEG not taken within {timeout:.0f} s")


def _dice(a: np.ndarray, b: np.ndarray) -> float:
    return 2.0 * float(np.logical_and(a, b).sum()) / float(a.sum() + b.sum())


def test_segmentation_is_accepted_at_association_negotiation() -> None:
    from hexnode.config import DicomConfig
    from hexnode.receive.scp import build_ae

    accepted = {cx.abstract_syntax for cx in build_ae(DicomConfig()).supported_contexts}
    assert {SEG_CLASS, "1.2.840.10008.5.1.4.1.1.66.7"} <= accepted


def test_a_corrected_seg_becomes_the_reference_with_its_dice(site: Site) -> None:
    sources = _sources(site.base)
    mine = _own_mask(site, sources)
    assert mine.sum() > 0
    corrected = ndimage.binary_dilation(mine, structure=np.ones((1, 3, 3), bool)).astype(np.uint8)
    seg = reader_seg(sources, corrected)
    path = _send(site, seg, "corrected")
    assert dciodvfy_errors(path) == []
    row = _wait_taken(site, str(seg.SOPInstanceUID))
    assert row.state == "stored", row.reason
    assert row.calling_ae == READER and row.peer == "127.0.0.1"
    assert row.dice == pytest.approx(_dice(corrected, mine), abs=1e-4)
    assert row.volume_change_ml is not None and row.volume_change_ml > 0
    assert row.reference_ml == pytest.approx(row.hexnode_ml + row.volume_change_ml, abs=1e-3)
    # the SEG is filed under corrections/, never as a series of its own
    node = site.node
    assert node.spool.path(row.path).is_file() and row.path.startswith("corrections/")
    with node.store.transaction() as s:
        assert s.execute(select(Series).where(Series.series_uid == str(seg.SeriesInstanceUID))).first() is None
    from hexnode.labels.take import read_mask

    stored, uids = read_mask(node.spool, row.mask_path or "")
    by_uid = {str(d.SOPInstanceUID): i for i, d in enumerate(sources)}
    assert np.array_equal(stored, corrected[[by_uid[u] for u in uids]])
    # visible to the admin: `hexnode status`, the status page, /outcomes
    from hexnode.admin.status import collect, render
    from hexnode.store.spool import uid_hash

    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    shown = subprocess.run([sys.executable, "-m", "hexnode.cli", "series", uid_hash(site.base_uid), "--config",
                            str(node.config)], capture_output=True, text=True, env=env, timeout=120)
    assert shown.returncode == 0 and f"#{row.id} from {READER} (127.0.0.1)" in shown.stdout, shown.stdout[-2000:]
    st = collect(node.store)
    assert st["corrections"]["states"].get("stored", 0) >= 1
    assert "corrections" in render(st) and f"{row.dice:.3f}" in render(st)
    from hexnode.web.server import metrics_text

    assert 'hexnode_corrections{state="stored"} 1.0' in metrics_text(st)
    _check_web(node, row)


def _check_web(node: Node, row: Correction) -> None:
    import urllib.request

    from hexnode.config import HttpConfig
    from hexnode.web.server import StatusServer

    server = StatusServer(HttpConfig(enabled=True, port=0), node.store)
    server.start()
    try:
        base = f"http://127.0.0.1:{server.port}"
        page = urllib.request.urlopen(base + "/", timeout=10).read().decode()
        assert "Corrections" in page and f"{row.dice:.3f}" in page
        outcomes = json.loads(urllib.request.urlopen(base + "/outcomes", timeout=10).read())
        assert outcomes["corrections"]["stored"] >= 1
        assert any(v["dice_median"] is not None for v in outcomes["corrections"]["versions"])
    finally:
        server.stop()


def test_a_second_correction_supersedes_the_first(site: Site) -> None:
    sources = _sources(site.base)
    mine = _own_mask(site, sources)
    first = reader_seg(sources, ndimage.binary_dilation(mine, structure=np.ones((1, 3, 3), bool)).astype(np.uint8))
    _send(site, first, "first")
    assert _wait_taken(site, str(first.SOPInstanceUID)).state == "stored"
    eroded = ndimage.binary_erosion(mine, structure=np.ones((1, 3, 3), bool)).astype(np.uint8)
    second = reader_seg(sources, eroded if eroded.any() else mine)
    _send(site, second, "second")
    now = _wait_taken(site, str(second.SOPInstanceUID))
    assert now.state == "stored" and now.volume_change_ml is not None and now.volume_change_ml <= 0
    with site.node.store.transaction() as s:
        before = s.execute(select(Correction).where(Correction.sop_instance_uid == str(first.SOPInstanceUID))).scalar_one()
        assert before.state == "superseded" and before.superseded_by == now.id
        current = s.execute(select(Correction).where(Correction.series_id == now.series_id,
                                                     Correction.state == "stored")).scalars().all()
        assert [c.id for c in current] == [now.id]
        assert site.node.spool.path(before.path).is_file()  # history kept


def test_a_seg_of_an_unknown_series_is_kept_aside(site: Site) -> None:
    sources = _sources(site.base)
    unknown = []
    series_uid = generate_uid()
    for d in sources:
        x = copy.deepcopy(d)
        x.SeriesInstanceUID, x.SOPInstanceUID = series_uid, generate_uid()
        unknown.append(x)
    mask = np.zeros((len(unknown), int(unknown[0].Rows), int(unknown[0].Columns)), np.uint8)
    mask[len(mask) // 2, 20:40, 20:40] = 1
    seg = reader_seg(unknown, mask)
    path = _send(site, seg, "unknown")
    assert dciodvfy_errors(path) == []
    row = _wait_taken(site, str(seg.SOPInstanceUID))
    assert row.state == "aside" and "never received" in (row.reason or "")
    assert row.path.startswith("corrections/aside/") and site.node.spool.path(row.path).is_file()


def test_a_seg_on_another_frame_of_reference_is_kept_aside(site: Site) -> None:
    sources = _sources(site.base)
    moved = []
    frame = generate_uid()
    for d in sources:
        x = copy.deepcopy(d)
        x.FrameOfReferenceUID = frame
        moved.append(x)
    seg = reader_seg(moved, _own_mask(site, sources))
    row = _wait_taken(site, str(_send(site, seg, "other-frame") and seg.SOPInstanceUID))
    assert row.state == "aside" and "Frame of Reference" in (row.reason or ""), row.reason


def test_several_segments_none_chosen_by_label_is_kept_aside(site: Site) -> None:
    sources = _sources(site.base)
    mine = _own_mask(site, sources)
    seg = reader_seg(sources, mine, label="Lesion", extra_segments=1)
    # two segments; the first is Hemorrhage by its property: chosen, not guessed
    row = _wait_taken(site, str(_send(site, seg, "two-segments") and seg.SOPInstanceUID))
    assert row.state == "stored" and row.segment_number == 1, row.reason


def _truncated_pixels(seg: pydicom.Dataset) -> None:
    seg.PixelData = bytes(seg.PixelData)[:16]


def _no_segments(seg: pydicom.Dataset) -> None:
    del seg.SegmentSequence


def _frames_without_groups(seg: pydicom.Dataset) -> None:
    seg.PerFrameFunctionalGroupsSequence = seg.PerFrameFunctionalGroupsSequence[:1]


def _frames_on_nothing(seg: pydicom.Dataset) -> None:
    for group in seg.PerFrameFunctionalGroupsSequence:
        del group.DerivationImageSequence
        del group.PlanePositionSequence


@pytest.mark.parametrize("breakage", [_truncated_pixels, _no_segments, _frames_without_groups,
                                      _frames_on_nothing])
def test_a_malformed_seg_is_kept_aside_and_the_receiver_stays_up(site: Site, breakage: Any) -> None:
    sources = _sources(site.base)
    seg = reader_seg(sources, _own_mask(site, sources))
    breakage(seg)
    row = _wait_taken(site, str(_send(site, seg, f"malformed-{breakage.__name__}") and seg.SOPInstanceUID))
    assert row.state == "aside" and row.reason and row.path.startswith("corrections/aside/"), (row.state, row.reason)
    assert site.node.alive()
    echo = subprocess.run(["/usr/bin/echoscu", "-aec", "HEXNODE", "127.0.0.1", str(site.node.port)],
                          capture_output=True, text=True, timeout=30)
    assert echo.returncode == 0, echo.stderr


def test_hexnode_own_seg_echoed_back_is_not_a_correction(site: Site) -> None:
    proc = _storescu(site, site.own_seg, "PACS")
    assert proc.returncode == 0, proc.stderr[-2000:]
    own_uid = str(pydicom.dcmread(site.own_seg, stop_before_pixels=True).SOPInstanceUID)
    row = _wait_taken(site, own_uid)
    assert row.state == "own" and "same SOP Instance UID" in (row.reason or "")
    # re-identified by a PACS: a new SOP Instance UID, the same automatic hexnode segment and mask
    copy_ = pydicom.dcmread(site.own_seg)
    copy_.SOPInstanceUID = copy_.file_meta.MediaStorageSOPInstanceUID = generate_uid()
    row = _wait_taken(site, str(_send(site, copy_, "reidentified") and copy_.SOPInstanceUID))
    assert row.state == "own" and "identical mask" in (row.reason or "")
    with site.node.store.transaction() as s:
        assert s.execute(select(Result).where(Result.sop_instance_uid == own_uid)).first() is not None
        kinds = {e.to_state for e in s.execute(select(Event).where(Event.entity == "correction")).scalars()}
    assert "own" in kinds


def test_dataset_export_is_what_train_data_loads(site: Site, tmp_path: Path) -> None:
    from hexnode.train.data import read_labels, site_case

    sources = _sources(site.base)
    mine = _own_mask(site, sources)
    final = ndimage.binary_dilation(mine, structure=np.ones((1, 3, 3), bool)).astype(np.uint8)
    seg = reader_seg(sources, final)
    assert _wait_taken(site, str(_send(site, seg, "final") and seg.SOPInstanceUID)).state == "stored"
    # the follow-up corrected too: a segmentation case without an HE label of its own
    fu_sources = _sources(site.fu)
    fu_mask = _own_mask(site, fu_sources, site.fu_own_seg)
    fu_seg = reader_seg(fu_sources, ndimage.binary_erosion(fu_mask, structure=np.ones((1, 3, 3), bool))
                        .astype(np.uint8))
    assert _wait_taken(site, str(_send(site, fu_seg, "fu-final") and fu_seg.SOPInstanceUID)).state == "stored"
    out = tmp_path / "site"
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    proc = subprocess.run([sys.executable, "-m", "hexnode.cli", "dataset", "export", str(out),
                           "--config", str(site.node.config)], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr
    manifest = json.loads((out / "manifest.json").read_text())
    from hexnode.store.spool import uid_hash

    case_id, fu_id = uid_hash(site.base_uid), uid_hash(series_uid_of(site.fu[0]))
    assert {c["case_id"] for c in manifest["cases"]} == {case_id, fu_id} and manifest["skipped"] == []
    entry = next(c for c in manifest["cases"] if c["case_id"] == case_id)
    fu_entry = next(c for c in manifest["cases"] if c["case_id"] == fu_id)
    assert fu_entry["he_label"] is None and fu_entry["patient"] == entry["patient"]
    fu_case = site_case(out, fu_id, 0)  # loadable as a segmentation case; listed without an outcome
    assert fu_case.mask.sum() > 0 and fu_case.mask.shape == fu_case.hu.shape
    assert entry["he_label"] in (0, 1) and entry["followup_volume_ml"] > 0 and entry["patient"]
    labels = read_labels(out)  # the outcome readers: only the case with a follow-up outcome
    assert labels == {case_id: entry["he_label"]}
    with open(out / "labels.csv", newline="") as fh:
        rows = {r["case_id"]: r for r in csv.DictReader(fh)}
    assert rows[case_id]["followup_volume_ml"] == str(entry["followup_volume_ml"])
    assert rows[fu_id]["he_label"] == ""  # train --site fine-tunes on it; the outcome readers pass it by
    from hexnode.train.siteset import read_site

    assert {c.case_id for c in read_site(out).cases} == {case_id, fu_id}
    case = site_case(out, case_id, labels[case_id])
    # the volume is the series in HU along the normal, the mask the last correction on it
    order = np.argsort([float(d.ImagePositionPatient[2]) for d in sources])
    hu = np.stack([d.pixel_array.astype(np.int32) * int(d.RescaleSlope) + int(d.RescaleIntercept)
                   for d in sources])[order]
    assert case.hu.shape == hu.shape and np.array_equal(case.hu, hu.astype(np.int16))
    assert np.array_equal(case.mask, final[order])
    assert case.spacing[2] == pytest.approx(abs(float(sources[order[1]].ImagePositionPatient[2])
                                                - float(sources[order[0]].ImagePositionPatient[2])), abs=1e-3)
    # pseudonymous: no patient name, ID or birth date, no UID in anything exported
    first = sources[0]
    secrets = [str(first.PatientName), str(first.PatientID), str(first.get("PatientBirthDate", "")), site.base_uid]
    for f in out.rglob("*"):
        if f.is_file():
            data = f.read_bytes()
            if f.suffix == ".gz":
                import gzip

                data = gzip.decompress(data)
            for secret in filter(None, secrets):
                assert secret.encode() not in data, (f, secret)


def test_no_patient_value_in_the_node_log(site: Site) -> None:
    first = pydicom.dcmread(site.base[0], stop_before_pixels=True)
    log = site.node.log.read_text()
    assert "kept aside" in log or "correction" in log
    for secret in filter(None, [str(first.PatientName), str(first.PatientID), str(first.get("PatientBirthDate", ""))]):
        assert secret not in log


def test_a_seg_without_source_references_maps_by_frame_positions(site: Site) -> None:
    sources = _sources(site.base)
    mine = _own_mask(site, sources)
    corrected = ndimage.binary_dilation(mine, structure=np.ones((1, 5, 5), bool)).astype(np.uint8)
    seg = reader_seg(sources, corrected)
    for group in seg.PerFrameFunctionalGroupsSequence:  # a viewer that writes positions only
        del group.DerivationImageSequence
    row = _wait_taken(site, str(_send(site, seg, "positions-only") and seg.SOPInstanceUID))
    assert row.state == "stored", row.reason
    assert row.dice == pytest.approx(_dice(corrected, mine), abs=1e-4)


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_filing_and_taking_on_either_database(site: Site, tmp_path: Path, kind: str) -> None:
    """The indexer files a SEG and the label step takes it, on SQLite and on the real PostgreSQL."""
    import shutil
    from datetime import datetime

    from plumbing_helpers import store_on

    from hexnode.labels.take import take_received
    from hexnode.receive.indexer import Indexer, Item
    from hexnode.store.db import Job
    from hexnode.store.spool import Spool, instance_relpath

    sources = _sources(site.base)
    mine = _own_mask(site, sources)
    corrected = ndimage.binary_dilation(mine, structure=np.ones((1, 3, 3), bool)).astype(np.uint8)
    seg = reader_seg(sources, corrected)
    with store_on(kind, f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        spool = Spool(tmp_path / "spool").prepare()
        items = []
        for p, d in zip(site.base, sources, strict=True):
            rel = instance_relpath(str(d.SOPInstanceUID))
            spool.path(rel).parent.mkdir(parents=True, exist_ok=True)
            shutil.copy(p, spool.path(rel))
            items.append(Item(rel, "SCANNER", datetime(2026, 1, 1), -1, "10.0.0.1"))
        indexer = Indexer(store, spool, fsync=False)
        indexer.index_batch(items)
        own_rel = "results/own/seg.dcm"
        spool.path(own_rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy(site.own_seg, spool.path(own_rel))
        with store.transaction() as s:
            series = s.execute(select(Series).where(Series.series_uid == site.base_uid)).scalar_one()
            job = Job(series_id=series.id, revision=0, state="done")
            s.add(job)
            s.flush()
            s.add(Result(job_id=job.id, series_id=series.id, kind="SEG", path=own_rel, sop_class_uid=SEG_CLASS,
                         sop_instance_uid=str(pydicom.dcmread(site.own_seg, stop_before_pixels=True).SOPInstanceUID)))
        rel = instance_relpath(str(seg.SOPInstanceUID))
        spool.path(rel).parent.mkdir(parents=True, exist_ok=True)
        seg.save_as(spool.path(rel), enforce_file_format=True)
        indexer.index_batch([Item(rel, READER, datetime(2026, 1, 2), -1, "10.0.0.2")])
        assert not spool.path(rel).exists()  # filed under corrections/, not left as an instance
        assert take_received(store, spool)[0][1] == "stored"
        with store.transaction() as s:
            row = s.execute(select(Correction)).scalar_one()
            assert (row.calling_ae, row.peer, row.series_id) == (READER, "10.0.0.2", series.id)
            assert row.dice == pytest.approx(_dice(corrected, mine), abs=1e-4)
            assert s.execute(select(Series).where(Series.series_uid == str(seg.SeriesInstanceUID))).first() is None
        # its slices are a case of the site data set now: purge keeps them past the retention
        from hexnode.admin.purge import purgeable
        from hexnode.store.db import utcnow

        with store.transaction() as s:
            ser = s.get(Series, series.id)
            ser.state, ser.state_at, ser.last_instance_at = "delivered", datetime(2026, 1, 1), datetime(2026, 1, 1)
        assert series.id not in purgeable(store, utcnow())
        # a re-send of the same SEG is not a second correction
        seg.save_as(spool.path(rel), enforce_file_format=True)
        indexer.index_batch([Item(rel, READER, datetime(2026, 1, 3), -1, "10.0.0.2")])
        with store.transaction() as s:
            assert len(s.execute(select(Correction)).scalars().all()) == 1


def test_a_label_map_segmentation_is_read_too(site: Site) -> None:
    """Label Map Segmentation Storage (what newer viewers write): accepted and mapped like a binary SEG."""
    sources = _sources(site.base)
    mine = _own_mask(site, sources)
    corrected = ndimage.binary_dilation(mine, structure=np.ones((1, 3, 3), bool)).astype(np.uint8)
    seg = reader_seg(sources, corrected, kind="LABELMAP")
    assert str(seg.SOPClassUID) == "1.2.840.10008.5.1.4.1.1.66.7"
    # this dcmtk's storescu does not know the class: pynetdicom sends it
    from pynetdicom import AE

    path = site.root / "labelmap.dcm"
    seg.save_as(path, enforce_file_format=True)
    ae = AE(ae_title=READER)
    ae.add_requested_context(str(seg.SOPClassUID), str(seg.file_meta.TransferSyntaxUID))
    assoc = ae.associate("127.0.0.1", site.node.port, ae_title="HEXNODE")
    assert assoc.is_established
    try:
        assert int(assoc.send_c_store(path).Status) == 0
    finally:
        assoc.release()
    row = _wait_taken(site, str(seg.SOPInstanceUID))
    assert row.state == "stored", row.reason
    assert row.dice == pytest.approx(_dice(corrected, mine), abs=1e-4)


def test_another_products_automatic_seg_is_not_a_reference(site: Site) -> None:
    sources = _sources(site.base)
    mine = _own_mask(site, sources)
    other = ndimage.binary_dilation(mine, structure=np.ones((1, 3, 3), bool)).astype(np.uint8)
    seg = reader_seg(sources, other, algorithm="OtherVendorICH")
    path = _send(site, seg, "other-vendor")
    assert dciodvfy_errors(path) == []
    row = _wait_taken(site, str(seg.SOPInstanceUID))
    assert row.state == "aside" and "OtherVendorICH" in (row.reason or ""), row.reason
