"""The committed models (real ONNX files) and the training pipeline, end to end.

Budget (issue 4): all tests/test_models*.py together within ~5 minutes on 2 loaded cores; the
quick training run dominates (~2-3 min).
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from hexnode.models.registry import ModelIntegrityError, load_manifest, sha256_file

REPO = Path(__file__).resolve().parents[2]
MODELS = REPO / "models"


def test_committed_files_match_manifest_and_onnx_io():
    import onnxruntime as ort

    m = load_manifest(MODELS)  # raises on any sha256 mismatch
    assert m.version and 0.0 < m.threshold < 1.0
    total = 0
    for name, entry in m.data["files"].items():
        assert sha256_file(MODELS / name) == entry["sha256"]
        total += (MODELS / name).stat().st_size
        if name.endswith(".onnx"):
            sess = ort.InferenceSession(str(MODELS / name), providers=["CPUExecutionProvider"])
            assert [i.name for i in sess.get_inputs()] == list(entry["inputs"])
            assert [o.name for o in sess.get_outputs()] == list(entry["outputs"])
            for i in sess.get_inputs():
                want = entry["inputs"][i.name]
                assert len(i.shape) == len(want)
                assert not isinstance(i.shape[0], int), "batch axis must be dynamic"
                assert i.shape[1] == want[1]
            assert entry["opset"] >= 17
            assert entry["max_abs_diff_vs_torch"] < 1e-3
    assert total < 50 * 2**20
    assert set(m.data["metrics"]) >= {"validation", "test"}
    assert m.data["calibration"]["method"] == "platt"


def test_gpu_providers_without_their_runtime_are_skipped_quietly(monkeypatch, capfd):
    """A GPU provider whose libraries are missing is not offered to onnxruntime (which would print
    an 'EP Error' block per session before falling back); one whose libraries load is kept."""
    import onnxruntime as ort

    from hexnode.models import registry
    from hexnode.models.analyser import Models

    libc = "libc.so.6"
    monkeypatch.setattr(registry, "_PROVIDER_LIBS", {"TensorrtExecutionProvider": ("libnvinfer-absent.so.99",),
                                                     "CUDAExecutionProvider": (libc,)})
    listed = set(ort.get_available_providers())
    chosen = registry.choose_providers(["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"])
    assert "TensorrtExecutionProvider" not in chosen
    assert ("CUDAExecutionProvider" in chosen) == ("CUDAExecutionProvider" in listed)
    assert chosen[-1] == "CPUExecutionProvider"

    monkeypatch.undo()
    capfd.readouterr()
    models = Models.load(MODELS)
    err = capfd.readouterr()
    if not registry._runtime_present("CUDAExecutionProvider"):  # this CPU-only machine (CI)
        assert models.provider == "CPUExecutionProvider"
        assert "EP Error" not in err.out + err.err


def test_tampered_or_missing_file_is_refused(tmp_path):
    from hexnode.models.analyser import Models

    bad = tmp_path / "models"
    shutil.copytree(MODELS, bad)
    data = bytearray((bad / "seg.onnx").read_bytes())
    data[len(data) // 2] ^= 0x01
    (bad / "seg.onnx").write_bytes(bytes(data))
    with pytest.raises(ModelIntegrityError, match="seg.onnx"):
        Models.load(bad)
    shutil.copy(MODELS / "seg.onnx", bad / "seg.onnx")
    (bad / "lgbm.txt").unlink()
    with pytest.raises(ModelIntegrityError, match="missing"):
        Models.load(bad)
    shutil.copy(MODELS / "lgbm.txt", bad / "lgbm.txt")
    Models.load(bad)  # restored: loads again


@pytest.fixture(scope="module")
def committed():
    from hexnode.models.analyser import Models

    return Models.load(MODELS, providers=["CPUExecutionProvider"])


def test_committed_pipeline_on_a_synthetic_case(committed):
    from hexnode.synth.phantom import generate_case

    c = generate_case(777, 3)
    a = committed.analyse(c.hu.astype(np.float32), c.spacing, notes=("test",))
    assert a.mask.shape == c.hu.shape and a.mask.dtype == np.uint8
    p = a.prediction
    assert p.model.version == committed.info.version and p.notes == ("test",)
    assert 0.0 <= p.probability <= 1.0
    assert {"segmentation", "total"} <= set(a.timings)
    if p.hemorrhage_detected:
        assert p.volume_ml == pytest.approx(a.mask.sum() * np.prod(c.spacing) / 1000)
        assert {"radiomics", "cnn", "fusion"} <= set(a.timings)


def test_reports_carry_the_manifests_own_held_out_figures(committed, tmp_path):
    """ModelInfo.operating_point is metrics.test of the manifest, or None where it lacks them."""
    test = json.loads((MODELS / "manifest.json").read_text())["metrics"]["test"]
    op = committed.info.operating_point
    assert op is not None and op.n == test["n"]
    assert (op.sensitivity, op.specificity, op.npv) == (test["sensitivity"], test["specificity"], test.get("npv"))
    data = json.loads((MODELS / "manifest.json").read_text())
    del data["metrics"]["test"]["specificity"]
    (tmp_path / "manifest.json").write_text(json.dumps(data))
    assert load_manifest(tmp_path, verify=False).operating_point is None


def test_air_is_not_a_head_and_gets_no_statement(committed):
    from hexnode.pipeline.contracts import IncompleteCoverage

    hu = np.full((4, 512, 512), -1000.0, np.float32)  # air only: no skull, no brain
    with pytest.raises(IncompleteCoverage, match="no intracranial cavity found"):
        committed.analyse(hu, (0.45, 0.45, 5.0))


def test_normal_heads_through_the_committed_models(committed):
    """False blood on normal synthetic heads (no bleed anywhere), straight and tilted: bounded, and
    whatever is left lies inside the skull (the intracranial gate)."""
    from hexnode.models.brain import intracranial
    from hexnode.synth.phantom import generate_case

    vols = []
    for i, tilt in enumerate((0.0, 0.0, 22.0)):
        c = generate_case(4243, i, normal=True, tilt_deg=tilt)
        assert not c.mask.any()
        hu = c.hu.astype(np.float32)
        a = committed.analyse(hu, c.spacing)
        vols.append(a.prediction.volume_ml)
        cav = intracranial(hu, c.spacing)
        whole = (slice(0, hu.shape[0]), slice(0, 512), slice(0, 512))
        assert not (a.mask.astype(bool) & ~cav.full(cav.mask, whole)).any()  # nothing outside the cavity
        if not a.prediction.hemorrhage_detected:
            assert a.prediction.volume_ml == 0.0 and a.prediction.probability == 0.0
            assert a.prediction.high_risk is False
    print(f"false blood on normal heads: {', '.join(f'{v:.2f} ml' for v in vols)}")
    assert max(vols) <= 1.0, vols


def _write_site_layout(root: Path, n: int) -> None:
    """Synthetic cases in the site-data layout: DICOM series + NIfTI mask for even cases, NIfTI
    image + mask for odd ones, labels.csv."""
    import SimpleITK as sitk

    from hexnode.synth.dicom import write_case
    from hexnode.synth.phantom import generate_case

    rows = ["case_id,he_label,followup_volume_ml"]
    for i in range(n):
        c = generate_case(4242, i)
        cid = f"case{i:02d}"
        d = root / cid
        if i % 2 == 0:
            write_case(c, d)
        else:
            d.mkdir(parents=True)
            for arr, name in ((c.hu, "image.nii.gz"), (c.mask, "mask.nii.gz")):
                img = sitk.GetImageFromArray(arr)
                img.SetSpacing(tuple(float(s) for s in c.spacing))
                sitk.WriteImage(img, str(d / name))
        rows.append(f"{cid},{int(c.truth.he_label)},{c.truth.followup_volume_ml:.2f}")
    (root / "labels.csv").write_text("\n".join(rows) + "\n")


@pytest.mark.slow
def test_quick_train_on_site_layout_then_analyse_and_evaluate(tmp_path):
    from hexnode.models.analyser import Models
    from hexnode.train.data import read_labels, site_case

    data = tmp_path / "site"
    _write_site_layout(data, 10)
    first = site_case(data, "case00", 0)
    assert first.mask.any() and first.hu[first.mask > 0].mean() > 40  # mask lies on the blood
    out = tmp_path / "models"
    hexnode = [sys.executable, "-m", "hexnode.cli"]
    work = tmp_path / "work"
    r = subprocess.run([*hexnode, "train", "--quick", "--data", str(data), "--out", str(out), "--workdir", str(work)],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "seg.onnx max |onnxruntime - torch|" in r.stdout
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["quick"] is True and manifest["training_data"]["synthetic"] is False
    assert sum(manifest["training_data"]["splits"].values()) == len(read_labels(data))

    assert manifest["files"]["markers.json"]["role"] == "markers"
    assert "marker_logit" in manifest["preprocessing"]["features"]["context"]

    # the campaign's weights and history, and a resumed run that finds everything done: it trains
    # nothing, reuses the stage-2 feature cache and writes the same model files
    campaign = json.loads((out / "campaign" / "campaign.json").read_text())
    assert campaign["totals"]["runs"] == 1 and campaign["totals"]["seg_steps"] > 0
    assert manifest["campaign"] == campaign["totals"]
    before = {name: entry["sha256"] for name, entry in manifest["files"].items()}
    r = subprocess.run([*hexnode, "train", "--resume", str(work)], capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    assert "seg: continuing from" in r.stderr and "cnn: continuing from" in r.stderr
    assert {name: e["sha256"] for name, e in json.loads((out / "manifest.json").read_text())["files"].items()} == before

    models = Models.load(out)
    assert models.markers is not None
    c = site_case(data, "case01", 0)
    a = models.analyse(c.hu.astype(np.float32), c.spacing)
    assert a.mask.shape == c.hu.shape
    assert 0.0 <= a.prediction.probability <= 1.0

    r = subprocess.run([*hexnode, "evaluate", "--data", str(data), "--models", str(out), "--json",
                        "--cases", str(tmp_path / "cases.csv")],
                       capture_output=True, text=True, timeout=900)
    assert r.returncode == 0, r.stderr[-3000:]
    obj = json.loads(r.stdout.strip().splitlines()[-1])
    assert obj["n"] == 10
    for k in ("iou_slice", "iou_patient", "dice", "auc", "ece", "auc_radiomics", "auc_cnn", "auc_volume",
              "sensitivity", "specificity"):
        assert k in obj
    assert 0.0 <= obj["iou_patient"] <= 1.0
    from hexnode.train.evaluate import read_cases

    rows = read_cases(tmp_path / "cases.csv")
    assert sorted(r.case_id for r in rows) == sorted(read_labels(data))
    assert np.mean([r.iou for r in rows]) == pytest.approx(obj["iou_patient"], abs=1e-4)

    # Calibration and thresholds are fitted on the training side's features; they only hold at
    # inference if the node computes the same probability for the same case
    import pickle

    from hexnode.models.predict import Booster, Calibration, MarkerScore

    with open(work / "features.pkl", "rb") as fh:
        state = pickle.load(fh)
    booster, markers = Booster(out / "lgbm.txt"), MarkerScore.load(out / "markers.json")
    cal = Calibration(manifest["calibration"]["a"], manifest["calibration"]["b"])
    inferred = {r.case_id: r.probability for r in rows}
    compared = 0
    for rec in state["fus"] + state["val"] + state["test"]:
        if rec.feats.get("volume_ml", 0.0) <= 0:
            continue
        feats = dict(rec.feats, marker_logit=markers.logit(rec.feats))
        assert float(cal.apply(booster.raw([feats]))[0]) == pytest.approx(inferred[rec.case_id], abs=1e-6), rec.case_id
        compared += 1
    assert compared >= 3
