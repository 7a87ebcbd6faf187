"""The artefacts of hard cases (`hard=True`): motion ghosting and beam-hardening streaks, drawn
per slice."""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from hexnode.synth.anatomy import F32, Grid, Head
from hexnode.synth.geometry import Geometry


def motion_slices(rng: np.random.Generator, geo: Geometry, head: Head) -> dict[int, tuple[float, float, float]]:
    nz = geo.n_slices
    run = max(2, int(round(rng.uniform(0.08, 0.2) * nz)))
    start = int(rng.integers(0, max(1, nz - run)))
    out = {}
    for k in range(start, min(nz, start + run)):
        out[k] = (float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8)), float(rng.uniform(0.25, 0.5)))
    return out


def streak_slices(rng: np.random.Generator, geo: Geometry, head: Head) -> dict[int, Any]:
    """Beam-hardening streaks radiating from a dense point (dense bone, a clip, dental work)."""
    nz = geo.n_slices
    run = max(2, int(round(rng.uniform(0.1, 0.3) * nz)))
    start = int(rng.integers(0, max(1, nz - run)))
    ang0 = rng.uniform(0, 2 * math.pi)
    src_r = rng.uniform(40.0, 70.0)
    su, sv = src_r * math.cos(ang0), head.v0 + src_r * math.sin(ang0)
    angles = rng.uniform(0, math.pi, int(rng.integers(5, 11)))
    amps = rng.uniform(-70.0, -30.0, angles.size)
    amps[::3] *= -0.5  # some bright companions

    def make(scale: float):
        def streak(grid: Grid) -> np.ndarray:
            u, v = grid.coords()
            du, dv = u - F32(su), v - F32(sv)
            r = np.sqrt(du * du + dv * dv)
            out = np.zeros(u.shape, dtype=F32)
            for a, amp in zip(angles, amps, strict=True):
                d = np.abs(F32(math.cos(a)) * dv - F32(math.sin(a)) * du)
                out += F32(amp * scale) * np.exp(-(d / F32(1.2)) ** 2) * np.exp(-r / F32(90.0))
            return out
        return streak

    return {k: make(1.0 - 0.5 * abs(k - start - run / 2) / run) for k in range(start, min(nz, start + run))}


def skull_base_hardening(grid: Grid, w: float, head: Head, amplitude_hu: float) -> np.ndarray | None:
    """Bright beam-hardening lobes in the middle and posterior fossae on the slices that cut the
    petrous bones (a scanner without a good bone correction): brain there reads blood-like HU."""
    amp = max(0.0, 1.0 - abs(w + 40.0) / 18.0)
    if amp <= 0.0 or amplitude_hu == 0.0:
        return None
    u, v = grid.coords()
    centre_v = F32(head.v0 + 12.0)
    out = np.zeros(u.shape, dtype=F32)
    for side in (-1.0, 1.0):
        out += np.exp(-(((u - F32(side * 30.0)) / F32(13.0)) ** 2 + ((v - centre_v) / F32(10.0)) ** 2))
    out += F32(0.5) * np.exp(-((v - centre_v) / F32(16.0)) ** 2) * (np.abs(u) < F32(50.0))
    return out * F32(amplitude_hu * amp)
