"""The site's learning loop through DICOM, on four shifted-scanner cases (`sharp-7mm`, seed 7312):
a real node (`hexnode node`: receive, route, worker, send; the bundled ONNX models; SQLite; dcmtk's
storescp as the PACS) analyses each series sent with dcmtk's storescu; each case's corrected mask
(the generator's truth, as a radiologist's correction, a highdicom SEG checked with dciodvfy) goes
back to hexnode's SCP with storescu and becomes the series' reference; then the commands a site
runs: `hexnode dataset export`, `hexnode train --site --init-from`, `hexnode models compare`,
`hexnode models activate` (accepted or refused as compare.json says; the next scan's SEG is the
candidate's), `hexnode models rollback`.

The node runs deploy/hexnode.toml's settings except the series' stable and study-settle waits
(10 s each shipped, 1 s here), so that the four series are decided within seconds.
"""

from __future__ import annotations

import csv
import json
from collections.abc import Iterator
from pathlib import Path

import numpy as np
import pytest
from node_helpers import dciodvfy_errors
from plumbing_helpers import models_dir
from sqlalchemy import select

pytest.importorskip("torch")

from hexnode.devtools.siteloop import SiteCase, SiteNode, as_new_scan, corrected_seg, write_site_case  # noqa: E402
from hexnode.store.db import Event  # noqa: E402

PROFILE = "sharp-7mm"
SEED = 7312  # neither training, the crop-share tuning (7301), test_site_training (7302) nor the bench (7311)
# (index, without blood): 0 and 3 fall on the held-out side (one with blood, one without: IoU and
# false blood both have a case), 1 and 2 on the training side
CASES = ((0, False), (1, False), (2, False), (3, True))


@pytest.fixture(scope="module")
def node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SiteNode]:
    root = tmp_path_factory.mktemp("siteloop")
    n = SiteNode(root / "node", waits={"stable_seconds": 1.0, "study_settle_seconds": 1.0},
                 models_dir=str(models_dir())).start()
    try:
        yield n
    finally:
        n.stop()


def test_corrections_through_dicom_make_a_candidate_the_gate_decides_and_rollback_undoes(
        node: SiteNode, tmp_path: Path) -> None:
    cases: list[SiteCase] = [write_site_case(tmp_path / "scans", SEED, i, PROFILE, normal=normal)
                             for i, normal in CASES]
    assert [c.held_out for c in cases] == [True, False, False, True]
    assert cases[0].truth.any() and not cases[3].truth.any()

    # the scanner sends; the node analyses and delivers SEG, SR and SC to the PACS
    for c in cases:
        node.storescu(c.paths)
    states = node.wait_delivered([c.series_uid for c in cases], timeout=240)
    assert all(st == "delivered" for st, _ in states.values()), states
    bundled = node.seg_model_version(cases[0].series_uid)
    assert bundled == json.loads((models_dir() / "manifest.json").read_text())["version"]

    # the readers' corrections come back through the SCP
    segs = [corrected_seg(c, tmp_path / "corrections" / f"{c.case_id}.dcm") for c in cases]
    for path, _ in segs:
        assert dciodvfy_errors(path) == [], path
    node.send_corrections([p for p, _ in segs])
    taken = node.wait_taken([uid for _, uid in segs], timeout=120)
    for c, (_, uid) in zip(cases, segs, strict=True):
        t = taken[uid]
        assert t.state == "stored", (c.case_id, t.reason)
        assert t.dice is not None and 0.0 <= t.dice <= 1.0 and t.reference_ml is not None
        assert (t.reference_ml == 0.0) == c.normal
    status, _ = node.cli("status")
    assert status.returncode == 0 and "corrections (DICOM SEG from readers): stored 4" in status.stdout, status.stdout

    # the site data set: every correction, the truth on the series' slices
    site = tmp_path / "export"
    proc, _ = node.cli("dataset", "export", str(site))
    assert proc.returncode == 0, proc.stderr
    with open(site / "labels.csv", newline="") as fh:
        rows = list(csv.DictReader(fh))
    assert sorted(r["case_id"] for r in rows) == sorted(c.case_id for c in cases)
    assert all(r["he_label"] == "" for r in rows)  # no follow-up was sent: segmentation cases only
    import SimpleITK as sitk

    exported = sitk.GetArrayFromImage(sitk.ReadImage(str(site / cases[0].case_id / "mask.nii.gz")))
    assert np.array_equal(exported, cases[0].truth) or np.array_equal(exported, cases[0].truth[::-1])

    # fine-tune from the version the node runs, compare on the held-out cases, let the gate decide
    proc, _ = node.cli("train", "--site", str(site), "--init-from", bundled, "--seg-steps", "2", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    candidate = proc.stdout.split("candidate ", 1)[1].split(" ", 1)[0]
    proc, _ = node.cli("models", "compare", candidate, "--synth", "0", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["against"] == bundled and result["held_out_cases"] == 2
    assert result["site"]["iou"]["n"] == 1 and result["site"]["false_blood_ml"]["n"] == 1
    cdir = node.data_dir / "models" / candidate
    verdict = json.loads((cdir / "compare.json").read_text())
    assert verdict["worse"] == result["worse"]

    proc, _ = node.cli("models", "activate", candidate)
    if verdict["worse"]:
        print("refused:", proc.stderr)
        assert proc.returncode == 3 and "worse than" in proc.stderr
        assert all(r in proc.stderr for r in verdict["reasons"])
        proc, _ = node.cli("models", "activate", candidate, "--force")
    else:
        print("accepted:", proc.stdout)
    assert proc.returncode == 0, proc.stderr
    assert f"activated {candidate} " in proc.stdout
    listed, _ = node.cli("models", "list")
    assert any(line.startswith("*") and candidate in line for line in listed.stdout.splitlines()), listed.stdout
    # the running worker takes the next scan on the candidate, even one sent at once
    again = as_new_scan(cases[0], tmp_path / "again")
    node.storescu(again.paths)
    assert node.wait_delivered([again.series_uid], timeout=120)[again.series_uid][0] == "delivered"
    assert node.seg_model_version(again.series_uid) == candidate

    # one command back to the version before
    proc, _ = node.cli("models", "rollback")
    assert proc.returncode == 0, proc.stderr
    assert f"rolled back to {bundled}" in proc.stdout
    listed, _ = node.cli("models", "list")
    assert any(line.startswith("*") and bundled in line for line in listed.stdout.splitlines()), listed.stdout

    with node.store().transaction() as s:
        trail = [(e.to_state, e.detail or "") for e in s.execute(
            select(Event).where(Event.entity == "model").order_by(Event.id)).scalars()]
    assert [t[0] for t in trail] == ["candidate", "activated", "rolled_back"], trail
    assert trail[0][1].startswith(f"{candidate} fine-tuned from {bundled} ")
    assert trail[1][1].startswith(f"bundled {bundled} -> {candidate} ")
    assert ("; forced: " in trail[1][1]) == verdict["worse"]
    assert trail[2][1].startswith(f"{candidate} -> {bundled} ")
