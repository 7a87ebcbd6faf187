"""Train the segmentation U-Net on random crops of axial slices and export it to ONNX."""

from __future__ import annotations

import logging
import math
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as TF
from numpy.typing import NDArray

from hexnode.models.segment import NOMINAL_SIZE, WINDOWS, _pad_amounts
from hexnode.train import checkpoint as ckpt
from hexnode.train.budget import Budget
from hexnode.train.nets import SegUNet
from hexnode.train.onnx_import import freeze_batchnorm

log = logging.getLogger(__name__)


#: HU range of tissue that looks like blood on the 0-100 window without being blood (partial-volume
#: bone, facial soft tissue, falx, dural sinuses, faint calcification): hard negatives
CONFUSER_HU = (50, 100)
#: HU below which a voxel of the mask is hypodense blood (the swirl / blend-sign part, 30-45 HU)
HYPODENSE_MAX_HU = 47


@dataclass
class SliceBank:
    """Axial slices (padded to >= 512) kept for segmentation training."""

    hu: list[NDArray[np.int16]] = field(default_factory=list)
    mask: list[NDArray[np.uint8]] = field(default_factory=list)

    def add_case(self, hu: NDArray[np.int16], mask: NDArray[np.uint8], rng: np.random.Generator, *, max_pos: int = 8, n_neg: int = 3, n_confuser: int = 3) -> None:
        """Up to `max_pos` slices with blood, `n_neg` random slices without, and `n_confuser` more
        blood-free slices drawn in proportion to their blood-like (50-100 HU) pixels: the skull
        base, facial soft tissue, falx and sinuses were where the first model's false positives
        sat, and uniformly drawn slices rarely show them."""
        z = hu.shape[0]
        pos = np.nonzero(mask.reshape(z, -1).any(1))[0]
        neg = np.setdiff1d(np.arange(z), pos)
        if pos.size > max_pos:
            pos = rng.choice(pos, max_pos, replace=False)
        picked = np.empty(0, int)
        if neg.size:
            picked = rng.choice(neg, min(n_neg, neg.size), replace=False)
            rest = np.setdiff1d(neg, picked)
            if rest.size and n_confuser:
                dense = ((hu[rest] > CONFUSER_HU[0]) & (hu[rest] < CONFUSER_HU[1])).reshape(rest.size, -1).sum(1) + 1.0
                picked = np.concatenate([picked, rng.choice(rest, min(n_confuser, rest.size), replace=False, p=dense / dense.sum())])
        (pt, pb), (pl, pr) = _pad_amounts(hu.shape[1], hu.shape[2])
        for k in np.concatenate([pos, picked]).astype(int):
            self.hu.append(np.pad(hu[k], ((pt, pb), (pl, pr)), constant_values=-1000).astype(np.int16))
            self.mask.append(np.pad(mask[k], ((pt, pb), (pl, pr))).astype(np.uint8))

    def __len__(self) -> int:
        return len(self.hu)


def _crop(a: NDArray[np.generic], cy: int, cx: int, size: int, fill: float) -> NDArray[np.generic]:
    h, w = a.shape
    y0, x0 = cy - size // 2, cx - size // 2
    out = np.full((size, size), fill, a.dtype)
    ys, xs = max(y0, 0), max(x0, 0)
    ye, xe = min(y0 + size, h), min(x0 + size, w)
    if ye > ys and xe > xs:
        out[ys - y0 : ye - y0, xs - x0 : xe - x0] = a[ys:ye, xs:xe]
    return out


def _pick(rng: np.random.Generator, where: NDArray[np.bool_]) -> tuple[int, int] | None:
    yy, xx = np.nonzero(where)
    if yy.size == 0:
        return None
    j = int(rng.integers(yy.size))
    return int(yy[j]), int(xx[j])


