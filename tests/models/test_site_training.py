"""The node learns at its site: `hexnode train --site` fine-tunes the active (bundled, real) U-Net on
a handful of shifted-scanner cases, `hexnode models compare` measures candidate against active on the
held-out cases, `hexnode models activate` refuses a worse candidate unless `--force`, accepts one that
is not worse, `hexnode models rollback` restores the version before, and every switch is an audit row
with the OS user. A few U-Net steps on 4-slice stacks keep it short."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from sqlalchemy import select

pytest.importorskip("torch")

from hexnode.config import Config  # noqa: E402
from hexnode.store import model_versions as mv  # noqa: E402
from hexnode.store.db import Event, open_store  # noqa: E402
from hexnode.synth.phantom import generate_case  # noqa: E402
from hexnode.synth.site import case_key, write_case, write_labels  # noqa: E402
from hexnode.train.siteset import is_held_out, read_site  # noqa: E402
from tests.plumbing_helpers import models_dir, store_on  # noqa: E402

PROFILE = "sharp-7mm"
SEED = 7302


def _site(root: Path) -> Path:
    """3 training cases; held out: 2 with blood, 1 without (so IoU and false blood both have cases)."""
    rows = []
    need = {"train": 3, "blood": 2, "normal": 1}
    i = 0
    while any(need.values()):
        index, i = i, i + 1
        cid = case_key(SEED, index, PROFILE)
        side = ("blood" if need["blood"] else "normal") if is_held_out(cid) else "train"
        if not need[side]:
            continue
        need[side] -= 1
        c = generate_case(SEED, index, profile=PROFILE, n_slices=4, normal=side == "normal")
        write_case(root, cid, c)
        rows.append((cid, c))
    write_labels(root, rows)
    return root


def _cli(config: Path, *args: str) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    env["HEXNODE_MODELS_DIR"] = str(models_dir())
    return subprocess.run([sys.executable, "-m", "hexnode.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, timeout=300, env=env)


def _damaged(candidate: Path, out_root: Path) -> str:
    """The candidate with its U-Net's last bias pushed to -40: it predicts no blood anywhere."""
    import onnx
    from onnx import numpy_helper

    from hexnode.models.registry import sha256_file

    manifest = json.loads((candidate / "manifest.json").read_text())
    version = manifest["version"] + "-damaged"
    d = out_root / version
    shutil.copytree(candidate, d)
    (d / "compare.json").unlink(missing_ok=True)
    model = onnx.load(str(d / "seg.onnx"))
    last = [n for n in model.graph.node if n.op_type in ("Conv", "ConvTranspose")][-1]
    init = {i.name: i for i in model.graph.initializer}[last.input[2]]
    init.CopyFrom(numpy_helper.from_array(np.full_like(numpy_helper.to_array(init), -40.0), init.name))
    onnx.save(model, str(d / "seg.onnx"))
    manifest["version"] = version
    manifest["files"]["seg.onnx"]["sha256"] = sha256_file(d / "seg.onnx")
    manifest["files"]["seg.onnx"]["bytes"] = (d / "seg.onnx").stat().st_size
    (d / "manifest.json").write_text(json.dumps(manifest, indent=2))
    return version


def _model_events(config: Config) -> list[Any]:
    store = open_store(config.database_url)
    try:
        with store.transaction() as s:
            return [(e.to_state, e.detail) for e in s.execute(select(Event).where(Event.entity == "model")
                                                               .order_by(Event.id)).scalars()]
    finally:
        store.dispose()


