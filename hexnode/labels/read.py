"""A received DICOM SEG read onto the slices of the series hexnode analysed, or why it cannot be.

Nothing here guesses. A SEG is taken only when:

* it names the source series (Referenced Series Sequence) and shares its Frame of Reference;
* its frames map onto that series' slices: by the Referenced SOP Instance UID of each frame
  (Derivation Image), which is what hexnode's own SEG and most editors write, or, for a SEG whose
  frames carry no source reference, by each frame's Image Position (Patient) on a slice position
  of the series (within ``POSITION_TOLERANCE_MM``) with the same orientation and matrix;
* one segment is the hemorrhage: the only segment, or the only one whose segmented property is
  Hemorrhage/Hematoma (SCT) or whose label says so.

The pixels are read with highdicom's public API (``segread``, ``get_pixels_by_source_instance``);
the position path uses pydicom's ``pixel_array`` and the per-frame functional groups.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
from numpy.typing import NDArray

POSITION_TOLERANCE_MM = 0.1
ORIENTATION_TOLERANCE = 1e-3
# Segmented Property Type codes that name the hemorrhage (SCT Hemorrhage, Hematoma, Intracranial hemorrhage)
HEMORRHAGE_CODES = {("50960005", "SCT"), ("385494008", "SCT"), ("1386000", "SCT")}
HEMORRHAGE_WORDS = re.compile(r"h(a)?emorrha?ge|h(a)?ematoma|bleed|\bich\b", re.IGNORECASE)


class NotTaken(ValueError):
    """The SEG cannot be taken as the series' reference mask; the message is the recorded reason."""


@dataclass(frozen=True)
class Slices:
    """The analysed series' slices, as hexnode's own SEG references them: the grid every mask is
    mapped onto (index i of a mask lies on ``uids[i]``)."""

    uids: list[str]
    positions: list[tuple[float, float, float] | None]  # Image Position (Patient) of each, when indexed
    orientation: tuple[float, ...]
    rows: int
    columns: int
    frame_of_reference: str
    voxel_ml: float


@dataclass(frozen=True)
class Segment:
    number: int
    label: str
    automatic_by: str  # the algorithm name of an AUTOMATIC segment, "" for a manual or semi-automatic one


def open_seg(path: Path) -> Any:
    """highdicom's Segmentation of the file, or NotTaken with why it cannot be read as one."""
    import highdicom as hd

    try:
        return hd.seg.segread(str(path))
    except Exception as exc:  # any reader failure is the file's: the reason, never a traceback
        raise NotTaken(f"not a readable DICOM segmentation ({type(exc).__name__})") from None


def check_structure(seg: Any) -> None:
    """What a reader may let pass but would make a wrong mask: as many per-frame functional groups as
    frames, and (uncompressed) pixel data that holds every frame."""
    try:
        frames, rows, columns = int(seg.NumberOfFrames), int(seg.Rows), int(seg.Columns)
        bits = int(seg.BitsAllocated)
    except (AttributeError, TypeError, ValueError):
        raise NotTaken("Number of Frames, Rows, Columns or Bits Allocated missing or not a number") from None
    groups = seg.get("PerFrameFunctionalGroupsSequence")
    if groups is None or len(groups) != frames:
        raise NotTaken(f"{frames} frames but {0 if groups is None else len(groups)} per-frame functional groups")
    if not seg.file_meta.TransferSyntaxUID.is_encapsulated:
        need = (frames * rows * columns * bits + 7) // 8
        have = len(seg.get("PixelData") or b"")
        if have < need:
            raise NotTaken(f"its pixel data holds {have} bytes, {frames} frames need {need}")


def referenced_series(seg: Any) -> list[str]:
    out = []
    for item in seg.get("ReferencedSeriesSequence") or []:
        uid = str(item.get("SeriesInstanceUID") or "").strip()
        if uid and uid not in out:
            out.append(uid)
    return out


