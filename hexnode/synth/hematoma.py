"""The hematoma: an irregular 3D blob with the imaging markers of `hemodel.Markers`.

Shape: radius(d) = r0 * (1 + a * S(d)) over unit directions d, where S is a random sum of zonal
spherical harmonics of degree 2-4 normalised to zero mean and unit sd over the sphere, so `a` (the
"irregularity" marker) is the relative sd of the radius.  Flattened lobar bleeds are the same blob
squashed along the skull normal.  Hypodense foci (swirl) threshold a band-limited field inside the
blob; the blend sign thresholds a plane, giving one hypodense region with a sharp border.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy import ndimage
from scipy.special import eval_legendre, ndtri

from hexnode.synth.anatomy import F32, Head, ramp
from hexnode.synth.hemodel import Markers


def _fibonacci_sphere(n: int) -> np.ndarray:
    i = np.arange(n) + 0.5
    phi = np.arccos(1 - 2 * i / n)
    theta = math.pi * (1 + 5**0.5) * i
    return np.stack([np.cos(theta) * np.sin(phi), np.sin(theta) * np.sin(phi), np.cos(phi)], axis=1)


@dataclass
class Blob:
    centre: np.ndarray  # head-frame (u, v, w) mm
    r0: float
    amp: float
    axes: np.ndarray  # 3x3 rotation (columns: blob axes in the head frame)
    scales: np.ndarray  # stretch along each axis (product 1)
    dirs: np.ndarray  # (J, 3) harmonic axes
    degrees: np.ndarray  # (J,)
    coeffs: np.ndarray  # (J,), normalised so S has unit sd over the sphere
    s_lo: float = -4.0  # range of S over the sphere (with a margin)
    s_hi: float = 4.0
    _table: np.ndarray | None = None  # relative radius on a (theta, phi) grid, filled lazily

    @staticmethod
    def draw(rng: np.random.Generator, centre: np.ndarray, volume_ml: float, amp: float,
             axes: np.ndarray | None = None, scales: np.ndarray | None = None, n_terms: int = 9) -> Blob:
        dirs = rng.standard_normal((n_terms, 3))
        dirs /= np.linalg.norm(dirs, axis=1, keepdims=True)
        degrees = rng.integers(2, 5, size=n_terms)
        coeffs = rng.standard_normal(n_terms) / degrees
        pts = _fibonacci_sphere(2000)
        s = _harmonic_sum(pts, dirs, degrees, coeffs)
        coeffs = coeffs / (s.std() + 1e-12)
        s = s / (s.std() + 1e-12)
        rel = np.maximum(1 + amp * s, 0.35)
        axes = np.eye(3) if axes is None else axes
        scales = np.ones(3) if scales is None else scales
        mean_cube = float(np.mean(rel**3))
        r0 = (volume_ml * 1000.0 / (4.0 / 3.0 * math.pi * mean_cube * float(np.prod(scales)))) ** (1 / 3)
        return Blob(np.asarray(centre, float), r0, amp, axes, scales, dirs, degrees, coeffs,
                    float(s.min()) * 1.1, float(s.max()) * 1.1)

    @property
    def bound(self) -> float:
        """Radius (mm, head frame) of a sphere about the centre that holds the whole blob."""
        return float(self.r0 * (1 + self.amp * self.s_hi) * self.scales.max() + 1.0)

    def section_radius(self, w: float, margin: float = 0.0) -> float:
        """Radius of the bounding sphere (grown by `margin`) on level w; 0 when the level misses it."""
        r = self.bound + margin
        dw = w - self.centre[2]
        return math.sqrt(r * r - dw * dw) if abs(dw) < r else 0.0

    def radius_along(self, d: np.ndarray) -> np.ndarray:
        """Exact radius along unit directions d (N, 3)."""
        s = _harmonic_sum(d, self.dirs, self.degrees, self.coeffs)
        return self.r0 * np.maximum(1 + self.amp * s, 0.35)

    def radius_lookup(self, d: np.ndarray) -> np.ndarray:
        """Radius along unit directions d (N, 3) from a 2-degree table (degree <= 4 varies slowly)."""
        nt, nphi = 91, 180
        if self._table is None:
            th = np.linspace(0.0, math.pi, nt)
            ph = np.arange(nphi + 1) * (2 * math.pi / nphi)
            tt, pp = np.meshgrid(th, ph, indexing="ij")
            dirs = np.stack([np.sin(tt) * np.cos(pp), np.sin(tt) * np.sin(pp), np.cos(tt)], axis=-1)
            self._table = self.radius_along(dirs.reshape(-1, 3)).reshape(nt, nphi + 1).astype(np.float32)
        theta = np.arccos(np.clip(d[:, 2], -1.0, 1.0)) * ((nt - 1) / math.pi)
        phi = np.mod(np.arctan2(d[:, 1], d[:, 0]), 2 * math.pi) * (nphi / (2 * math.pi))
        return ndimage.map_coordinates(self._table, np.stack([theta, phi]), order=1, mode="nearest")

    def signed_depth(self, u: np.ndarray, v: np.ndarray, w: float, reach: float = 0.0
                     ) -> tuple[np.ndarray, np.ndarray]:
        """(mm inside the surface, positive inside; through-plane slope) at the given points.

        Exact within 3 mm inside and `reach` + 3 mm outside the surface; further away only a bound
        (deep inside: less than the true depth, far outside: more negative than -reach - 3 mm).
        """
        x = np.stack([u - F32(self.centre[0]), v - F32(self.centre[1]),
                      np.full_like(u, F32(w - self.centre[2]))], axis=-1)
        y = (x @ self.axes.astype(F32)) / self.scales.astype(F32)
        r = np.linalg.norm(y, axis=-1) + F32(1e-6)
        d = y / r[..., None]
        stretch = np.linalg.norm(d * self.scales.astype(F32), axis=-1)
        rad_lo = self.r0 * max(1 + self.amp * self.s_lo, 0.35)
        rad_hi = self.r0 * (1 + self.amp * self.s_hi)
        smin = float(self.scales.min())
        deep = r <= rad_lo - 3.0 / smin
        far = r >= rad_hi + (reach + 3.0) / smin
        rad = np.where(deep, F32(rad_lo), F32(rad_hi)).astype(F32)
        shell = ~(deep | far)
        if shell.any():
            rad[shell] = self.radius_lookup(d[shell]).astype(F32)
        depth = (rad - r) * stretch
        slope = np.abs(x[..., 2]) / (np.linalg.norm(x, axis=-1) + F32(1e-3))
        return depth.astype(F32), slope.astype(F32)


def _harmonic_sum(d: np.ndarray, dirs: np.ndarray, degrees: np.ndarray, coeffs: np.ndarray) -> np.ndarray:
    """sum_j c_j P_{l_j}(g_j . d): zonal harmonics of degree l_j about axis g_j (Legendre, l = 2..4)."""
    dtype = d.dtype if d.dtype == np.float32 else np.float64
    x = d @ dirs.T.astype(dtype)
    out = np.zeros(d.shape[0], dtype=dtype)
    for lval in (2, 3, 4):
        cols = degrees == lval
        if not cols.any():
            continue
        xs = x[:, cols]
        x2 = xs * xs
        if lval == 2:
            p = (3 * x2 - 1) / 2
        elif lval == 3:
            p = xs * (5 * x2 - 3) / 2
        else:
            p = (35 * x2 * x2 - 30 * x2 + 3) / 8
        out += p @ coeffs[cols].astype(dtype)
    rest = ~np.isin(degrees, (2, 3, 4))
    for j in np.flatnonzero(rest):
        out += coeffs[j] * eval_legendre(int(degrees[j]), x[:, j])
    return out


@dataclass
class Hematoma:
    location: str  # deep | lobar | lobar_flat | cerebellar
    main: Blob
    satellites: list[Blob]
    hem_hu: float
    hypo_hu: float
    hypo_mode: str  # none | swirl | blend
    hypo_target: float
    swirl_k: np.ndarray  # (N, 3) wave vectors, rad/mm
    swirl_phase: np.ndarray
    swirl_amp: np.ndarray
    hypo_threshold: float
    blend_normal: np.ndarray
    ivh: bool
    ivh_side: float
    ivh_level_v: float
    ivh_hu: float
    oedema_mm: float
    oedema_hu: float
    side: float
    parenchymal: bool = True  # False: intraventricular-only bleed (no parenchymal blob, no oedema)
    extra: dict[str, float] = field(default_factory=dict)

    @property
    def centre(self) -> np.ndarray:
        return self.main.centre

    def w_range(self, head: Head) -> tuple[float, float]:
        lo = self.main.centre[2] - self.main.bound - self.oedema_mm - 1.0
        hi = self.main.centre[2] + self.main.bound + self.oedema_mm + 1.0
        for s in self.satellites:
            lo = min(lo, s.centre[2] - s.bound)
            hi = max(hi, s.centre[2] + s.bound)
        if self.ivh:
            lo = min(lo, -12.0)
            hi = max(hi, 24.0)
        return lo, hi

    def hypo_weight(self, u: np.ndarray, v: np.ndarray, w: float) -> np.ndarray:
        """0..1 weight of the hypodense component at the given points of the main blob."""
        if self.hypo_mode == "none":
            return np.zeros(u.shape, dtype=F32)
        du = u - F32(self.centre[0])
        dv = v - F32(self.centre[1])
        dw = F32(w - self.centre[2])
        if self.hypo_mode == "blend":
            n = self.blend_normal.astype(F32)
            proj = (du * n[0] + dv * n[1] + dw * n[2]) / F32(self.main.r0 * self.main.scales.max())
            return ramp((proj - F32(self.hypo_threshold)) * F32(self.main.r0), 0.6)
        f = np.zeros(u.shape, dtype=F32)
        for k, ph, a in zip(self.swirl_k, self.swirl_phase, self.swirl_amp, strict=True):
            f += F32(a) * np.cos(F32(k[0]) * du + F32(k[1]) * dv + F32(k[2]) * dw + F32(ph))
        return ramp((f - F32(self.hypo_threshold)) * F32(4.0), 1.0)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / (np.linalg.norm(v) + 1e-12)


def _frame_from(normal: np.ndarray) -> np.ndarray:
    """Rotation whose third column is `normal`."""
    n = _unit(normal)
    a = np.array([1.0, 0.0, 0.0]) if abs(n[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    e1 = _unit(np.cross(n, a))
    e2 = np.cross(n, e1)
    return np.stack([e1, e2, n], axis=1)


def _blend_cap_height(frac: float) -> float:
    """Height h (in radii) of a plane cutting off `frac` of a ball's volume: (1-h)^2 (2+h) / 4."""
    lo, hi = -1.0, 1.0
    for _ in range(50):
        mid = (lo + hi) / 2
        if (1 - mid) ** 2 * (2 + mid) / 4 > frac:
            lo = mid
        else:
            hi = mid
    return (lo + hi) / 2


