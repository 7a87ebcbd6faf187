"""The two networks (torch; training only — inference runs their ONNX exports)."""

from __future__ import annotations

import torch
from torch import nn


def _cbr(cin: int, cout: int, *, stride: int = 1, dilation: int = 1) -> nn.Sequential:
    return nn.Sequential(
        nn.Conv2d(cin, cout, 3, stride=stride, padding=dilation, dilation=dilation, bias=False),
        nn.BatchNorm2d(cout),
        nn.ReLU(inplace=True),
    )


class SegUNet(nn.Module):
    """A light 2D U-Net: strided-conv encoder (512 → 256 → 128 → 64), a bottleneck of dilated
    convolutions (dilation 1, 2, 4; residual) for a wide receptive field at low cost, transposed-
    convolution decoder with additive skips, and a full-resolution head that sees the input
    windows again so the boundary is placed at native pixel resolution. Output: logits (N,1,H,W)."""

    def __init__(self, in_ch: int = 3, width: int = 12) -> None:
        super().__init__()
        c1, c2, c3 = width, 2 * width, 4 * width
        self.enc1 = nn.Sequential(_cbr(in_ch, c1, stride=2), _cbr(c1, c1))
        self.enc2 = nn.Sequential(_cbr(c1, c2, stride=2), _cbr(c2, c2))
        self.enc3 = _cbr(c2, c3, stride=2)
        self.bottleneck = nn.ModuleList([_cbr(c3, c3, dilation=d) for d in (1, 2, 4)])
        self.up3 = nn.ConvTranspose2d(c3, c2, 2, stride=2)
        self.dec2 = _cbr(c2, c2)
        self.up2 = nn.ConvTranspose2d(c2, c1, 2, stride=2)
        self.dec1 = _cbr(c1, c1)
        self.up1 = nn.ConvTranspose2d(c1, 8, 2, stride=2)
        out = nn.Conv2d(8, 1, 1)
        # prior: blood is ~1 % of a slice; an under-trained net then predicts little rather than
        # half the brain (which would also make radiomics on its mask very slow)
        assert out.bias is not None
        nn.init.constant_(out.bias, -4.0)
        self.head = nn.Sequential(_cbr(8 + in_ch, 8), out)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        e1 = self.enc1(x)
        e2 = self.enc2(e1)
        b = self.enc3(e2)
        for blk in self.bottleneck:
            b = b + blk(b)
        d2 = self.dec2(self.up3(b) + e2)
        d1 = self.dec1(self.up2(d2) + e1)
        d0 = self.up1(d1)
        return self.head(torch.cat([d0, x], dim=1))


class HECNN(nn.Module):
    """Hematoma-centred crop (N,4,64,64) → (embedding (N,16), HE logit (N,1)).

    The seed's prediction branch: conv blocks like the U-Net's encoder, a fully connected layer,
    trained on the HE label; the penultimate layer is the embedding given to LightGBM."""

    def __init__(self, in_ch: int = 4, emb: int = 16) -> None:
        super().__init__()
        self.body = nn.Sequential(
            _cbr(in_ch, 16), nn.MaxPool2d(2),
            _cbr(16, 32), nn.MaxPool2d(2),
            _cbr(32, 48), nn.MaxPool2d(2),
            _cbr(48, 64, dilation=2),
            nn.AdaptiveAvgPool2d(1), nn.Flatten(),
        )
        self.fc = nn.Sequential(nn.Dropout(0.3), nn.Linear(64, emb), nn.ReLU(inplace=True))
        self.out = nn.Linear(emb, 1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        e = self.fc(self.body(x))
        return e, self.out(e)
