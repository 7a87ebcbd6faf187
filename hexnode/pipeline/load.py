"""DICOM CT files → one HU volume on the slice grid, or a `VolumeError` that says why not.

The volume stays on the scanner's own grid (rows × columns × slices, any matrix size): the result
objects (SEG) must reference the source images frame for frame, so resampling belongs to the model
stage, which maps its mask back. Slices are sorted by Image Position projected on the slice
normal, never by Instance Number (PACS renumber, reformat and resend; some drop it or repeat it).
Runs of different spacing (GE 4 + 7 mm) and slices that overlap their neighbours (GE starts its
7 mm run 1.08 mm above the last 4 mm slice) are read, each slice counting its own share of the
axis (`slice_extents`); gaps, irregular steps and two images at one position are refused. The
gantry tilt keeps its sign (the header's, where it agrees with the geometry).

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

from hexnode import sop
from hexnode.series.header import MAX_SLICES, VolumeError, read_header

CT_SOP_CLASSES = frozenset(sop.CT_SOP_CLASSES)

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
    # Spacing that varies (mixed thickness, overlapping slices): each slice's share of the axis
    # along the normal (mm, `slice_extents`), for the volume and the coverage. None: all sz.
    extents: tuple[float, ...] | None = None
    # Image Orientation (Patient): the row and column direction cosines (LPS) of the slices
    orientation: tuple[float, ...] = (1.0, 0.0, 0.0, 0.0, 1.0, 0.0)

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
    dz: float  # the spacing of the volume (the mean extent when the spacing varies)
    extents: tuple[float, ...] | None  # each slice's extent along the normal; None: all dz
    tilt: float  # signed, degrees (0 when under TILT_NOTE_DEG)
    notes: list[str]


# A mixed series is read in runs of constant spacing; a run needs this many steps, shorter
# stretches are the steps between runs (or gaps, or overlaps).
MIN_RUN_STEPS = 3
MAX_RUNS = 6
# The nominal tilt in the header and the tilt of the geometry agree within this (degrees).
TILT_AGREE_DEG = 1.0


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


@dataclass(frozen=True)
class _Steps:
    uniform: bool  # one constant spacing
    overlaps: list[float]  # the steps shorter than the spacing on either side (slices overlap there)


def _check_steps(steps: np.ndarray) -> _Steps:
    """Reject gaps and irregular spacing; accept runs of constant spacing (GE 4 + 7 mm head
    protocols, 2.5 + 5 mm, several ranges) and slices that overlap their neighbours (GE writes
    its 7 mm run starting 1.08 mm above the last 4 mm slice): a step shorter than the spacing
    around it leaves nothing out, only a step longer than it does."""
    runs = _runs(steps)
    if len(runs) == 1:
        return _Steps(True, [])
    # a short series judged against its longest stretch
    long = [r for r in runs if r[1] - r[0] >= MIN_RUN_STEPS] or [max(runs, key=lambda r: r[1] - r[0])]
    missing, worst, expected = 0, 0.0, 0.0
    overlaps: list[float] = []
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
        elif step > hi * (1 + SPACING_TOLERANCE):
            raise VolumeError(f"inconsistent slice spacing (a step of {step:.2f} mm where "
                              f"{_mm(lo, hi)} is expected; steps {steps.min():.2f}-{steps.max():.2f} mm)")
        elif step < lo * (1 - SPACING_TOLERANCE):
            overlaps.append(float(step))
    if missing:
        raise VolumeError(f"gap in slice positions: about {missing} missing slices "
                          f"(step {worst:.2f} mm, expected {expected:.2f} mm)")
    if len(long) > MAX_RUNS:
        raise VolumeError(f"inconsistent slice spacing ({len(long)} different spacings)")
    return _Steps(False, overlaps)


def _mm(lo: float, hi: float) -> str:
    return f"{lo:.2f} mm" if abs(hi - lo) < 0.005 else f"{lo:.2f}-{hi:.2f} mm"


def slice_extents(centres: Sequence[float] | np.ndarray, thickness: Sequence[float] | np.ndarray) -> tuple[float, ...]:
    """Each slice's share of the axis along the slice normal (mm), in z order, so that every
    millimetre is counted once however the slices are spaced.

    `centres`: ascending positions along the normal; `thickness`: each slice's nominal thickness
    (NaN or 0 when unknown). The boundary between two neighbours is the midpoint of their centres,
    moved into the stretch between the two slabs' facing edges: where the slabs overlap it stays
    inside the part both cover (the GE 4 + 7 mm transition: the last 4 mm slice keeps its own
    upper half up to the midpoint, the 7 mm slice the rest), where they abut it is the common
    edge (a contiguous 4 mm run then a 7 mm run: each slice exactly its own thickness), where they
    leave a gap it splits the gap between them. The end slices reach half a step outwards, as on
    a uniform grid (n slices of spacing s cover n x s)."""
    c = np.asarray(centres, np.float64)
    t = np.asarray(thickness, np.float64)
    t = np.where(np.isfinite(t) & (t > 0), t, np.nan)
    mid = (c[:-1] + c[1:]) / 2.0
    top = c[:-1] + t[:-1] / 2.0  # upper edge of the lower slab
    bottom = c[1:] - t[1:] / 2.0  # lower edge of the upper slab
    lo, hi = np.fmin(top, bottom), np.fmax(top, bottom)
    known = np.isfinite(top) & np.isfinite(bottom)
    bound = np.where(known, np.clip(mid, np.where(known, lo, mid), np.where(known, hi, mid)), mid)
    first = c[0] - (c[1] - c[0]) / 2.0
    last = c[-1] + (c[-1] - c[-2]) / 2.0
    edges = np.concatenate([[first], bound, [last]])
    return tuple(float(v) for v in np.diff(edges))


def _signed_tilt(geom: _Geometry, order: np.ndarray, nominal: float | None) -> float:
    """The gantry tilt in degrees with its sign.

    The geometry gives the angle between the table axis (the stack of image positions) and the
    slice normal, signed as a rotation about the image rows (positive when the image columns rise
    towards the patient's back, as DICOM states it for a supine head-first patient: the top of
    the gantry tilted towards where the table enters). Vendors do not agree on that sign (GE
    writes +18.5 where Philips writes -18.5 for the same orientation), so where the header's
    nominal Gantry/Detector Tilt agrees with the geometry in size, its sign is the one reported:
    the value the technologist set and saw on the console. Images reformatted off the axial plane
    (a normal off patient z, an unsheared stack) report the plane's angle, signed the same way."""
    stack = geom.positions[order[-1]] - geom.positions[order[0]]
    length = float(np.linalg.norm(stack))
    axis = stack / length if length > 0 else np.array([0.0, 0.0, 1.0])
    if abs(float(axis @ geom.normal)) < 1e-6:  # in-plane stack: not a slice stack at all
        axis = np.array([0.0, 0.0, 1.0])
    shear = _angle(axis, geom.normal, geom.row)
    # the plane's own angle: the table axis taken as patient z
    z = np.array([0.0, 0.0, 1.0])
    plane = _angle(z, geom.normal, geom.row) if abs(float(geom.normal[2])) > 1e-6 else 90.0
    tilt = shear if abs(shear) >= abs(plane) else plane
    if nominal is not None and nominal != 0.0 and abs(abs(nominal) - abs(tilt)) <= TILT_AGREE_DEG:
        tilt = math.copysign(abs(tilt), nominal)
    return tilt


