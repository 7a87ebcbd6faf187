"""Slice geometry of a synthetic series: DICOM positions/orientation, head-frame sampling, NIfTI affine.

The phantom is defined in a *head frame* (u: patient left, v: posterior, w: superior along the
slice normal).  With gantry tilt θ the image rows stay along patient x, the columns tilt to
(0, cos θ, sin θ) and the table moves along patient z, so each slice's origin steps by Δz along z:
in the slice basis that is Δz·sin θ along the columns and Δz·cos θ along the normal.  Sampling the
head frame at exactly those offsets keeps the anatomy rigid in patient space, so the DICOM
geometry, the mask's NIfTI affine and the voxel volume (sx·sy·Δz·cos θ) all agree.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

#: a run of slices: (thickness mm, slices) or (thickness mm, slices, overlap mm with the run below)
Run = tuple[float, int] | tuple[float, int, float]


@dataclass(frozen=True)
class Geometry:
    n: int  # rows = columns
    pixel_mm: float  # square pixels
    n_slices: int
    table_step_mm: float  # ImagePositionPatient step along patient z
    slice_thickness_mm: float
    tilt_deg: float
    yaw_deg: float  # in-plane rotation of the head (patients never lie perfectly straight)
    head_offset_mm: tuple[float, float]  # head-frame (u, v) of the image centre on the middle slice
    w_bottom_mm: float  # head-frame w of slice 0 (the most inferior)
    # Mixed slice thickness (GE head protocols: 4 mm through the posterior fossa, 7 mm above):
    # each slice's table position relative to slice 0 and its thickness. None: the constant
    # `table_step_mm` and `slice_thickness_mm`.
    table_z_mm: tuple[float, ...] | None = None
    thickness_mm: tuple[float, ...] | None = None

    @staticmethod
    def runs(parts: tuple[Run, ...]) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """(table positions, thicknesses) of runs of (thickness mm, slices[, overlap mm]), bottom
        first: contiguous, or a run's first slab reaching `overlap` mm (along the table) back into
        the previous run's last (GE's 4 + 7 mm head protocol as the scanner writes it)."""
        z: list[float] = []
        thk: list[float] = []
        for part in parts:
            t, count = float(part[0]), int(part[1])
            overlap = float(part[2]) if len(part) > 2 else 0.0
            for j in range(count):
                back = overlap if j == 0 else 0.0
                z.append(0.0 if not z else z[-1] + (thk[-1] + t) / 2.0 - back)
                thk.append(t)
        return tuple(z), tuple(thk)

    def _table_z(self, k: float) -> float:
        if self.table_z_mm is None:
            return k * self.table_step_mm
        z = self.table_z_mm
        if k <= 0:
            return z[0] + k * (z[1] - z[0])
        if k >= len(z) - 1:
            return z[-1] + (k - len(z) + 1) * (z[-1] - z[-2])
        return float(np.interp(k, np.arange(len(z)), z))

    def thickness(self, k: int) -> float:
        return self.slice_thickness_mm if self.thickness_mm is None else self.thickness_mm[k]

    def extents_mm(self) -> list[float]:
        """Each slice's share of the axis along the normal, every millimetre counted once: the
        boundary between two slices is the midpoint of their centres, moved between the facing
        edges of their slabs (nominal thickness along the normal), so abutting slabs keep their
        own thickness and overlapping ones split the part both cover at the midpoint; the end
        slices reach half a step outwards."""
        c = math.cos(math.radians(self.tilt_deg))
        if self.table_z_mm is None:
            return [self.normal_step_mm] * self.n_slices
        w = [v * c for v in self.table_z_mm]
        thk = self.thickness_mm or (self.slice_thickness_mm,) * len(w)
        edges = [w[0] - (w[1] - w[0]) / 2.0]
        for k in range(len(w) - 1):
            top, bottom = w[k] + thk[k] / 2.0, w[k + 1] - thk[k + 1] / 2.0
            edges.append(min(max((w[k] + w[k + 1]) / 2.0, min(top, bottom)), max(top, bottom)))
        edges.append(w[-1] + (w[-1] - w[-2]) / 2.0)
        return [b - a for a, b in zip(edges, edges[1:], strict=False)]

    @property
    def normal_step_mm(self) -> float:
        """The spacing along the normal (the mean extent when the thickness is mixed)."""
        if self.table_z_mm is not None:
            return float(np.mean(self.extents_mm()))
        return self.table_step_mm * math.cos(math.radians(self.tilt_deg))

    @property
    def spacing(self) -> tuple[float, float, float]:
        return (self.pixel_mm, self.pixel_mm, self.normal_step_mm)

    @property
    def orientation(self) -> tuple[float, float, float, float, float, float]:
        t = math.radians(self.tilt_deg)
        return (1.0, 0.0, 0.0, 0.0, math.cos(t), math.sin(t))

    @property
    def normal(self) -> np.ndarray:
        t = math.radians(self.tilt_deg)
        return np.array([0.0, -math.sin(t), math.cos(t)])

    def slice_w(self, k: float) -> float:
        if self.table_z_mm is None:
            return self.w_bottom_mm + k * self.normal_step_mm
        return self.w_bottom_mm + self._table_z(k) * math.cos(math.radians(self.tilt_deg))

    def column_shift_mm(self, k: float) -> float:
        """Head-frame shift along the image columns of slice k (0 without tilt)."""
        mid = (self.n_slices - 1) / 2.0
        return (self._table_z(k) - self._table_z(mid)) * math.sin(math.radians(self.tilt_deg))

    def uv_affine(self, k: float, scale: int = 1) -> np.ndarray:
        """2x3 matrix mapping (x index, y index, 1) of a grid `scale` times coarser to head (u, v) mm."""
        px = self.pixel_mm * scale
        c = (self.n / scale - 1) / 2.0
        a = math.radians(self.yaw_deg)
        ca, sa = math.cos(a), math.sin(a)
        # image-plane offsets of the pixel from the image centre (x right = patient left, y down = posterior)
        # then rotate by yaw and add the head offset and the tilt shift
        du, dv = self.head_offset_mm
        dv += self.column_shift_mm(k)
        return np.array(
            [
                [ca * px, -sa * px, du - (ca * c - sa * c) * px],
                [sa * px, ca * px, dv - (sa * c + ca * c) * px],
            ]
        )

    def uv_grid(self, k: float, scale: int = 1, window: tuple[slice, slice] | None = None
                ) -> tuple[np.ndarray, np.ndarray]:
        """Head (u, v) of each pixel centre of slice k, float32 arrays (y, x)."""
        m = self.uv_affine(k, scale)
        size = self.n // scale
        ys, xs = (window if window is not None else (slice(0, size), slice(0, size)))
        y = np.arange(ys.start, ys.stop, dtype=np.float32)[:, None]
        x = np.arange(xs.start, xs.stop, dtype=np.float32)[None, :]
        u = (m[0, 0] * x + m[0, 1] * y + m[0, 2]).astype(np.float32)
        v = (m[1, 0] * x + m[1, 1] * y + m[1, 2]).astype(np.float32)
        return u, v

    def pixel_of(self, k: float, u: float, v: float, scale: int = 1) -> tuple[float, float]:
        """(x index, y index) of head point (u, v) on slice k of the `scale`-coarser grid."""
        m = self.uv_affine(k, scale)
        a = m[:, :2]
        xy = np.linalg.solve(a, np.array([u - m[0, 2], v - m[1, 2]]))
        return float(xy[0]), float(xy[1])

    def slice_of(self, w: float) -> float:
        if self.table_z_mm is None:
            return (w - self.w_bottom_mm) / self.normal_step_mm
        z = (w - self.w_bottom_mm) / math.cos(math.radians(self.tilt_deg))
        tz = self.table_z_mm
        if z <= tz[0]:
            return (z - tz[0]) / (tz[1] - tz[0])
        if z >= tz[-1]:
            return len(tz) - 1 + (z - tz[-1]) / (tz[-1] - tz[-2])
        return float(np.interp(z, tz, np.arange(len(tz))))

    # ---- DICOM / NIfTI ------------------------------------------------------------------
    def positions(self) -> list[tuple[float, float, float]]:
        """ImagePositionPatient (LPS mm) of each slice, slice 0 first; steps along patient z only."""
        half = (self.n - 1) / 2.0 * self.pixel_mm
        t = math.radians(self.tilt_deg)
        row = np.array([1.0, 0.0, 0.0])
        col = np.array([0.0, math.cos(t), math.sin(t)])
        mid = self._table_z((self.n_slices - 1) / 2.0)
        out = []
        for k in range(self.n_slices):
            c = np.array([0.0, 0.0, self._table_z(k) - mid])
            p = c - half * row - half * col
            out.append((float(p[0]), float(p[1]), float(p[2])))
        return out

    def affine_lps(self) -> np.ndarray:
        """4x4 mapping (x index, y index, slice index, 1) to LPS mm (sheared when tilted)."""
        t = math.radians(self.tilt_deg)
        p0 = np.array(self.positions()[0])
        a = np.eye(4)
        a[:3, 0] = np.array([1.0, 0.0, 0.0]) * self.pixel_mm
        a[:3, 1] = np.array([0.0, math.cos(t), math.sin(t)]) * self.pixel_mm
        a[:3, 2] = np.array([0.0, 0.0, self.table_step_mm])
        a[:3, 3] = p0
        return a

    def affine_ras(self) -> np.ndarray:
        return np.diag([-1.0, -1.0, 1.0, 1.0]) @ self.affine_lps()
