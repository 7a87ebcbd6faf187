"""Real scanners' head CTs through `hexnode run`: what hexnode says against what it should say.

The cases are public scans in public GitHub repositories, named in bench/realct.toml (repository,
commit, paths, licence, what each is and what hexnode should say). Nothing is downloaded here: the
cases are built from local copies of those repositories (bare git dirs as the session's fetch
leaves them under /work/.mirror, or clones; `--mirror DIR`, repeatable), at the manifest's commit,
into bench/output/realct/cases/<id>/ (ignored). Reference masks, where a case has one, go beside
the series in <id>.ref/, never inside it; the bench then compares hexnode's SEG with the mask slice
by slice and prints the Dice coefficient and the mask's own volume (`mask = {paths, format}` in the
manifest; format "nifti" (a label volume in world coordinates; `label` picks the values that count
as blood, default every value above 0) or "seg" (a DICOM SEG that references the series' slices)).
A repository that is missing is named, with how to get it,
and its cases print a "missing" row; the others still run.

    .venv/bin/python bench/realct.py                       # build what is missing, run every case
    .venv/bin/python bench/realct.py --only ge-hispeed-tilt-4x7 --only philips-phantom-idose-1mm
    .venv/bin/python bench/realct.py --build-only --cases DIR   # only write the cases (e.g. to share)
    .venv/bin/python bench/realct.py --list                # the manifest, one line a case

Each case runs `hexnode run CASE --out OUT` in its own process with the repository's models (or
`--models`), so a case that crashes prints its row with the error and the bench goes on. One row a
case: id, what it should say, what it said (analysed / not analysed and why), volume, probability
and risk, the reference where the manifest has one (a volume, readers' labels, a mask's volume), Dice
against the reference mask, seconds, and `ok`: whether
hexnode said what it should (`yes`, `NO`, or `reason?` when it refused as it should but did not
name what the manifest expects). The table is also written to OUT/table.txt, each case's full
output to OUT/runs/<id>/stdout.txt.

`expected` grammar (checked by tests/worker/test_realct_manifest.py):
  "analysed, no hemorrhage"            analysed; no hemorrhage detected
  "analysed, hemorrhage"               analysed; hemorrhage detected (any volume)
  "analysed, hemorrhage 20-45 ml"      analysed; hemorrhage detected, volume within the range
  "analysed"                           analysed; no statement on blood
  "not analysed: phantom | no brain"   refused; the reason names one of the alternatives
                                       (case-insensitive substrings)
"""

from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
import sys
import time
import tomllib
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[1]
MANIFEST = REPO / "bench" / "realct.toml"
OUT = REPO / "bench" / "output" / "realct"
MIRRORS = [Path("/work/.mirror")]
FIELDS = ("id", "repository", "commit", "paths", "licence", "vendor", "what", "expected")
DERIVE_KEYS = {"drop", "set", "compress", "enhanced", "add_from", "add_files"}
_EXPECT = re.compile(
    r"^(?:analysed(?:, (?:no hemorrhage|hemorrhage(?: (?P<lo>\d+(?:\.\d+)?)-(?P<hi>\d+(?:\.\d+)?) ml)?))?"
    r"|not analysed: (?P<reasons>.+))$"
)


@dataclass(frozen=True)
class Expected:
    analysed: bool
    hemorrhage: bool | None = None  # None: no statement
    ml_range: tuple[float, float] | None = None
    reasons: tuple[str, ...] = ()

    @classmethod
    def parse(cls, text: str) -> Expected:
        m = _EXPECT.match(text.strip())
        if m is None:
            raise ValueError(f"expected {text!r} does not follow the grammar in bench/realct.py")
        if m.group("reasons") is not None:
            reasons = tuple(r.strip().lower() for r in m.group("reasons").split("|") if r.strip())
            return cls(analysed=False, reasons=reasons)
        if text.strip() == "analysed":
            return cls(analysed=True)
        if "no hemorrhage" in text:
            return cls(analysed=True, hemorrhage=False)
        rng = (float(m.group("lo")), float(m.group("hi"))) if m.group("lo") else None
        return cls(analysed=True, hemorrhage=True, ml_range=rng)


@dataclass
class Case:
    id: str
    repository: str
    commit: str
    paths: list[str]
    licence: str
    vendor: str
    what: str
    expected: str
    quirks: list[str] = field(default_factory=list)
    derive: dict[str, Any] = field(default_factory=dict)
    mask: dict[str, Any] = field(default_factory=dict)
    reference_ml: float | None = None
    reference_note: str = ""