def _angle(axis: np.ndarray, normal: np.ndarray, row: np.ndarray) -> float:
    """Signed angle (degrees) from `axis` to the slice normal, about the image row direction;
    the normal is taken on the side of the axis."""
    n = normal if float(axis @ normal) >= 0 else -normal
    return math.degrees(math.atan2(float(np.cross(axis, n) @ row), float(axis @ n)))


def _nominal_tilt(ds: Dataset | None) -> float | None:
    try:
        value = ds.get("GantryDetectorTilt") if ds is not None else None
        return float(value) if value not in (None, "") else None
    except (TypeError, ValueError):
        return None


def _sort_and_check(geom: _Geometry, thickness: Sequence[float], nominal_tilt: float | None = None,
                    *, headers: Sequence[Dataset] = ()) -> _Stack:
    """Order along the normal; reject duplicates and gaps; accept runs of mixed spacing and
    overlapping slices (each slice then counts its own share of the axis, `slice_extents`).

    `thickness`: each given slice's nominal thickness (NaN unknown); `headers`: the given
    slices' headers (single-frame series), to say how two images at one position differ."""
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
        pairs = [(int(order[k]), int(order[k + 1])) for k in np.flatnonzero(steps < SAME_POSITION_MM)]
        raise VolumeError(f"duplicate slice positions with different SOP Instance UIDs ({dup} positions): "
                          f"two reconstructions or acquisitions mixed in one series{_how_they_differ(headers, pairs)}")
    st = _check_steps(steps)
    thick = np.asarray(thickness, np.float64)[order] if len(thickness) == n else np.full(n, np.nan)
    extents = None if st.uniform else slice_extents(ds, thick)
    dz = float(np.median(steps)) if extents is None else float(np.mean(extents))
    notes: list[str] = []
    if st.overlaps:
        where = "1 place" if len(st.overlaps) == 1 else f"{len(st.overlaps)} places"
        notes.append(f"slices overlap along the slice normal at {where} (step "
                     f"{', '.join(f'{v:.2f}' for v in st.overlaps[:3])} mm): each part of the head counted once for the volume")
    # Gantry tilt: slices stacked along the table while the image plane leans, so the stack
    # direction is sheared against the normal. The volume uses the spacing along the normal.
    tilt = round(_signed_tilt(geom, order, nominal_tilt), 1)
    if abs(tilt) >= TILT_NOTE_DEG:
        along = f"{dz:.2f} mm" if extents is None else "each slice's own extent"
        notes.append(f"gantry tilt {tilt:.1f} degrees: analysed on the tilted slices, volume from the spacing along the slice normal ({along})")
    else:
        tilt = 0.0
    return _Stack(order, dz, extents, tilt, notes)


