"""DICOM CT files → one HU volume on the slice grid, or a `VolumeError` that says why not.

The volume stays on the scanner's own grid (rows × columns × slices, any matrix size): the result
objects (SEG) must reference the source images frame for frame, so resampling belongs to the model
stage, which maps its mask back. Slices are sorted by Image Position projected on the slice
normal, never by Instance Number (PACS renumber, reformat and resend).

Memory: one float32 array is allocated for the whole series and filled slice by slice, so a 600 ×
512² thin series costs its 630 MB once, plus one decoded slice at a time.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pydicom
from pydicom.dataset import Dataset
from pydicom.errors import InvalidDicomError

from hexnode import sop

CT_SOP_CLASSES = frozenset(sop.CT_SOP_CLASSES)

MAX_SLICES = 2000
MIN_SLICES = 2
AIR_HU = -1024.0
# Two positions closer than this along the normal are the same slice.
SAME_POSITION_MM = 0.01
# A step more than this factor above the median step is a gap (missing slices).
GAP_FACTOR = 1.5
# Steps may vary this much (relative to the median) before the spacing is called inconsistent.
SPACING_TOLERANCE = 0.1
ORIENTATION_TOLERANCE = 1e-3
TILT_NOTE_DEG = 0.5


class VolumeError(ValueError):
    """The files do not form one analysable volume; `reason` is for the not-analysed report."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


@dataclass
class Volume:
    hu: np.ndarray  # float32 (z, y, x), Hounsfield units, padding and outside-FOV set to air
    spacing: tuple[float, float, float]  # (sx, sy, sz) mm; sz along the slice normal
    headers: list[Dataset]  # one per slice in z order (an Enhanced CT file: the one dataset)
    tilt_deg: float = 0.0
    notes: tuple[str, ...] = ()
    paths: list[Path] = field(default_factory=list)  # source files in z order (unique)
    normal: tuple[float, float, float] = (0.0, 0.0, 1.0)
    # Enhanced CT only: the source frame number (1-based) of each z slice, for the SEG references.
    frames: list[int] | None = None
    # Mixed slice thickness only: each slice's extent along the normal (mm), for the volume.
    extents: tuple[float, ...] | None = None

    @property
    def head_up(self) -> bool:
        """Slice index grows towards the vertex (the normal points to the patient's head, +z in LPS)."""
        return self.normal[2] >= 0.0

    @property
    def shape(self) -> tuple[int, int, int]:
        z, y, x = self.hu.shape
        return z, y, x

    @property
    def voxel_ml(self) -> float:
        sx, sy, sz = self.spacing
        return sx * sy * sz / 1000.0


def read_header(path: str | Path) -> Dataset:
    """The header of one file without its pixel data; `VolumeError` when it is not DICOM."""
    try:
        ds = pydicom.dcmread(str(path), stop_before_pixels=True)
    except (InvalidDicomError, EOFError, OSError, ValueError, KeyError, TypeError) as exc:
        raise VolumeError(f"unreadable DICOM file ({type(exc).__name__})") from None
    # pydicom reads a truncated file up to where it ends without complaint
    if not ds.get("SOPClassUID") or not ds.get("SOPInstanceUID"):
        raise VolumeError("unreadable DICOM file (truncated or incomplete header)")
    return ds


