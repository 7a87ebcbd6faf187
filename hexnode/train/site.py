"""`hexnode train --site DIR [--init-from VERSION]`: fine-tune the active model on a site's corrected
cases into a candidate version (not active).

* The U-Net starts from the base version's `seg.onnx` (`onnx_import`: BatchNorm fused, so its
  statistics stay frozen, which also suits a few dozen cases) and trains a fixed number of steps
  on the site's training cases only (`siteset`: a quarter of the cases, by key hash, is held out
  for `hexnode models compare` and never trained on), at a tenth of a fresh run's learning rate.
* The CNN, radiomics, markers and boosters are the base version's. With enough known outcomes
  among the training cases (`siteset.MIN_OUTCOMES`, both classes) the fusion's calibration and
  threshold are refitted on them (Platt on the booster's score through the new U-Net's masks):
  thirty cases cannot retrain a booster fitted on hundreds, but they do move its calibration.
* The candidate is a folder under `<data_dir>/models/<VERSION>/` with every file, a manifest whose
  `provenance` names the site data set (digest, cases, held-out rule), the base version and the
  training, and a model card that says the same. `hexnode models compare` measures it,
  `hexnode models activate` switches the workers to it.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import logging
import shutil
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.config import Config
from hexnode.store.db import Store
from hexnode.train.siteset import HOLDOUT_SALT, HOLDOUT_SHARE, MIN_OUTCOMES, MIN_PER_CLASS, SiteSet, read_site

log = logging.getLogger("hexnode.train")

#: fine-tuning's peak learning rate: a tenth of a fresh run's (hexnode.train.run.SEG_LR), so a few
#: hundred steps on a few dozen cases adapt the U-Net without undoing what 800 cases taught it
SITE_LR = 3e-4
#: default U-Net budget: 6 minutes, so that a 40-case site set is fine-tuned in under 10 minutes on
#: 2 CPU cores however loaded they are (reading the cases and the export take the rest); steps of
#: 8 crops of 160² take 0.7-3 s there, depending on the load; `--seg-steps` gives a fixed count instead
SITE_SECONDS = 360.0
SITE_BATCH = 8
SITE_CROP = 160
#: crops around blood / on blood-like tissue that is not blood (a fresh run: 0.6 / 0.2). A site's
#: look moves what reads blood-like (beam hardening at the skull base, a calibration offset), and
#: the first 40-case run at 0.6 / 0.2 gained IoU on the site but marked 0.75 ml of false blood on
#: its normal heads, in the skull-base hardening: false blood is what the activation gate guards
SITE_BLOOD_SHARE = 0.45
SITE_CONFUSER_SHARE = 0.4
#: blood-free slices per case drawn in proportion to their blood-like tissue (a fresh run: 3)
SITE_CONFUSER_SLICES = 6


@dataclass(frozen=True)
class Candidate:
    version: str
    path: Path
    base_version: str
    site: SiteSet
    seg_steps: int
    seconds: float
    fusion: str  # what happened to the fusion stage, in words


def resolve_base(store: Store, cfg: Config, init_from: str | None) -> Path:
    """The version to start from: a version name, a folder with a manifest, or the active one."""
    from hexnode.store.model_versions import active_dir, find

    if not init_from:
        return active_dir(store, cfg)
    if (Path(init_from) / "manifest.json").is_file():
        return Path(init_from)
    return find(cfg, init_from).path


def finetune(store: Store, cfg: Config, site_dir: Path, *, init_from: str | None = None, steps: int = 0,
             seconds: float = SITE_SECONDS, device: str = "auto", seed: int = 0) -> Candidate:
    """`steps` > 0: exactly that many U-Net steps; else `seconds` of them."""
    import torch

    from hexnode.models.registry import load_manifest
    from hexnode.train.data import site_case
    from hexnode.train.onnx_import import seg_from_onnx
    from hexnode.train.seg_train import SliceBank, export_seg, train_seg

    t0 = time.monotonic()
    site = read_site(site_dir)
    if not site.train or not site.held_out:
        raise ValueError(f"{site_dir}: {len(site.train)} training and {len(site.held_out)} held-out cases; "
                         "fine-tuning needs both (about a quarter of the cases are held out, by key)")
    base_dir = resolve_base(store, cfg, init_from)
    base = load_manifest(base_dir, verify=True)
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.set_num_threads(2)
    log.info("site data set %s: %d cases, %d to train on, %d held out; from %s on %s",
             site.digest[:12], len(site.cases), len(site.train), len(site.held_out), base.version, device)

    bank = SliceBank()
    for c in site.train:
        tc = site_case(site.root, c.case_id, c.label or 0)
        rng = np.random.default_rng(int(hashlib.sha256(c.case_id.encode()).hexdigest()[:8], 16))
        bank.add_case(tc.hu, tc.mask, rng, n_confuser=SITE_CONFUSER_SLICES)
    width = int(base.data.get("training", {}).get("seg_width", 8))
    training = base.data.get("training", {})
    model, done = train_seg(bank, seconds=seconds, steps=steps, width=width, batch=SITE_BATCH, crop=SITE_CROP,
                            seed=seed, lr=SITE_LR, hypo_weight=float(training.get("seg_hypo_weight", 3.0)),
                            hypo_share=float(training.get("seg_hypo_share", 0.3)),
                            init=seg_from_onnx(base.path("seg"), width), frozen_bn=True, device=device,
                            blood_share=SITE_BLOOD_SHARE, confuser_share=SITE_CONFUSER_SHARE)

    out_root = cfg.model_versions_path
    out_root.mkdir(parents=True, exist_ok=True)
    tmp = out_root / f".candidate-{site.digest[:8]}-{int(time.time())}.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    for name in base.data["files"]:
        if name != "seg.onnx":
            shutil.copy2(base.root / name, tmp / name)
    diff = export_seg(model, tmp / "seg.onnx", np.stack(bank.hu[: min(4, len(bank))]))
    del bank

    data: dict[str, Any] = json.loads(json.dumps(base.data))
    _update_files(tmp, data, diff)
    fusion = _refit_calibration(tmp, data, site)
    seconds_spent = time.monotonic() - t0
    # the result objects' UIDs derive from the version: files and calibration both make it
    tag = hashlib.sha256(json.dumps([sorted((n, e["sha256"]) for n, e in data["files"].items()),
                                     data["calibration"], data["threshold"]]).encode()).hexdigest()[:8]
    stem = base.version.split("-ft")[0].split("-site")[0]
    version = f"{stem}-ft{time.strftime('%Y%m%d')}-{tag}"
    labelled = [c for c in site.train if c.label is not None]
    data["version"] = version
    data["created_utc"] = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())
    data["provenance"] = {
        "kind": "site-finetune",
        "text": (f"fine-tuned from {base.version} on site data set {site.digest[:12]} ({len(site.cases)} cases, "
                 f"{len(site.train)} trained on, {len(site.held_out)} held out)"),
        "base_version": base.version, "init_from": str(base_dir),
        "site": {"path": str(site.root.resolve()), "digest": site.digest, "cases": len(site.cases),
                 "train_cases": len(site.train), "held_out_cases": len(site.held_out),
                 "train_outcomes": len(labelled),
                 "holdout_rule": f"sha256('{HOLDOUT_SALT}:' + case_id) < {HOLDOUT_SHARE:g} of its range"},
        "seg": {"steps": done, "budget": f"{steps} steps" if steps else f"{seconds:g} s", "batch": SITE_BATCH, "crop": SITE_CROP, "lr": SITE_LR,
                "device": device, "frozen_batchnorm": True, "blood_share": SITE_BLOOD_SHARE,
                "confuser_share": SITE_CONFUSER_SHARE, "confuser_slices_per_case": SITE_CONFUSER_SLICES},
        "fusion": fusion,
        "trained_seconds": round(seconds_spent, 1),
    }
    data["intended_use"] = ("synthetic-trained demonstration models fine-tuned on site data, not for clinical use; "
                            "compare with `hexnode models compare` before activating")
    (tmp / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    (tmp / "model_card.md").write_text(_card(data, base_dir))
    load_manifest(tmp, verify=True)
    out = out_root / version
    shutil.rmtree(out, ignore_errors=True)
    tmp.rename(out)
    from hexnode.store.db import Event
    from hexnode.store.model_versions import os_user

    with store.transaction() as s:  # the audit trail: who made which candidate from what
        s.add(Event(entity="model", entity_id=0, from_state=None, to_state="candidate",
                    detail=f"{version} fine-tuned from {base.version} on site data set {site.digest[:12]} "
                           f"({len(site.cases)} cases, {len(site.held_out)} held out) by {os_user()}"))
    log.info("candidate %s written in %s (%.0f s)", version, out, seconds_spent)
    return Candidate(version, out, base.version, site, done, seconds_spent, fusion)


def _update_files(folder: Path, data: dict[str, Any], diff: float) -> None:
    from hexnode.models.registry import sha256_file

    for name, entry in data["files"].items():
        entry["sha256"] = sha256_file(folder / name)
        entry["bytes"] = (folder / name).stat().st_size
    data["files"]["seg.onnx"]["max_abs_diff_vs_torch"] = diff


def _refit_calibration(folder: Path, data: dict[str, Any], site: SiteSet) -> str:
    """Platt and threshold refitted on the training cases' outcomes through the new U-Net, where
    there are enough of them; else the base version's, and why."""
    labelled = [c for c in site.train if c.label is not None]
    n_pos = sum(c.label == 1 for c in labelled)
    n_neg = len(labelled) - n_pos
    if len(labelled) < MIN_OUTCOMES or min(n_pos, n_neg) < MIN_PER_CLASS:
        return (f"calibration and threshold kept from the base version: {len(labelled)} training cases with a known "
                f"outcome ({n_pos} expanded); a refit needs {MIN_OUTCOMES} with {MIN_PER_CLASS} of each class")
    # the manifest as it stands (new seg.onnx hashes) is what the session loader verifies
    (folder / "manifest.json").write_text(json.dumps(data, indent=2) + "\n")
    from hexnode.models.analyser import Models
    from hexnode.train import metrics as M
    from hexnode.train.data import site_case
    from hexnode.train.recalibrate import fit_platt, logit, sigmoid

    models = Models.load(folder)
    a, b = float(data["calibration"]["a"]), float(data["calibration"]["b"])
    xs, ys = [], []
    for c in labelled:
        tc = site_case(site.root, c.case_id, int(c.label or 0))
        if not tc.mask.any():
            continue  # a head without blood: its "no expansion" says nothing about the calibration
        hu = tc.hu.astype(np.float32)
        pred = models.segment(hu, tc.spacing)
        if not pred.any():
            continue  # no mask, no score: such a case is "no hemorrhage" whatever the calibration
        p = models.scores(models.features(hu, pred, tc.spacing, {})).probability
        xs.append(float(logit(np.array([p]))[0]))
        ys.append(bool(c.label))
    y = np.array(ys, bool)
    if len(ys) < MIN_OUTCOMES or y.sum() < MIN_PER_CLASS or (~y).sum() < MIN_PER_CLASS:
        return (f"calibration and threshold kept from the base version: {len(ys)} training cases with blood, an "
                f"outcome and a predicted mask ({int(y.sum())} expanded); a refit needs {MIN_OUTCOMES} with "
                f"{MIN_PER_CLASS} of each class")
    x = np.array(xs)
    c_, d_ = fit_platt(x, y)
    p_new = sigmoid(c_ * x + d_)
    data["calibration"] = {"method": "platt", "a": c_ * a, "b": c_ * b + d_,
                           "fitted_on": f"{len(ys)} site training cases with outcomes (Platt on the base calibration's logit)"}
    data["threshold"] = dict(data["threshold"], value=M.youden_threshold(y, p_new),
                             method="Youden on the site's training cases")
    return f"calibration and threshold refitted on {len(ys)} site training cases with outcomes ({int(y.sum())} expanded)"


