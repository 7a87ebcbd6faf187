"""A campaign: training runs that continue from each other (`--init-from DIR`). Where a run's
U-Net starts, the run as one step of the campaign, and `out/campaign/` for the next run."""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

from hexnode.train.export import finite


def seg_init(init: Path | None, width: int) -> tuple[dict[str, Any] | None, bool]:
    """Where the U-Net starts: a campaign's torch weights (`DIR/seg.pt`), or a model set's ONNX file
    (`DIR/seg.onnx`: BatchNorm fused, so its statistics stay frozen from then on), or scratch."""
    import torch

    if init is None:
        return None, False
    if (init / "seg.pt").exists():
        runs = json.loads((init / "campaign.json").read_text())["runs"] if (init / "campaign.json").exists() else []
        return torch.load(init / "seg.pt", weights_only=True), any(r.get("frozen_bn") for r in runs)
    from hexnode.train.onnx_import import seg_from_onnx

    return seg_from_onnx(init / "seg.onnx", width), True


def campaign_entry(args: argparse.Namespace, init: Path | None, seg_steps: int, cnn_steps: int,
                   seg_weights: dict[str, Any], cnn_weights: dict[str, Any], work: Path, *,
                   frozen_bn: bool = False) -> dict[str, Any]:
    """This run as one step of a campaign: the runs before it (from `--init-from DIR/campaign.json`),
    its own steps and budgets, and the weights the next run starts from."""
    before: list[dict[str, Any]] = []
    if init is not None and (init / "campaign.json").exists():
        before = json.loads((init / "campaign.json").read_text())["runs"]
    run = {
        "date": time.strftime("%Y-%m-%d"), "seed": args.seed, "synth": args.synth, "normal": getattr(args, "normal", 0),
        "quick": bool(args.quick), "init_from": str(init) if init else None,
        "seg_steps": seg_steps, "cnn_steps": cnn_steps,
        "seg_seconds": float(args.seg_seconds or 0), "cnn_seconds": float(args.cnn_seconds or 0),
        "resumed": bool(getattr(args, "resume", None)), "frozen_bn": frozen_bn,
    }
    return {"runs_before": before, "run": run, "seg_weights": seg_weights, "cnn_weights": cnn_weights}


def write_campaign(out: Path, campaign: dict[str, Any], wall_seconds: float, test: dict[str, Any]) -> dict[str, Any]:
    """`out/campaign/`: the torch weights (BatchNorm not fused, unlike the ONNX files) that the next
    run continues from (`--init-from out/campaign`), and every run so far with its held-out figures:
    the campaign's learning curve."""
    import torch

    folder = out / "campaign"
    folder.mkdir(exist_ok=True)
    torch.save(campaign["seg_weights"], folder / "seg.pt")
    torch.save(campaign["cnn_weights"], folder / "cnn.pt")

    def value(v: Any) -> Any:
        return v.get("value") if isinstance(v, dict) else v

    run = dict(campaign["run"], wall_seconds=round(wall_seconds, 1),
               test={k: value(test.get(k)) for k in ("n", "auc", "bayes_auc", "ece", "iou_slice", "iou_patient")})
    runs = [*campaign["runs_before"], run]
    # a run may lack a figure (run 0 kept no CNN step count, run 1 no wall time): it counts as 0
    totals = {"runs": len(runs), "seg_steps": sum(r.get("seg_steps") or 0 for r in runs),
              "cnn_steps": sum(r.get("cnn_steps") or 0 for r in runs),
              "wall_hours": round(sum(r.get("wall_seconds") or 0.0 for r in runs) / 3600, 2)}
    (folder / "campaign.json").write_text(json.dumps(finite({"totals": totals, "runs": runs}), indent=1) + "\n")
    return totals