def load_manifest(path: Path = MANIFEST) -> list[Case]:
    raw = tomllib.loads(path.read_text())
    cases = []
    for entry in raw.get("case", []):
        missing = [k for k in FIELDS if not entry.get(k)]
        if missing:
            raise ValueError(f"case {entry.get('id', '?')}: missing {', '.join(missing)}")
        unknown = set(entry) - set(Case.__dataclass_fields__)
        if unknown:
            raise ValueError(f"case {entry['id']}: unknown fields {sorted(unknown)}")
        cases.append(Case(**entry))
    return cases


# ---------------------------------------------------------------- mirrors and building

def find_git_dir(repository: str, mirrors: list[Path]) -> Path | None:
    """The git dir of `repository` in one of the mirrors: fetch's bare layout or a clone."""
    owner, name = repository.split("/", 1)
    for m in mirrors:
        for cand in (m / f"{owner}+{name}" / "repo", m / f"{owner}+{name}", m / owner / name, m / name):
            for git_dir in (cand, cand / ".git"):
                if (git_dir / "HEAD").is_file() and (git_dir / "objects").is_dir():
                    return git_dir
    return None


def _git(git_dir: Path, *args: str, binary: bool = False) -> Any:
    return subprocess.run(["git", f"--git-dir={git_dir}", *args], capture_output=True, check=False,
                          text=not binary)


def has_commit(git_dir: Path, commit: str) -> bool:
    return _git(git_dir, "cat-file", "-e", f"{commit}^{{commit}}").returncode == 0


def how_to_get(repository: str, commit: str) -> str:
    return (f"{repository} @ {commit[:12]} is not in the mirrors: `git clone https://github.com/{repository} "
            f"MIRROR/{repository.replace('/', '+')}` (any clone holding that commit will do; or the session's "
            f"`fetch github:{repository}`), then pass --mirror MIRROR")


def export(git_dir: Path, commit: str, paths: list[str], dest: Path) -> tuple[int, list[str]]:
    """Write the files under `paths` at `commit` into `dest` (flattened below each path);
    returns (files written, files the mirror lacks: large blobs a partial mirror leaves out)."""
    listing = _git(git_dir, "ls-tree", "-r", "-z", "--format=%(objectname) %(path)", commit, "--", *paths)
    if listing.returncode != 0:
        raise RuntimeError(listing.stderr.strip())
    entries = [e.split(" ", 1) for e in listing.stdout.split("\0") if e]
    if not entries:
        raise RuntimeError(f"nothing under {paths} at {commit[:12]}")
    written, absent = 0, []
    for obj, path in entries:
        rel = _relative(path, paths)
        blob = _git(git_dir, "cat-file", "blob", obj, binary=True)
        if blob.returncode != 0:
            absent.append(path)
            continue
        target = dest / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(blob.stdout)
        written += 1
    return written, absent


def _relative(path: str, roots: list[str]) -> str:
    for root in roots:
        r = root.rstrip("/")
        if path == r:
            return Path(path).name
        if path.startswith(r + "/"):
            return path[len(r) + 1:]
    return path


def build(case: Case, mirrors: list[Path], cases_dir: Path, by_id: dict[str, Case]) -> Path:
    """The case's series folder (built once; a folder already there is kept)."""
    dest = cases_dir / case.id
    stamp = cases_dir / f".{case.id}.built"
    if stamp.is_file() and stamp.read_text() == _fingerprint(case) and dest.is_dir():
        return dest
    git_dir = find_git_dir(case.repository, mirrors)
    if git_dir is None or not has_commit(git_dir, case.commit):
        raise MissingRepository(how_to_get(case.repository, case.commit))
    tmp = cases_dir / f".{case.id}.part"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    _, absent = export(git_dir, case.commit, case.paths, tmp)
    if absent:
        shutil.rmtree(tmp, ignore_errors=True)
        raise RuntimeError(f"{len(absent)} files absent from the mirror of {case.repository} "
                           f"(large blobs; clone the repository in full): {absent[:3]}")
    if case.derive:
        with warnings.catch_warnings():  # libraries' warnings quote header values, patient names among them
            warnings.simplefilter("ignore")
            derive(case, tmp, mirrors, cases_dir, by_id)
    ref = cases_dir / f"{case.id}.ref"
    shutil.rmtree(ref, ignore_errors=True)
    if case.mask:
        ref.mkdir(parents=True)
        _, absent = export(git_dir, case.commit, case.mask["paths"], ref)
        if absent:
            raise RuntimeError(f"reference mask files absent from the mirror: {absent[:3]}")
    shutil.rmtree(dest, ignore_errors=True)
    tmp.rename(dest)
    stamp.write_text(_fingerprint(case))
    return dest