def _card(data: dict[str, Any], base_dir: Path) -> str:
    prov = data["provenance"]
    site, seg = prov["site"], prov["seg"]
    lines = [
        f"# hexnode-he model card — version `{data['version']}`",
        "",
        "**Fine-tuned on site data; synthetic-trained base; not for clinical use.**",
        "",
        "## Site fine-tuning (this version)",
        f"- Base (init-from) version: `{prov['base_version']}` ({prov['init_from']}).",
        f"- Site data set: digest `{site['digest']}`, {site['cases']} cases: {site['train_cases']} trained on, "
        f"{site['held_out_cases']} held out ({site['holdout_rule']}); {site['train_outcomes']} training cases with a "
        "known outcome.",
        f"- U-Net: {seg['steps']} steps of {seg['batch']} crops {seg['crop']}² ({100 * seg['blood_share']:.0f} % around "
        f"blood, {100 * seg['confuser_share']:.0f} % on blood-like tissue that is not blood), peak learning rate "
        f"{seg['lr']:g}, BatchNorm statistics frozen, on {seg['device']}; {prov['trained_seconds']:.0f} s in all.",
        f"- Fusion: {prov['fusion']}.",
        "- The other files (CNN, radiomics settings, marker score, boosters) are the base version's.",
        "- Before activation: `hexnode models compare` (the site's held-out cases and the synthetic benchmark); its "
        "last result is `compare.json` beside this card.",
        "",
    ]
    base_card = base_dir / "model_card.md"
    if base_card.is_file():
        body = base_card.read_text().split("\n", 1)[-1]
        lines += ["## The base version's card", "", body.replace("\n# ", "\n## ").replace("\n## ", "\n### ")]
    return "\n".join(lines) + "\n"


def run_site_train(args: argparse.Namespace) -> int:
    from hexnode.config import load_config
    from hexnode.store.db import open_existing

    cfg = load_config(getattr(args, "config", None))
    store = open_existing(cfg.database_url)
    try:
        c = finetune(store, cfg, Path(args.site), init_from=getattr(args, "init_from", None),
                     steps=int(getattr(args, "seg_steps", 0) or 0), seconds=float(args.seg_seconds or SITE_SECONDS),
                     device=getattr(args, "device", None) or "auto", seed=int(args.seed))
    except ValueError as exc:
        print(f"hexnode train --site: {exc}", file=sys.stderr)
        return 1
    finally:
        store.dispose()
    print(f"candidate {c.version} in {c.path}: fine-tuned from {c.base_version} on site data set "
          f"{c.site.digest[:12]} ({len(c.site.train)} cases trained on, {len(c.site.held_out)} held out), "
          f"{c.seg_steps} U-Net steps, {c.seconds:.0f} s")
    print(f"fusion: {c.fusion}")
    print(f"not active; next: hexnode models compare {c.version}, then hexnode models activate {c.version}")
    return 0
