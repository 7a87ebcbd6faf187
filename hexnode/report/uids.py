"""Deterministic UIDs for hexnode's output objects.

A retry or a re-run must send byte-for-byte the same identities, so that a PACS deduplicates
instead of showing two reports. UIDs are therefore derived (2.25 form, hashed) from what identifies
a result, never drawn at random.
"""

from __future__ import annotations

import hashlib
from typing import Literal

# One SR slot and one SC slot per (series, model version, revision), whatever the outcome
# (result or "not analysed"): a corrected revision can then name its predecessor without knowing
# which of the two was sent before. The worker must build a not-analysed set only for a terminal
# outcome of a revision.
Kind = Literal["seg", "seg-series", "sr", "sr-series", "sc", "sc-series", "tracking"]
KINDS: tuple[str, ...] = ("seg", "seg-series", "sr", "sr-series", "sc", "sc-series", "tracking")


def derive_uid(series_uid: str, model_version: str, kind: str, revision: int = 0) -> str:
    """UID for output `kind` of the analysis of `series_uid` by `model_version`.

    `revision` > 0 is a corrected result set after the series re-opened (late instances): its
    objects get new UIDs so that the PACS keeps both and the SR can point at its predecessor.
    """
    if kind not in KINDS:
        raise ValueError(f"unknown output kind {kind!r}; expected one of {KINDS}")
    if revision < 0:
        raise ValueError("revision must be >= 0")
    return _hashed_uid("hexnode", series_uid, model_version, kind, str(revision))


def results_frame_of_reference_uid(series_uid: str) -> str:
    """The Frame of Reference UID of the results of a source series that has none: one per
    series, whatever the model or revision, so every result of that series shares it."""
    return _hashed_uid("hexnode-frame-of-reference", series_uid)


def device_uid(model_name: str, model_version: str) -> str:
    """Device UID of the algorithm (IHE AIR Contributing Equipment, SR device observer)."""
    return _hashed_uid("hexnode-device", model_name, model_version)


def _hashed_uid(*parts: str) -> str:
    """A 2.25 UID (ISO/IEC 9834-8 form) from a 128-bit hash of `parts`.

    Not pydicom's generate_uid: with prefix=None it ignores entropy_srcs and returns a random
    UUID. NUL-joined so that ("a", "bc") and ("ab", "c") differ.
    """
    digest = hashlib.sha256("\0".join(parts).encode()).digest()
    return f"2.25.{int.from_bytes(digest[:16], 'big')}"
