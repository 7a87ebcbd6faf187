"""Background head anatomy of the synthetic NCCT, rendered one slice at a time in the head frame.

Everything is an analytic function of head-frame coordinates (u left, v posterior, w superior, mm)
so the same code renders a whole slice at half resolution (cheap) or a full-resolution window
around the hematoma.  Partial volume is modelled by soft ramps whose width grows with the slice
thickness times the through-plane slope of each surface: a 5 mm slice that cuts the skull or a
ventricle obliquely shows the grey rim a real scanner shows, and thin slices show sharp edges.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
from scipy import ndimage

F32 = np.float32
#: the Gaussian blur of the skull-base option's slice sensitivity profile, per mm of thickness
SSP_SIGMA = 0.25
#: ventricles centred below this level (head frame w, mm) are infratentorial (the fourth): a
#: supratentorial mass effect leaves them where they are
FOURTH_VENTRICLE_W = -25.0
#: a HU value or a per-pixel HU map
Value = float | np.floating[Any] | np.ndarray


# ---------------------------------------------------------------------------------------------
# grids
@dataclass(frozen=True)
class Grid:
    """A rectangular window of one slice: head (u, v) of its pixel centres are affine in the index."""

    m: np.ndarray  # 2x3: (x, y, 1) -> (u, v)
    shape: tuple[int, int]  # (ny, nx) of the full slice on this grid
    px: float
    y0: int = 0
    x0: int = 0
    ny: int = 0
    nx: int = 0

    @staticmethod
    def full(m: np.ndarray, size: int, px: float) -> Grid:
        return Grid(m, (size, size), px, 0, 0, size, size)

    def coords(self) -> tuple[np.ndarray, np.ndarray]:
        y = np.arange(self.y0, self.y0 + self.ny, dtype=F32)[:, None]
        x = np.arange(self.x0, self.x0 + self.nx, dtype=F32)[None, :]
        m = self.m.astype(F32)
        u = m[0, 0] * x + m[0, 1] * y + m[0, 2]
        v = m[1, 0] * x + m[1, 1] * y + m[1, 2]
        return u, v

    def sub(self, win: tuple[slice, slice]) -> Grid:
        """The grid of a `window()` of the full slice grid."""
        return Grid(self.m, self.shape, self.px, win[0].start, win[1].start,
                    win[0].stop - win[0].start, win[1].stop - win[1].start)

    def window(self, cu: float, cv: float, radius: float) -> tuple[slice, slice] | None:
        """Index window (relative to this grid) covering a disc of `radius` mm, or None."""
        a = self.m[:, :2]
        x, y = np.linalg.solve(a, np.array([cu - self.m[0, 2], cv - self.m[1, 2]]))
        r = radius / self.px + 2.0
        y_lo = max(int(math.floor(y - r)), self.y0) - self.y0
        y_hi = min(int(math.ceil(y + r)) + 1, self.y0 + self.ny) - self.y0
        x_lo = max(int(math.floor(x - r)), self.x0) - self.x0
        x_hi = min(int(math.ceil(x + r)) + 1, self.x0 + self.nx) - self.x0
        if y_lo >= y_hi or x_lo >= x_hi:
            return None
        return slice(y_lo, y_hi), slice(x_lo, x_hi)


def ramp(x: np.ndarray | float, width: float | np.ndarray) -> np.ndarray:
    """Partial-volume fraction for signed distance x (positive inside) over `width` mm."""
    return np.clip(0.5 + np.asarray(x, dtype=F32) / np.maximum(width, 1e-3), 0.0, 1.0).astype(F32)


def ssp_fraction(x: np.ndarray, thk: float, sigma: float) -> np.ndarray:
    """Share of a slice's sensitivity profile above a flat surface lying x mm below the slice's
    centre: a box of `thk` blurred by a Gaussian of `sigma` (real thick slices' profiles have
    tails: their full width at tenth maximum is about 1.6x the nominal thickness, while `ramp` is
    the ideal box)."""
    from scipy.special import ndtr

    def g(y: np.ndarray) -> np.ndarray:  # the integral of the Gaussian's CDF
        z = y / F32(sigma)
        return y * ndtr(z) + F32(sigma) * np.exp(F32(-0.5) * z * z) * F32(1.0 / math.sqrt(2.0 * math.pi))

    x = np.asarray(x, dtype=F32)
    h = F32(thk / 2.0)
    return np.clip((g(x + h) - g(x - h)) / F32(thk), 0.0, 1.0).astype(F32)


def up2(a: np.ndarray) -> np.ndarray:
    """Linear x2 upsampling of the last two axes (pixel-centre aligned, edges clamped)."""
    q, h = F32(0.25), F32(0.75)

    def along_last(x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape[:-1] + (2 * x.shape[-1],), dtype=x.dtype)
        np.multiply(x, h, out=out[..., 0::2])
        np.multiply(x, h, out=out[..., 1::2])
        out[..., 2::2] += q * x[..., :-1]
        out[..., 0] += q * x[..., 0]
        out[..., 1:-1:2] += q * x[..., 1:]
        out[..., -1] += q * x[..., -1]
        return out

    def along_rows(x: np.ndarray) -> np.ndarray:
        out = np.empty(x.shape[:-2] + (2 * x.shape[-2], x.shape[-1]), dtype=x.dtype)
        np.multiply(x, h, out=out[..., 0::2, :])
        np.multiply(x, h, out=out[..., 1::2, :])
        out[..., 2::2, :] += q * x[..., :-1, :]
        out[..., 0, :] += q * x[..., 0, :]
        out[..., 1:-1:2, :] += q * x[..., 1:, :]
        out[..., -1, :] += q * x[..., -1, :]
        return out

    return along_rows(along_last(a))


def _even(sl: slice, size: int) -> slice:
    """Widen a window to even start and length (coarse field sampling pairs pixels) inside [0, size)."""
    start = int(sl.start) - int(sl.start) % 2
    stop = min(int(sl.stop) + int(sl.stop) % 2, size - size % 2)
    return slice(start, max(stop, start))


def lerp_into(img: np.ndarray, value: Value, frac: np.ndarray) -> None:
    img += frac * (value - img)


# ---------------------------------------------------------------------------------------------
# ellipsoids (ventricles, nuclei, sinuses, orbits, calcifications ...)
@dataclass(frozen=True)
class Ellipsoid:
    c: tuple[float, float, float]
    semi: tuple[float, float, float]
    rot_deg: float = 0.0  # rotation about w (in the axial plane)

    @property
    def bound(self) -> float:
        return max(self.semi)

    def touches(self, w: float, thk: float) -> bool:
        return abs(w - self.c[2]) < self.semi[2] + thk / 2 + 0.5

    def frac(self, u: np.ndarray, v: np.ndarray, w: float, thk: float, px: float) -> np.ndarray:
        du = u - F32(self.c[0])
        dv = v - F32(self.c[1])
        if self.rot_deg:
            a = math.radians(self.rot_deg)
            du, dv = F32(math.cos(a)) * du + F32(math.sin(a)) * dv, F32(-math.sin(a)) * du + F32(math.cos(a)) * dv
        su, sv, sw = self.semi
        dw = (w - self.c[2]) / sw
        q = (du / F32(su)) ** 2 + (dv / F32(sv)) ** 2
        f = np.sqrt(q + F32(dw * dw)) + F32(1e-6)
        # radial approximation of the signed distance and of its through-plane slope
        r_b = np.sqrt(du * du + dv * dv + F32((w - self.c[2]) ** 2)) / f
        sd = r_b * (F32(1.0) - f)
        slope = np.abs(F32(dw / sw)) * r_b / (f * f)
        width = np.sqrt(F32(0.7 * px) ** 2 + (F32(thk) * np.minimum(slope, F32(3.0))) ** 2)
        return ramp(sd, width)


def paint(img: np.ndarray, grid: Grid, u: np.ndarray, v: np.ndarray, e: Ellipsoid, w: float,
          thk: float, value: Value, out_frac: np.ndarray | None = None) -> None:
    """Blend `value` into img inside ellipsoid e (only the window it covers)."""
    if not e.touches(w, thk):
        return
    win = grid.window(e.c[0], e.c[1], e.bound)
    if win is None:
        return
    fr = e.frac(u[win], v[win], w, thk, grid.px)
    if isinstance(value, np.ndarray):
        value = value[win]
    sub = img[win]
    sub += fr * (value - sub)
    if out_frac is not None:
        np.maximum(out_frac[win], fr, out=out_frac[win])


# ---------------------------------------------------------------------------------------------
# smooth random fields sampled on slices
@dataclass
class Field3D:
    """Band-limited Gaussian field (unit sd) on a coarse head-frame grid; sampled by interpolation."""

    data: np.ndarray  # (w, v, u)
    origin: tuple[float, float, float]  # (u, v, w) of data[0, 0, 0]
    step: float

    @staticmethod
    def draw(rng: np.random.Generator, sigma_mm: float, step: float,
             extent: tuple[float, float, float, float, float, float]) -> Field3D:
        u0, u1, v0, v1, w0, w1 = extent
        shape = (int((w1 - w0) / step) + 1, int((v1 - v0) / step) + 1, int((u1 - u0) / step) + 1)
        d = rng.standard_normal(shape, dtype=F32)
        d = ndimage.gaussian_filter(d, sigma_mm / step, mode="wrap")
        d /= F32(d.std() + 1e-9)
        return Field3D(d, (u0, v0, w0), step)

    def sample(self, grid: Grid, w: float, scale: float = 1.0) -> np.ndarray:
        """Field at the pixels of `grid` on level w (coordinates multiplied by `scale` first).

        Smooth fields are interpolated on a grid twice as coarse and upsampled linearly (4x fewer
        interpolations; the fields vary over millimetres, the half-resolution grid is ~0.9 mm).
        """
        coarse = self.step / scale >= 1.5 and grid.ny % 2 == 0 and grid.nx % 2 == 0
        sub = 2 if coarse else 1
        s = self.step
        kw = (w * scale - self.origin[2]) / s
        k0 = int(np.clip(math.floor(kw), 0, self.data.shape[0] - 2))
        t = float(np.clip(kw - k0, 0.0, 1.0))
        plane = (1 - t) * self.data[k0] + t * self.data[k0 + 1]
        # index of (v, u) in the plane as an affine function of the grid's (y, x)
        m = grid.m * scale
        mat = np.array([[m[1, 1], m[1, 0]], [m[0, 1], m[0, 0]]]) / s
        off = np.array([(m[1, 2] - self.origin[1]) / s, (m[0, 2] - self.origin[0]) / s])
        off = off + mat @ np.array([grid.y0, grid.x0])
        if sub == 1:
            return ndimage.affine_transform(plane, mat, offset=off, output_shape=(grid.ny, grid.nx),
                                            order=1, mode="mirror").astype(F32)
        # coarse pixel c has its centre at fine index 2c + 0.5
        out = ndimage.affine_transform(plane, mat * 2, offset=off + mat @ np.array([0.5, 0.5]),
                                       output_shape=(grid.ny // 2, grid.nx // 2), order=1, mode="mirror")
        return up2(out.astype(F32))


# ---------------------------------------------------------------------------------------------
@dataclass(frozen=True)
class Calcification:
    kind: str  # pineal | choroid_plexus | falx | basal_ganglia
    centre: tuple[float, float, float]  # head frame mm
    semi: tuple[float, float, float]
    hu: float

    @property
    def ellipsoid(self) -> Ellipsoid:
        return Ellipsoid(self.centre, self.semi)


@dataclass
class SliceLayers:
    img: np.ndarray  # HU, float32
    ic: np.ndarray  # intracranial fraction
    vent: np.ndarray  # ventricle fraction
    brain: np.ndarray  # brain parenchyma fraction (where oedema may appear)


@dataclass(frozen=True)
class SkullBase:
    """The cranial floor as thick slices see it (`generate_case(skull_base=True)`).

    The default floor is a smooth 12 mm bone plate whose top is level with the slices over the
    orbital roofs. Real floors are not: the orbital roofs are 1-2 mm of bone over orbital fat,
    dented by the gyri above them (juga cerebralia), the middle fossa floor is a few mm of bone
    over the temporalis and masticator muscles, and the head rarely lies with its skull base
    parallel to the (tilted) slices. A 5-7 mm slab that grazes such a floor averages brain, thin
    bone and fat or muscle into 50-90 HU over a broad patch: what the U-Net took for blood on a
    real tilted scan.
    """

    pitch_deg: float  # the floor's slope against the slice plane (front down when negative)
    relief_mm: float  # amplitude of the gyral dents in the orbital roofs and the fossa floors
    roof_mm: float  # orbital roof bone thickness
    middle_mm: float  # middle fossa floor bone thickness
    relief: Field3D  # the dents: sampled on one level, a 2D field over (u, v)

    @staticmethod
    def draw(rng: np.random.Generator) -> SkullBase:
        ext = (-95.0, 95.0, -115.0, 115.0, -8.0, 8.0)
        return SkullBase(pitch_deg=float(rng.uniform(-6.0, 6.0)), relief_mm=float(rng.uniform(0.5, 1.5)),
                         roof_mm=float(rng.uniform(1.0, 2.5)), middle_mm=float(rng.uniform(2.5, 5.0)),
                         relief=Field3D.draw(rng, 8.0, 2.0, ext))


@dataclass
class Head:
    """One drawn head: shape parameters, tissue values and texture fields."""

    a: float
    b: float
    c_up: float
    c_lo: float
    v0: float
    skull_mm: float
    scalp_mm: float
    atrophy: float
    gm_hu: float
    wm_hu: float
    csf_hu: float
    table_hu: float
    diploe_hu: float
    bh_hu: float
    sinus_hu: float
    vessel_hu: float
    pad_mm: float
    gyri: Field3D
    cortex: Field3D
    texture: Field3D
    calcs: list[Calcification]
    ventricles: list[Ellipsoid] = field(default_factory=list)
    nuclei: list[tuple[Ellipsoid, float]] = field(default_factory=list)
    streak_hu: float = -15.0
    # Outside the skull, where real scans fooled the U-Net: the temporalis muscle under the scalp
    # (40-60 HU), the sinus and nasal mucosa (30-60 HU, thickened in many adults), the orbital
    # muscles and optic nerves. Drawn from a spawned generator (see `draw`).
    temporalis_hu: float = 50.0
    temporalis_mm: float = 8.0
    mucosa_hu: float = 45.0
    mucosa_mm: float = 2.0
    muscle_hu: float = 50.0
    # None: the default smooth floor (every case drawn before the option renders unchanged)
    base: SkullBase | None = None
    # Mass effect: how far (mm, + towards the patient's left) the supratentorial ventricles and the
    # septum between them are pushed off the midline (0: none, every case without the option)
    midline_shift_mm: float = 0.0

    def shift_ventricles(self, shift_mm: float) -> None:
        """Push the supratentorial ventricles sideways by `shift_mm` (the falx and the skull stay):
        the subfalcine shift a large bleed causes, with the septum pellucidum moving with them."""
        self.midline_shift_mm = shift_mm
        self.ventricles = [replace(e, c=(e.c[0] + shift_mm, e.c[1], e.c[2])) if e.c[2] > FOURTH_VENTRICLE_W
                           else e for e in self.ventricles]

    # ---- drawing ---------------------------------------------------------------------------
    @staticmethod
    def draw(rng: np.random.Generator) -> Head:
        a = rng.uniform(63.0, 70.0)
        b = rng.uniform(80.0, 89.0)
        v0 = rng.uniform(3.0, 8.0)
        atrophy = float(rng.uniform(0.7, 1.6))
        gm = rng.uniform(36.0, 39.5)
        wm = rng.uniform(25.5, min(29.5, gm - 7.5))
        ext = (-95.0, 95.0, -115.0, 115.0, -100.0, 100.0)
        gyri = Field3D.draw(rng, 3.6, 2.0, ext)
        cortex = Field3D.draw(rng, 6.0, 3.0, ext)
        texture = Field3D.draw(rng, 2.0, 2.0, ext)
        head = Head(
            a=a, b=b, c_up=rng.uniform(66.0, 74.0), c_lo=rng.uniform(66.0, 72.0), v0=v0,
            skull_mm=rng.uniform(4.5, 7.0), scalp_mm=rng.uniform(5.0, 8.0), atrophy=atrophy,
            gm_hu=gm, wm_hu=wm, csf_hu=rng.uniform(2.0, 8.0), table_hu=rng.uniform(1250.0, 1500.0),
            diploe_hu=rng.uniform(700.0, 900.0), bh_hu=rng.uniform(2.0, 5.0),
            sinus_hu=rng.uniform(48.0, 58.0), vessel_hu=rng.uniform(45.0, 55.0),
            pad_mm=rng.uniform(6.0, 14.0), gyri=gyri, cortex=cortex, texture=texture,
            calcs=[], streak_hu=rng.uniform(-25.0, -10.0),
        )
        head.ventricles = head._ventricles()
        head.nuclei = head._nuclei()
        head.calcs = head._draw_calcs(rng)
        # a spawned generator takes nothing from `rng`'s stream: every earlier draw is unchanged
        extra = rng.spawn(1)[0]
        head.temporalis_hu = float(extra.uniform(42.0, 58.0))
        head.temporalis_mm = float(extra.uniform(4.0, 12.0))
        head.mucosa_hu = float(extra.uniform(30.0, 60.0))
        head.mucosa_mm = float(extra.uniform(0.5, 5.0))
        head.muscle_hu = float(extra.uniform(42.0, 58.0))
        return head

    def _ventricles(self) -> list[Ellipsoid]:
        fa, v0 = self.atrophy, self.v0
        out = []
        for s in (-1.0, 1.0):
            out += [
                Ellipsoid((s * (2.5 + 4.2 * fa), v0 + 0.0, 15.0), (4.2 * fa, 27.0, 6.5 * math.sqrt(fa)), s * 4.0),
                Ellipsoid((s * (3.0 + 4.5 * fa), v0 - 24.0, 8.0), (4.5 * fa, 11.0, 8.0), s * -12.0),
                Ellipsoid((s * 19.0, v0 + 29.0, 7.0), (5.5 * fa, 12.0, 7.0 * math.sqrt(fa)), s * -25.0),
                Ellipsoid((s * 30.0, v0 - 2.0, -17.0), (2.2 * fa, 13.0, 3.5), s * 15.0),
            ]
        out.append(Ellipsoid((0.0, v0 + 4.0, -3.0), (1.6 * fa, 13.0, 8.0)))
        out.append(Ellipsoid((0.0, v0 + 31.0, -36.0), (5.0 * fa, 4.0, 7.0)))
        return out

    def _nuclei(self) -> list[tuple[Ellipsoid, float]]:
        v0, fa = self.v0, self.atrophy
        out = []
        for s in (-1.0, 1.0):
            lat = 2.5 + 8.4 * fa  # caudate hugs the frontal horn
            out += [
                (Ellipsoid((s * (lat + 3.5), v0 - 19.0, 8.0), (4.5, 9.0, 9.0)), self.gm_hu - 1.0),
                (Ellipsoid((s * 24.0, v0 - 2.0, -1.0), (5.5, 15.0, 10.0), s * 10.0), self.gm_hu - 2.0),
                (Ellipsoid((s * 18.0, v0 - 1.0, -3.0), (3.5, 9.0, 6.0), s * 10.0), self.gm_hu - 5.0),
                (Ellipsoid((s * 10.5, v0 + 16.0, 2.0), (8.0, 12.5, 10.0)), self.gm_hu - 2.5),
            ]
        return out

    def _draw_calcs(self, rng: np.random.Generator) -> list[Calcification]:
        v0 = self.v0
        out: list[Calcification] = []
        if rng.random() < 0.7:
            r = rng.uniform(1.5, 3.5)
            out.append(Calcification("pineal", (rng.uniform(-1, 1), v0 + rng.uniform(24, 29), rng.uniform(0, 4)),
                                     (r, r * rng.uniform(0.8, 1.2), r), rng.uniform(150, 400)))
        if rng.random() < 0.7:
            sides = (-1.0, 1.0) if rng.random() < 0.85 else (float(rng.choice([-1.0, 1.0])),)
            hu = rng.uniform(90, 260)
            for s in sides:
                r = rng.uniform(1.8, 3.5)
                out.append(Calcification("choroid_plexus",
                                         (s * rng.uniform(18, 21), v0 + rng.uniform(28, 32), rng.uniform(6, 9)),
                                         (r, r * 1.3, r), hu * rng.uniform(0.85, 1.15)))
        if rng.random() < 0.35:
            out.append(Calcification("falx", (0.0, v0 + rng.uniform(-45, 35), rng.uniform(20, 50)),
                                     (0.7, rng.uniform(3, 7), rng.uniform(2, 5)), rng.uniform(200, 400)))
        if rng.random() < 0.25:
            hu = rng.uniform(80, 200)
            for s in (-1.0, 1.0):
                r = rng.uniform(1.2, 2.5)
                out.append(Calcification("basal_ganglia", (s * 18.0, v0 - 1.0, -3.0), (r, r * 1.5, r), hu))
        return out

    # ---- shape -----------------------------------------------------------------------------
    def _level_scale(self, w: float) -> tuple[float, float]:
        """(scale of the inner-table ellipse at level w, its d scale / d w)."""
        c = self.c_up if w >= 0 else self.c_lo
        q = 1.0 - (w / c) ** 2
        s = math.sqrt(max(q, 0.0025))
        ds = -w / (c * c * s)
        return s, ds

    def inner_sd(self, u: np.ndarray, v: np.ndarray, w: float) -> tuple[np.ndarray, float]:
        """Signed distance (mm, positive outside) to the inner table, and its through-plane slope."""
        s, ds = self._level_scale(w)
        dv = v - F32(self.v0)
        # egg shape: narrower frontally, wider posteriorly
        aa = F32(self.a * s) * (F32(1.0) + F32(0.05) * np.clip(dv / F32(self.b), -1, 1))
        bb = F32(self.b * s)
        f = np.sqrt((u / aa) ** 2 + (dv / bb) ** 2) + F32(1e-6)
        r = np.sqrt(u * u + dv * dv)
        rb = r / f
        sd = r - rb
        slope = float(abs(ds) / max(s, 0.05) * (self.a + self.b) / 2 * s)
        return sd.astype(F32), min(slope, 6.0)

    def _fossae(self, u: np.ndarray, v: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(anterior-to-middle, middle-to-posterior, lateral) blending weights of the cranial floor."""
        dv = v - F32(self.v0)
        au = np.abs(u)
        # the sphenoid ridge curves forward and out from the anterior clinoids
        t_ap = 1.0 / (1.0 + np.exp(-(dv + F32(24.0) + F32(0.45) * au) / F32(3.0)))
        t_pm = 1.0 / (1.0 + np.exp(-(dv - F32(8.0)) / F32(5.0)))
        lat = 1.0 / (1.0 + np.exp(-(au - F32(20.0)) / F32(4.0)))
        return t_ap, t_pm, lat

    def floor_w(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """w of the cranial floor under (u, v): anterior, middle, central and posterior fossae."""
        dv = v - F32(self.v0)
        au = np.abs(u)
        t_ap, t_pm, lat = self._fossae(u, v)
        middle = F32(-26.0) + F32(-16.0) * lat
        post = F32(-58.0) + F32(0.004) * u * u + F32(0.002) * (dv - F32(40.0)) ** 2
        # orbital roofs dome up on both sides of the low cribriform plate
        anterior = F32(-23.0) + F32(11.0) * np.exp(-(((au - F32(28.0)) / F32(13.0)) ** 2))
        return (anterior * (1 - t_ap) + t_ap * ((1 - t_pm) * middle + t_pm * post)).astype(F32)

    def tentorium_w(self, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        dv = v - F32(self.v0)
        # a tent: highest at the incisura, sloping down backwards (transverse sinuses) and sideways
        # (petrous ridges)
        return (F32(-2.0) - F32(0.35) * np.maximum(dv - F32(5.0), 0.0) - F32(0.28) * np.abs(u)).astype(F32)

    def extent(self, w: float) -> tuple[float, float, float]:
        """(u, v, radius) of a disc holding everything drawn on level w (head, face, head holder)."""
        s, _ = self._level_scale(w)
        r = 1.06 * max(self.a, self.b) * s + 1.2 * self.skull_mm + self.scalp_mm + 7.0
        if w < -12.0:
            r = max(r, self.b + 6.0 + 12.0)
        return 0.0, self.v0, r + self.pad_mm + 6.0

    # ---- rendering -------------------------------------------------------------------------
    def render_slice(self, m: np.ndarray, size: int, px: float, w: float, thk: float) -> SliceLayers:
        """Render a whole slice (grid `m`, size x size), computing only the window the head covers."""
        full = Grid.full(m, size, px)
        cu, cv, r = self.extent(w)
        win = full.window(cu, cv, r)
        img = np.full((size, size), -1000.0, dtype=F32)
        ic = np.zeros((size, size), dtype=F32)
        vent = np.zeros_like(ic)
        brain = np.zeros_like(ic)
        if win is None:
            return SliceLayers(img, ic, vent, brain)
        ys, xs = (_even(win[0], size), _even(win[1], size))
        sub = Grid(m, (size, size), px, ys.start, xs.start, ys.stop - ys.start, xs.stop - xs.start)
        lay = self.render(sub, w, thk)
        img[ys, xs] = lay.img
        ic[ys, xs] = lay.ic
        vent[ys, xs] = lay.vent
        brain[ys, xs] = lay.brain
        return SliceLayers(img, ic, vent, brain)

    def render(self, grid: Grid, w: float, thk: float) -> SliceLayers:
        u, v = grid.coords()
        px = grid.px
        shape = u.shape
        sd_in, slope = self.inner_sd(u, v, w)
        pv = math.hypot(0.7 * px, thk * slope)
        t_sk = F32(self.skull_mm) * (F32(1.0) + F32(0.18) * np.clip((v - F32(self.v0)) / F32(self.b), -1, 1) ** 2)
        # outer contour: vault + scalp; below the vault the face and neck
        # scalp, thicker over the temporalis muscles
        lateral = (np.abs(u) / (np.sqrt(u * u + (v - F32(self.v0)) ** 2) + F32(1.0))) ** 6
        scalp = F32(self.scalp_mm) + F32(7.0 * max(0.0, min(1.0, (30.0 - w) / 25.0))) * lateral
        sd_out = sd_in - t_sk - scalp
        if w < -12.0:
            g = min(1.0, (-12.0 - w) / 18.0) ** 0.5
            neck = max(0.0, min(1.0, (-w - 60.0) / 40.0))
            fa = F32(max(self.a + 3.0, 1.0) * g * (1.0 - 0.2 * neck))
            fb = F32(max(self.b + 6.0, 1.0) * g * (1.0 - 0.25 * neck))
            fc = F32(self.v0 - 12.0 * (1 - neck))
            dv = v - fc
            f = np.sqrt((u / fa) ** 2 + (dv / fb) ** 2) + F32(1e-6)
            r = np.sqrt(u * u + dv * dv)
            sd_out = np.minimum(sd_out, r - r / f)
        head = ramp(-sd_out, pv)
        img = np.full(shape, -1000.0, dtype=F32)
        # head holder: foam pad and carbon shell behind the occiput
        post = np.clip((v - F32(self.v0)) / F32(self.b * 0.5), 0.0, 1.0)
        pad = ramp(F32(self.pad_mm) - sd_out, pv) * post
        lerp_into(img, F32(-880.0), pad)
        shell = ramp(F32(1.6) - np.abs(sd_out - F32(self.pad_mm + 1.6)), 0.7 * px) * (post > 0.35)
        lerp_into(img, F32(170.0), shell.astype(F32))
        # scalp: skin over a thin fat layer
        soft = F32(42.0) - F32(100.0) * ramp(F32(0.7) - np.abs(sd_out + F32(self.scalp_mm * 0.55)), px)
        lerp_into(img, soft, head)
        # temporalis: a muscle on the outer table at the side of the head, from the zygomatic arch
        # up to the superior temporal line, under the scalp's fat
        level = max(0.0, min(1.0, (w + 35.0) / 15.0, (45.0 - w) / 25.0))
        if level > 0.0:
            off_bone = sd_in - t_sk  # mm outside the outer table
            thick = F32(self.temporalis_mm * level) * lateral
            muscle = ramp(off_bone, pv) * ramp(thick - off_bone, pv) * (lateral > F32(0.05))
            lerp_into(img, F32(self.temporalis_hu), (muscle * head).astype(F32))
        # bone: dense tables, softer diploe
        depth = sd_in / np.maximum(t_sk, F32(1.0))
        bone_val = F32(self.diploe_hu) + F32(self.table_hu - self.diploe_hu) * np.clip(
            (np.abs(depth - F32(0.5)) - F32(0.12)) * F32(7.0), 0.0, 1.0)
        shell_bone = ramp(t_sk - sd_in, pv) * head
        if w < -50.0:  # no vault below the foramen magnum: the neck is soft tissue around the spine
            shell_bone *= F32(max(0.0, min(1.0, (w + 64.0) / 14.0)))
        lerp_into(img, bone_val, shell_bone)
        inner = ramp(-sd_in, pv)
        ic = inner
        if self.base is not None and w < -10.0 + 2.0 * thk + self._base_reach():
            floor = self._base_floor(grid, u, v)
            above = ssp_fraction(F32(w) - floor, max(thk, px), SSP_SIGMA * thk)
            ic = inner * above
            lerp_into(img, self._base_below(grid, u, v, w, thk, floor, above), inner * (F32(1.0) - above))
        elif w < -10.0 + thk:
            floor = self.floor_w(u, v)
            above = ramp(F32(w) - floor, max(thk, px))
            ic = inner * above
            base = self._skull_base(grid, u, v, w, thk, floor)
            lerp_into(img, base, inner * (F32(1.0) - above))
        # intracranial content
        brain, vent, icv = self._intracranial(grid, u, v, w, thk, sd_in, pv)
        lerp_into(img, icv, ic)
        brain *= ic
        vent *= ic
        if w < -15.0 + thk:
            self._face(grid, img, u, v, w, thk, ic)
        # dural sinuses along the inner table
        self._sinuses(grid, img, u, v, w, thk, sd_in, ic)
        for c in self.calcs:
            paint(img, grid, u, v, c.ellipsoid, w, thk, F32(c.hu))
        return SliceLayers(img, ic, vent, brain)

    def _face(self, grid: Grid, img: np.ndarray, u: np.ndarray, v: np.ndarray, w: float, thk: float,
              ic: np.ndarray) -> None:
        """Petrous ridges, air sinuses and mastoid cells, orbits, airway and spine (outside the brain)."""
        v0 = self.v0
        base = img.copy()
        sep = self.texture.sample(grid, w, scale=2.5)
        cells = F32(-950.0) + F32(700.0) * (np.abs(sep) < 0.35)  # air cells with bony septa
        for s in (-1.0, 1.0):
            paint(base, grid, u, v, Ellipsoid((s * 33.0, v0 + 8.0, -40.0), (26.0, 8.5, 8.0), s * 40.0), w, thk,
                  F32(1500.0))  # petrous ridge (densest skull bone)
            paint(base, grid, u, v, Ellipsoid((s * 45.0, v0 + 20.0, -45.0), (8.0, 9.0, 8.0)), w, thk, cells)
            paint(base, grid, u, v, Ellipsoid((s * 31.0, v0 - 62.0, -37.0), (18.0, 21.0, 17.0)), w, thk,
                  F32(self.diploe_hu))  # orbit walls
            paint(base, grid, u, v, Ellipsoid((s * 31.0, v0 - 63.0, -36.0), (16.0, 20.0, 15.0)), w, thk,
                  F32(-85.0))  # orbit fat
            paint(base, grid, u, v, Ellipsoid((s * 31.0, v0 - 71.0, -36.0), (11.5, 11.5, 11.5)), w, thk,
                  F32(12.0))  # globe
            paint(base, grid, u, v, Ellipsoid((s * 31.0, v0 - 82.0, -36.0), (4.0, 1.6, 4.0)), w, thk,
                  F32(105.0))  # lens
            # extraocular muscles (medial, lateral, superior, inferior rectus) and the optic nerve,
            # from behind the globe to the orbital apex
            mus = F32(self.muscle_hu)
            for du, dw, su, sw in ((-9.0, 0.0, 2.2, 4.0), (9.0, 0.0, 2.2, 4.0), (0.0, 8.0, 5.0, 1.8),
                                   (0.0, -8.0, 5.0, 1.8)):
                paint(base, grid, u, v, Ellipsoid((s * (31.0 - 2.0) + s * du, v0 - 55.0, -36.0 + dw), (su, 15.0, sw),
                                                  s * -12.0), w, thk, mus)
            paint(base, grid, u, v, Ellipsoid((s * 27.0, v0 - 52.0, -36.0), (2.0, 14.0, 2.0), s * -15.0), w, thk,
                  F32(self.muscle_hu - 12.0))  # optic nerve
            paint(base, grid, u, v, Ellipsoid((s * 28.0, v0 - 56.0, -70.0), (17.5, 19.5, 19.0)), w, thk,
                  F32(self.diploe_hu - 100.0))  # maxilla
            paint(base, grid, u, v, Ellipsoid((s * 28.0, v0 - 55.0, -70.0), (15.0, 17.0, 18.0)), w, thk,
                  F32(self.mucosa_hu))  # maxillary sinus: mucosa lining the walls, air inside
            mm = self.mucosa_mm
            paint(base, grid, u, v, Ellipsoid((s * 28.0, v0 - 55.0, -70.0), (15.0 - mm, 17.0 - mm, 18.0 - mm)), w,
                  thk, F32(-960.0))
        paint(base, grid, u, v, Ellipsoid((0.0, v0 - 58.0, -38.0), (9.0, 18.0, 12.0)), w, thk, cells)  # ethmoid
        mm = self.mucosa_mm
        # clivus: the sloping bone behind the sphenoid sinus, under the brainstem
        paint(base, grid, u, v, Ellipsoid((0.0, v0 - 12.0, -52.0), (9.0, 6.0, 16.0), 0.0), w, thk,
              F32(self.diploe_hu + 150.0))
        for centre, semi in (((0.0, v0 - 30.0, -40.0), (12.0, 10.0, 9.0)),  # sphenoid sinus
                             ((0.0, v0 - 70.0, -68.0), (7.0, 24.0, 16.0))):  # nasal cavity
            paint(base, grid, u, v, Ellipsoid(centre, semi), w, thk, F32(self.mucosa_hu))
            inner = (max(semi[0] - mm * 1.5, 1.0), semi[1] - mm, semi[2] - mm)  # turbinates narrow the nose
            paint(base, grid, u, v, Ellipsoid(centre, inner), w, thk, F32(-960.0))
        # cervical spine and airway in the neck
        paint(base, grid, u, v, Ellipsoid((0.0, v0 + 22.0, -100.0), (13.0, 11.0, 40.0)), w, thk, F32(600.0))
        paint(base, grid, u, v, Ellipsoid((0.0, v0 + 29.0, -100.0), (7.0, 6.5, 40.0)), w, thk, F32(20.0))
        paint(base, grid, u, v, Ellipsoid((0.0, v0 - 12.0, -105.0), (9.0, 7.0, 30.0)), w, thk, F32(-970.0))
        lerp_into(img, base, F32(1.0) - ic)

    def _skull_base(self, grid: Grid, u: np.ndarray, v: np.ndarray, w: float, thk: float,
                    floor: np.ndarray) -> np.ndarray:
        """HU below the cranial floor: a bone plate, then face/neck soft tissue."""
        px = grid.px
        base = np.full(u.shape, 40.0, dtype=F32)
        plate = ramp(F32(w) - (floor - F32(12.0)), max(thk, px))
        tex = self.texture.sample(grid, w, scale=1.3)
        lerp_into(base, F32(self.diploe_hu + 100.0) + F32(180.0) * np.clip(tex, -2.0, 2.0), plate)
        return base

    # ---- the skull base option (SkullBase) ---------------------------------------------------
    def _base_reach(self) -> float:
        """How far (mm) the option's floor rises above the default floor at most."""
        assert self.base is not None
        return 3.0 * self.base.relief_mm + math.tan(math.radians(abs(self.base.pitch_deg))) * 100.0

    def _base_floor(self, grid: Grid, u: np.ndarray, v: np.ndarray) -> np.ndarray:
        """The cranial floor pitched against the slice plane (about the petrous ridges, so the
        posterior fossa stays where it is) and dented by the gyri, in front of the petrous ridges."""
        assert self.base is not None
        t_ap, t_pm, _ = self._fossae(u, v)
        front = F32(1.0) - t_pm
        pitch = F32(math.tan(math.radians(self.base.pitch_deg))) * (F32(self.v0 + 8.0) - v)
        dents = F32(self.base.relief_mm) * np.clip(self.base.relief.sample(grid, 0.0), -3.0, 3.0)
        return (self.floor_w(u, v) + front * (pitch + dents)).astype(F32)

    def _base_below(self, grid: Grid, u: np.ndarray, v: np.ndarray, w: float, thk: float, floor: np.ndarray,
                    above: np.ndarray) -> np.ndarray:
        """HU of the part of each slab below the floor: the floor's bone plate (1-2.5 mm of cortical
        bone over the orbits, a few mm over the middle fossa, 12 mm elsewhere), then orbital fat or
        soft tissue. The box-profile partial volume of a locally flat plate: of the slab, `above`
        is brain, `plate - above` bone and `1 - plate` what lies under the bone."""
        assert self.base is not None
        px = grid.px
        t_ap, t_pm, lat = self._fossae(u, v)
        orbit = np.exp(-((np.abs(u) - F32(28.0)) / F32(13.0)) ** 2) * (F32(1.0) - t_ap)
        middle = lat * t_ap * (F32(1.0) - t_pm)
        plate_mm = (F32(12.0) + (F32(self.base.roof_mm) - F32(12.0)) * orbit
                    + (F32(self.base.middle_mm) - F32(12.0)) * middle)
        plate = ssp_fraction(F32(w) - (floor - plate_mm), max(thk, px), SSP_SIGMA * thk)
        bone_share = np.clip((plate - above) / np.maximum(F32(1.0) - above, F32(1e-3)), 0.0, 1.0)
        tex = self.texture.sample(grid, w, scale=1.3)
        bone = F32(self.diploe_hu + 100.0) + F32(180.0) * np.clip(tex, -2.0, 2.0)
        bone += (F32(self.table_hu) - bone) * orbit  # the orbital roof is cortical bone
        under = F32(40.0) + F32(-85.0 - 40.0) * orbit  # orbital fat under the roofs, muscle elsewhere
        return (under + (bone - under) * bone_share).astype(F32)

    def _intracranial(self, grid: Grid, u: np.ndarray, v: np.ndarray, w: float, thk: float,
                      sd_in: np.ndarray, pv: float) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        px = grid.px
        fa = self.atrophy
        gap = F32(0.8 + 1.2 * fa)
        d_b = -sd_in - gap  # depth below the brain surface
        infra = np.zeros(u.shape, dtype=F32)
        if w < 12.0:
            infra = ramp(self.tentorium_w(u, v) - F32(w), max(thk * 0.6, px)) * (v > F32(self.v0 + 5.0))
        scale = 1.0 + 1.3 * float(infra.max()) if infra.size else 1.0
        g = self.gyri.sample(grid, w)
        if scale > 1.0:
            g2 = self.gyri.sample(grid, w, scale=2.4)
            g = g + infra * (g2 - g)
        sdist = np.abs(g) * F32(3.9)  # approx. distance (mm) to the nearest sulcal fundus plane
        # sulci open up towards the surface (and with age)
        hw = F32(0.3 + 0.4 * fa) + F32(0.5 + 0.7 * fa) * np.clip(F32(1.0) - d_b / F32(6.0), 0.0, 1.0)
        cfield = self.cortex.sample(grid, w)
        depth_gate = ramp(F32(18.0) + F32(6.0) * cfield - d_b, 3.0)
        sulc = ramp(hw - sdist, 0.8 * px) * ramp(F32(14.0) + F32(5.0) * cfield - d_b, 2.0)
        cort = F32(3.0) + F32(0.8) * cfield
        gmf = np.maximum(ramp(cort - d_b, px), ramp(hw + F32(3.3) - sdist, 1.2 * px) * depth_gate)
        val = F32(self.wm_hu) + F32(self.gm_hu - self.wm_hu) * gmf
        val += F32(0.9) * self.texture.sample(grid, w)
        for e, hu in self.nuclei:
            paint(val, grid, u, v, e, w, thk, F32(hu))
        # brainstem and its cisterns
        if w < 5.0:
            stem = Ellipsoid((0.0, self.v0 + 12.0, -40.0), (12.5, 12.0, 40.0))
            cist = Ellipsoid((0.0, self.v0 + 9.5, -40.0), (12.5 + 2.0 * fa, 12.0 + 3.5 * fa, 40.0))  # prepontine
            tmp = np.full(u.shape, F32(self.csf_hu))
            paint(tmp, grid, u, v, stem, w, thk, F32(self.wm_hu + 2.0))
            cf = np.zeros(u.shape, dtype=F32)
            paint(cf, grid, u, v, cist, w, thk, F32(1.0))
            lerp_into(val, tmp, cf)
        csf = F32(self.csf_hu)
        lerp_into(val, csf, sulc)
        # interhemispheric fissure (falx inside) above the tentorium, Sylvian fissures
        if w > -20.0:
            core = Ellipsoid((0.0, self.v0 + 3.0, 8.0), (26.0, 40.0, 22.0))
            cf = np.zeros(u.shape, dtype=F32)
            paint(cf, grid, u, v, core, w, thk, F32(1.0))
            fis = ramp(F32(0.9 + 0.7 * fa) - np.abs(u), 0.7 * px) * (F32(1.0) - cf) * (F32(1.0) - infra)
            lerp_into(val, csf, fis)
            falx = ramp(F32(0.35) - np.abs(u), 0.7 * px) * (F32(1.0) - cf) * (F32(1.0) - infra)
            lerp_into(val, F32(self.sinus_hu - 6.0), falx)
        if -22.0 < w < 8.0:
            au = np.abs(u)
            vs = F32(self.v0 - 8.0) + F32(0.35) * (au - F32(30.0)) + F32(2.5) * g  # wavy, not a ruler line
            syl = ramp(F32(0.8 + 1.0 * fa) - np.abs(v - vs), 0.7 * px) * (au > F32(27.0)) * (d_b < F32(30.0))
            syl = syl * F32(min(1.0, (w + 22.0) / 6.0, (8.0 - w) / 6.0))
            lerp_into(val, csf, syl.astype(F32))
            mca = ramp(F32(0.9) - np.abs(v - vs), 0.7 * px) * ((au > F32(12.0)) & (au < F32(45.0)))
            mca = mca * F32(max(0.0, 1.0 - abs(w + 10.0) / 3.5))
            lerp_into(val, F32(self.vessel_hu), mca.astype(F32))
        if -48.0 < w < -12.0:  # basilar artery
            paint(val, grid, u, v, Ellipsoid((0.0, self.v0 - 3.0, -30.0), (1.8, 1.8, 20.0)), w, thk,
                  F32(self.vessel_hu + 3.0))
        vent = np.zeros(u.shape, dtype=F32)
        for e in self.ventricles:
            paint(val, grid, u, v, e, w, thk, csf, out_frac=vent)
        brain = ramp(d_b, pv)
        icv = csf + brain * (val - csf)
        # beam hardening: a faint bright band just inside the inner table
        icv += F32(self.bh_hu) * np.exp(np.minimum(sd_in, 0.0) / F32(4.0)).astype(F32)
        brain = brain * (F32(1.0) - vent) * (F32(1.0) - sulc)
        return brain.astype(F32), vent, icv

    def _sinuses(self, grid: Grid, img: np.ndarray, u: np.ndarray, v: np.ndarray, w: float, thk: float,
                 sd_in: np.ndarray, ic: np.ndarray) -> None:
        px = grid.px
        hu = F32(self.sinus_hu)
        if w > -5.0:  # superior sagittal sinus: triangle on the midline under the vault
            tri = ramp((sd_in + F32(7.0)) * F32(0.6) - np.abs(u), 0.7 * px) * ramp(sd_in + F32(7.0), px)
            lerp_into(img, hu, tri * ic)
        if -32.0 < w < -8.0:  # transverse sinuses along the occipital inner table
            tr = ramp(sd_in + F32(4.5), px) * (np.abs(u) > F32(8.0)) * (v > F32(self.v0 + 25.0))
            tr = tr * F32(max(0.0, 1.0 - abs(w + 20.0) / 9.0))
            lerp_into(img, hu, (tr * ic).astype(F32))
        paint(img, grid, u, v, Ellipsoid((0.0, self.v0 + 52.0, 4.0), (2.5, 14.0, 9.0), 0.0), w, thk, hu)

    # ---- physiological streaks (posterior fossa) ---------------------------------------------
    def posterior_fossa_streaks(self, grid: Grid, w: float, rng: np.random.Generator) -> np.ndarray | None:
        """Dark Hounsfield-bar streaks between the petrous bones, on the slices that cut them."""
        amp = max(0.0, 1.0 - abs(w + 38.0) / 12.0)
        if amp <= 0.0:
            return None
        u, v = grid.coords()
        out = np.zeros(u.shape, dtype=F32)
        line_v = F32(self.v0 + 14.0)
        out += F32(self.streak_hu * amp) * np.exp(-((v - line_v) / F32(3.5)) ** 2) * (np.abs(u) < F32(45.0))
        for _ in range(3):
            ang = rng.uniform(-0.5, 0.5)
            d = np.abs(np.cos(ang) * (v - line_v) - np.sin(ang) * u)
            out += F32(0.6 * self.streak_hu * amp) * np.exp(-(d / F32(1.0)) ** 2) * (np.abs(u) < F32(55.0))
        return out
