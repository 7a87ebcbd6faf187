"""`hexnode synth`: write synthetic series with ground truth, or print the Bayes ceiling."""

from __future__ import annotations

import argparse
import json
import logging
import sys
import time
from pathlib import Path
from typing import Any

from hexnode.synth import hemodel
from hexnode.synth.geometry import Run

log = logging.getLogger("hexnode.synth")


def parse_runs(text: str | None, overlap_mm: float = 0.0) -> tuple[Run, ...] | None:
    """'4x14,7x14' -> ((4.0, 14), (7.0, 14)): runs of (thickness mm, slices), bottom first;
    `overlap_mm` > 0: each run after the first reaches that far back into the one below
    ((4.0, 14), (7.0, 14, 4.42)), as GE writes its 4 + 7 mm head protocol."""
    if not text:
        return None
    if overlap_mm < 0:
        raise ValueError(f"--run-overlap {overlap_mm:g}: a distance in mm, 0 or more")
    runs = []
    for part in text.split(","):
        thk, sep, count = part.strip().partition("x")
        try:
            t, c = float(thk), int(count)
        except ValueError:
            raise ValueError(f"--mixed {text!r}: expected runs like 4x14,7x14 (thickness mm x slices)") from None
        if not sep or t <= 0 or c < 1:
            raise ValueError(f"--mixed {text!r}: expected runs like 4x14,7x14 (thickness mm x slices)")
        runs.append((t, c))
    if overlap_mm > 0:
        # the step at a change is (t1 + t2) / 2 - overlap: it must stay a step up the table
        shortest = min(((a[0] + b[0]) / 2.0 for a, b in zip(runs, runs[1:], strict=False)), default=0.0)
        if overlap_mm >= shortest:
            raise ValueError(f"--run-overlap {overlap_mm:g}: must be less than {shortest:g} mm "
                             "(half the two thicknesses at a change)")
        return (runs[0], *((t, c, float(overlap_mm)) for t, c in runs[1:]))
    return tuple(runs)


def header_options(args: argparse.Namespace) -> tuple[dict[str, Any], list[str]]:
    """(values to write, keywords to leave out) from --vendor, --no-body-part (no Body Part Examined
    and no description or protocol that could name one, as anonymisers and older scanners leave a
    series), --no-frame-of-reference."""
    from hexnode.synth.dicom import VENDORS

    vendor = getattr(args, "vendor", None)
    if vendor and vendor not in VENDORS:
        raise ValueError(f"--vendor {vendor!r}: one of {', '.join(sorted(VENDORS))}")
    header = dict(VENDORS[vendor]) if vendor else {}
    drop = []
    if getattr(args, "no_body_part", False):  # the headers say nothing about the body part (all type 3)
        for keyword in ("BodyPartExamined", "SeriesDescription", "StudyDescription", "ProtocolName"):
            header.pop(keyword, None)
            drop.append(keyword)
    if getattr(args, "no_frame_of_reference", False):
        drop.append("FrameOfReferenceUID")
    return header, drop


def run_synth(args: argparse.Namespace) -> int:
    if getattr(args, "bayes_auc", False):
        draws = int(getattr(args, "draws", 20000))
        seed = int(getattr(args, "seed", 0))
        prevalence, auc = hemodel.bayes_auc(draws, seed)
        print(f"generative HE model {hemodel.MODEL_VERSION}")
        print(hemodel.formula_text())
        print(f"draws={draws} seed={seed} prevalence={prevalence:.4f} bayes_auc={auc:.4f}")
        return 0
    if getattr(args, "scanner_profile", None):
        from hexnode.synth.scanner import profile_named

        try:
            profile_named(args.scanner_profile)
        except ValueError as exc:
            print(f"hexnode synth: {exc}", file=sys.stderr)
            return 2
        if getattr(args, "followup", False):
            print("hexnode synth: --scanner-profile is not rendered into follow-ups; leave out --followup", file=sys.stderr)
            return 2
    if not args.out:
        print("hexnode synth: --out is required (or use --bayes-auc)")
        return 2
    from hexnode.synth.dicom import write_case
    from hexnode.synth.phantom import generate_case, generate_followup

    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    tilt = float(getattr(args, "tilt", 0.0) or 0.0)
    ts = getattr(args, "transfer_syntax", "explicit")
    if ts not in ("explicit", "implicit"):
        print(f"hexnode synth: unknown --transfer-syntax {ts!r} (explicit | implicit)")
        return 2
    try:
        mixed = parse_runs(getattr(args, "mixed", None), float(getattr(args, "run_overlap", 0.0) or 0.0))
        header, drop = header_options(args)
    except ValueError as exc:
        print(f"hexnode synth: {exc}")
        return 2
    if getattr(args, "lookalike", None):  # not a non-contrast head, or a plain head like one
        from hexnode.synth.lookalikes import write_lookalikes

        return write_lookalikes(args.lookalike, out, seed=int(args.seed), n=int(args.n), tilt_deg=tilt,
                                thin=bool(args.thin), mixed=mixed, transfer_syntax=ts)
    for i in range(int(args.n)):
        t0 = time.perf_counter()
        case = generate_case(int(args.seed), i, thin=bool(args.thin), hard=bool(args.hard), tilt_deg=tilt,
                             normal=bool(getattr(args, "normal", False)), mixed=mixed,
                             profile=getattr(args, "scanner_profile", None))
        case_dir = out / f"case-{i:04d}"
        paths = write_case(case, case_dir, transfer_syntax=ts, header=header, drop=drop)
        fu_summary = None
        if getattr(args, "followup", False) and not case.truth.normal:
            # generated after the baseline is written: the baseline's files do not depend on it
            fu = generate_followup(case, thin=bool(args.thin), hard=bool(args.hard), tilt_deg=tilt, mixed=mixed)
            write_case(fu, case_dir / "followup", transfer_syntax=ts, header=header, drop=drop)
            f = fu.extra["followup"]
            fu_summary = {"hours": f["hours"], "volume_ml": round(f["volume_ml"], 2),
                          "growth_ml": round(f["growth_ml"], 2), "expansion": f["expansion"]}
        t = case.truth
        summary = {
            "case": case_dir.name, "slices": len(paths), "volume_ml": round(t.volume_ml, 2),
            "he_probability": round(t.he_probability, 3), "he_label": t.he_label, "location": t.location,
            "hard": [k for k, v in t.hard.items() if v], "normal": t.normal,
            "seconds": round(time.perf_counter() - t0, 2),
        }
        if fu_summary is not None:
            summary["followup"] = fu_summary
        print(json.dumps(summary))
    return 0
