"""The README's summary image (docs/sc-example.png): a synthetic head CT through the worker's own
path (files -> load -> committed models -> SEG/SR/SC) and the SC's pixels saved as PNG.

    .venv/bin/python -m hexnode.report.example [OUT.png] [--models DIR]    (make sc-example)

tests/report/test_sc_example.py regenerates it and compares it with the committed file, so the picture
in the README is what the node sends today.
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

import numpy as np
from PIL import Image
from pydicom.uid import SecondaryCaptureImageStorage

REPO = Path(__file__).resolve().parents[2]
DEFAULT_OUT = REPO / "docs" / "sc-example.png"
DEFAULT_MODELS = REPO / "models"
# A tilted acquisition with a lobar bleed: the picture shows a note (the tilt) as well as the result.
SEED, INDEX, TILT_DEG = 5, 2, 12.0
SELECTION = "series 2 of 2 chosen: soft-tissue kernel, 5 mm"


def example_pixels(models_dir: Path = DEFAULT_MODELS) -> np.ndarray:
    """The SC's RGB pixels for the example case, as the worker makes them."""
    from hexnode.models.analyser import Models
    from hexnode.pipeline.run import produce
    from hexnode.synth.dicom import write_series
    from hexnode.synth.phantom import generate_case

    case = generate_case(SEED, INDEX, tilt_deg=TILT_DEG)
    models = Models.load(models_dir)
    with tempfile.TemporaryDirectory(prefix="hexnode-sc-example-") as tmp:
        paths = write_series(case, Path(tmp) / "ct")
        produced = produce(paths, models, selection_note=SELECTION)
    sc = next(ds for ds in produced.datasets if ds.SOPClassUID == SecondaryCaptureImageStorage)
    return np.asarray(sc.pixel_array, dtype=np.uint8)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", nargs="?", type=Path, default=DEFAULT_OUT)
    parser.add_argument("--models", type=Path, default=DEFAULT_MODELS)
    args = parser.parse_args(argv)
    Image.fromarray(example_pixels(args.models)).save(args.out, optimize=True)
    print(args.out)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
