"""The model set's manifest (every file with its role, shape, sha256 and size; preprocessing,
calibration, threshold, training data and figures) and its model card."""

from __future__ import annotations

import hashlib
import json
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.models import features as F
from hexnode.train.stages import POST
from hexnode.train.state import Plan


@dataclass
class ModelSet:
    """What the fitting stage decided, as the manifest records it (the files are already in `out`)."""

    plan: Plan
    seed: int
    desc: dict[str, Any]  # training data: synthetic or site, its source
    splits: dict[str, int]  # cases per split
    seg_diff: float  # max |onnxruntime - torch| of the exported networks
    cnn_diff: float
    radiomics_names: list[str]  # every radiomics feature extracted
    cnn_names: list[str]
    context_names: list[str]
    sel_rad: list[str]  # the radiomics features the boosters use
    marker_names: list[str]
    fused_names: list[str]
    best_iteration: int
    radiomics_best_iteration: int
    platt_a: float
    platt_b: float
    calibrated_on: str
    one_class: bool  # the validation split had one class: identity calibration, threshold 0.5
    threshold: float
    threshold_sens: float
    val_metrics: dict[str, Any]
    test_metrics: dict[str, Any]
    train_seconds: float
    campaign: dict[str, Any] | None  # the campaign's totals (campaign.write_campaign)


def write_model_set(out: Path, m: ModelSet) -> dict[str, Any]:
    """`out/manifest.json` and `out/model_card.md`; returns the manifest."""
    from hexnode.models.registry import sha256_file
    from hexnode.models.segment import WINDOWS

    plan, quick = m.plan, m.plan.quick
    files = {
        "seg.onnx": {"role": "seg", "inputs": {"image": ["batch", 3, 512, 512]}, "outputs": {"logits": ["batch", 1, 512, 512]},
                     "opset": 17, "max_abs_diff_vs_torch": m.seg_diff},
        "cnn.onnx": {"role": "cnn", "inputs": {"crop": ["batch", 4, F.CNN_SIZE, F.CNN_SIZE]},
                     "outputs": {"embedding": ["batch", len(m.cnn_names)], "logit": ["batch", 1]}, "opset": 17,
                     "max_abs_diff_vs_torch": m.cnn_diff},
        "radiomics.yaml": {"role": "radiomics", "features_total": len(m.radiomics_names)},
        "markers.json": {"role": "markers", "features": len(m.marker_names),
                         "purpose": "logistic marker score; its logit is the booster's feature marker_logit"},
        "lgbm.txt": {"role": "lgbm", "features": len(m.fused_names), "best_iteration": m.best_iteration},
        "lgbm_radiomics.txt": {"role": "lgbm_radiomics", "features": len(m.sel_rad),
                               "best_iteration": m.radiomics_best_iteration,
                               "purpose": "ablation (radiomics-only AUC in hexnode evaluate)"},
    }
    for name, entry in files.items():
        entry["sha256"] = sha256_file(out / name)
        entry["bytes"] = (out / name).stat().st_size

    manifest = {
        "name": "hexnode-he",
        # the result objects' UIDs derive from this string, so two trainings must never share it
        # (two runs on the same day and seed did): the files' hashes make it unique
        "version": f"{'quick-' if quick else ''}synth-{time.strftime('%Y%m%d')}-s{m.seed}-{_files_tag(files)}",
        "quick": quick,
        "created_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "files": files,
        "preprocessing": {
            "seg_input": "axial slices padded (air, -1000 HU) to >= 512x512 and a multiple of 8; channels = HU windows scaled to [0, 1]",
            "windows_hu": [list(w) for w in WINDOWS],
            "postprocessing": {"threshold": POST.threshold, "min_component_ml": POST.min_component_ml,
                               "fill_holes": POST.fill_holes, "connectivity": 26,
                               "remote_min_ml": POST.remote_min_ml, "remote_reach_mm": POST.remote_reach_mm,
                               "min_lesion_ml": POST.min_lesion_ml},
            "radiomics": "pyradiomics 3.0.1 on the CT cropped to the mask bbox + 12 mm; see radiomics.yaml",
            "cnn_input": "slice of largest mask area and its neighbours (0-100 HU) + mask, square 1.6x extent + 10 mm, 64x64",
            "features": {"context": m.context_names, "cnn": m.cnn_names, "radiomics_selected": m.sel_rad,
                         "marker_score": m.marker_names},
        },
        "calibration": {"method": "platt", "a": m.platt_a, "b": m.platt_b, "fitted_on": m.calibrated_on
                        + (" -- one class only: identity (a=1, b=0)" if m.one_class else "")},
        "threshold": {"value": m.threshold, "method": "Youden on validation", "sensitivity_0_90": m.threshold_sens},
        "training_data": dict(m.desc, splits=m.splits),
        "training": {"seconds": round(m.train_seconds, 1), "seg_seconds": plan.seg_seconds, "cnn_seconds": plan.cnn_seconds,
                     "cpu_threads": 2, "seg_width": plan.width,
                     "seg_hypo_weight": getattr(plan, "seg_hypo_weight", 3.0),
                     "seg_hypo_share": getattr(plan, "seg_hypo_share", 0.3)},
        "metrics": {"validation": m.val_metrics, "test": m.test_metrics},
        "campaign": m.campaign,
        "intended_use": "synthetic-trained demonstration models, not for clinical use; retrain on site data with `hexnode train --data`",
    }
    (out / "manifest.json").write_text(json.dumps(finite(manifest), indent=2) + "\n")
    from hexnode.train.card import render

    # the card is not in the manifest's file list: `hexnode evaluate` figures are added to it later
    (out / "model_card.md").write_text(render(finite(manifest)))
    return manifest


def _files_tag(files: dict[str, dict[str, Any]]) -> str:
    """8 hex digits identifying the model files (their sha256s together)."""
    joined = "".join(f"{name}:{files[name]['sha256']}" for name in sorted(files))
    return hashlib.sha256(joined.encode()).hexdigest()[:8]


def finite(obj: Any) -> Any:
    """JSON without NaN/Infinity (not valid JSON): undefined figures become null."""
    if isinstance(obj, dict):
        return {k: finite(v) for k, v in obj.items()}
    if isinstance(obj, list | tuple):
        return [finite(v) for v in obj]
    if isinstance(obj, float | np.floating):
        return float(obj) if np.isfinite(obj) else None
    if isinstance(obj, np.integer):
        return int(obj)
    return obj
