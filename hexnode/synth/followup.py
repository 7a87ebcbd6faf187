"""The follow-up CT of a generated case: the same head, scanner and bleed replayed, the head moved a
little, the bleed grown (or shrunk) in place to the baseline truth's follow-up volume."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

import numpy as np

from hexnode.synth.anatomy import Head
from hexnode.synth.case import Acquisition, Case
from hexnode.synth.draw import draw, rng_for
from hexnode.synth.geometry import Geometry, Run
from hexnode.synth.hematoma import Hematoma
from hexnode.synth.hemodel import Markers
from hexnode.synth.render import calcification_truth, mask_ml, render_stack
from hexnode.synth.scanner import stack

#: HE definition of the generative model (hemodel.draw_followup): growth > 6 ml or > 33 %
FOLLOWUP_HOURS = (8.0, 30.0)  # the interval to the follow-up CT, uniform (the clinical "about 24 h")


def _replay(seed: int, index: int, *, thin: bool, hard: bool, tilt_deg: float
            ) -> tuple[Head, Geometry, Acquisition, dict[str, bool], str, Markers, Hematoma, float]:
    """The baseline's draws again, from the same generators in the same order: the same head,
    scanner, markers and bleed (and its noise level) as `generate_case(seed, index)`."""
    head, geo, acq, hard_flags, location, markers, hem, r_noise, _ = draw(seed, index, thin=thin, hard=hard,
                                                                         tilt_deg=tilt_deg)
    return head, geo, acq, hard_flags, location, markers, hem, float(r_noise.uniform(3.5, 7.0))


def _grown(hem: Hematoma, scale: float, level_shift: float) -> Hematoma:
    """The same bleed grown (or shrunk) about its centre: the main blob's radius x `scale` (same
    shape, same hypodense pattern, same satellites pushed out with its surface), and the
    intraventricular level moved by `level_shift` mm (for a bleed that is only intraventricular)."""
    main = replace(hem.main, r0=hem.main.r0 * scale, _table=None)
    push = (scale - 1.0) * hem.main.r0
    sats = []
    for sat in hem.satellites:
        d = sat.centre - hem.main.centre
        dist = float(np.linalg.norm(d)) or 1.0
        sats.append(replace(sat, centre=hem.main.centre + d * (dist + push) / dist, _table=None))
    return replace(hem, main=main, satellites=sats, ivh_level_v=hem.ivh_level_v + level_shift)


def generate_followup(baseline: Case, *, thin: bool = False, hard: bool = False, tilt_deg: float = 0.0,
                      n_slices: int | None = None, mixed: tuple[Run, ...] | None = None,
                      iterations: int = 4) -> Case:
    """The follow-up CT of `baseline` (give the options the baseline was generated with).

    The same patient, head and scanner, a few hours later (`Case.extra["followup"]["hours"]`,
    uniform 8-30 h) with the head slightly moved (yaw +-3 degrees, +-3 mm in plane, +-2.5 mm along
    the table) and new noise; the bleed grown (or shrunk) in place, with the same shape and markers,
    to the baseline truth's `followup_volume_ml` (its radius is fitted on the rendered mask, since
    the skull, the falx and the ventricles clip it; the realised volume is what the truth records,
    typically within 1 % of the target). No motion or streak artefacts on the follow-up.
    """
    seed, index, t = baseline.seed, baseline.index, baseline.truth
    if t.normal:
        raise ValueError("a normal head has no bleed to follow up")
    head, geo0, acq, _flags, location, _markers, hem0, noise_sd = _replay(
        seed, index, thin=thin, hard=hard, tilt_deg=tilt_deg)
    r_fu = rng_for(seed, index, 9)
    hours = float(r_fu.uniform(*FOLLOWUP_HOURS))
    yaw, du, dv, dw = (float(r_fu.uniform(-3.0, 3.0)), float(r_fu.uniform(-3.0, 3.0)),
                       float(r_fu.uniform(-3.0, 3.0)), float(r_fu.uniform(-2.5, 2.5)))
    moved = replace(geo0, yaw_deg=geo0.yaw_deg + yaw, w_bottom_mm=geo0.w_bottom_mm + dw,
                    head_offset_mm=(geo0.head_offset_mm[0] + du, geo0.head_offset_mm[1] + dv))
    calcs = list(head.calcs)

    def attempt(scale: float, shift: float, *, full: bool) -> tuple[Hematoma, Geometry, Any]:
        hem = _grown(hem0, scale, shift)
        geo = stack(moved, hem, head, n_slices=n_slices, mixed=mixed)
        head.calcs = [c for c in calcs if not hem.parenchymal
                      or np.linalg.norm(np.array(c.centre) - hem.centre) > hem.main.bound + max(c.semi) + 2.0]
        if full:
            out = render_stack(geo, head, hem, noise_sd=noise_sd, r_noise=rng_for(seed, index, 10),
                               pf_rng=rng_for(seed, index, 12), motion_slices={}, streak_slices={}, normal=False,
                               with_labels=False)
        else:
            out = render_stack(geo, head, hem, noise_sd=noise_sd, r_noise=None, pf_rng=rng_for(seed, index, 12),
                               motion_slices={}, streak_slices={}, normal=False, with_labels=False,
                               only_bleed=True)
        return hem, geo, out

    target = float(t.followup_volume_ml)
    base = max(float(t.volume_ml), 1e-3)
    scale, shift = 1.0, 0.0
    parenchymal = hem0.parenchymal
    if parenchymal:
        scale = (target / base) ** (1.0 / 3.0)
    # fit: V(scale) ~ scale^3 near the solution (a secant step in scale^3), or V(shift) for an
    # intraventricular-only bleed (the fluid level moves; lower v fills more)
    prev: tuple[float, float] | None = None
    for _ in range(iterations):
        _hem, geo, (_hu, mask, _lab, _st) = attempt(scale, shift, full=False)
        vol = mask_ml(geo, mask)
        if abs(vol - target) <= max(0.005 * target, 0.02):
            break
        if parenchymal:
            scale *= (target / max(vol, 1e-3)) ** (1.0 / 3.0)
        else:
            if prev is None or prev[1] == vol:
                step = -2.0 if vol < target else 2.0
            else:
                step = (target - vol) * (shift - prev[0]) / (vol - prev[1])
            prev = (shift, vol)
            shift += float(np.clip(step, -8.0, 8.0))
    hem, geo, (hu, mask, _labels, stats) = attempt(scale, shift, full=True)
    volume_ml = mask_ml(geo, mask)
    n_mask = int(mask.sum(dtype=np.int64))
    growth = volume_ml - t.volume_ml
    cz = geo.slice_of(float(hem.centre[2]))
    cx, cy = geo.pixel_of(cz, float(hem.centre[0]), float(hem.centre[1]))
    sx, sy, sz = geo.spacing
    truth = replace(
        t, volume_ml=volume_ml, followup_volume_ml=volume_ml, n_slices=geo.n_slices, spacing_mm=(sx, sy, sz),
        centre_voxel=(cz, cy, cx), artefact_slices={"motion": [], "streaks": []},
        hard={**t.hard, "motion": False, "streaks": False},
        markers={**t.markers, "volume_ml": volume_ml,
                 "hypodense_fraction": (stats["hypo"] / n_mask) if n_mask else 0.0,
                 "islands": float(len(stats["islands"]))},
        calcifications=calcification_truth(head, geo),
    )
    followup = {
        "hours": round(hours, 3), "baseline_volume_ml": t.volume_ml, "target_volume_ml": target,
        "volume_ml": volume_ml, "growth_ml": growth, "growth_pct": 100.0 * growth / max(t.volume_ml, 1e-6),
        "he_label": t.he_label, "expansion": bool(growth > 6.0 or growth > 0.33 * t.volume_ml),
        "moved": {"yaw_deg": yaw, "u_mm": du, "v_mm": dv, "w_mm": dw}, "location": location,
    }
    head.calcs = calcs
    return Case(hu=hu, mask=mask, spacing=(sx, sy, sz), truth=truth, geometry=geo, acquisition=acq, seed=seed,
                index=index, extra={"visit": "followup", "followup": followup})
