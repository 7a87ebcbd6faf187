"""The scanner's side of a case: the drawn stack geometry and acquisition parameters, and the
stack actually written (covering the bleed, centred on it with a given slice count, or runs of
mixed thickness)."""

from __future__ import annotations

import math
from dataclasses import dataclass, replace

import numpy as np

from hexnode.synth.anatomy import Head
from hexnode.synth.case import Acquisition
from hexnode.synth.geometry import Geometry, Run
from hexnode.synth.hematoma import Hematoma


@dataclass(frozen=True)
class ScannerProfile:
    """Another scanner's look, opt-in by name (`generate_case(..., profile=NAME)`): without one the
    generator's output is unchanged byte for byte. What changes is the image, never the truth: the
    same head, bleed and mask, seen through a different reconstruction."""

    name: str
    slice_mm: float  # reconstructed slice thickness (= table step)
    noise_sd_hu: tuple[float, float]  # the noise level's range (the default look: 3.5-7 HU)
    noise_grain_px: float  # the noise's correlation length: a sharp kernel's grain is finer (default 1.3)
    sharpen: float  # unsharp-mask gain of an edge-enhancing kernel (overshoot beside bone and blood)
    sharpen_px: float  # its Gaussian's sigma in pixels
    hardening_hu: float  # bright beam-hardening lobes between the petrous bones at the skull base
    hu_offset: float  # the scanner's water calibration, off by a few HU
    kernel: str  # the kernel name written in its DICOM headers


#: the named profiles; `sharp-7mm`: an edge-enhancing kernel with fine, stronger noise, 7 mm slices,
#: bright skull-base beam hardening and brain reading 8 HU high, a look the bundled models never saw
#: (their IoU drops about 0.1 on it; the kernel, noise and hardening alone cost them little). It is
#: the site's routine brain series, so its header names a medium-sharp head kernel (H45s): a bone
#: kernel's name (H6x and up) is refused by the node's selection, and no site reads ICH on those.
PROFILES = {
    "sharp-7mm": ScannerProfile(name="sharp-7mm", slice_mm=7.0, noise_sd_hu=(7.0, 10.0), noise_grain_px=0.7,
                                sharpen=1.0, sharpen_px=1.5, hardening_hu=40.0, hu_offset=8.0, kernel="H45s"),
}


def profile_named(name: str | None) -> ScannerProfile | None:
    if name is None:
        return None
    try:
        return PROFILES[name]
    except KeyError:
        raise ValueError(f"no scanner profile {name!r} (known: {', '.join(sorted(PROFILES))})") from None


def draw_geometry(rng: np.random.Generator, *, thin: bool, tilt_deg: float, head: Head,
                  slice_mm: float | None = None) -> Geometry:
    """`slice_mm`: the thickness (= table step) of a thick series instead of 5 mm; the draws are
    the same, so only the slices change."""
    n = 512
    px = round(float(rng.uniform(0.40, 0.50)), 5)  # exactly representable in PixelSpacing (DS)
    if thin:
        thk = float(rng.choice([0.625, 0.75, 1.0, 1.25]))
        step = thk if thk <= 0.75 else thk * float(rng.uniform(0.5, 0.8))
        nz = int(np.clip(round(rng.uniform(165.0, 190.0) / step), 200, 300))
    else:
        thk = 5.0 if slice_mm is None else float(slice_mm)
        step = thk
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


def draw_acquisition(rng: np.random.Generator) -> Acquisition:
    kvp = float(rng.choice([100.0, 120.0, 120.0, 140.0]))
    ma = int(rng.integers(180, 350))
    return Acquisition(kvp=kvp, kernel=str(rng.choice(["H30s", "H31s", "FC21", "STANDARD", "J30s"])),
                       tube_current_ma=ma, exposure_mas=int(ma * 1.0),
                       ctdi_vol=float(round(rng.uniform(40.0, 60.0), 1)),
                       manufacturer_model="hexnode-synth phantom")


def stack(geo: Geometry, hem: Hematoma, head: Head, *, n_slices: int | None,
          mixed: tuple[Run, ...] | None, normal: bool = False) -> Geometry:
    """The stack written: runs of mixed thickness, or `n_slices` centred on the bleed, or the drawn
    stack moved to cover the whole bleed (a normal head: the drawn stack as it is)."""
    if mixed is not None:
        return with_runs(geo, mixed)
    if n_slices is not None:
        return with_slices(geo, n_slices, float(hem.centre[2]))
    if normal:
        return geo
    return covering(geo, *hem.w_range(head))


def covering(geo: Geometry, w_lo: float, w_hi: float) -> Geometry:
    """Move a short stack down (losing the vertex) until it covers the whole bleed."""
    if geo.w_bottom_mm <= w_lo:
        return geo
    height = (geo.n_slices - 1) * geo.normal_step_mm
    bottom = w_lo if w_lo + height >= w_hi else (w_lo + w_hi - height) / 2
    return replace(geo, w_bottom_mm=min(geo.w_bottom_mm, bottom))


def with_runs(geo: Geometry, parts: tuple[Run, ...]) -> Geometry:
    """Runs of (thickness, slices[, overlap]), the top at the drawn top of the stack."""
    z, thk = Geometry.runs(parts)
    w_top = geo.w_bottom_mm + (geo.n_slices - 1) * geo.normal_step_mm
    height = z[-1] * math.cos(math.radians(geo.tilt_deg))
    return replace(geo, n_slices=len(z), table_step_mm=float(np.mean(np.diff(z))), slice_thickness_mm=thk[0],
                   w_bottom_mm=w_top - height, table_z_mm=z, thickness_mm=thk)


def with_slices(geo: Geometry, nz: int, w_centre: float) -> Geometry:
    # a short stack centred on the bleed, inside the original coverage
    w_top = geo.w_bottom_mm + (geo.n_slices - 1) * geo.normal_step_mm
    bottom = w_centre - (nz - 1) / 2.0 * geo.normal_step_mm
    bottom = min(max(bottom, geo.w_bottom_mm), w_top - (nz - 1) * geo.normal_step_mm)
    return Geometry(n=geo.n, pixel_mm=geo.pixel_mm, n_slices=nz, table_step_mm=geo.table_step_mm,
                    slice_thickness_mm=geo.slice_thickness_mm, tilt_deg=geo.tilt_deg, yaw_deg=geo.yaw_deg,
                    head_offset_mm=geo.head_offset_mm, w_bottom_mm=bottom)
