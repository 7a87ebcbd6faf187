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
from dataclasses import replace

import numpy as np

from hexnode.synth import artefacts, hemodel
from hexnode.synth.anatomy import SkullBase
from hexnode.synth.case import LABELS, Acquisition, Case, Truth
from hexnode.synth.draw import draw, rng_for
from hexnode.synth.followup import FOLLOWUP_HOURS, generate_followup
from hexnode.synth.geometry import Run
from hexnode.synth.hemodel import Markers, bayes_auc
from hexnode.synth.render import calcification_truth, mask_ml, render_stack
from hexnode.synth.scanner import profile_named, stack
from hexnode.synth.signtruth import sign_truth
from hexnode.synth.sites import truth_side, truth_site

#: mass effect (`generate_case(mass_effect=True)`): the septum's shift per ml of a supratentorial
#: bleed, and its cap (a 30 ml bleed shifts it about 4 mm)
MLS_MM_PER_ML = 0.13
MLS_MAX_MM = 10.0

#: the random stream of the skull-base option (1-12 are the case's others, 21+ the look-alikes')
SKULL_BASE_STREAM = 13

__all__ = ["LABELS", "Acquisition", "Case", "FOLLOWUP_HOURS", "Truth", "bayes_auc", "generate_case", "generate_followup"]


def generate_case(seed: int, index: int, *, thin: bool = False, hard: bool = False,
                  tilt_deg: float = 0.0, n_slices: int | None = None, with_labels: bool = False,
                  normal: bool = False, mixed: tuple[Run, ...] | None = None, skull_base: bool = False,
                  slice_mm: float | None = None, profile: str | None = None, mass_effect: bool = False) -> Case:
    """One synthetic head NCCT with its ground truth (deterministic per (seed, index)).

    `n_slices` overrides the drawn slice count with a stack centred on the bleed (tests use it to
    keep runs short; such a stack does not cover the brain).  `with_labels` adds `Case.labels`, a
    tissue map of the noise-free phantom.  `normal`: the same head without any blood (for the
    false-positive figures).  `mixed`: runs of (thickness mm, slices) from the bottom up, e.g.
    ((4.0, 14), (7.0, 14)) for GE's head protocol, covering the head from the foramen magnum up;
    a third value in a run is how far (mm along the table) its first slab reaches back into the
    run below, as GE writes that protocol: ((4.0, 14), (7.0, 14, 4.42)).
    `skull_base`: the cranial floor as real thick tilted slices cut it (`SkullBase`: thin orbital
    roofs over fat, dented by the gyri, pitched against the slice plane), drawn from a stream of its
    own, so the head, bleed and noise are those of the same case without it. `slice_mm`: the
    thickness of a thick series (default 5 mm; e.g. 7 mm as many sites reconstruct).
    `profile`: another scanner's look by name (`scanner.PROFILES`: kernel, noise, skull-base beam
    hardening, calibration, its slice thickness unless `slice_mm` says otherwise); the same head,
    bleed and mask as without it. None (default): the generator's own look, unchanged.
    `mass_effect`: a supratentorial parenchymal bleed pushes the ventricles and the septum away
    from its side by `MLS_MM_PER_ML` mm per drawn ml (at most `MLS_MAX_MM`), recorded in
    `Truth.midline_shift_mm`; off by default, so every case drawn without it renders unchanged.
    """
    look = profile_named(profile)
    if look is not None and slice_mm is None:
        slice_mm = look.slice_mm
    head, geo, acq, hard_flags, location, markers, hem, r_noise, r_art = draw(seed, index, thin=thin, hard=hard,
                                                                              tilt_deg=tilt_deg, slice_mm=slice_mm)
    if skull_base:
        head.base = SkullBase.draw(rng_for(seed, index, SKULL_BASE_STREAM))
    if mass_effect and not normal and location in ("deep", "lobar", "lobar_flat"):
        head.shift_ventricles(-hem.side * min(MLS_MM_PER_ML * markers.volume_ml, MLS_MAX_MM))
    r_label = rng_for(seed, index, 7)
    geo = stack(geo, hem, head, n_slices=n_slices, mixed=mixed, normal=normal)
    # calcifications that would sit inside the bleed are dropped (blood and calcium never share a voxel)
    head.calcs = [c for c in head.calcs if not hem.parenchymal
                  or np.linalg.norm(np.array(c.centre) - hem.centre) > hem.main.bound + max(c.semi) + 2.0]

    noise_sd = float(r_noise.uniform(*(look.noise_sd_hu if look is not None else (3.5, 7.0))))
    motion_slices = artefacts.motion_slices(r_art, geo, head) if hard_flags["motion"] else {}
    streak_slices = artefacts.streak_slices(r_art, geo, head) if hard_flags["streaks"] else {}
    hu, mask, labels, stats = render_stack(geo, head, hem, noise_sd=noise_sd, r_noise=r_noise,
                                           pf_rng=rng_for(seed, index, 8), motion_slices=motion_slices,
                                           streak_slices=streak_slices, normal=normal, with_labels=with_labels,
                                           profile=look)
    if look is not None:
        acq = replace(acq, kernel=look.kernel)
    nz = geo.n_slices
    sx, sy, sz = geo.spacing
    n_mask = int(mask.sum(dtype=np.int64))
    volume_ml = mask_ml(geo, mask)
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
    signs = {} if normal else sign_truth(
        hypo_mode=hem.hypo_mode, hem_hu=hem.hem_hu, hypo_hu=hem.hypo_hu, irregularity=realised.irregularity,
        islands=realised.islands, mask=mask, hypo_map=stats["hypo_map"], spacing=(sx, sy, sz))
    cz = geo.slice_of(float(hem.centre[2]))
    cx, cy = geo.pixel_of(cz, float(hem.centre[0]), float(hem.centre[1]))
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
        calcifications=calcification_truth(head, geo), centre_voxel=(cz, cy, cx),
        artefact_slices={"motion": sorted(motion_slices), "streaks": sorted(streak_slices)},
        normal=normal, signs=signs, thickness_runs=[[float(r[0]), int(r[1]), *map(float, r[2:])] for r in mixed] if mixed else [],
        side="none" if normal else truth_side(hem), site="none" if normal else truth_site(hem, head),
        ivh_ml=float(stats["ivh_ml"]), oedema_ml=float(stats["oedema_ml"]), midline_shift_mm=head.midline_shift_mm,
    )
    case = Case(hu=hu, mask=mask, spacing=(sx, sy, sz), truth=truth, geometry=geo, acquisition=acq,
                seed=seed, index=index, labels=labels)
    if look is not None:
        case.extra["scanner_profile"] = look.name
    if head.base is not None:
        b = head.base
        case.extra["skull_base"] = {"pitch_deg": b.pitch_deg, "relief_mm": b.relief_mm, "roof_mm": b.roof_mm,
                                    "middle_mm": b.middle_mm}
    return case