def choose_segment(seg: Any) -> Segment:
    numbers = list(seg.get_segment_numbers())
    if not numbers:
        raise NotTaken("the SEG has no segment")
    descriptions = [seg.get_segment_description(n) for n in numbers]
    if len(descriptions) == 1:
        chosen = descriptions[0]
    else:
        hits = [d for d in descriptions if _is_hemorrhage(d)]
        if len(hits) != 1:
            raise NotTaken(f"{len(descriptions)} segments, {len(hits)} of them named hemorrhage: "
                           "which one is the reference is not guessed")
        chosen = hits[0]
    automatic = str(chosen.get("SegmentAlgorithmType", "")) == "AUTOMATIC"
    name = str(chosen.get("SegmentAlgorithmName", "") or "").strip() or "unnamed"
    return Segment(int(chosen.segment_number), str(chosen.get("SegmentLabel", ""))[:64], name if automatic else "")


def _is_hemorrhage(description: Any) -> bool:
    for item in description.get("SegmentedPropertyTypeCodeSequence") or []:
        if (str(item.get("CodeValue", "")), str(item.get("CodingSchemeDesignator", ""))) in HEMORRHAGE_CODES:
            return True
    return bool(HEMORRHAGE_WORDS.search(str(description.get("SegmentLabel", ""))))


def own_slices(own: Any, positions: dict[str, tuple[float, float, float]]) -> Slices:
    """The grid of hexnode's own SEG `own` (`positions`: the indexed position of each source instance)."""
    uids = [str(sop) for _study, _series, sop in own.get_source_image_uids()]
    shared = own.SharedFunctionalGroupsSequence[0]
    measures = shared.PixelMeasuresSequence[0]
    dy, dx = (float(v) for v in measures.PixelSpacing)
    dz = float(measures.get("SpacingBetweenSlices") or measures.get("SliceThickness") or 0.0)
    return Slices(uids=uids, positions=[positions.get(u) for u in uids], orientation=_orientation(own, 0),
                  rows=int(own.Rows), columns=int(own.Columns), frame_of_reference=str(own.FrameOfReferenceUID),
                  voxel_ml=dx * dy * dz / 1000.0)


def mask_on(seg: Any, segment_number: int, slices: Slices) -> NDArray[np.uint8]:
    """The segment as a (slice, row, column) 0/1 mask on `slices`; NotTaken when it does not map.
    A slice the SEG has no frame for is empty (editors often omit empty frames)."""
    if str(seg.get("FrameOfReferenceUID", "")) != slices.frame_of_reference:
        raise NotTaken("its Frame of Reference is not the series' (another registration or scan)")
    if (int(seg.Rows), int(seg.Columns)) != (slices.rows, slices.columns):
        raise NotTaken(f"frames of {seg.Rows}x{seg.Columns} pixels on slices of {slices.rows}x{slices.columns}")
    referenced = _frame_sources(seg)
    if referenced:
        foreign = referenced - set(slices.uids)
        if foreign:
            raise NotTaken(f"{len(foreign)} of its frames reference images that are not slices of the series")
        try:
            px = seg.get_pixels_by_source_instance(source_sop_instance_uids=slices.uids,
                                                   segment_numbers=[segment_number],
                                                   assert_missing_frames_are_empty=True, dtype=np.uint8)
        except Exception as exc:  # highdicom says the frames do not map (spatial locations, overlaps ...)
            raise NotTaken(f"its frames do not map onto the series' slices ({_first_line(exc)})") from None
        return (np.asarray(px)[..., 0] > 0).astype(np.uint8)
    return _by_position(seg, segment_number, slices)


def _frame_sources(seg: Any) -> set[str]:
    """SOP Instance UIDs the frames reference (Derivation Image → Source Image), per frame or shared."""
    out: set[str] = set()
    groups = list(seg.get("PerFrameFunctionalGroupsSequence") or [])
    groups += list(seg.get("SharedFunctionalGroupsSequence") or [])
    for group in groups:
        for derivation in group.get("DerivationImageSequence") or []:
            for source in derivation.get("SourceImageSequence") or []:
                uid = str(source.get("ReferencedSOPInstanceUID") or "").strip()
                if uid:
                    out.add(uid)
    return out