def _fingerprint(case: Case) -> str:
    return json.dumps({"commit": case.commit, "paths": case.paths, "derive": case.derive, "mask": case.mask},
                      sort_keys=True)


class MissingRepository(Exception):
    pass


def derive(case: Case, folder: Path, mirrors: list[Path], cases_dir: Path, by_id: dict[str, Case]) -> None:
    """A real series changed the way real exports change it (a tag dropped by an anonymiser, a
    compressed transfer syntax, a stray slice of another patient in the folder). Only what the
    manifest names is changed; the pixels stay the scanner's."""
    import pydicom
    from pydicom.uid import JPEG2000Lossless, JPEGLSLossless, RLELossless

    syntaxes = {"rle": RLELossless, "jpeg2000": JPEG2000Lossless, "jpegls": JPEGLSLossless}
    d = case.derive
    unknown = set(d) - DERIVE_KEYS
    if unknown:
        raise ValueError(f"case {case.id}: unknown derive keys {sorted(unknown)}")
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path)
        except Exception:  # DICOMDIR leftovers, notes: copied as they are
            continue
        for keyword in d.get("drop", []):
            if keyword in ds:
                delattr(ds, keyword)
        for keyword, value in d.get("set", {}).items():
            setattr(ds, keyword, value)
        if d.get("compress"):
            ds.compress(syntaxes[d["compress"]])
        ds.save_as(path, enforce_file_format=False)
    if d.get("enhanced"):
        _to_enhanced(folder)
    if d.get("add_from"):
        other = by_id[d["add_from"]]
        src = build(other, mirrors, cases_dir, by_id)
        picks = sorted(p for p in src.rglob("*") if p.is_file())
        names = d.get("add_files")
        chosen = [p for p in picks if p.name in names] if names else picks
        extra = folder / f"from-{other.id}"
        extra.mkdir()
        for p in chosen:
            shutil.copy2(p, extra / p.name)


def _to_enhanced(folder: Path) -> None:
    """The series as one Legacy Converted Enhanced CT Image (multi-frame), as archives that
    convert classic series store it; UIDs derived from the source series so rebuilds agree."""
    import pydicom
    from highdicom.legacy import LegacyConvertedEnhancedCTImage
    from pydicom.uid import generate_uid

    paths = [p for p in sorted(folder.rglob("*")) if p.is_file()]
    sources = []
    for p in paths:
        try:
            sources.append((p, pydicom.dcmread(p)))
        except Exception:
            continue
    series_uid = str(sources[0][1].SeriesInstanceUID)
    image = LegacyConvertedEnhancedCTImage(
        [ds for _, ds in sources],
        series_instance_uid=generate_uid(entropy_srcs=[series_uid, "enhanced-series"]),
        series_number=int(sources[0][1].get("SeriesNumber") or 1) + 1000,
        sop_instance_uid=generate_uid(entropy_srcs=[series_uid, "enhanced-instance"]),
        instance_number=1,
    )
    for p, _ in sources:
        p.unlink()
    image.save_as(folder / "enhanced.dcm")


# ---------------------------------------------------------------- running and judging

@dataclass
class Row:
    id: str
    expected: str
    outcome: str = ""
    volume_ml: float | None = None
    probability: float | None = None
    risk: str = ""
    reference: str = ""
    dice: str = ""
    seconds: float | None = None
    ok: str = ""


_VOL = re.compile(r"^volume: ([\d.]+) ml")
_PROB = re.compile(r"^probability of expansion: ([\d.]+)")
_RISK = re.compile(r"^risk: (\w[\w ]*)")
_NOT = re.compile(r"^not analysed: (.*)$")


