"""sha256 digests of the synthetic generator's output, to prove a refactor left it bit-identical.

Covers each kind of case (plain, hard, normal head, tilted, mixed thickness, thin, labelled short
stack), the follow-up replay of two of them, and the DICOM files `hexnode synth` writes for two
cases with their follow-ups. Run it before and after a change and diff the output:

    .venv/bin/python bench/synth_digest.py > before.txt   # ... change ...
    .venv/bin/python bench/synth_digest.py | diff before.txt -
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import io
import json
import tempfile
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.synth.phantom import Case, generate_case, generate_followup

SEED = 7
#: (name, index, generate_case keyword arguments)
CASES: list[tuple[str, int, dict[str, Any]]] = [
    ("plain", 0, {}),
    ("hard", 1, {"hard": True}),
    ("normal", 2, {"normal": True}),
    ("tilt20", 3, {"tilt_deg": 20.0}),
    ("mixed", 4, {"mixed": ((4.0, 14), (7.0, 14))}),
    ("thin", 5, {"thin": True}),
    ("labels", 6, {"n_slices": 8, "with_labels": True}),
    ("hard_tilt", 9, {"hard": True, "tilt_deg": 12.0}),
]
FOLLOWUPS = ("plain", "mixed")


def digest(case: Case) -> str:
    h = hashlib.sha256()
    for a in (case.hu, case.mask, case.labels):
        if a is not None:
            h.update(str((a.dtype, a.shape)).encode())
            h.update(np.ascontiguousarray(a).tobytes())
    h.update(json.dumps(case.truth.to_json(), sort_keys=True, default=repr).encode())
    h.update(repr((case.spacing, case.geometry, case.acquisition)).encode())
    h.update(json.dumps(case.extra, sort_keys=True, default=repr).encode())
    return h.hexdigest()


def dicom_digest(out: Path) -> str:
    """sha256 over every file `hexnode synth` wrote (relative path and bytes)."""
    h = hashlib.sha256()
    for p in sorted(q for q in out.rglob("*") if q.is_file()):
        h.update(str(p.relative_to(out)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--no-dicom", action="store_true", help="skip the `hexnode synth` DICOM digest")
    args = ap.parse_args()
    made: dict[str, tuple[Case, dict[str, Any]]] = {}
    for name, index, kw in CASES:
        case = generate_case(SEED, index, **kw)
        made[name] = (case, kw)
        print(f"{name:10s} {digest(case)}", flush=True)
    for name in FOLLOWUPS:
        case, kw = made[name]
        fu = generate_followup(case, **{k: v for k, v in kw.items() if k in ("thin", "hard", "tilt_deg", "mixed")})
        print(f"{'fu-' + name:10s} {digest(fu)}", flush=True)
    if not args.no_dicom:
        from hexnode.synth.cli import run_synth

        with tempfile.TemporaryDirectory() as tmp:
            ns = argparse.Namespace(bayes_auc=False, out=tmp, n=2, seed=SEED, thin=False, hard=False, tilt=0.0,
                                    normal=False, mixed=None, followup=True, transfer_syntax="explicit")
            with contextlib.redirect_stdout(io.StringIO()):  # its per-case lines carry timings
                run_synth(ns)
            print(f"{'dicom':10s} {dicom_digest(Path(tmp))}", flush=True)


if __name__ == "__main__":
    main()
