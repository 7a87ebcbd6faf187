"""Train the HE CNN on hematoma-centred crops and export it (embedding + logit) to ONNX."""

from __future__ import annotations

import logging
import math
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as TF
from numpy.typing import NDArray

from hexnode.models.features import CNN_SIZE
from hexnode.train import checkpoint as ckpt
from hexnode.train.budget import Budget
from hexnode.train.nets import HECNN

log = logging.getLogger(__name__)


def _augment(x: torch.Tensor, rng: np.random.Generator) -> torch.Tensor:
    if rng.random() < 0.5:
        x = torch.flip(x, dims=[3])
    if rng.random() < 0.5:
        x = torch.flip(x, dims=[2])
    x = torch.rot90(x, int(rng.integers(4)), dims=[2, 3])
    img = x[:, :3] + torch.randn_like(x[:, :3]) * float(rng.uniform(0, 0.04))
    return torch.cat([img, x[:, 3:]], dim=1)


def train_cnn(x: NDArray[np.float32], y: NDArray[np.int64], *, seconds: float, seed: int = 0, batch: int = 32,
              steps: int = 0, checkpoint: Path | None = None, every: ckpt.Every | None = None,
              init: dict[str, torch.Tensor] | None = None) -> tuple[HECNN, int]:
    """`seconds` of training, or exactly `steps` steps when > 0 (deterministic: --quick);
    `checkpoint`, `every`, `init` as in seg_train.train_seg. Returns the model and its steps."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = HECNN()
    if init is not None:
        model.load_state_dict(init)
    opt = torch.optim.AdamW(model.parameters(), lr=2e-3, weight_decay=1e-3)
    xt = torch.from_numpy(x)
    yt = torch.from_numpy(y.astype(np.float32))[:, None]
    pos = float(y.mean()) if y.size else 0.5
    pos_weight = torch.tensor([(1 - pos) / max(pos, 1e-3)])
    step, spent = 0, 0.0
    saved = ckpt.resume(checkpoint, model, opt, rng, log, "cnn")
    if saved is not None:
        step, spent = saved.step, saved.spent_seconds
        if saved.done:
            model.eval()
            return model, step
    budget = Budget(seconds, steps, spent_before=spent)
    every = every or ckpt.Every()
    model.train()
    while (frac := budget.fraction(step)) is not None:
        for g in opt.param_groups:
            g["lr"] = 2e-3 * 0.5 * (1 + math.cos(math.pi * frac))
        idx = torch.from_numpy(rng.integers(0, len(xt), batch))
        _, logit = model(_augment(xt[idx], rng))
        loss = TF.binary_cross_entropy_with_logits(logit, yt[idx], pos_weight=pos_weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
        if checkpoint is not None and every.due(step, budget.spent()):
            ckpt.save(checkpoint, ckpt.snapshot(model, opt, rng, step=step, spent_seconds=budget.spent(), ema=None))
    log.info("cnn trained: %d steps of %d crops", step, batch)
    if checkpoint is not None:
        ckpt.save(checkpoint, ckpt.snapshot(model, opt, rng, step=step, spent_seconds=budget.spent(), ema=None, done=True))
    model.eval()
    return model, step


def embed(model: HECNN, x: NDArray[np.float32]) -> tuple[NDArray[np.float32], NDArray[np.float32]]:
    with torch.no_grad():
        e, logit = model(torch.from_numpy(x))
    return e.numpy(), logit.numpy()[:, 0]


def export_cnn(model: HECNN, path: Path, sample: NDArray[np.float32]) -> float:
    import onnxruntime as ort

    model.eval()
    dummy = torch.zeros(1, 4, CNN_SIZE, CNN_SIZE)
    torch.onnx.export(
        model, (dummy,), str(path), dynamo=False, opset_version=17,
        input_names=["crop"], output_names=["embedding", "logit"],
        dynamic_axes={"crop": {0: "batch"}, "embedding": {0: "batch"}, "logit": {0: "batch"}},
    )
    e_ref, l_ref = embed(model, sample)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    e, logit = sess.run(None, {"crop": sample})
    return float(max(np.abs(e - e_ref).max(), np.abs(logit[:, 0] - l_ref).max()))
