"""The truth of where a drawn bleed is: its side and its site by the findings' anatomical rule
(`hexnode.models.findings`) applied to the bleed's centre in the head frame, where the generator
knows the inner table exactly."""

from __future__ import annotations

import math

import numpy as np

from hexnode.models.findings import THALAMUS_BEHIND_MM, lobe_of
from hexnode.synth.anatomy import Head
from hexnode.synth.hematoma import Hematoma


def truth_side(hem: Hematoma) -> str:
    """The patient's side (the head frame's u is the patient's left); a bleed only in the
    ventricles fills both lateral ventricles."""
    if not hem.parenchymal:
        return "bilateral"
    return "left" if hem.side > 0 else "right"


def _inner_table(head: Head, w: float, n: int = 720) -> np.ndarray:
    """(n, 2) points (u, v) of the inner table on level w (the egg of `Head.inner_sd`)."""
    s, _ = head._level_scale(w)
    t = np.linspace(0.0, 2 * math.pi, n, endpoint=False)
    bb = head.b * s
    dv = bb * np.sin(t)
    aa = head.a * s * (1.0 + 0.05 * np.clip(dv / head.b, -1, 1))
    return np.stack([aa * np.cos(t), head.v0 + dv], axis=1)


def truth_site(hem: Hematoma, head: Head) -> str:
    """The site within the generator's location: the lobe of a lobar bleed by `lobe_of`, the
    nucleus of a deep one by `THALAMUS_BEHIND_MM` (putamen 2 mm in front of the centre, thalamus 15
    mm behind it)."""
    if not hem.parenchymal:
        return "ventricles"
    u, v, w = (float(x) for x in hem.centre)
    if hem.location == "cerebellar":
        return "cerebellum"
    if hem.location == "deep":
        return "thalamus" if v - head.v0 > THALAMUS_BEHIND_MM else "basal_ganglia"
    ring = _inner_table(head, w)
    front, back = float(ring[:, 1].min()), float(ring[:, 1].max())
    return lobe_of((v - front) / max(back - front, 1e-6), head.c_up - w)