# What tells two reconstructions of one acquisition apart: coded values a reason (and so a log
# line) may carry; never free text such as a description.
_RECONSTRUCTION_KEYS = ("ConvolutionKernel", "SliceThickness", "ImageType", "AcquisitionNumber",
                        "ReconstructionDiameter")


def _how_they_differ(headers: Sequence[Dataset], pairs: Sequence[tuple[int, int]]) -> str:
    """'' or "; they differ in ConvolutionKernel (H30s / H70h)" for the first pair that differs."""
    if not headers:
        return ""
    for a, b in pairs:
        for key in _RECONSTRUCTION_KEYS:
            va, vb = (_short(headers[i].get(key)) for i in (a, b))
            if va != vb:
                return f"; they differ in {key} ({va or 'none'} / {vb or 'none'})"
    return ""


def _short(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, str | bytes):
        return str(value).strip()[:32]
    try:
        return "\\".join(str(v) for v in value)[:32]  # type: ignore[attr-defined]
    except TypeError:
        return str(value)[:32]


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
    if len(spacings) != 1:  # compared to 0.1 um; the value itself as written (0.47161 is not 0.4716)
        raise VolumeError("mixed pixel spacings in one series")
    dy, dx = (float(v) for v in _vec(first.get("PixelSpacing"), 2, "Pixel Spacing"))
    if dx <= 0 or dy <= 0:
        raise VolumeError("non-positive Pixel Spacing")
    positions = np.stack([_vec(ds.get("ImagePositionPatient"), 3, "Image Position (Patient)") for _, ds in headers])
    geom = _Geometry(row, col, normal, positions, (dy, dx))
    thickness = [_nominal_thickness(ds) for _, ds in headers]
    st = _sort_and_check(geom, thickness, _nominal_tilt(first), headers=[ds for _, ds in headers])
    order, dz, tilt, notes = st.order, st.dz, st.tilt, st.notes
    if st.extents is not None:
        sorted_thickness = [_thickness(headers[int(i)][1], e) for i, e in zip(order, st.extents, strict=True)]
        if len({round(t, 2) for t in sorted_thickness}) > 1:
            notes.append(thickness_note(sorted_thickness))
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
                  extents=st.extents, orientation=(*map(float, row), *map(float, col)))


def _nominal_thickness(ds: Dataset | None) -> float:
    """Slice Thickness in mm; NaN when absent or malformed."""
    try:
        value = float(ds.get("SliceThickness") or 0) if ds is not None else 0.0
    except (TypeError, ValueError):
        value = 0.0
    return value if value > 0 else math.nan


def _thickness(ds: Dataset, extent: float) -> float:
    """The slice's nominal thickness; its extent along the normal when the header has none."""
    value = _nominal_thickness(ds)
    return extent if math.isnan(value) else value


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
    orients, positions, spacings, rescales, thickness = [], [], [], [], []
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
        thickness.append(_nominal_thickness(meas))
        rescales.append(_rescale(pvt) if pvt is not None else (1.0, 0.0))
    if any(np.abs(o - orients[0]).max() > ORIENTATION_TOLERANCE for o in orients):
        raise VolumeError("mixed image orientations in one series")
    if len(set(spacings)) != 1:
        raise VolumeError("mixed pixel spacings in one series")
    row, col, normal = _orientation(list(orients[0]))
    first_measures = _frame_item(full, 0, "PixelMeasuresSequence")
    if first_measures is None:  # every frame was checked above; kept for the type checker
        raise VolumeError("Enhanced CT frame without plane position, orientation or pixel measures")
    dy, dx = (float(v) for v in _vec(first_measures.get("PixelSpacing"), 2, "Pixel Spacing"))
    geom = _Geometry(row, col, normal, np.stack(positions), (dy, dx))
    st = _sort_and_check(geom, thickness, _nominal_tilt(full))
    order, dz, tilt, notes = st.order, st.dz, st.tilt, st.notes
    if st.extents is not None:
        sorted_thickness = [e if math.isnan(thickness[int(i)]) else thickness[int(i)]
                            for i, e in zip(order, st.extents, strict=True)]
        if len({round(t, 2) for t in sorted_thickness}) > 1:
            notes.append(thickness_note(sorted_thickness))
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
                  frames=[int(i) + 1 for i in order], extents=st.extents,
                  orientation=(*map(float, row), *map(float, col)))