def _orientation(ds: Any, frame: int) -> tuple[float, ...]:
    for seq in ("PerFrameFunctionalGroupsSequence", "SharedFunctionalGroupsSequence"):
        groups = ds.get(seq) or []
        group = groups[frame] if seq.startswith("PerFrame") and len(groups) > frame else (groups[0] if groups else None)
        if group is not None and "PlaneOrientationSequence" in group:
            return tuple(float(v) for v in group.PlaneOrientationSequence[0].ImageOrientationPatient)
    raise NotTaken("its frames carry no Image Orientation (Patient)")


def _by_position(seg: Any, segment_number: int, slices: Slices) -> NDArray[np.uint8]:
    """Frames without a source reference: each frame's position must be one of the slices'."""
    frames = list(seg.get("PerFrameFunctionalGroupsSequence") or [])
    if not frames:
        raise NotTaken("its frames reference no source image and carry no per-frame position")
    known = [(i, np.asarray(p, float)) for i, p in enumerate(slices.positions) if p is not None]
    if not known:
        raise NotTaken("its frames reference no source image and the series' slice positions are not indexed")
    labelmap = str(seg.get("SegmentationType", "")) == "LABELMAP"
    pixels = np.asarray(seg.pixel_array)
    if pixels.ndim == 2:
        pixels = pixels[None]
    fractional = str(seg.get("SegmentationType", "")) == "FRACTIONAL"
    half = float(seg.get("MaximumFractionalValue", 255)) / 2.0
    shared = (seg.get("SharedFunctionalGroupsSequence") or [None])[0]
    # one segment: its identification may be shared by every frame instead of repeated per frame
    shared_ident = (shared.get("SegmentIdentificationSequence") if shared is not None else None) or []
    out = np.zeros((len(slices.uids), slices.rows, slices.columns), np.uint8)
    for k, group in enumerate(frames):
        if not labelmap:
            ident = group.get("SegmentIdentificationSequence") or shared_ident
            if not ident or int(ident[0].ReferencedSegmentNumber) != segment_number:
                continue
        if not np.allclose(_orientation(seg, k), slices.orientation, atol=ORIENTATION_TOLERANCE):
            raise NotTaken(f"frame {k + 1} is not in the plane of the series' slices")
        try:
            where = np.asarray(group.PlanePositionSequence[0].ImagePositionPatient, float)
        except (AttributeError, IndexError):
            raise NotTaken(f"frame {k + 1} references no source image and has no position") from None
        i, dist = min(((i, float(np.linalg.norm(p - where))) for i, p in known), key=lambda t: t[1])
        if dist > POSITION_TOLERANCE_MM:
            raise NotTaken(f"frame {k + 1} lies on no slice of the series (nearest {dist:.2f} mm away)")
        frame = pixels[k]
        hit = frame == segment_number if labelmap else (frame >= half if fractional else frame > 0)
        out[i] |= hit.astype(np.uint8)
    return out


def own_mask(own: Any, slices: Slices) -> NDArray[np.uint8]:
    """hexnode's own segment (number 1) on its own grid."""
    px = own.get_pixels_by_source_instance(source_sop_instance_uids=slices.uids, segment_numbers=[1], dtype=np.uint8)
    return (np.asarray(px)[..., 0] > 0).astype(np.uint8)


def dice(a: NDArray[np.uint8], b: NDArray[np.uint8]) -> float:
    """Dice of two masks; 1.0 when both are empty (both say: no hemorrhage)."""
    sa, sb = int(a.sum()), int(b.sum())
    if sa + sb == 0:
        return 1.0
    return 2.0 * int(np.logical_and(a, b).sum()) / (sa + sb)


def _first_line(exc: Exception) -> str:
    text = str(exc).strip().splitlines()
    return (text[0][:160] if text else type(exc).__name__)