def load_volume(paths: Iterable[str | Path]) -> Volume:
    """Load one CT series (single-frame files, or one Enhanced CT multi-frame file)."""
    files = [Path(p) for p in paths]
    if not files:
        raise VolumeError("no instances")
    if len(set(files)) > MAX_SLICES:  # before reading 2,000+ headers; receive stores each SOP instance once
        raise VolumeError(f"{len(set(files))} slices: more than {MAX_SLICES}")
    headers: list[tuple[Path, Dataset]] = []
    seen: set[str] = set()
    for path in sorted(files):
        ds = read_header(path)
        uid = str(ds.get("SOPInstanceUID", ""))
        if uid and uid in seen:  # a resent instance: the same image, keep one
            continue
        seen.add(uid)
        headers.append((path, ds))
    classes = {str(ds.get("SOPClassUID", "")) for _, ds in headers}
    if not classes <= CT_SOP_CLASSES:
        raise VolumeError(f"not a CT image storage SOP class ({', '.join(sorted(classes - CT_SOP_CLASSES))})")
    multiframe = [ds for _, ds in headers if int(ds.get("NumberOfFrames", 1) or 1) > 1]
    if multiframe:
        if len(headers) != 1:
            raise VolumeError("multi-frame and single-frame images mixed in one series")
        return _load_multiframe(headers[0][0])
    return _load_single_frames(headers)


@dataclass
class _Geometry:
    row: np.ndarray
    col: np.ndarray
    normal: np.ndarray
    positions: np.ndarray  # (n, 3) image positions, in the order given
    pixel_spacing: tuple[float, float]  # (row spacing = dy, column spacing = dx)


def _vec(value: Sequence[float] | None, n: int, what: str) -> np.ndarray:
    if value is None or len(value) != n:
        raise VolumeError(f"missing or malformed {what}")
    try:
        return np.array([float(v) for v in value], dtype=np.float64)
    except (TypeError, ValueError):
        raise VolumeError(f"malformed {what}") from None