def draw_hematoma(rng: np.random.Generator, head: Head, m: Markers, location: str) -> Hematoma:
    side = float(rng.choice([-1.0, 1.0]))
    v0 = head.v0
    axes: np.ndarray | None = None
    scales: np.ndarray | None = None
    r_eff = (m.volume_ml * 1000 * 3 / (4 * math.pi)) ** (1 / 3)
    if location == "deep":
        if rng.random() < 0.6:  # putamen / internal capsule
            c = np.array([side * 24.0, v0 - 2.0, 0.0]) + rng.normal(0, 2.5, 3)
        else:  # thalamus
            c = np.array([side * 12.0, v0 + 15.0, 3.0]) + rng.normal(0, 2.0, 3)
        # large deep bleeds spread laterally and up
        c[0] += side * max(0.0, r_eff - 12.0) * 0.5
        c[2] += max(0.0, r_eff - 12.0) * 0.5
    elif location == "intraventricular":
        c = np.array([0.0, v0 + 5.0, 10.0])
    elif location == "cerebellar":
        c = np.array([side * rng.uniform(18, 28), v0 + rng.uniform(35, 45), rng.uniform(-36, -28)])
    else:
        w = rng.uniform(-5.0, 45.0)
        theta = rng.uniform(0, 2 * math.pi)
        s_lvl, _ = head._level_scale(w)
        aa, bb = head.a * s_lvl, head.b * s_lvl
        rb = 1.0 / math.sqrt((math.cos(theta) / aa) ** 2 + (math.sin(theta) / bb) ** 2)
        if location == "lobar_flat":
            depth = r_eff * 0.45 + 1.5
            normal = np.array([math.cos(theta), math.sin(theta), 0.25 * (w / 40.0)])
            axes = _frame_from(normal)
            flat = rng.uniform(0.4, 0.6)
            scales = np.array([flat**-0.5, flat**-0.5, flat])
        else:
            depth = r_eff * rng.uniform(0.75, 1.4) + 3.0
        rad = max(rb - depth, 8.0)
        c = np.array([rad * math.cos(theta), v0 + rad * math.sin(theta), w])
        if abs(c[0]) < 8.0:
            c[0] = math.copysign(8.0, c[0] if c[0] != 0 else side)
        side = math.copysign(1.0, c[0])
    main = Blob.draw(rng, c, m.volume_ml, m.irregularity, axes, scales)
    sats: list[Blob] = []
    for _ in range(m.islands):
        for _try in range(20):
            d = rng.standard_normal(3)
            d[2] *= 0.3
            d = _unit(d)
            rs = rng.uniform(2.5, 4.5)
            dist = float(main.radius_along(
                _unit((main.axes.T @ d) / main.scales)[None, :])[0]) * float(
                np.linalg.norm(main.scales * _unit((main.axes.T @ d) / main.scales)))
            dist += rng.uniform(3.0, 8.0) + rs
            sc = c + d * dist
            if all(np.linalg.norm(sc - o.centre) > rs + o.r0 + 3.0 for o in sats):
                sats.append(Blob.draw(rng, sc, 4 / 3 * math.pi * rs**3 / 1000.0, 0.08))
                break
    hypo_mode = "none" if m.hypodense_fraction <= 0 else ("blend" if m.blend else "swirl")
    n_waves = 14
    k = rng.standard_normal((n_waves, 3))
    k = k / np.linalg.norm(k, axis=1, keepdims=True) * (2 * math.pi / rng.uniform(6.0, 14.0, (n_waves, 1)))
    phase = rng.uniform(0, 2 * math.pi, n_waves)
    amp = rng.uniform(0.5, 1.0, n_waves)
    sd = math.sqrt(float(np.sum(amp**2)) / 2)
    if hypo_mode == "blend":
        thr = _blend_cap_height(m.hypodense_fraction)
    elif hypo_mode == "swirl":
        thr = float(sd * ndtri(1 - m.hypodense_fraction))
    else:
        thr = 0.0
    normal = _unit(rng.standard_normal(3))
    return Hematoma(
        location=location, main=main, satellites=sats,
        hem_hu=float(rng.uniform(56.0, 74.0)), hypo_hu=float(rng.uniform(31.0, 42.0)),
        hypo_mode=hypo_mode, hypo_target=m.hypodense_fraction,
        swirl_k=k, swirl_phase=phase, swirl_amp=amp, hypo_threshold=thr, blend_normal=normal,
        ivh=m.ivh, ivh_side=side, ivh_level_v=float(v0 + rng.uniform(0.0, 22.0)),
        ivh_hu=float(rng.uniform(52.0, 66.0)),
        oedema_mm=m.oedema_mm, oedema_hu=float(rng.uniform(16.0, 24.0)), side=side,
        parenchymal=location != "intraventricular",
    )
