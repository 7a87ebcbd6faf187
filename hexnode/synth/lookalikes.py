"""Series that reach hexnode but are not a non-contrast human head, and plain heads that resemble them.

Each is a `Case` without blood (its mask empty), drawn from (seed, index) like the generator's
heads and written by `write_lookalike` (hexnode.synth.dicom.write_case, then the header as such a
series would carry it):

- ``qa-phantom``: a plastic head QA phantom: a skull-like shell, air or water inside, cylindrical
  test inserts at 48-89 HU, with or without a tissue-equivalent skin; the header says HEAD;
- ``contrast``: the generator's head after intravenous contrast: dural sinuses (superior sagittal,
  transverse, straight) and the enhancing falx at 130-160 HU, cortical veins over the convexity,
  the circle of Willis in the suprasellar cistern and the middle cerebral and basilar arteries at
  140-180 HU, the choroid plexus at 90-130 HU; no contrast tag and no contrast word in the header;
- ``chest``, ``abdomen``: a body slab without a skull (skin, fat, muscle, ribs, spine with its
  canal; lungs, heart and aorta, or liver, spleen, kidneys and bowel), no Body Part Examined;
- plain heads that must stay analysable: ``sinus-clot`` (dense dural sinuses and falx at 75-90 HU,
  as a thrombosed sinus or a high haematocrit shows) and ``calcified-falx`` (two or three plaques of
  300-700 HU along the falx).
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, fields
from pathlib import Path
from typing import Any

import numpy as np
from scipy import ndimage

from hexnode.synth.anatomy import F32, Calcification, Ellipsoid, Grid, Head, SliceLayers, paint, ramp, up2
from hexnode.synth.case import Acquisition, Case, Truth
from hexnode.synth.draw import draw, rng_for
from hexnode.synth.geometry import Geometry, Run
from hexnode.synth.render import HU_MAX, HU_MIN, calcification_truth, render_stack
from hexnode.synth.scanner import stack

#: refused by hexnode: each is not a non-contrast human head
REFUSED = ("qa-phantom", "contrast", "chest", "abdomen")
#: plain heads that look a little like one of them and must be analysed
PLAIN = ("sinus-clot", "calcified-falx")
KINDS = REFUSED + PLAIN
# the random stream of a case's look-alike draws (the generator's own streams are 1-8)
_STREAM = 21


@dataclass
class EnhancedHead(Head):
    """A head after intravenous contrast: `vessels` (ellipsoid, HU) painted over the rendered slice."""

    vessels: list[tuple[Ellipsoid, float]] = field(default_factory=list)

    def render(self, grid: Grid, w: float, thk: float) -> SliceLayers:
        lay = super().render(grid, w, thk)
        u, v = grid.coords()
        for e, hu in self.vessels:
            paint(lay.img, grid, u, v, e, w, thk, F32(hu))
        return lay


@dataclass
class PhantomHead(Head):
    """A plastic QA head phantom: the head's skull shell, `fill_hu` inside, test `inserts`; without
    `skin` nothing but the shell, the inserts and the base plate (soft tissue outside the skull is air)."""

    fill_hu: float = -1000.0
    skin: bool = True
    inserts: list[tuple[Ellipsoid, float]] = field(default_factory=list)

    def render(self, grid: Grid, w: float, thk: float) -> SliceLayers:
        lay = super().render(grid, w, thk)
        if not self.skin:
            soft = (lay.ic < 0.01) & (lay.img > -300.0) & (lay.img < 200.0)
            lay.img[soft] = -1000.0
        return SliceLayers(lay.img, lay.ic, np.zeros_like(lay.vent), np.zeros_like(lay.brain))

    def _intracranial(self, grid: Grid, u: np.ndarray, v: np.ndarray, w: float, thk: float,
                      sd_in: np.ndarray, pv: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        val = np.full(u.shape, F32(self.fill_hu))
        for e, hu in self.inserts:
            paint(val, grid, u, v, e, w, thk, F32(hu))
        zero = np.zeros(u.shape, dtype=F32)
        return zero, zero, val

    def _sinuses(self, grid: Grid, img: np.ndarray, u: np.ndarray, v: np.ndarray, w: float, thk: float,
                 sd_in: np.ndarray, ic: np.ndarray) -> None:
        return None  # no dura, no blood


def _as(cls: type[Head], head: Head, **extra: Any) -> Any:
    return cls(**{f.name: getattr(head, f.name) for f in fields(head)}, **extra)


def _enhanced(head: Head, r: np.random.Generator) -> EnhancedHead:
    v0 = head.v0
    head.sinus_hu = float(r.uniform(130.0, 160.0))
    head.vessel_hu = float(r.uniform(140.0, 180.0))
    art = head.vessel_hu
    vessels: list[tuple[Ellipsoid, float]] = []
    # circle of Willis around the suprasellar cistern, the internal carotids below it
    centre_v, centre_w, radius = v0 - 12.0, -24.0, 11.0
    for j in range(10):
        a = 2.0 * math.pi * j / 10.0
        vessels.append((Ellipsoid((radius * math.sin(a), centre_v - radius * math.cos(a), centre_w), (1.6, 4.0, 1.6),
                                  math.degrees(a)), art))
    for s in (-1.0, 1.0):
        vessels.append((Ellipsoid((s * 13.0, v0 - 22.0, -32.0), (2.2, 2.2, 8.0)), art))
        # the choroid plexus of the atrium
        vessels.append((Ellipsoid((s * 19.0, v0 + 29.0, 7.0), (3.5, 7.0, 3.5)), float(r.uniform(90.0, 130.0))))
    # the internal cerebral veins and the vein of Galen into the straight sinus
    vessels.append((Ellipsoid((0.0, v0 + 22.0, 6.0), (2.5, 14.0, 2.0)), head.sinus_hu))
    # cortical veins over the convexity, running up to the superior sagittal sinus
    for _ in range(int(r.integers(14, 22))):
        w = float(r.uniform(-5.0, 50.0))
        s_lvl, _ = head._level_scale(w)
        a = float(r.uniform(0.0, 2.0 * math.pi))
        rr = 0.92
        u = rr * head.a * s_lvl * math.cos(a)
        vv = v0 + rr * head.b * s_lvl * math.sin(a)
        vessels.append((Ellipsoid((u, vv, w), (1.4, 1.4, float(r.uniform(8.0, 18.0))), 0.0),
                        float(r.uniform(120.0, 150.0))))
    return _as(EnhancedHead, head, vessels=vessels)


def _phantom(head: Head, r: np.random.Generator) -> PhantomHead:
    v0 = head.v0
    inserts = []
    for hu in (48.0, 60.0, 75.0, 89.0):
        u = float(r.uniform(-25.0, 25.0))
        vv = v0 + float(r.uniform(-35.0, 35.0))
        rad = float(r.uniform(5.0, 14.0))
        inserts.append((Ellipsoid((u, vv, float(r.uniform(0.0, 30.0))), (rad, rad, float(r.uniform(8.0, 25.0)))), hu))
    # the central column that holds the inserts (acrylic, about 120 HU)
    inserts.append((Ellipsoid((0.0, v0, 0.0), (8.0, 8.0, 45.0)), 120.0))
    head.calcs = []
    return _as(PhantomHead, head, fill_hu=-1000.0 if r.random() < 0.6 else float(r.uniform(-5.0, 8.0)),
               skin=bool(r.random() < 0.5), inserts=inserts)


# ---- body parts without a skull ---------------------------------------------------------------
def _ellipse_frac(u: np.ndarray, v: np.ndarray, cu: float, cv: float, a: float, b: float, px: float) -> np.ndarray:
    """Partial-volume fraction inside an ellipse (approximate signed distance along the radius)."""
    q = np.sqrt(((u - F32(cu)) / F32(a)) ** 2 + ((v - F32(cv)) / F32(b)) ** 2) + F32(1e-6)
    return ramp((F32(1.0) - q) * F32(min(a, b)), 0.7 * px)


def _body_slice(kind: str, u: np.ndarray, v: np.ndarray, w: float, px: float, p: dict[str, float]) -> np.ndarray:
    """One slice of a chest or abdomen (u left, v posterior, w superior, mm)."""
    img = np.full(u.shape, -1000.0, dtype=F32)
    a, b = p["a"], p["b"]

    def put(value: float, frac: np.ndarray) -> None:
        img[...] += frac * (F32(value) - img)

    put(-100.0, _ellipse_frac(u, v, 0.0, 0.0, a, b, px))  # subcutaneous fat
    put(45.0, _ellipse_frac(u, v, 0.0, 0.0, a - p["fat"], b - p["fat"], px))  # muscle
    inner_a, inner_b = a - p["fat"] - 12.0, b - p["fat"] - 12.0
    if kind == "chest":
        put(-70.0, _ellipse_frac(u, v, 0.0, 0.0, inner_a, inner_b, px))  # mediastinal fat
        lung = max(0.2, 1.0 - abs(w) / 120.0)
        for s in (-1.0, 1.0):
            put(-850.0, _ellipse_frac(u, v, s * 0.5 * inner_a, 5.0, 0.42 * inner_a * lung + 5.0, 0.85 * inner_b, px))
        put(40.0, _ellipse_frac(u, v, 12.0, -0.35 * inner_b, 48.0, 42.0, px))  # heart (blood, no contrast)
        put(40.0, _ellipse_frac(u, v, 18.0, 0.55 * inner_b, 12.0, 12.0, px))  # descending aorta
    else:
        put(-90.0, _ellipse_frac(u, v, 0.0, 0.0, inner_a, inner_b, px))  # intra-abdominal fat
        put(58.0, _ellipse_frac(u, v, -0.45 * inner_a, -5.0, 0.5 * inner_a, 0.7 * inner_b, px))  # liver
        put(48.0, _ellipse_frac(u, v, 0.6 * inner_a, 15.0, 0.25 * inner_a, 0.4 * inner_b, px))  # spleen
        for s in (-1.0, 1.0):
            put(32.0, _ellipse_frac(u, v, s * 45.0, 0.55 * inner_b, 22.0, 30.0, px))  # kidneys
        for j in range(6):  # bowel loops with gas
            cu = 0.35 * inner_a * math.cos(j * 1.1 + w / 40.0)
            cv = -0.3 * inner_b + 0.25 * inner_b * math.sin(j * 1.7)
            put(25.0, _ellipse_frac(u, v, cu, cv, 16.0, 13.0, px))
            put(-1000.0, _ellipse_frac(u, v, cu + 3.0, cv - 3.0, 7.0, 5.0, px))
    # spine: vertebral body (cancellous, cortical rim), the canal with its bony ring, the cord
    sv = b - p["fat"] - 45.0
    put(700.0, _ellipse_frac(u, v, 0.0, sv, 22.0, 18.0, px))
    put(260.0, _ellipse_frac(u, v, 0.0, sv, 19.0, 15.0, px))
    put(650.0, _ellipse_frac(u, v, 0.0, sv + 30.0, 14.0, 13.0, px))
    put(35.0, _ellipse_frac(u, v, 0.0, sv + 30.0, 8.5, 7.5, px))
    # ribs: short arcs around the trunk, apart from each other, turning with the level
    n_ribs = 14 if kind == "chest" else 8
    for j in range(n_ribs):
        ang = 2.0 * math.pi * (j + 0.5) / n_ribs + w / 90.0
        if kind == "abdomen" and math.sin(ang) < -0.2:
            continue  # no ribs in front of the abdomen
        ru, rv = (a - p["fat"] - 6.0) * math.cos(ang), (b - p["fat"] - 6.0) * math.sin(ang)
        put(650.0, _ellipse_frac(u, v, ru, rv, 9.0, 5.0, px))
    return img


def _body_geometry(r: np.random.Generator, *, tilt_deg: float) -> Geometry:
    n_slices = int(r.integers(28, 40))
    return Geometry(n=512, pixel_mm=round(float(r.uniform(0.68, 0.82)), 5), n_slices=n_slices, table_step_mm=5.0,
                    slice_thickness_mm=5.0, tilt_deg=float(tilt_deg), yaw_deg=float(r.uniform(-4.0, 4.0)),
                    head_offset_mm=(float(r.uniform(-10.0, 10.0)), float(r.uniform(-10.0, 10.0))),
                    w_bottom_mm=-2.5 * n_slices)


def _render_body(kind: str, geo: Geometry, r: np.random.Generator, noise_sd: float) -> np.ndarray:
    """The slab at half resolution (the anatomy is coarse), upsampled, with full-resolution noise."""
    p = {"a": float(r.uniform(145.0, 175.0)), "b": float(r.uniform(100.0, 125.0)), "fat": float(r.uniform(8.0, 25.0))}
    hu = np.empty((geo.n_slices, geo.n, geo.n), dtype=np.int16)
    for k in range(geo.n_slices):
        u, v = geo.uv_grid(k, scale=2)
        img = up2(_body_slice(kind, u, v, geo.slice_w(k), 2 * geo.pixel_mm, p)[None])[0]
        noise = ndimage.gaussian_filter(r.standard_normal(img.shape, dtype=F32), 1.3, truncate=3.0)
        img += noise * F32(noise_sd / 0.217)  # the filtered noise's sd is about 0.217
        hu[k] = np.rint(np.clip(img, HU_MIN, HU_MAX))
    return hu


# ---- cases ------------------------------------------------------------------------------------
def _truth(seed: int, index: int, geo: Geometry, noise_sd: float, calcs: list[dict[str, Any]],
           tissue: dict[str, float], thin: bool) -> Truth:
    sx, sy, sz = geo.spacing
    return Truth(seed=seed, index=index, volume_ml=0.0, followup_volume_ml=0.0, he_label=False, he_probability=0.0,
                 logit=-99.0, markers={}, location="none", hard={}, tilt_deg=geo.tilt_deg, thin=thin,
                 n_slices=geo.n_slices, slice_thickness_mm=geo.slice_thickness_mm, spacing_mm=(sx, sy, sz),
                 noise_sd=noise_sd, hematoma_hu=0.0, hypodense_hu=0.0, oedema_hu=0.0, tissue_hu=tissue,
                 calcifications=calcs, centre_voxel=(0.0, 0.0, 0.0), normal=True)


def generate_lookalike(kind: str, seed: int, index: int, *, tilt_deg: float = 0.0, thin: bool = False,
                       mixed: tuple[Run, ...] | None = None) -> Case:
    """One series of `kind` (see KINDS), deterministic per (kind, seed, index); `Case.extra["lookalike"]`
    names the kind. The head kinds take the generator's options (tilt, thin, mixed); a body slab is 5 mm."""
    if kind not in KINDS:
        raise ValueError(f"unknown look-alike {kind!r} (one of {', '.join(KINDS)})")
    r = rng_for(seed, index, _STREAM + KINDS.index(kind))
    if kind in ("chest", "abdomen"):
        geo = _body_geometry(r, tilt_deg=tilt_deg)
        noise_sd = float(r.uniform(8.0, 14.0))
        hu = _render_body(kind, geo, r, noise_sd)
        acq = Acquisition(kvp=120.0, kernel=str(r.choice(["B30f", "STANDARD", "FC08"])), tube_current_ma=200,
                          exposure_mas=200, ctdi_vol=12.0, manufacturer_model="hexnode-synth body")
        truth = _truth(seed, index, geo, noise_sd, [], {}, False)
        return Case(hu=hu, mask=np.zeros(hu.shape, np.uint8), spacing=geo.spacing, truth=truth, geometry=geo,
                    acquisition=acq, seed=seed, index=index, extra={"lookalike": kind})
    head, geo, acq, _, _, _, hem, r_noise, _ = draw(seed, index, thin=thin, hard=False, tilt_deg=tilt_deg)
    drawn: Head = head
    if kind == "contrast":
        drawn = _enhanced(head, r)
    elif kind == "qa-phantom":
        drawn = _phantom(head, r)
    elif kind == "sinus-clot":
        head.sinus_hu = float(r.uniform(75.0, 90.0))
    elif kind == "calcified-falx":
        for _ in range(int(r.integers(2, 4))):
            head.calcs.append(Calcification("falx", (0.0, head.v0 + float(r.uniform(-50.0, 30.0)),
                                                     float(r.uniform(15.0, 50.0))),
                                            (1.0, float(r.uniform(5.0, 12.0)), float(r.uniform(3.0, 8.0))),
                                            float(r.uniform(300.0, 700.0))))
    geo = stack(geo, hem, drawn, n_slices=None, mixed=mixed, normal=True)
    noise_sd = float(r_noise.uniform(3.5, 7.0))
    hu, mask, _, _ = render_stack(geo, drawn, hem, noise_sd=noise_sd, r_noise=r_noise, pf_rng=rng_for(seed, index, 8),
                                  motion_slices={}, streak_slices={}, normal=True, with_labels=False)
    tissue = {"grey": head.gm_hu, "white": head.wm_hu, "csf": head.csf_hu, "sinus": head.sinus_hu,
              "vessel": head.vessel_hu}
    truth = _truth(seed, index, geo, noise_sd, calcification_truth(drawn, geo), tissue, thin)
    extra: dict[str, Any] = {"lookalike": kind}
    if isinstance(drawn, PhantomHead):
        extra |= {"fill": "air" if drawn.fill_hu < -500.0 else "water", "skin": drawn.skin}
    return Case(hu=hu, mask=mask, spacing=geo.spacing, truth=truth, geometry=geo, acquisition=acq, seed=seed,
                index=index, extra=extra)