def run_case(case: Case, folder: Path, out: Path, models: Path | None, timeout: float) -> Row:
    row = Row(case.id, case.expected)
    out.mkdir(parents=True, exist_ok=True)
    shutil.rmtree(out / "result", ignore_errors=True)
    cmd = [sys.executable, "-c", "import sys; from hexnode.cli import main; sys.exit(main(sys.argv[1:]))",
           "run", str(folder), "--out", str(out / "result")]
    if models is not None:
        cmd += ["--models", str(models)]
    t0 = time.perf_counter()
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, cwd=REPO, check=False)
    except subprocess.TimeoutExpired:
        row.seconds = time.perf_counter() - t0
        row.outcome, row.ok = f"timeout after {timeout:.0f} s", "NO"
        return row
    row.seconds = time.perf_counter() - t0
    (out / "stdout.txt").write_text(proc.stdout + "\n--- stderr ---\n" + proc.stderr + f"\n--- rc {proc.returncode}\n")
    parse_output(proc.stdout, proc.returncode, proc.stderr, row)
    judge(Expected.parse(case.expected), row)
    if case.reference_ml is not None:
        row.reference = f"{case.reference_ml:g} ml" + (f" ({case.reference_note})" if case.reference_note else "")
    if case.mask:
        try:
            score, ref_ml = compare_with_mask(case, folder, out / "result")
        except Exception as exc:  # a broken reference is reported in the row, never the end of the bench
            row.dice = f"error: {type(exc).__name__}: {exc}"[:80]
        else:
            row.dice = "no SEG" if score is None else f"{score:.3f}"
            row.reference = f"mask {ref_ml:.1f} ml" + (f"; {row.reference}" if row.reference else "")
    return row


def parse_output(stdout: str, rc: int, stderr: str, row: Row) -> None:
    reasons, hemorrhage = [], None
    for line in stdout.splitlines():
        if m := _NOT.match(line):
            reasons.append(m.group(1))
        elif m := _VOL.match(line):
            row.volume_ml = float(m.group(1))
            hemorrhage = "no hemorrhage detected" not in line
        elif m := _PROB.match(line):
            row.probability = float(m.group(1))
        elif m := _RISK.match(line):
            row.risk = m.group(1)
    if row.volume_ml is not None:
        row.outcome = "analysed, " + ("hemorrhage" if hemorrhage else "no hemorrhage")
    elif reasons:
        row.outcome = "not analysed: " + reasons[0]
    else:
        tail = (stderr.strip().splitlines() or stdout.strip().splitlines() or ["no output"])[-1]
        row.outcome = f"error (rc {rc}): {tail[:160]}"


def judge(exp: Expected, row: Row) -> None:
    said_analysed = row.outcome.startswith("analysed")
    if row.outcome.startswith("error"):
        row.ok = "NO"
    elif exp.analysed != said_analysed:
        row.ok = "NO"
    elif not exp.analysed:
        reason = row.outcome.lower()
        row.ok = "yes" if not exp.reasons or any(r in reason for r in exp.reasons) else "reason?"
    elif exp.hemorrhage is None:
        row.ok = "yes"
    else:
        found = row.outcome.endswith(", hemorrhage")
        if found != exp.hemorrhage:
            row.ok = "NO"
        elif exp.ml_range and row.volume_ml is not None and not (exp.ml_range[0] <= row.volume_ml <= exp.ml_range[1]):
            row.ok = "NO"
        else:
            row.ok = "yes"


# ---------------------------------------------------------------- reference masks

MASK_FORMATS = {"nifti", "seg"}


def series_slices(folder: Path) -> dict[str, Any]:
    """SOP Instance UID -> header of every image slice in the case folder (pixels not read)."""
    import pydicom

    slices: dict[str, Any] = {}
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:
            continue
        if "ImagePositionPatient" in ds and "ImageOrientationPatient" in ds and "PixelSpacing" in ds:
            slices[str(ds.SOPInstanceUID)] = ds
    return slices


def masks_from_seg(path: Path, labels: set[int] | None = None) -> dict[str, Any]:
    """SOP Instance UID of the source slice -> boolean mask, from a DICOM SEG (hexnode's or a
    reference): frames of the chosen segments (all when `labels` is None) that reference one slice
    are OR-ed together."""
    import pydicom

    seg = pydicom.dcmread(path)
    frames = seg.pixel_array.reshape(int(seg.get("NumberOfFrames", 1)), seg.Rows, seg.Columns)
    out: dict[str, Any] = {}
    for i, fg in enumerate(seg.PerFrameFunctionalGroupsSequence):
        segment = int(fg.SegmentIdentificationSequence[0].ReferencedSegmentNumber) \
            if "SegmentIdentificationSequence" in fg else 1
        if labels is not None and segment not in labels:
            continue
        for derivation in fg.get("DerivationImageSequence", []):
            for source in derivation.get("SourceImageSequence", []):
                uid = str(source.ReferencedSOPInstanceUID)
                frame = frames[i] > 0
                out[uid] = out[uid] | frame if uid in out else frame
    if not out and frames.size:
        raise ValueError(f"{path.name}: no frame references a source slice")
    return out


