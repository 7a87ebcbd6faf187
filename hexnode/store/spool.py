"""The spool: where received instances and produced results live on disk, written atomically.

Layout (relative to the spool dir)::

    incoming/                       temporary files of transfers in progress (same file system,
                                    so committing one is a rename); cleared at start-up
    instances/<aa>/<sop>.dcm        received instances; <aa> = 2 hex digits of the name's SHA-256,
                                    256 directories so none grows huge; grouping into series is
                                    the database's job
    results/<series>/<name>.dcm     objects produced by the worker
    quarantine/                     received files whose header could not be read
    corrections/<aa>/<sop>.dcm      received DICOM SEGs (a reader's corrected mask), filed by receive
    corrections/aside/<sop>.dcm     those the label step did not take (the reason is in the database)
    labels/<aa>/<sop>.npz           a taken correction's mask mapped onto its source slices

Path components are never raw DICOM strings: a UID that is a valid UID (digits and dots, at most
64 characters, no leading zero in a component) is used as is, anything else becomes ``x`` + a
SHA-256 prefix, so a malicious ``../../etc`` "UID" cannot escape the spool.

Atomicity: a file is complete in ``incoming/`` before it is renamed into place, and both the file
and its directory are fsynced, so after Success is returned a power cut cannot leave a truncated
file under a final name.
"""

from __future__ import annotations

import errno
import hashlib
import os
import re
import shutil
from dataclasses import dataclass
from pathlib import Path

_UID = re.compile(r"^(0|[1-9][0-9]*)(\.(0|[1-9][0-9]*))*$")


def is_valid_uid(value: str) -> bool:
    return 0 < len(value) <= 64 and bool(_UID.match(value))


def safe_component(value: str) -> str:
    """A file-name-safe token for a DICOM UID (the UID itself when valid, else a hash)."""
    value = value.strip().rstrip("\x00").strip()
    if is_valid_uid(value):
        return value
    return "x" + hashlib.sha256(value.encode("utf-8", "surrogateescape")).hexdigest()[:40]


def instance_relpath(sop_uid: str) -> str:
    name = safe_component(sop_uid)
    return f"instances/{hashlib.sha256(name.encode()).hexdigest()[:2]}/{name}.dcm"


def correction_relpath(sop_uid: str) -> str:
    """Where receive files a received SEG (the instance path's bucket, under corrections/)."""
    return "corrections/" + instance_relpath(sop_uid)[len("instances/"):]


def label_relpath(sop_uid: str) -> str:
    """Where the label step writes a taken correction's mapped mask."""
    return "labels/" + instance_relpath(sop_uid)[len("instances/"):-len(".dcm")] + ".npz"


def uid_hash(uid: str) -> str:
    """Short stable name for a series in logs (never the UID's patient-linked context)."""
    return hashlib.sha256(uid.encode("utf-8", "surrogateescape")).hexdigest()[:10]


def fsync_file(path: str | Path, flags: int = 0) -> None:
    fd = os.open(path, os.O_RDONLY | flags)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def fsync_dir(path: Path) -> None:
    fsync_file(path, os.O_DIRECTORY)


@dataclass(frozen=True)
class Spool:
    root: Path

    @property
    def incoming(self) -> Path:
        return self.root / "incoming"

    def prepare(self) -> Spool:
        """Create the layout and drop leftovers of transfers a crash interrupted (never answered)."""
        for sub in ("incoming", "instances", "results"):
            (self.root / sub).mkdir(parents=True, exist_ok=True)
        for i in range(256):  # the instance buckets: no mkdir on the receive path
            (self.root / "instances" / f"{i:02x}").mkdir(exist_ok=True)
        for leftover in self.incoming.iterdir():
            if leftover.is_file():
                leftover.unlink(missing_ok=True)
        return self


    def result_relpath(self, series_uid: str, name: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9._-]{1,100}", name) or name.startswith("."):
            raise ValueError(f"result file name {name!r}: letters, digits, '.', '_', '-' only")
        return "/".join(("results", safe_component(series_uid), name))

    def __post_init__(self) -> None:
        # Resolved once: path() runs per received instance and must not hit the file system.
        object.__setattr__(self, "root", Path(self.root).expanduser().resolve())

    def path(self, relpath: str) -> Path:
        root = str(self.root)
        full = os.path.normpath(os.path.join(root, relpath))
        if not full.startswith(root + os.sep):
            raise ValueError(f"{relpath!r} is outside the spool")
        return Path(full)

    def commit_file(
        self, src: Path, relpath: str, *, fsync: bool = True, overwrite: bool = False
    ) -> tuple[Path, bool]:
        """Move a complete file into place atomically. Returns (final path, created).

        If the target already exists (same SOP Instance UID received before), the existing file is
        kept and `src` is removed: the first complete copy wins, duplicates are idempotent.
        """
        dest = self.path(relpath)
        if dest.exists() and not overwrite:
            src.unlink(missing_ok=True)
            return dest, False
        if fsync:
            fsync_file(src)
        created_dir = False
        try:
            os.replace(src, dest)
        except FileNotFoundError:
            if not src.exists():
                raise
            dest.parent.mkdir(parents=True, exist_ok=True)  # first file in this directory
            created_dir = True
            os.replace(src, dest)
        except OSError as exc:
            if exc.errno != errno.EXDEV:  # the temporary file is on another file system: copy
                raise
            dest.parent.mkdir(parents=True, exist_ok=True)
            tmp = dest.with_name(dest.name + ".part")
            shutil.copyfile(src, tmp)
            os.replace(tmp, dest)
            src.unlink(missing_ok=True)
        if fsync:
            fsync_dir(dest.parent)
            if created_dir:
                fsync_dir(dest.parent.parent)
        return dest, True

    def commit_received(self, src: str, relpath: str, *, fsync: bool = False) -> bool:
        """`commit_file` for the C-STORE handler: plain strings and os calls only (it runs once
        per received instance), `relpath` from :func:`instance_relpath`. Returns created."""
        dest = os.path.join(str(self.root), relpath)
        if os.path.exists(dest):
            os.unlink(src)
            return False
        if fsync:
            fsync_file(src)
        try:
            os.replace(src, dest)
        except FileNotFoundError:
            if not os.path.exists(src):
                raise
            os.makedirs(os.path.dirname(dest), exist_ok=True)
            os.replace(src, dest)
        if fsync:
            fsync_dir(Path(os.path.dirname(dest)))
        return True

    def write_bytes(self, relpath: str, data: bytes, *, fsync: bool = True) -> Path:
        """Write `data` to `relpath` atomically (results, tests)."""
        self.incoming.mkdir(parents=True, exist_ok=True)
        tmp = self.incoming / f"w-{os.getpid()}-{os.urandom(6).hex()}.tmp"
        with open(tmp, "wb") as f:
            f.write(data)
        # Results are rebuilt deterministically: a retry replaces the old copy (atomically).
        return self.commit_file(tmp, relpath, fsync=fsync, overwrite=True)[0]

    def free_mb(self) -> float:
        return shutil.disk_usage(self.root).free / 2**20