def sample_batch(bank: SliceBank, rng: np.random.Generator, batch: int, size: int, *,
                 hypo_share: float = 0.3, blood_share: float = 0.6,
                 confuser_share: float = 0.2) -> tuple[torch.Tensor, torch.Tensor]:
    """Random crops: `blood_share` around blood (`hypo_share` of all crops on its hypodense part
    when it has one, the part the first models missed), `confuser_share` on blood-like tissue
    that is not blood, the rest anywhere."""
    hus, ms = [], []
    for _ in range(batch):
        i = int(rng.integers(len(bank)))
        hu, m = bank.hu[i], bank.mask[i]
        h, w = hu.shape
        u = rng.random()
        at = None
        if m.any() and u < blood_share:
            if u < hypo_share:
                at = _pick(rng, (m > 0) & (hu < HYPODENSE_MAX_HU))
            if at is None:
                at = _pick(rng, m > 0)
            assert at is not None
            jitter = rng.integers(-size // 3, size // 3 + 1, 2)
            at = (at[0] + int(jitter[0]), at[1] + int(jitter[1]))
        elif u < blood_share + confuser_share:
            at = _pick(rng, (hu > CONFUSER_HU[0]) & (hu < CONFUSER_HU[1]) & (m == 0))
        if at is None:  # anywhere in the head: calcifications, skull rim, skull base are negatives
            at = (int(rng.integers(size // 4, h - size // 4)), int(rng.integers(size // 4, w - size // 4)))
        hus.append(_crop(hu, at[0], at[1], size, -1000))
        ms.append(_crop(m, at[0], at[1], size, 0))
    return (torch.from_numpy(np.stack(hus).astype(np.float32))[:, None],
            torch.from_numpy(np.stack(ms).astype(np.float32))[:, None])


def torch_window(hu: torch.Tensor) -> torch.Tensor:
    """Same windows as hexnode.models.segment.window, on a (N,1,H,W) tensor."""
    return torch.cat([((hu - lo) / (hi - lo)).clamp(0.0, 1.0) for lo, hi in WINDOWS], dim=1)


def _gauss_kernel(sigma: float) -> torch.Tensor:
    r = max(1, int(math.ceil(2.5 * sigma)))
    x = torch.arange(-r, r + 1, dtype=torch.float32)
    k = torch.exp(-(x**2) / (2 * sigma**2))
    return k / k.sum()


def _blur(x: torch.Tensor, sigma: float) -> torch.Tensor:
    k = _gauss_kernel(sigma)
    r = k.numel() // 2
    x = TF.conv2d(TF.pad(x, (r, r, 0, 0), mode="replicate"), k.view(1, 1, 1, -1))
    return TF.conv2d(TF.pad(x, (0, 0, r, r), mode="replicate"), k.view(1, 1, -1, 1))


def augment(hu: torch.Tensor, m: torch.Tensor, rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """Rotation ±20°, scale 0.8-1.2, flips, HU gain/offset, blur, correlated noise."""
    n = hu.shape[0]
    ang = torch.tensor(rng.uniform(-20, 20, n) * math.pi / 180, dtype=torch.float32)
    sc = torch.tensor(rng.uniform(0.8, 1.2, n), dtype=torch.float32)
    flip = torch.tensor(np.where(rng.random(n) < 0.5, -1.0, 1.0), dtype=torch.float32)
    theta = torch.zeros(n, 2, 3)
    theta[:, 0, 0] = torch.cos(ang) / sc * flip
    theta[:, 0, 1] = -torch.sin(ang) / sc
    theta[:, 1, 0] = torch.sin(ang) / sc * flip
    theta[:, 1, 1] = torch.cos(ang) / sc
    grid = TF.affine_grid(theta, list(hu.shape), align_corners=False)
    hu = TF.grid_sample(hu + 1000.0, grid, mode="bilinear", padding_mode="zeros", align_corners=False) - 1000.0
    m = (TF.grid_sample(m, grid, mode="bilinear", align_corners=False) > 0.5).float()
    gain = torch.tensor(rng.uniform(0.95, 1.05, (n, 1, 1, 1)), dtype=torch.float32)
    off = torch.tensor(rng.uniform(-5, 5, (n, 1, 1, 1)), dtype=torch.float32)
    hu = hu * gain + off
    if rng.random() < 0.3:
        hu = _blur(hu, float(rng.uniform(0.5, 1.2)))
    noise = torch.randn_like(hu)
    if rng.random() < 0.5:
        noise = _blur(noise, 0.8) * 2.0  # scanner noise is spatially correlated
    hu = hu + noise * float(rng.uniform(0.0, 6.0))
    return hu, m


def dice_bce(logits: torch.Tensor, target: torch.Tensor, weight: torch.Tensor | None = None) -> torch.Tensor:
    bce = TF.binary_cross_entropy_with_logits(logits, target, weight=weight)
    p = torch.sigmoid(logits)
    inter = (p * target).sum()
    dice = 1.0 - (2.0 * inter + 1.0) / (p.sum() + target.sum() + 1.0)
    return bce + dice


def train_seg(bank: SliceBank, *, seconds: float, width: int = 12, crop: int = 192, batch: int = 12, seed: int = 0,
              lr: float = 3e-3, hypo_weight: float = 3.0, hypo_share: float = 0.3, steps: int = 0,
              checkpoint: Path | None = None, every: ckpt.Every | None = None,
              init: dict[str, torch.Tensor] | None = None, frozen_bn: bool = False,
              device: str = "cpu", blood_share: float = 0.6, confuser_share: float = 0.2) -> tuple[SegUNet, int]:
    """`seconds` of training, or exactly `steps` steps when > 0 (deterministic: --quick).

    `checkpoint`: continue from it when it exists (a finished one returns its weights at once) and
    write it `every` so often. `init`: start from these weights (a campaign's previous run) instead
    of a random initialisation; `frozen_bn`: BatchNorm statistics stay as they are (weights that
    came from an ONNX file, see onnx_import). `device`: where the steps run (a torch device name);
    the crops are drawn on the CPU either way. Returns the model (on the CPU) and the steps trained."""
    torch.manual_seed(seed)
    rng = np.random.default_rng(seed)
    model = SegUNet(width=width)
    if init is not None:
        model.load_state_dict(init)
    model.to(device)
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=1e-4)
    t0 = time.monotonic()
    step, ema, spent = 0, None, 0.0
    saved = ckpt.resume(checkpoint, model, opt, rng, log, "seg")
    if saved is not None:
        step, ema, spent = saved.step, saved.ema, saved.spent_seconds
        if saved.done:
            model.cpu().eval()
            return model, step
    budget = Budget(seconds, steps, spent_before=spent)
    every = every or ckpt.Every()
    model.train()
    if frozen_bn:
        freeze_batchnorm(model)
    while (frac := budget.fraction(step)) is not None:
        for g in opt.param_groups:  # warm-up, then cosine decay over the time budget
            g["lr"] = lr * min(1.0, (step + 1) / 50) * 0.5 * (1 + math.cos(math.pi * frac))
        hu, m = sample_batch(bank, rng, batch, crop, hypo_share=hypo_share, blood_share=blood_share,
                             confuser_share=confuser_share)
        hu, m = augment(hu, m, rng)
        hu, m = hu.to(device), m.to(device)
        # hypodense blood counts `hypo_weight` times in the BCE: it is rare and the HE markers live there
        weight = 1.0 + (hypo_weight - 1.0) * m * (hu < HYPODENSE_MAX_HU).float()
        loss = dice_bce(model(torch_window(hu)), m, weight)
        opt.zero_grad()
        loss.backward()
        opt.step()
        lv = loss.item()
        ema = lv if ema is None else 0.98 * ema + 0.02 * lv
        step += 1
        if step % 100 == 0:
            log.info("seg step %d loss %.4f (%.0f s)", step, ema, time.monotonic() - t0)
        if checkpoint is not None and every.due(step, budget.spent()):
            ckpt.save(checkpoint, ckpt.snapshot(model, opt, rng, step=step, spent_seconds=budget.spent(), ema=ema))
    log.info("seg trained: %d steps of %d crops %dx%d, final loss %.4f", step, batch, crop, crop, ema or float("nan"))
    if checkpoint is not None:
        ckpt.save(checkpoint, ckpt.snapshot(model, opt, rng, step=step, spent_seconds=budget.spent(), ema=ema, done=True))
    model.cpu().eval()
    return model, step


def export_seg(model: SegUNet, path: Path, sample_hu: NDArray[np.int16]) -> float:
    """Export with a dynamic batch (and spatial) axis, opset 17; returns max |ORT - torch| on real slices."""
    import onnxruntime as ort

    from hexnode.models.segment import window

    model.eval()
    dummy = torch.zeros(1, len(WINDOWS), NOMINAL_SIZE, NOMINAL_SIZE)
    torch.onnx.export(
        model, (dummy,), str(path), dynamo=False, opset_version=17,
        input_names=["image"], output_names=["logits"],
        dynamic_axes={"image": {0: "batch", 2: "height", 3: "width"}, "logits": {0: "batch", 2: "height", 3: "width"}},
    )
    x = window(sample_hu.astype(np.float32))
    with torch.no_grad():
        ref = model(torch.from_numpy(x)).numpy()
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    got = sess.run(None, {"image": x})[0]
    return float(np.abs(got - ref).max())
