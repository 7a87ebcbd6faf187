"""The committed U-Net's ONNX weights back into torch, so a campaign can continue from a model set
that was trained before torch checkpoints were kept (`hexnode train --init-from models`).

The export fused each BatchNorm into the convolution before it (weight and bias), so the torch net
gets the fused convolution and a BatchNorm that is the identity with the fused bias: the same
function in eval mode (test). Its batch statistics are unknown, so a run started this way keeps
every BatchNorm's statistics frozen (`frozen_bn`): a learnable per-channel affine."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import torch
from torch import nn

from hexnode.train.nets import SegUNet


def seg_from_onnx(path: Path, width: int) -> dict[str, torch.Tensor]:
    import onnx
    from onnx import numpy_helper

    graph = onnx.load(str(path)).graph
    weights = {i.name: numpy_helper.to_array(i) for i in graph.initializer}
    convs = [n for n in graph.node if n.op_type in ("Conv", "ConvTranspose")]
    model = SegUNet(width=width)
    # torch modules in the order forward() runs them, which is the order the export wrote them
    layers: list[tuple[nn.Module, nn.BatchNorm2d | None]] = []
    mods = list(model.modules())
    for i, m in enumerate(mods):
        if isinstance(m, nn.Conv2d | nn.ConvTranspose2d):
            nxt = mods[i + 1] if i + 1 < len(mods) else None
            layers.append((m, nxt if isinstance(nxt, nn.BatchNorm2d) else None))
    order = _forward_order(model, layers)
    if len(order) != len(convs):
        raise ValueError(f"{path}: {len(convs)} convolutions, the U-Net of width {width} has {len(order)}")
    state = model.state_dict()
    names = {id(m): n for n, m in model.named_modules()}
    for (conv, bn), node in zip(order, convs, strict=True):
        w, b = weights[node.input[1]], weights[node.input[2]] if len(node.input) > 2 else None
        cname = names[id(conv)]
        if tuple(state[f"{cname}.weight"].shape) != w.shape:
            raise ValueError(f"{path}: {cname} is {tuple(state[cname + '.weight'].shape)}, the file has {w.shape}")
        state[f"{cname}.weight"] = torch.from_numpy(np.array(w))
        if bn is None:
            if b is not None:
                state[f"{cname}.bias"] = torch.from_numpy(np.array(b))
            continue
        bname = names[id(bn)]
        state[f"{bname}.weight"] = torch.ones_like(state[f"{bname}.weight"])
        state[f"{bname}.bias"] = torch.from_numpy(np.array(b)) if b is not None else torch.zeros_like(state[f"{bname}.bias"])
        state[f"{bname}.running_mean"] = torch.zeros_like(state[f"{bname}.running_mean"])
        state[f"{bname}.running_var"] = torch.full_like(state[f"{bname}.running_var"], 1.0 - bn.eps)
    return state


def _forward_order(model: SegUNet, layers: list[tuple[nn.Module, nn.BatchNorm2d | None]]) -> list[tuple[nn.Module, nn.BatchNorm2d | None]]:
    """The convolutions in the order one forward pass calls them (hooks on a tiny input)."""
    seen: list[nn.Module] = []
    hooks = [m.register_forward_hook(lambda mod, _i, _o: seen.append(mod)) for m, _ in layers]
    try:
        with torch.no_grad():
            model.eval()(torch.zeros(1, 3, 16, 16))
    finally:
        for h in hooks:
            h.remove()
    by_module = dict(layers)
    return [(m, by_module[m]) for m in seen]


def freeze_batchnorm(model: nn.Module) -> None:
    """Keep BatchNorm statistics fixed while the rest trains (call after every model.train())."""
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            m.eval()
