"""Synthetic head NCCT with one intracranial hematoma and a known hematoma-expansion (HE) model.

`generate_case(seed, index, *, thin=False, hard=False, tilt_deg=0.0) -> Case` is deterministic per
(seed, index): the same arguments give byte-identical `Case.hu` (same numpy/scipy versions).
`Case.hu` int16 (z, y, x) HU, slice 0 the most inferior; `Case.mask` uint8 blood mask; `Case.spacing`
(sx, sy, sz) mm with sz along the slice normal (tilted series: table step x cos(tilt));
`Case.truth` the ground truth (`Truth`); `Case.geometry` the DICOM geometry; with
`with_labels=True` also `Case.labels`, a map of pure tissue voxels (`LABELS`).

Image: 512 x 512, pixel 0.40-0.50 mm, 20-40 slices of 5 mm (thin: 200-300 slices, 0.625-1.25 mm
thick), int16 HU.  Scalp (thicker over the temporalis), skull (tables up to 1,250-1,500 HU,
diploe 700-900, 4-8 mm, partial-volume rim), grey/white matter 36-39.5 / 25.5-29.5 HU with a
gyral pattern (sulci are the zero set of a band-limited 3D field, widening towards the surface;
cortex 3-4 mm with white-matter cores in the gyri), CSF 2-8 HU in ventricles, sulci, cisterns and
fissures, deep grey nuclei, brainstem and cerebellum with finer folia, skull base (orbital roofs,
sphenoid ridge, petrous ridges, mastoid/ethmoid cells, sphenoid/maxillary sinuses, orbits with
globes and lenses) and face/neck below, head-holder pad and shell, dural sinuses, falx and
vessels 45-60 HU, physiological calcifications (pineal, choroid plexus, falx, basal ganglia;
80-400 HU, often bilateral), a faint beam-hardening band under the inner table, dark streaks
between the petrous bones, and spatially correlated Gaussian noise (sd 3.5-7 HU, x1.3 at the skull
base).  `hard=True` draws bleeds < 3 ml and/or motion ghosting and/or beam-hardening streaks
(recorded in `Truth.hard`).

Hematoma: see `hexnode.synth.hematoma` (irregular blob from low-order spherical harmonics,
50-80 HU; deep 45 % / cerebellar 7 % / intraventricular-only 4 % / flattened lobar touching the
skull 10 % / lobar 34 %; satellites, intraventricular extension with a fluid level, hypodense
swirl or blend sign 30-45 HU; oedema rim 15-25 HU outside the mask).  The mask holds every voxel
of blood (main blob, satellites, intraventricular blood) and nothing else (never bone partial
volume or calcium).

Generative HE model (`hexnode.synth.hemodel`, version he-gen-1)::

    p = sigmoid(B0 + sum_k beta_k * x_k),   label ~ Bernoulli(p)

    x_k                 definition                                    beta_k
    log_volume          ln(mask volume ml / 15)                        +1.15
    irregularity        relative sd of the radius / 0.1                +1.20
    hypodense_fraction  fraction of mask voxels at 30-45 HU / 0.1      +1.30
    blend               hypodense part is one sharp-bordered region    +1.10
    islands             satellite blobs (0-4)                          +0.80
    ivh                 blood in the ventricles                        +0.85
    oedema_mm           oedema rim thickness (mm) - 3                  -0.13
    B0                                                                 -5.50

Every x_k is visible in the image (the volume and the hypodense fraction are measured on the
rendered mask); there is no hidden noise inside p, so the Bayes-optimal AUC is the AUC of p itself:
0.907 (20,000 draws, prevalence 0.282; `hexnode synth --bayes-auc`).  Rendering clips some bleeds
(skull, ventricles, falx) and loses satellites that fall outside the brain, so `Truth.he_probability`
(computed from the rendered markers) averages about 0.02 lower over generated cases (measured on
150 cases: logit shift -0.18).  The follow-up volume is drawn consistently with the label:
HE <=> growth > 6 ml or > 33 %.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

from hexnode.synth import hemodel
from hexnode.synth.anatomy import F32, Grid, Head, lerp_into, ramp, up2
from hexnode.synth.geometry import Geometry
from hexnode.synth.hematoma import Hematoma, draw_hematoma
from hexnode.synth.hemodel import Markers, bayes_auc

__all__ = ["Case", "Truth", "generate_case", "generate_followup", "bayes_auc"]

HU_MIN, HU_MAX = -1024, 3071

#: codes of `Case.labels` (only with `with_labels=True`): pure tissue voxels of the noise-free phantom;
#: voxels at tissue borders (partial volume) are OTHER
LABELS: dict[str, int] = {
    "outside": 0, "soft_tissue": 1, "bone": 2, "csf": 3, "grey": 4, "white": 5, "blood": 6,
    "hypodense_blood": 7, "dense_focus": 8, "other": 9,
}


@dataclass(frozen=True)
class Truth:
    """Ground truth written beside the series (never into it)."""

    seed: int
    index: int
    volume_ml: float  # from the mask and the voxel spacing (sx * sy * sz along the normal)
    followup_volume_ml: float
    he_label: bool
    he_probability: float
    logit: float
    markers: dict[str, float]  # the inputs of p (see module docstring), as rendered
    location: str
    hard: dict[str, bool]  # small (< 3 ml), motion, streaks
    tilt_deg: float
    thin: bool
    n_slices: int
    slice_thickness_mm: float
    spacing_mm: tuple[float, float, float]
    noise_sd: float  # sd of the correlated noise above the skull base (x1.3 at the foramen magnum)
    hematoma_hu: float
    hypodense_hu: float
    oedema_hu: float
    tissue_hu: dict[str, float]
    calcifications: list[dict[str, Any]]
    centre_voxel: tuple[float, float, float]  # (z, y, x) of the main blob centre
    artefact_slices: dict[str, list[int]] = field(default_factory=dict)  # motion / streaks: slice indices
    model_version: str = hemodel.MODEL_VERSION
    normal: bool = False  # a head without blood
    thickness_runs: list[list[float]] = field(default_factory=list)  # mixed: [thickness mm, slices] bottom up

    def to_json(self) -> dict[str, Any]:
        d = asdict(self)
        d["spacing_mm"] = list(self.spacing_mm)
        d["centre_voxel"] = list(self.centre_voxel)
        return d


@dataclass(frozen=True)
class Acquisition:
    kvp: float
    kernel: str
    tube_current_ma: int
    exposure_mas: int
    ctdi_vol: float
    manufacturer_model: str


@dataclass
class Case:
    hu: np.ndarray  # int16 (z, y, x)
    mask: np.ndarray  # uint8 (z, y, x)
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm, sz along the slice normal
    truth: Truth
    geometry: Geometry
    acquisition: Acquisition
    seed: int
    index: int
    labels: np.ndarray | None = None  # uint8 (z, y, x) LABELS codes, only with with_labels=True
    extra: dict[str, Any] = field(default_factory=dict)


# ---------------------------------------------------------------------------------------------
def _rng(seed: int, index: int, stream: int) -> np.random.Generator:
    return np.random.default_rng(np.random.SeedSequence([seed & 0xFFFFFFFF, index & 0xFFFFFFFF, stream]))


def _draw_geometry(rng: np.random.Generator, *, thin: bool, tilt_deg: float, head: Head) -> Geometry:
    n = 512
    px = round(float(rng.uniform(0.40, 0.50)), 5)  # exactly representable in PixelSpacing (DS)
    if thin:
        thk = float(rng.choice([0.625, 0.75, 1.0, 1.25]))
        step = thk if thk <= 0.75 else thk * float(rng.uniform(0.5, 0.8))
        nz = int(np.clip(round(rng.uniform(165.0, 190.0) / step), 200, 300))
    else:
        thk = 5.0
        step = 5.0
        rng.normal(30.0, 4.0)  # the slice count once drawn here: kept, so every later draw is unchanged
        nz = 0  # from the coverage below
    normal_step = step * math.cos(math.radians(tilt_deg))
    vertex = head.c_up + head.skull_mm + head.scalp_mm
    w_top = vertex + float(rng.uniform(-4.0, 6.0))
    # A head CT covers the brain: from above the vertex down to the foramen magnum (the cranial
    # floor of the posterior fossa lies near w = -58 mm, the vault ends near -64 mm).
    # (A spawned generator: drawing it takes nothing from `rng`'s stream.)
    w_floor = float(rng.spawn(1)[0].uniform(-76.0, -62.0))
    if not nz:
        nz = int(np.clip(math.ceil((w_top - w_floor) / normal_step) + 1, 20, 40))
    w_bottom = w_top - (nz - 1) * normal_step
    return Geometry(
        n=n, pixel_mm=px, n_slices=nz, table_step_mm=step, slice_thickness_mm=thk, tilt_deg=float(tilt_deg),
        yaw_deg=float(rng.uniform(-6.0, 6.0)),
        head_offset_mm=(float(rng.uniform(-6.0, 6.0)), float(head.v0 + rng.uniform(-10.0, 2.0))),
        w_bottom_mm=float(w_bottom),
    )


def _draw_acquisition(rng: np.random.Generator) -> Acquisition:
    kvp = float(rng.choice([100.0, 120.0, 120.0, 140.0]))
    ma = int(rng.integers(180, 350))
    return Acquisition(kvp=kvp, kernel=str(rng.choice(["H30s", "H31s", "FC21", "STANDARD", "J30s"])),
                       tube_current_ma=ma, exposure_mas=int(ma * 1.0),
                       ctdi_vol=float(round(rng.uniform(40.0, 60.0), 1)),
                       manufacturer_model="hexnode-synth phantom")


def _noise_kernel_sd(sigma: float) -> float:
    k = np.zeros((21, 21))
    k[10, 10] = 1.0
    return float(np.sqrt((ndimage.gaussian_filter(k, sigma, truncate=3.0) ** 2).sum()))


# ---------------------------------------------------------------------------------------------
def generate_case(seed: int, index: int, *, thin: bool = False, hard: bool = False,
                  tilt_deg: float = 0.0, n_slices: int | None = None, with_labels: bool = False,
                  normal: bool = False, mixed: tuple[tuple[float, int], ...] | None = None) -> Case:
    """One synthetic head NCCT with its ground truth (deterministic per (seed, index)).

    `n_slices` overrides the drawn slice count with a stack centred on the bleed (tests use it to
    keep runs short; such a stack does not cover the brain).  `with_labels` adds `Case.labels`, a
    tissue map of the noise-free phantom.  `normal`: the same head without any blood (for the
    false-positive figures).  `mixed`: runs of (thickness mm, slices) from the bottom up, e.g.
    ((4.0, 14), (7.0, 14)) for GE's head protocol, covering the head from the foramen magnum up.
    """
    head, geo, acq, hard_flags, location, markers, hem, r_noise, r_art = _draw(seed, index, thin=thin, hard=hard,
                                                                               tilt_deg=tilt_deg)
    r_label = _rng(seed, index, 7)
    if mixed is not None:
        geo = _mixed(geo, mixed)
    elif n_slices is not None:
        geo = _with_slices(geo, n_slices, float(hem.centre[2]))
    elif not normal:
        geo = _covering(geo, *hem.w_range(head))
    # calcifications that would sit inside the bleed are dropped (blood and calcium never share a voxel)
    head.calcs = [c for c in head.calcs if not hem.parenchymal
                  or np.linalg.norm(np.array(c.centre) - hem.centre) > hem.main.bound + max(c.semi) + 2.0]

    noise_sd = float(r_noise.uniform(3.5, 7.0))
    motion_slices = _motion_slices(r_art, geo, head) if hard_flags["motion"] else {}
    streak_slices = _streak_slices(r_art, geo, head) if hard_flags["streaks"] else {}
    hu, mask, labels, stats = _render(geo, head, hem, noise_sd=noise_sd, r_noise=r_noise, pf_rng=_rng(seed, index, 8),
                                      motion_slices=motion_slices, streak_slices=streak_slices,
                                      normal=normal, with_labels=with_labels)
    nz = geo.n_slices
    sx, sy, sz = geo.spacing
    n_mask = int(mask.sum(dtype=np.int64))
    per_slice = mask.reshape(nz, -1).sum(axis=1, dtype=np.int64)
    volume_ml = float(np.dot(per_slice, geo.extents_mm())) * sx * sy / 1000.0
    realised = Markers(
        volume_ml=max(volume_ml, 1e-3),
        irregularity=markers.irregularity,
        hypodense_fraction=(stats["hypo"] / n_mask) if n_mask else 0.0,
        blend=markers.blend and stats["hypo"] > 0,
        islands=len(stats["islands"]),
        ivh=stats["ivh"] > 0,
        oedema_mm=markers.oedema_mm,
    )
    x = hemodel.design_vector(realised)
    logit = hemodel.B0 + sum(hemodel.BETA[key] * val for key, val in x.items())
    p = 1.0 / (1.0 + math.exp(-logit))
    label = bool(r_label.random() < p)
    followup = hemodel.draw_followup(r_label, volume_ml, label)
    if normal:  # no blood: no expansion (the logit is a floor, not -inf, so truth.json stays JSON)
        p, label, followup, logit = 0.0, False, 0.0, -99.0
    cz = geo.slice_of(float(hem.centre[2]))
    cx, cy = geo.pixel_of(cz, float(hem.centre[0]), float(hem.centre[1]))
    calcs = []
    for c in head.calcs:
        kz = geo.slice_of(c.centre[2])
        if not (-0.5 <= kz <= nz - 0.5):
            continue
        xx, yy = geo.pixel_of(kz, c.centre[0], c.centre[1])
        calcs.append({"kind": c.kind, "voxel": [kz, yy, xx], "semi_mm": list(c.semi), "hu": round(c.hu, 1)})
    truth = Truth(
        seed=seed, index=index, volume_ml=volume_ml, followup_volume_ml=followup, he_label=label,
        he_probability=p, logit=logit,
        markers={
            "volume_ml": volume_ml, "irregularity": realised.irregularity,
            "hypodense_fraction": realised.hypodense_fraction, "blend": float(realised.blend),
            "islands": float(realised.islands), "ivh": float(realised.ivh), "oedema_mm": realised.oedema_mm,
        },
        location="none" if normal else location, hard=hard_flags, tilt_deg=float(tilt_deg), thin=thin, n_slices=nz,
        slice_thickness_mm=geo.slice_thickness_mm, spacing_mm=(sx, sy, sz), noise_sd=noise_sd, hematoma_hu=hem.hem_hu,
        hypodense_hu=hem.hypo_hu, oedema_hu=hem.oedema_hu,
        tissue_hu={"grey": head.gm_hu, "white": head.wm_hu, "csf": head.csf_hu},
        calcifications=calcs, centre_voxel=(cz, cy, cx),
        artefact_slices={"motion": sorted(motion_slices), "streaks": sorted(streak_slices)},
        normal=normal, thickness_runs=[[float(t), int(c)] for t, c in mixed] if mixed else [],
    )
    return Case(hu=hu, mask=mask, spacing=(sx, sy, sz), truth=truth, geometry=geo, acquisition=acq,
                seed=seed, index=index, labels=labels)


# --- follow-up scan ---------------------------------------------------------------------------
#: HE definition of the generative model (hemodel.draw_followup): growth > 6 ml or > 33 %
FOLLOWUP_HOURS = (8.0, 30.0)  # the interval to the follow-up CT, uniform (the clinical "about 24 h")


def _draw(seed: int, index: int, *, thin: bool, hard: bool, tilt_deg: float
          ) -> tuple[Head, Geometry, Acquisition, dict[str, bool], str, Markers, Hematoma,
                     np.random.Generator, np.random.Generator]:
    """A case's head, scanner, hard-case flags, markers and bleed, from its own generators; also the
    noise and artefact generators, where the caller goes on drawing (noise level first)."""
    r_head, r_geo, r_mark, r_hem = (_rng(seed, index, k) for k in (1, 2, 3, 4))
    r_noise, r_art = _rng(seed, index, 5), _rng(seed, index, 6)
    head = Head.draw(r_head)
    geo = _draw_geometry(r_geo, thin=thin, tilt_deg=tilt_deg, head=head)
    acq = _draw_acquisition(r_geo)
    hard_flags = {"small": False, "motion": False, "streaks": False}
    if hard:
        hard_flags = {"small": r_art.random() < 0.6, "motion": r_art.random() < 0.5,
                      "streaks": r_art.random() < 0.5}
        if not any(hard_flags.values()):
            hard_flags[str(r_art.choice(list(hard_flags)))] = True
    location, markers = hemodel.draw_case(r_mark, small=hard_flags["small"])
    hem = draw_hematoma(r_hem, head, markers, location)
    return head, geo, acq, hard_flags, location, markers, hem, r_noise, r_art


def _replay(seed: int, index: int, *, thin: bool, hard: bool, tilt_deg: float
            ) -> tuple[Head, Geometry, Acquisition, dict[str, bool], str, Markers, Hematoma, float]:
    """The baseline's draws again, from the same generators in the same order: the same head,
    scanner, markers and bleed (and its noise level) as `generate_case(seed, index)`."""
    head, geo, acq, hard_flags, location, markers, hem, r_noise, _ = _draw(seed, index, thin=thin, hard=hard,
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


def _stack(geo: Geometry, hem: Hematoma, head: Head, *, n_slices: int | None,
           mixed: tuple[tuple[float, int], ...] | None) -> Geometry:
    if mixed is not None:
        return _mixed(geo, mixed)
    if n_slices is not None:
        return _with_slices(geo, n_slices, float(hem.centre[2]))
    return _covering(geo, *hem.w_range(head))


def _mask_ml(geo: Geometry, mask: np.ndarray) -> float:
    sx, sy, _ = geo.spacing
    per_slice = mask.reshape(geo.n_slices, -1).sum(axis=1, dtype=np.int64)
    return float(np.dot(per_slice, geo.extents_mm())) * sx * sy / 1000.0


def generate_followup(baseline: Case, *, thin: bool = False, hard: bool = False, tilt_deg: float = 0.0,
                      n_slices: int | None = None, mixed: tuple[tuple[float, int], ...] | None = None,
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
    r_fu = _rng(seed, index, 9)
    hours = float(r_fu.uniform(*FOLLOWUP_HOURS))
    yaw, du, dv, dw = (float(r_fu.uniform(-3.0, 3.0)), float(r_fu.uniform(-3.0, 3.0)),
                       float(r_fu.uniform(-3.0, 3.0)), float(r_fu.uniform(-2.5, 2.5)))
    moved = replace(geo0, yaw_deg=geo0.yaw_deg + yaw, w_bottom_mm=geo0.w_bottom_mm + dw,
                    head_offset_mm=(geo0.head_offset_mm[0] + du, geo0.head_offset_mm[1] + dv))
    calcs = list(head.calcs)

    def attempt(scale: float, shift: float, *, full: bool) -> tuple[Hematoma, Geometry, Any]:
        hem = _grown(hem0, scale, shift)
        geo = _stack(moved, hem, head, n_slices=n_slices, mixed=mixed)
        head.calcs = [c for c in calcs if not hem.parenchymal
                      or np.linalg.norm(np.array(c.centre) - hem.centre) > hem.main.bound + max(c.semi) + 2.0]
        if full:
            out = _render(geo, head, hem, noise_sd=noise_sd, r_noise=_rng(seed, index, 10), pf_rng=_rng(seed, index, 12),
                          motion_slices={}, streak_slices={}, normal=False, with_labels=False)
        else:
            out = _render(geo, head, hem, noise_sd=noise_sd, r_noise=None, pf_rng=_rng(seed, index, 12),
                          motion_slices={}, streak_slices={}, normal=False, with_labels=False, only_bleed=True)
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
        vol = _mask_ml(geo, mask)
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
    volume_ml = _mask_ml(geo, mask)
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
        calcifications=_calc_truth(head, geo),
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


def _render(geo: Geometry, head: Head, hem: Hematoma, *, noise_sd: float, r_noise: np.random.Generator | None,
            pf_rng: np.random.Generator, motion_slices: dict[int, tuple[float, float, float]],
            streak_slices: dict[int, Any], normal: bool, with_labels: bool, only_bleed: bool = False,
            ) -> tuple[np.ndarray, np.ndarray, np.ndarray | None, dict[str, Any]]:
    """Render the stack: (hu, mask, labels, marker stats).  `r_noise` None: no noise.
    `only_bleed`: only the slices the bleed can touch are painted (the mask volume of a candidate
    follow-up hematoma, a fraction of the cost of the whole stack)."""
    nz, n, px = geo.n_slices, geo.n, geo.pixel_mm
    hu = np.empty((nz, n, n), dtype=np.int16)
    mask = np.zeros((nz, n, n), dtype=np.uint8)
    labels = np.zeros((nz, n, n), dtype=np.uint8) if with_labels else None
    noise_sigma = 1.3  # mm-scale grain like a soft-tissue kernel's noise power spectrum
    noise_gain = F32(noise_sd / _noise_kernel_sd(noise_sigma))
    w_lo, w_hi = hem.w_range(head)
    if normal:  # nothing to paint anywhere
        w_lo, w_hi = math.inf, -math.inf
    stats = {"hypo": 0, "ivh": 0, "islands": set()}  # type: dict[str, Any]

    chunk = 8
    for k0 in range(0, nz, chunk):
        ks = list(range(k0, min(nz, k0 + chunk)))
        if only_bleed:
            ks = [k for k in ks if w_lo - geo.thickness(k) <= geo.slice_w(k) <= w_hi + geo.thickness(k)]
            if not ks:
                continue
        half = np.empty((len(ks), n // 2, n // 2), dtype=F32)
        art_half = np.zeros_like(half)
        layers = []
        for j, k in enumerate(ks):
            w = geo.slice_w(k)
            thk = geo.thickness(k)
            grid = Grid.full(geo.uv_affine(k, 2), n // 2, 2 * px)
            lay = head.render_slice(grid.m, n // 2, 2 * px, w, thk)
            half[j] = lay.img
            layers.append(lay)
            if labels is not None:
                lab = _classify(lay, head)
                labels[k] = np.repeat(np.repeat(lab, 2, axis=0), 2, axis=1)
            pf = head.posterior_fossa_streaks(grid, w, pf_rng)
            if pf is not None:
                art_half[j] += pf * lay.ic
        img = up2(half)
        for j, k in enumerate(ks):
            w = geo.slice_w(k)
            thk = geo.thickness(k)
            if w_lo - thk <= w <= w_hi + thk:
                lay = layers[j]
                ic = up2(lay.ic[None])[0]
                vent = up2(lay.vent[None])[0]
                brain = up2(lay.brain[None])[0]
                fgrid = Grid.full(geo.uv_affine(k, 1), n, px)
                _paint_hematoma(img[j], mask[k], fgrid, hem, head, w, thk, ic, vent, brain, stats,
                                None if labels is None else labels[k])
            if k in streak_slices:
                img[j] += streak_slices[k](Grid.full(geo.uv_affine(k, 1), n, px))
            if k in motion_slices:
                dy, dx, alpha = motion_slices[k]
                ghost = ndimage.shift(img[j], (dy, dx), order=1, mode="nearest")
                img[j] += F32(alpha) * (ghost - img[j])
        for jj in np.flatnonzero(art_half.any(axis=(1, 2))):
            img[jj] += up2(art_half[jj])
        if r_noise is None:
            hu[ks] = np.rint(np.clip(img, HU_MIN, HU_MAX))
            continue
        noise = r_noise.standard_normal(img.shape, dtype=F32)
        noise = ndimage.gaussian_filter(noise, (0, noise_sigma, noise_sigma), output=noise, truncate=3.0)
        # fewer photons through the skull base: noisier low slices
        gain = np.array([1.0 + 0.3 * min(1.0, max(0.0, (-15.0 - geo.slice_w(k)) / 30.0)) for k in ks], dtype=F32)
        noise *= (noise_gain * gain)[:, None, None]
        img += noise
        np.clip(img, HU_MIN, HU_MAX, out=img)
        np.rint(img, out=img)
        hu[ks] = img  # exact: integral values in the int16 range

    return hu, mask, labels, stats


def _calc_truth(head: Head, geo: Geometry) -> list[dict[str, Any]]:
    calcs = []
    for c in head.calcs:
        kz = geo.slice_of(c.centre[2])
        if not (-0.5 <= kz <= geo.n_slices - 0.5):
            continue
        xx, yy = geo.pixel_of(kz, c.centre[0], c.centre[1])
        calcs.append({"kind": c.kind, "voxel": [kz, yy, xx], "semi_mm": list(c.semi), "hu": round(c.hu, 1)})
    return calcs


def _classify(lay: Any, head: Head) -> np.ndarray:
    """LABELS of one noise-free half-resolution slice; only voxels whose 4 neighbours agree are pure."""
    img, ic = lay.img, lay.ic
    lab = np.full(img.shape, LABELS["other"], dtype=np.uint8)
    inside = ic > 0.99
    outside = ic < 0.01
    lab[img < -300] = LABELS["outside"]
    lab[img > 300] = LABELS["bone"]
    lab[outside & (img > -150) & (img < 150)] = LABELS["soft_tissue"]
    lab[inside & (np.abs(img - head.csf_hu) < 1.0)] = LABELS["csf"]
    lab[inside & (np.abs(img - head.gm_hu) < 1.5)] = LABELS["grey"]
    lab[inside & (np.abs(img - head.wm_hu) < 1.5)] = LABELS["white"]
    lab[(ic > 0.5) & (img > 70) & (img < 300)] = LABELS["dense_focus"]
    p = np.pad(lab, 1, mode="edge")
    same = (p[:-2, 1:-1] == lab) & (p[2:, 1:-1] == lab) & (p[1:-1, :-2] == lab) & (p[1:-1, 2:] == lab)
    lab[~same] = LABELS["other"]
    return lab


def _covering(geo: Geometry, w_lo: float, w_hi: float) -> Geometry:
    """Move a short stack down (losing the vertex) until it covers the whole bleed."""
    if geo.w_bottom_mm <= w_lo:
        return geo
    height = (geo.n_slices - 1) * geo.normal_step_mm
    bottom = w_lo if w_lo + height >= w_hi else (w_lo + w_hi - height) / 2
    return replace(geo, w_bottom_mm=min(geo.w_bottom_mm, bottom))


def _mixed(geo: Geometry, parts: tuple[tuple[float, int], ...]) -> Geometry:
    """Runs of (thickness, slices), contiguous, the top at the drawn top of the stack."""
    z, thk = Geometry.runs(parts)
    w_top = geo.w_bottom_mm + (geo.n_slices - 1) * geo.normal_step_mm
    height = z[-1] * math.cos(math.radians(geo.tilt_deg))
    return replace(geo, n_slices=len(z), table_step_mm=float(np.mean(np.diff(z))), slice_thickness_mm=thk[0],
                   w_bottom_mm=w_top - height, table_z_mm=z, thickness_mm=thk)


def _with_slices(geo: Geometry, nz: int, w_centre: float) -> Geometry:
    # a short stack centred on the bleed, inside the original coverage
    w_top = geo.w_bottom_mm + (geo.n_slices - 1) * geo.normal_step_mm
    bottom = w_centre - (nz - 1) / 2.0 * geo.normal_step_mm
    bottom = min(max(bottom, geo.w_bottom_mm), w_top - (nz - 1) * geo.normal_step_mm)
    return Geometry(n=geo.n, pixel_mm=geo.pixel_mm, n_slices=nz, table_step_mm=geo.table_step_mm,
                    slice_thickness_mm=geo.slice_thickness_mm, tilt_deg=geo.tilt_deg, yaw_deg=geo.yaw_deg,
                    head_offset_mm=geo.head_offset_mm, w_bottom_mm=bottom)


def _paint_hematoma(img: np.ndarray, mask: np.ndarray, grid: Grid, hem: Hematoma, head: Head, w: float,
                    thk: float, ic: np.ndarray, vent: np.ndarray, brain: np.ndarray,
                    stats: dict[str, Any], labels: np.ndarray | None) -> None:
    px = grid.px
    # blood fills only the part of a voxel that calcium leaves free, so that a calcification inside
    # a bleed (the choroid plexus in an intraventricular cast) stays visible where the mask leaves it out
    calcium = _calcium(grid, head, w, thk)
    blobs = ([("main", hem.main)] if hem.parenchymal else []) + [
        (f"s{i}", s) for i, s in enumerate(hem.satellites)]
    # oedema first (outside the blood, brain parenchyma only)
    b = hem.main
    sec = b.section_radius(w, hem.oedema_mm + 2.0)
    if hem.parenchymal and sec > 0:
        win = grid.window(b.centre[0], b.centre[1], sec)
        if win is not None:
            sub = grid.sub(win)
            u, v = sub.coords()
            depth, _ = b.signed_depth(u, v, w, reach=hem.oedema_mm)
            wt = np.clip(1.0 + depth / F32(hem.oedema_mm), 0.0, 1.0) * (depth < 0) * brain[win]
            lerp_into(img[win], F32(hem.oedema_hu), (wt ** F32(0.8)).astype(F32))
    for name, blob in blobs:
        sec = blob.section_radius(w, thk / 2 + 1.0)
        if sec <= 0:
            continue
        win = grid.window(blob.centre[0], blob.centre[1], sec)
        if win is None:
            continue
        sub = grid.sub(win)
        u, v = sub.coords()
        depth, slope = blob.signed_depth(u, v, w)
        width = np.sqrt(F32(0.7 * px) ** 2 + (F32(thk) * slope) ** 2)
        frac = ramp(depth, width)
        # blood stays inside the skull, on its own side of the falx, and out of the ventricles
        allowed = (ic[win] >= 0.5) & (u * F32(np.sign(blob.centre[0]) or 1.0) > F32(-0.3))
        # voxels dominated by bone partial volume or calcium stay bright rim, never blood
        allowed &= img[win] < F32(120.0)
        if not hem.ivh:
            allowed &= vent[win] < 0.5
        inside = (depth > 0) & allowed
        frac = frac * ic[win] * allowed * (1.0 - calcium[win])
        val = np.full(u.shape, F32(hem.hem_hu), dtype=F32)
        hypo = np.zeros(u.shape, dtype=bool)
        if name == "main":
            hw = hem.hypo_weight(u, v, w)
            val += hw * F32(hem.hypo_hu - hem.hem_hu)
            hypo = inside & (hw > 0.5)
            stats["hypo"] += int(np.count_nonzero(hypo & (mask[win] == 0)))
        lerp_into(img[win], val, frac)
        if labels is not None:
            lw = labels[win]
            lw[inside & (mask[win] == 0)] = LABELS["blood"]
            lw[hypo & (mask[win] == 0)] = LABELS["hypodense_blood"]
        if name != "main" and np.any(inside):
            stats["islands"].add(name)
        mask[win] |= inside.astype(np.uint8)
    if hem.ivh:
        _paint_ivh(img, mask, grid, hem, head, w, thk, calcium, stats, labels)
    # calcifications are never blood
    calcified = calcium > 0.2
    mask[calcified] = 0
    if labels is not None:
        labels[calcified] = LABELS["other"]


def _calcium(grid: Grid, head: Head, w: float, thk: float) -> np.ndarray:
    """Partial-volume fraction of calcification in each pixel of one slice (0 where there is none)."""
    out = np.zeros(grid.shape, dtype=F32)
    for c in head.calcs:
        e = c.ellipsoid
        if not e.touches(w, thk):
            continue
        win = grid.window(e.c[0], e.c[1], e.bound)
        if win is None:
            continue
        u, v = grid.sub(win).coords()
        out[win] = np.maximum(out[win], e.frac(u, v, w, thk, grid.px))
    return out


def _paint_ivh(img: np.ndarray, mask: np.ndarray, grid: Grid, hem: Hematoma, head: Head, w: float, thk: float,
               calcium: np.ndarray, stats: dict[str, Any], labels: np.ndarray | None) -> None:
    px = grid.px
    if hem.parenchymal:  # extension into the ipsilateral lateral ventricle
        side_vents = [e for e in head.ventricles if e.c[0] * hem.ivh_side > 1.0][:3]
    else:  # primary intraventricular bleed: both lateral ventricles and the third
        side_vents = [e for e in head.ventricles if abs(e.c[2]) < 16.0 and e.semi[0] > 1.0]
    for e in side_vents:
        if not e.touches(w, thk):
            continue
        win = grid.window(e.c[0], e.c[1], e.bound)
        if win is None:
            continue
        u, v = grid.sub(win).coords()
        fr = e.frac(u, v, w, thk, px) * ramp(v - F32(hem.ivh_level_v), 1.0) * (1.0 - calcium[win])
        lerp_into(img[win], F32(hem.ivh_hu), fr)
        inside = fr >= 0.5
        new = inside & (mask[win] == 0)
        stats["ivh"] += int(np.count_nonzero(new))
        if labels is not None:
            labels[win][new] = LABELS["blood"]
        mask[win] |= inside.astype(np.uint8)


def _motion_slices(rng: np.random.Generator, geo: Geometry, head: Head) -> dict[int, tuple[float, float, float]]:
    nz = geo.n_slices
    run = max(2, int(round(rng.uniform(0.08, 0.2) * nz)))
    start = int(rng.integers(0, max(1, nz - run)))
    out = {}
    for k in range(start, min(nz, start + run)):
        out[k] = (float(rng.uniform(-8, 8)), float(rng.uniform(-8, 8)), float(rng.uniform(0.25, 0.5)))
    return out


def _streak_slices(rng: np.random.Generator, geo: Geometry, head: Head) -> dict[int, Any]:
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