def test_train_compare_activate_refuse_force_rollback(tmp_path: Path) -> None:
    site = _site(tmp_path / "site")
    data = tmp_path / "data"
    config = tmp_path / "hexnode.toml"
    config.write_text(f'data_dir = "{data}"\n')
    cfg = Config(data_dir=str(data))
    cfg.models.dir = str(models_dir())
    open_store(cfg.database_url).dispose()  # the node's database, at head
    bundled = mv.bundled_version(cfg)
    user = mv.os_user()

    proc = _cli(config, "train", "--site", str(site), "--seg-steps", "3", "--device", "cpu")
    assert proc.returncode == 0, proc.stderr[-3000:]
    candidate = proc.stdout.split("candidate ", 1)[1].split(" ", 1)[0]
    cdir = cfg.model_versions_path / candidate
    manifest = json.loads((cdir / "manifest.json").read_text())
    digest = read_site(site).digest
    prov = manifest["provenance"]
    assert prov["kind"] == "site-finetune" and prov["base_version"] == bundled
    assert prov["site"]["digest"] == digest and prov["site"]["cases"] == 6 and prov["site"]["held_out_cases"] == 3
    assert prov["seg"]["steps"] == 3
    card = (cdir / "model_card.md").read_text()
    assert digest in card and f"`{bundled}`" in card and "6 cases: 3 trained on, 3 held out" in card
    # only the U-Net changed; the rest is the base version's, byte for byte
    base = json.loads((models_dir() / "manifest.json").read_text())["files"]
    assert manifest["files"]["seg.onnx"]["sha256"] != base["seg.onnx"]["sha256"]
    assert all(manifest["files"][n]["sha256"] == base[n]["sha256"] for n in base if n != "seg.onnx")

    # never compared: refused
    store = open_store(cfg.database_url)
    try:
        with pytest.raises(mv.ActivationRefused, match="never compared"):
            mv.activate(store, cfg, candidate)
    finally:
        store.dispose()

    proc = _cli(config, "models", "compare", candidate, "--synth", "1", "--json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    print(proc.stdout)
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["against"] == bundled and result["held_out_cases"] == 3
    assert result["site"]["iou"]["n"] == 2 and result["site"]["false_blood_ml"]["n"] == 1
    assert result["synthetic"]["iou"]["n"] == 1
    assert result["site"]["iou"]["active"]["value"] > 0.3  # the bundled model sees these bleeds
    assert not result["worse"], result["reasons"]

    # a damaged candidate: compared, worse, refused; --force activates it and says so
    from hexnode.train.compare import compare

    damaged = _damaged(cdir, cfg.model_versions_path)
    store = open_store(cfg.database_url)
    try:
        verdict = compare(store, cfg, damaged, synth=0)
    finally:
        store.dispose()
    assert verdict["worse"] and "site IoU difference" in verdict["reasons"][0]
    assert verdict["site"]["iou"]["candidate"]["value"] == 0.0 and verdict["site"]["iou"]["difference"]["hi"] < 0
    proc = _cli(config, "models", "activate", damaged)
    assert proc.returncode == 3 and "worse than" in proc.stderr and "--force" in proc.stderr
    assert _model_events(cfg) == [("candidate", f"{candidate} fine-tuned from {bundled} on site data set {digest[:12]} "
                                               f"(6 cases, 3 held out) by {user}")]
    proc = _cli(config, "models", "activate", damaged, "--force")
    assert proc.returncode == 0, proc.stderr

    # one command back
    proc = _cli(config, "models", "rollback")
    assert proc.returncode == 0, proc.stderr
    assert f"rolled back to {bundled}" in proc.stdout
    # the good candidate was compared against the version active now: accepted
    proc = _cli(config, "models", "activate", candidate)
    assert proc.returncode == 0, proc.stderr
    store = open_store(cfg.database_url)
    try:
        assert mv.active_version(store, cfg) == candidate
    finally:
        store.dispose()

    events = _model_events(cfg)[1:]
    assert [e[0] for e in events] == ["activated", "rolled_back", "activated"]
    assert events[0][1].startswith(f"bundled {bundled} -> {damaged} ") and f" by {user}; forced: " in events[0][1]
    assert events[1][1].startswith(f"{damaged} -> {bundled} ") and events[1][1].endswith(f" by {user}")
    assert events[2][1].startswith(f"{bundled} -> {candidate} ") and events[2][1].endswith(f" by {user}")


@pytest.mark.parametrize("kind", ["sqlite", "postgresql"])
def test_rollback_history_on_both_databases(tmp_path: Path, kind: str) -> None:
    """Rollback walks back through the versions active in turn, and to any version once active,
    on SQLite and PostgreSQL alike; a version never active is refused."""
    cfg = Config(data_dir=str(tmp_path / "data"))
    cfg.models.dir = str(models_dir())
    bundled = mv.bundled_version(cfg)
    names = []
    for tag in ("a", "b", "c"):  # recalibration-like versions: the bundled files under new names
        d = cfg.model_versions_path / f"{bundled}-{tag}"
        shutil.copytree(models_dir(), d, ignore=shutil.ignore_patterns("campaign", "*.png"))
        m = json.loads((d / "manifest.json").read_text())
        m["version"] = d.name
        (d / "manifest.json").write_text(json.dumps(m))
        names.append(d.name)
    a, b, c = names
    with store_on(kind, f"sqlite:///{tmp_path / 'db.sqlite'}") as store:
        for v in (a, b, c):
            mv.activate(store, cfg, v, user="alice")
        assert mv.history(store, cfg) == [bundled, a, b, c]
        assert mv.rollback(store, cfg, user="bob").version == b
        assert mv.rollback(store, cfg).version == a
        assert mv.active_version(store, cfg) == a
        assert mv.rollback(store, cfg, c).version == c  # any version once active
        with pytest.raises(ValueError, match="is the active version"):
            mv.rollback(store, cfg, c)
        assert mv.rollback(store, cfg, bundled).version == bundled
        with pytest.raises(ValueError, match="nothing to roll back to"):
            mv.rollback(store, cfg)
        with store.transaction() as s:
            rows = s.execute(select(Event).where(Event.entity == "model").order_by(Event.id)).scalars().all()
            trail = [(r.to_state, r.detail) for r in rows]
    assert [t[0] for t in trail] == ["activated"] * 3 + ["rolled_back"] * 4
    assert trail[3][1].startswith(f"{c} -> {b} ") and trail[3][1].endswith(" by bob")
    assert all(" by " in (t[1] or "") for t in trail)


def test_scanner_profile_is_opt_in_and_keeps_the_truth() -> None:
    """The profile changes the image, never the head, the bleed or the label (without it the output is
    unchanged: bench/synth_digest.py before and after gives the same digests)."""
    plain = generate_case(SEED, 1, n_slices=3)
    shifted = generate_case(SEED, 1, n_slices=3, profile=PROFILE)
    assert shifted.geometry.slice_thickness_mm == 7.0 and plain.geometry.slice_thickness_mm == 5.0
    assert shifted.acquisition.kernel == "H45s" and shifted.extra["scanner_profile"] == PROFILE
    # on the same 5 mm slices: the same mask and label, brain reading about 8 HU higher
    same = generate_case(SEED, 1, n_slices=3, profile=PROFILE, slice_mm=5.0)
    assert np.array_equal(same.mask, plain.mask) and same.truth.he_label == plain.truth.he_label
    brain = (plain.hu > 15) & (plain.hu < 45)
    assert 4.0 < float(np.median(same.hu[brain].astype(float) - plain.hu[brain])) < 12.0
    with pytest.raises(ValueError, match="no scanner profile"):
        generate_case(SEED, 1, n_slices=3, profile="no-such")
