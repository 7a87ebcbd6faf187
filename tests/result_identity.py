"""Result objects compared with their UIDs and dates masked: what "the same result" means when a
change must not alter the SEG/SR/SC beyond the UIDs (bench/memory.py, tests/worker/test_result_identity.py).

Every element of every (nested) dataset becomes one line "tag VR value"; UI, DA, TM and DT values
are masked, bulk values (Pixel Data) are kept as their length and sha256, so pixel data compare
exactly.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator

from pydicom.dataset import Dataset

MASKED_VRS = frozenset({"UI", "DA", "TM", "DT"})


def canonical(ds: Dataset, prefix: str = "") -> Iterator[str]:
    """The dataset (file meta included) as lines, UIDs and dates masked."""
    meta = getattr(ds, "file_meta", None)
    if meta is not None and not prefix:
        yield from canonical(meta, "meta ")
    for elem in ds:
        where = f"{prefix}{elem.tag} {elem.VR}"
        if elem.VR == "SQ":
            yield f"{where} {len(elem.value)} items"
            for i, item in enumerate(elem.value):
                yield from canonical(item, f"{where}[{i}] ")
        elif elem.VR in MASKED_VRS:
            yield f"{where} <masked>"
        elif isinstance(elem.value, bytes | bytearray):
            yield f"{where} {len(elem.value)} bytes sha256 {hashlib.sha256(elem.value).hexdigest()}"
        else:
            yield f"{where} {elem.value!r}"


def digest(ds: Dataset) -> str:
    return hashlib.sha256("\n".join(canonical(ds)).encode()).hexdigest()


def first_difference(a: Dataset, b: Dataset) -> str | None:
    """None when the datasets are equal up to UIDs and dates; else the first line that differs."""
    la, lb = list(canonical(a)), list(canonical(b))
    for x, y in zip(la, lb, strict=False):
        if x != y:
            return f"{x[:200]}  !=  {y[:200]}"
    if len(la) != len(lb):
        return f"{len(la)} elements != {len(lb)} elements"
    return None
