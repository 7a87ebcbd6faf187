"""A case's random draws: one generator per stream of (seed, index), and the head, scanner,
hard-case flags, markers and bleed that the baseline and its follow-up share."""

from __future__ import annotations

import numpy as np

from hexnode.synth import hemodel
from hexnode.synth.anatomy import Head
from hexnode.synth.case import Acquisition
from hexnode.synth.geometry import Geometry
from hexnode.synth.hematoma import Hematoma, draw_hematoma
from hexnode.synth.hemodel import Markers
from hexnode.synth.scanner import draw_acquisition, draw_geometry


def rng_for(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, index & 0xFFFFFFFF, stream]))


def draw(seed: int, index: int, *, thin: bool, hard: bool, tilt_deg: float, slice_mm: float | None = None
         ) -> tuple[Head, Geometry, Acquisition, dict[str, bool], str, Markers, Hematoma,
                    np.random.Generator, np.random.Generator]:
    """A case's head, scanner, hard-case flags, markers and bleed, from its own generators; also the
    noise and artefact generators, where the caller goes on drawing (noise level first)."""
    r_head, r_geo, r_mark, r_hem = (rng_for(seed, index, k) for k in (1, 2, 3, 4))
    r_noise, r_art = rng_for(seed, index, 5), rng_for(seed, index, 6)
    head = Head.draw(r_head)
    geo = draw_geometry(r_geo, thin=thin, tilt_deg=tilt_deg, head=head, slice_mm=slice_mm)
    acq = draw_acquisition(r_geo)
    hard_flags = {"small": False, "motion": False, "streaks": False}
    if hard:
        hard_flags = {"small": r_art.random() < 0.6, "motion": r_art.random() < 0.5,
                      "streaks": r_art.random() < 0.5}
        if not any(hard_flags.values()):
            hard_flags[str(r_art.choice(list(hard_flags)))] = True
    location, markers = hemodel.draw_case(r_mark, small=hard_flags["small"])
    hem = draw_hematoma(r_hem, head, markers, location)
    return head, geo, acq, hard_flags, location, markers, hem, r_noise, r_art