def write_lookalike(case: Case, case_dir: str | Path, *, transfer_syntax: str = "explicit") -> list[Path]:
    """The series as `write_case` writes it, then the header such a series carries: a body slab
    without Body Part Examined or any word of its body part, a contrast head without any word of
    contrast. truth.json says the kind."""
    import json

    import pydicom

    from hexnode.synth.dicom import write_case

    kind = str(case.extra.get("lookalike", ""))
    paths = write_case(case, case_dir, transfer_syntax=transfer_syntax)
    for p in paths:
        ds = pydicom.dcmread(p)
        if kind in ("chest", "abdomen"):
            del ds.BodyPartExamined
            ds.StudyDescription = "CT"
            ds.SeriesDescription = f"AXIAL {case.geometry.slice_thickness_mm:g}mm {case.acquisition.kernel}"
            ds.FilterType = "BODY"
            ds.CTDIPhantomTypeCodeSequence[0].CodeValue = "113690"
            ds.CTDIPhantomTypeCodeSequence[0].CodeMeaning = "IEC Body Dosimetry Phantom"
        elif kind == "contrast":
            ds.StudyDescription = "CT HEAD"
        ds.save_as(p, enforce_file_format=True)
    truth = Path(case_dir) / "truth.json"
    doc = json.loads(truth.read_text())
    doc["lookalike"] = kind
    truth.write_text(json.dumps(doc, indent=2, sort_keys=True) + "\n")
    return paths


def write_lookalikes(kind: str, out: Path, *, seed: int, n: int, tilt_deg: float = 0.0, thin: bool = False,
                     mixed: tuple[Run, ...] | None = None, transfer_syntax: str = "explicit") -> int:
    """`hexnode synth --lookalike KIND`: `n` series under out/case-NNNN/, one JSON line each."""
    import json
    import time

    if kind not in KINDS:
        print(f"hexnode synth: unknown --lookalike {kind!r} (one of {', '.join(KINDS)})")
        return 2
    for i in range(n):
        t0 = time.perf_counter()
        case = generate_lookalike(kind, seed, i, tilt_deg=tilt_deg, thin=thin, mixed=mixed)
        paths = write_lookalike(case, out / f"case-{i:04d}", transfer_syntax=transfer_syntax)
        print(json.dumps({"case": f"case-{i:04d}", "lookalike": kind, "slices": len(paths),
                          "hexnode should say": "not analysed" if kind in REFUSED else "analysed",
                          "seconds": round(time.perf_counter() - t0, 2)}))
    return 0


__all__ = ["KINDS", "PLAIN", "REFUSED", "generate_lookalike", "write_lookalike", "write_lookalikes"]