def masks_from_nifti(path: Path, slices: dict[str, Any], labels: set[int] | None = None) -> dict[str, Any]:
    """SOP Instance UID -> boolean mask: each slice's pixel centres, in patient coordinates from its
    own position and orientation, looked up (nearest voxel) in the NIfTI label volume, so a mask
    written in any orientation or voxel order lines up with the series as it is stored."""
    import nibabel as nib
    import numpy as np

    img = nib.load(str(path))
    data = np.asanyarray(img.dataobj)
    while data.ndim > 3:
        data = data[..., 0]
    blood = np.isin(data, sorted(labels)) if labels else data > 0
    to_voxel = np.linalg.inv(img.affine)
    lps_to_ras = np.diag([-1.0, -1.0, 1.0])
    out = {}
    for uid, ds in slices.items():
        rows, cols = int(ds.Rows), int(ds.Columns)
        ipp = np.array([float(v) for v in ds.ImagePositionPatient])
        iop = np.array([float(v) for v in ds.ImageOrientationPatient])
        dr, dc = (float(v) for v in ds.PixelSpacing)  # between rows, between columns
        r, c = np.meshgrid(np.arange(rows), np.arange(cols), indexing="ij")
        world = ipp + c[..., None] * dc * iop[:3] + r[..., None] * dr * iop[3:]
        ras = world @ lps_to_ras.T
        vox = ras @ to_voxel[:3, :3].T + to_voxel[:3, 3]
        idx = np.rint(vox).astype(int)
        inside = np.all((idx >= 0) & (idx < np.array(blood.shape[:3])), axis=-1)
        mask = np.zeros((rows, cols), bool)
        mask[inside] = blood[idx[inside, 0], idx[inside, 1], idx[inside, 2]]
        out[uid] = mask
    return out


def dice(pred: dict[str, Any], ref: dict[str, Any]) -> float:
    """Dice over every slice either side names; a slice one side lacks counts as empty there."""
    import numpy as np

    both = inter = 0
    for uid in set(pred) | set(ref):
        p, r = pred.get(uid), ref.get(uid)
        p_sum = 0 if p is None else int(np.count_nonzero(p))
        r_sum = 0 if r is None else int(np.count_nonzero(r))
        both += p_sum + r_sum
        if p is not None and r is not None:
            inter += int(np.count_nonzero(p & r))
    return 1.0 if both == 0 else 2.0 * inter / both


def mask_volume_ml(masks: dict[str, Any], slices: dict[str, Any]) -> float:
    """The mask's volume on the series' grid: pixels x pixel area x the spacing to the neighbouring
    slice along the normal (the median spacing where a slice's own gap is unknown)."""
    import numpy as np

    if not slices:
        return 0.0
    first = next(iter(slices.values()))
    iop = np.array([float(v) for v in first.ImageOrientationPatient])
    normal = np.cross(iop[:3], iop[3:])
    depth = {uid: float(np.dot(normal, [float(v) for v in ds.ImagePositionPatient])) for uid, ds in slices.items()}
    order = sorted(depth, key=depth.__getitem__)
    gaps = np.diff([depth[u] for u in order])
    step = float(np.median(gaps)) if len(gaps) else float(first.get("SliceThickness") or 1.0)
    total = 0.0
    for uid, mask in masks.items():
        ds = slices.get(uid)
        if ds is None:
            continue
        dr, dc = (float(v) for v in ds.PixelSpacing)
        total += int(np.count_nonzero(mask)) * dr * dc * step
    return total / 1000.0


def compare_with_mask(case: Case, folder: Path, result: Path) -> tuple[float | None, float]:
    """(Dice of hexnode's SEG against the case's reference mask or None when hexnode wrote no SEG,
    the reference mask's volume in ml)."""
    fmt = case.mask.get("format")
    if fmt not in MASK_FORMATS:
        raise ValueError(f"mask format {fmt!r} is not one of {sorted(MASK_FORMATS)}")
    labels = set(case.mask["label"]) if case.mask.get("label") else None
    ref_dir = folder.with_name(f"{case.id}.ref")
    files = sorted(p for p in ref_dir.rglob("*") if p.is_file())
    if not files:
        raise FileNotFoundError(f"no reference mask in {ref_dir}")
    slices = series_slices(folder)
    ref: dict[str, Any] = {}
    for f in files:
        part = masks_from_nifti(f, slices, labels) if fmt == "nifti" else masks_from_seg(f, labels)
        for uid, m in part.items():
            ref[uid] = ref[uid] | m if uid in ref else m
    ref_ml = mask_volume_ml(ref, slices)
    segs = sorted(result.rglob("SEG*.dcm")) if result.is_dir() else []
    if not segs:
        return None, ref_ml
    pred: dict[str, Any] = {}
    for s in segs:
        pred.update(masks_from_seg(s))
    return dice(pred, ref), ref_ml