def _orientation(iop: Sequence[float] | None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    o = _vec(iop, 6, "Image Orientation (Patient)")
    row, col = o[:3], o[3:]
    normal = np.cross(row, col)
    norm = float(np.linalg.norm(normal))
    if norm < 0.5:
        raise VolumeError("degenerate Image Orientation (Patient)")
    return row, col, normal / norm


@dataclass(frozen=True)
class _Stack:
    order: np.ndarray  # indices of the given slices in z order
    dz: float  # the spacing of the volume (the mean extent when the thickness is mixed)
    extents: tuple[float, ...] | None  # each slice's extent along the normal; None: all dz
    tilt: float
    notes: list[str]


# A mixed series is read in runs of constant spacing; a run needs this many steps, shorter
# stretches are the steps between runs (or gaps).
MIN_RUN_STEPS = 3
MAX_RUNS = 6


def _runs(steps: np.ndarray) -> list[tuple[int, int, float]]:
    """(first step, end step, spacing) of each stretch of constant spacing, in order."""
    out: list[tuple[int, int, float]] = []
    i = 0
    while i < len(steps):
        j = i + 1
        while j < len(steps) and abs(steps[j] - np.median(steps[i:j])) <= SPACING_TOLERANCE * np.median(steps[i:j]):
            j += 1
        out.append((i, j, float(np.median(steps[i:j]))))
        i = j
    return out


def _check_steps(steps: np.ndarray) -> tuple[float, ...] | None:
    """Reject gaps and irregular spacing; accept runs of constant spacing (GE 4 + 7 mm head
    protocols, 2.5 + 5 mm, several ranges). Returns each slice's extent along the normal for a
    mixed series (half the step to each neighbour), None for one constant spacing."""
    runs = _runs(steps)
    if len(runs) == 1:
        return None
    # a short series judged against its longest stretch
    long = [r for r in runs if r[1] - r[0] >= MIN_RUN_STEPS] or [max(runs, key=lambda r: r[1] - r[0])]
    missing, worst, expected = 0, 0.0, 0.0
    for k, step in enumerate(steps):
        if any(a <= k < b for a, b, _ in long):
            continue
        before = [r[2] for r in long if r[1] <= k]
        after = [r[2] for r in long if r[0] > k]
        near = ([before[-1]] if before else []) + ([after[0]] if after else [])
        lo, hi = min(near), max(near)
        if step > GAP_FACTOR * hi:
            missing += int(round(step / hi)) - 1
            if step > worst:
                worst, expected = float(step), hi
        elif not (lo * (1 - SPACING_TOLERANCE) <= step <= hi * (1 + SPACING_TOLERANCE)):
            raise VolumeError(f"inconsistent slice spacing ({steps.min():.2f}-{steps.max():.2f} mm)")
    if missing:
        raise VolumeError(f"gap in slice positions: about {missing} missing slices "
                          f"(step {worst:.2f} mm, expected {expected:.2f} mm)")
    if len(long) > MAX_RUNS:
        raise VolumeError(f"inconsistent slice spacing ({len(long)} different spacings)")
    padded = np.concatenate([[steps[0]], steps, [steps[-1]]])
    return tuple(float(v) for v in (padded[:-1] + padded[1:]) / 2.0)


def _sort_and_check(geom: _Geometry, uids: Sequence[str]) -> _Stack:
    """Order along the normal; reject duplicates and gaps; accept runs of mixed spacing."""
    n = len(geom.positions)
    if n < MIN_SLICES:
        raise VolumeError(f"{n} slice: not a volume")
    if n > MAX_SLICES:
        raise VolumeError(f"{n} slices: more than {MAX_SLICES}")
    d = geom.positions @ geom.normal
    order = np.argsort(d, kind="stable")
    ds = d[order]
    steps = np.diff(ds)
    dup = int(np.count_nonzero(steps < SAME_POSITION_MM))
    if dup:
        # Same SOP Instance UID was removed already, so these are different images at one position:
        # two reconstructions or acquisitions mixed in one series. Either choice could be wrong.
        del uids  # the reason must not carry identifiers
        raise VolumeError(f"duplicate slice positions with different SOP Instance UIDs ({dup} positions)")
    extents = _check_steps(steps)
    dz = float(np.median(steps)) if extents is None else float(np.mean(extents))
    notes: list[str] = []
    # Gantry tilt: slices stacked along the table while the image plane leans, so the stack
    # direction is sheared against the normal. The volume uses the spacing along the normal.
    stack = geom.positions[order[-1]] - geom.positions[order[0]]
    shear = math.degrees(math.acos(min(1.0, abs(float(stack @ geom.normal)) / float(np.linalg.norm(stack)))))
    plane = math.degrees(math.acos(min(1.0, abs(float(geom.normal[2])))))
    tilt = round(max(shear, plane), 1)
    if tilt >= TILT_NOTE_DEG:
        along = f"{dz:.2f} mm" if extents is None else "each slice's own extent"
        notes.append(f"gantry tilt {tilt:.1f} degrees: analysed on the tilted slices, volume from the spacing along the slice normal ({along})")
    else:
        tilt = 0.0
    return _Stack(order, dz, extents, tilt, notes)


def thickness_note(thicknesses: Sequence[float]) -> str:
    """"slice thickness 4 mm (14 slices) and 7 mm (14 slices)", in z order of first appearance."""
    counts: dict[float, int] = {}
    for t in thicknesses:
        key = round(float(t), 2)
        counts[key] = counts.get(key, 0) + 1
    parts = [f"{t:g} mm ({c} slices)" for t, c in counts.items()]
    return "slice thickness " + (" and ".join(parts) if len(parts) <= 2 else ", ".join(parts[:-1]) + " and " + parts[-1])


def _to_hu(raw: np.ndarray, slope: float, intercept: float, padding: float | None, out: np.ndarray) -> None:
    """raw stored values → HU in `out` (float32 view), padding and below-air values → air."""
    np.multiply(raw, slope, out=out, casting="unsafe")
    out += intercept
    if padding is not None:
        out[raw == padding] = AIR_HU
    # Outside the reconstruction circle scanners store -2000 or -3024: not tissue, call it air.
    np.maximum(out, AIR_HU, out=out)


def _decode(ds: Dataset) -> np.ndarray:
    try:
        return ds.pixel_array
    except Exception as exc:  # pydicom raises RuntimeError/NotImplementedError/ValueError by plugin
        ts = ds.file_meta.get("TransferSyntaxUID", "unknown")
        name = getattr(ts, "name", str(ts))
        raise VolumeError(f"cannot decode pixel data in transfer syntax {name} ({type(exc).__name__}: {str(exc)[:120]})") from None


def _padding(ds: Dataset) -> float | None:
    value = ds.get("PixelPaddingValue")
    return None if value is None else float(value)


def _rescale(ds: Dataset) -> tuple[float, float]:
    try:
        slope = float(ds.get("RescaleSlope", 1) or 1)
        intercept = float(ds.get("RescaleIntercept", 0) or 0)
    except (TypeError, ValueError):
        raise VolumeError("malformed Rescale Slope/Intercept") from None
    return slope, intercept


def _load_single_frames(headers: list[tuple[Path, Dataset]]) -> Volume:
    n = len(headers)
    if n < MIN_SLICES:
        raise VolumeError("1 slice: not a volume")
    if n > MAX_SLICES:
        raise VolumeError(f"{n} slices: more than {MAX_SLICES}")
    sizes = {(int(ds.get("Rows", 0) or 0), int(ds.get("Columns", 0) or 0)) for _, ds in headers}
    if len(sizes) != 1:
        raise VolumeError(f"mixed image sizes in one series ({', '.join(f'{r}x{c}' for r, c in sorted(sizes))})")
    rows, cols = sizes.pop()
    if rows < 16 or cols < 16:
        raise VolumeError(f"image matrix {rows}x{cols} is too small")
    first = headers[0][1]
    frames_of_ref = {str(ds.get("FrameOfReferenceUID", "")) for _, ds in headers}
    if len(frames_of_ref) > 1:  # positions from different coordinate systems cannot be stacked
        raise VolumeError(f"{len(frames_of_ref)} frames of reference in one series")
    row, col, normal = _orientation(first.get("ImageOrientationPatient"))
    for _, ds in headers[1:]:
        r, c, _ = _orientation(ds.get("ImageOrientationPatient"))
        if np.abs(r - row).max() > ORIENTATION_TOLERANCE or np.abs(c - col).max() > ORIENTATION_TOLERANCE:
            raise VolumeError("mixed image orientations in one series")
    spacings = {tuple(round(float(v), 4) for v in _vec(ds.get("PixelSpacing"), 2, "Pixel Spacing")) for _, ds in headers}
    if len(spacings) != 1:
        raise VolumeError("mixed pixel spacings in one series")
    dy, dx = spacings.pop()
    if dx <= 0 or dy <= 0:
        raise VolumeError("non-positive Pixel Spacing")
    positions = np.stack([_vec(ds.get("ImagePositionPatient"), 3, "Image Position (Patient)") for _, ds in headers])
    geom = _Geometry(row, col, normal, positions, (dy, dx))
    st = _sort_and_check(geom, [str(ds.get("SOPInstanceUID", "")) for _, ds in headers])
    order, dz, tilt, notes = st.order, st.dz, st.tilt, st.notes
    if st.extents is not None:
        notes.append(thickness_note([_thickness(headers[int(i)][1], e) for i, e in zip(order, st.extents, strict=True)]))
    if rows != cols:
        notes.append(f"non-square matrix {rows}x{cols}")
    hu = np.empty((n, rows, cols), dtype=np.float32)
    sorted_headers: list[Dataset] = []
    sorted_paths: list[Path] = []
    for z, i in enumerate(order):
        path, header = headers[int(i)]
        full = pydicom.dcmread(str(path))
        raw = _decode(full)
        if raw.shape != (rows, cols):
            raise VolumeError(f"pixel data shape {raw.shape} does not match {rows}x{cols}")
        slope, intercept = _rescale(full)
        _to_hu(raw, slope, intercept, _padding(full), hu[z])
        del full, raw
        sorted_headers.append(header)
        sorted_paths.append(path)
    return Volume(hu=hu, spacing=(dx, dy, dz), headers=sorted_headers, tilt_deg=tilt,
                  notes=tuple(notes), paths=sorted_paths, normal=tuple(float(v) for v in normal),  # type: ignore[arg-type]
                  extents=st.extents)


def _thickness(ds: Dataset, extent: float) -> float:
    """The slice's nominal thickness; its extent along the normal when the header has none."""
    try:
        value = float(ds.get("SliceThickness") or 0)
    except (TypeError, ValueError):
        value = 0.0
    return value if value > 0 else extent


def _frame_item(ds: Dataset, i: int, seq: str) -> Dataset | None:
    """A functional group item for frame i: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    shared = ds.get("SharedFunctionalGroupsSequence")
    candidates = []
    if per_frame and i < len(per_frame):
        candidates.append(per_frame[i])
    if shared:
        candidates.append(shared[0])
    for group in candidates:
        inner = group.get(seq)
        if inner:
            return inner[0]  # type: ignore[no-any-return]
    return None


def _load_multiframe(path: Path) -> Volume:
    """Enhanced CT: frames with per-frame (or shared) position, orientation, spacing, rescale."""
    full = pydicom.dcmread(str(path))
    n = int(full.NumberOfFrames)
    if n > MAX_SLICES:
        raise VolumeError(f"{n} frames: more than {MAX_SLICES}")
    rows, cols = int(full.Rows), int(full.Columns)
    orients, positions, spacings, rescales = [], [], [], []
    for i in range(n):
        orient = _frame_item(full, i, "PlaneOrientationSequence")
        pos = _frame_item(full, i, "PlanePositionSequence")
        meas = _frame_item(full, i, "PixelMeasuresSequence")
        pvt = _frame_item(full, i, "PixelValueTransformationSequence")
        if orient is None or pos is None or meas is None:
            raise VolumeError("Enhanced CT frame without plane position, orientation or pixel measures")
        orients.append(_vec(orient.get("ImageOrientationPatient"), 6, "Image Orientation (Patient)"))
        positions.append(_vec(pos.get("ImagePositionPatient"), 3, "Image Position (Patient)"))
        spacings.append(tuple(round(float(v), 4) for v in _vec(meas.get("PixelSpacing"), 2, "Pixel Spacing")))
        rescales.append(_rescale(pvt) if pvt is not None else (1.0, 0.0))
    if any(np.abs(o - orients[0]).max() > ORIENTATION_TOLERANCE for o in orients):
        raise VolumeError("mixed image orientations in one series")
    if len(set(spacings)) != 1:
        raise VolumeError("mixed pixel spacings in one series")
    row, col, normal = _orientation(list(orients[0]))
    dy, dx = spacings[0]
    geom = _Geometry(row, col, normal, np.stack(positions), (dy, dx))
    st = _sort_and_check(geom, [])
    order, dz, tilt, notes = st.order, st.dz, st.tilt, st.notes
    if st.extents is not None:
        notes.append(thickness_note(st.extents))
    notes.append(f"Enhanced CT multi-frame image ({n} frames)")
    raw = _decode(full)
    if raw.ndim == 2:
        raw = raw[None]
    hu = np.empty((n, rows, cols), dtype=np.float32)
    padding = _padding(full)
    for z, i in enumerate(order):
        slope, intercept = rescales[int(i)]
        _to_hu(raw[int(i)], slope, intercept, padding, hu[z])
    del raw
    del full.PixelData
    return Volume(hu=hu, spacing=(dx, dy, dz), headers=[full], tilt_deg=tilt, notes=tuple(notes),
                  paths=[path], normal=tuple(float(v) for v in normal),  # type: ignore[arg-type]
                  frames=[int(i) + 1 for i in order], extents=st.extents)