def table(rows: list[Row]) -> str:
    head = ("id", "expected", "outcome", "ml", "p", "risk", "reference", "dice", "s", "ok")
    body = [(r.id, r.expected, r.outcome,
             "" if r.volume_ml is None else f"{r.volume_ml:.1f}",
             "" if r.probability is None else f"{r.probability:.3f}",
             r.risk, r.reference, r.dice, "" if r.seconds is None else f"{r.seconds:.1f}", r.ok) for r in rows]
    widths = [max(len(str(x)) for x in col) for col in zip(head, *body, strict=True)]
    lines = ["  ".join(str(x).ljust(w) for x, w in zip(line, widths, strict=True)).rstrip() for line in (head, *body)]
    lines.insert(1, "  ".join("-" * w for w in widths))
    said = sum(r.ok == "yes" for r in rows)
    lines.append(f"\n{said} of {len(rows)} cases: hexnode said what it should"
                 f" ({sum(r.ok == 'NO' for r in rows)} NO, {sum(r.ok == 'reason?' for r in rows)} reason?,"
                 f" {sum(r.ok == 'missing' for r in rows)} missing)")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--manifest", type=Path, default=MANIFEST)
    ap.add_argument("--mirror", type=Path, action="append", help="folder of repository copies (repeatable; "
                    "default /work/.mirror)")
    ap.add_argument("--out", type=Path, default=OUT, help="where cases and runs go (default bench/output/realct)")
    ap.add_argument("--cases", type=Path, help="where the case folders go (default OUT/cases)")
    ap.add_argument("--models", type=Path, help="models folder (default: hexnode's, the repository's models/)")
    ap.add_argument("--only", action="append", help="run only this case id (repeatable)")
    ap.add_argument("--build-only", action="store_true", help="write the cases, run nothing")
    ap.add_argument("--list", action="store_true", help="print the manifest and exit")
    ap.add_argument("--timeout", type=float, default=600.0, help="seconds a case may run")
    args = ap.parse_args(argv)

    cases = load_manifest(args.manifest)
    by_id = {c.id: c for c in cases}
    if args.list:
        for c in cases:
            print(f"{c.id:34s} {c.repository:32s} {c.expected:40s} {c.what}")
        return 0
    chosen = [by_id[i] for i in args.only] if args.only else cases
    mirrors = args.mirror or MIRRORS
    cases_dir = args.cases or args.out / "cases"
    cases_dir.mkdir(parents=True, exist_ok=True)

    missing: dict[str, str] = {}
    rows: list[Row] = []
    for case in chosen:
        if case.repository in missing:
            rows.append(Row(case.id, case.expected, outcome="missing repository", ok="missing"))
            continue
        try:
            folder = build(case, mirrors, cases_dir, by_id)
        except MissingRepository as exc:
            missing[case.repository] = str(exc)
            rows.append(Row(case.id, case.expected, outcome="missing repository", ok="missing"))
            continue
        except Exception as exc:  # one case that cannot be built is a row, never the end of the bench
            rows.append(Row(case.id, case.expected, outcome=f"build failed: {type(exc).__name__}: {exc}"[:200],
                            ok="NO"))
            continue
        if args.build_only:
            print(f"built {case.id}: {folder}")
            continue
        try:
            row = run_case(case, folder, args.out / "runs" / case.id, args.models, args.timeout)
        except Exception as exc:
            row = Row(case.id, case.expected, outcome=f"bench error: {type(exc).__name__}: {exc}"[:200], ok="NO")
        rows.append(row)
        print(f"{row.id}: {row.outcome} [{row.ok}]", file=sys.stderr, flush=True)

    notes = [f"missing: {text}" for text in missing.values()]
    if args.build_only:
        print("\n".join(notes), file=sys.stderr)
        return 1 if missing else 0
    text = "\n".join([table(rows), *notes])
    print(text)
    (args.out / "table.txt").write_text(text + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
