"""A site's learning loop through DICOM on loopback (`bench/site.py --through-dicom`,
tests/e2e/test_site_loop.py): shifted-scanner cases in, hexnode's SEG out to a PACS, the readers'
corrected SEGs back in, then the commands a site runs.

* `SiteNode`: `hexnode node` (receive, route, worker, send as its children) on the shipped
  `deploy/hexnode.toml`, with only the data folder, ports and destination changed (and whatever
  `waits` the caller shortens, which it says); dcmtk's `storescp` is the PACS; series and SEGs go
  in with dcmtk's `storescu`; the site's commands (`dataset export`, `train --site`,
  `models compare|activate|rollback`, `status`) run as the real CLI.
* `write_site_case`: a generator case as a DICOM series, with the truth mask in the series' slice
  order (what the reader's correction is built from) and its export case id (the series' uid_hash,
  which the held-out rule reads).
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from hexnode.devtools.net import dcmtk_env, free_port, stop_processes, wait_port

REPO = Path(__file__).resolve().parents[2]
SHIPPED = REPO / "deploy" / "hexnode.toml"
STORESCU, STORESCP = "/usr/bin/storescu", "/usr/bin/storescp"
SCANNER, READER = "SCANNER", "READER"


@dataclass
class SiteCase:
    case_id: str  # the series' uid_hash: the case id `hexnode dataset export` writes
    series_uid: str
    paths: list[Path]  # the series' files; slice k of `truth` lies on paths[k]
    truth: np.ndarray  # the generator's mask (slice, row, column): the radiologist's correction
    normal: bool
    volume_ml: float

    @property
    def held_out(self) -> bool:
        from hexnode.train.siteset import is_held_out

        return is_held_out(self.case_id)


def write_site_case(root: Path, seed: int, index: int, profile: str, *, normal: bool) -> SiteCase:
    from hexnode.store.spool import uid_hash
    from hexnode.synth.dicom import case_uid, write_case
    from hexnode.synth.phantom import generate_case

    case = generate_case(seed, index, profile=profile, normal=normal)
    paths = write_case(case, root / f"{index:04d}")
    series_uid = case_uid(case, "series", 2)
    return SiteCase(uid_hash(series_uid), series_uid, paths, (np.asarray(case.mask) > 0).astype(np.uint8), normal,
                    0.0 if normal else float(case.truth.volume_ml))


@dataclass
class Taken:
    """A correction as the label step recorded it."""

    state: str
    reason: str
    dice: float | None
    hexnode_ml: float | None
    reference_ml: float | None


@dataclass
class SiteNode:
    """`hexnode node` + dcmtk's storescp as the PACS, in `workdir`. `waits`: shipped `[series]` keys
    to shorten (e.g. {"stable_seconds": 1.0}); `models_dir`: another bundled model set."""

    workdir: Path
    waits: dict[str, float] = field(default_factory=dict)
    models_dir: str = ""
    port: int = 0
    procs: dict[str, subprocess.Popen[bytes]] = field(default_factory=dict)
    _store: Any = None

    @property
    def config(self) -> Path:
        return self.workdir / "hexnode.toml"

    @property
    def data_dir(self) -> Path:
        return self.workdir / "data"

    def write_config(self, pacs_port: int) -> Path:
        text = SHIPPED.read_text()
        subs = [(r'(?m)^data_dir = "var"$', f'data_dir = "{self.data_dir}"'),
                (r"(?m)^port = 11112$", f"port = {self.port}"),
                (r'(?m)^ae_title = "ORTHANC"$', 'ae_title = "PACS"'),
                (r"(?m)^port = 4242$", f"port = {pacs_port}"),
                # loopback runs on a shared disk; the shipped floor (1 GiB) guards a production spool
                (r"(?m)^min_free_disk_mb = 1024$", "min_free_disk_mb = 256")]
        subs += [(rf"(?m)^{re.escape(k)} = [0-9.]+$", f"{k} = {float(v)}") for k, v in self.waits.items()]
        if self.models_dir:
            subs.append((r'(?ms)^(\[models\]\n(?:#[^\n]*\n)*)dir = ""$', rf'\g<1>dir = "{self.models_dir}"'))
        for pattern, repl in subs:
            text, n = re.subn(pattern, repl, text)
            if n != 1:
                raise RuntimeError(f"{SHIPPED}: {pattern!r} matched {n} times (the shipped file changed)")
        self.config.write_text(text)
        return self.config

    def start(self) -> SiteNode:
        for sub in ("data", "logs", "pacs"):
            shutil.rmtree(self.workdir / sub, ignore_errors=True)
            (self.workdir / sub).mkdir(parents=True)
        self.port, pacs_port = free_port(), free_port()
        self.write_config(pacs_port)
        # -pm: any storage class (SEG, SR, SC), +xa: any transfer syntax, as a PACS takes them
        pacs = self._spawn("pacs", [STORESCP, "-pm", "+xa", "-aet", "PACS", "-od", str(self.workdir / "pacs"),
                                    str(pacs_port)])
        wait_port(pacs_port, 30, pacs)
        node = self._spawn("node", [sys.executable, "-m", "hexnode.cli", "node", "--config", str(self.config)])
        wait_port(self.port, 120, node)
        return self

    def _spawn(self, name: str, cmd: list[str]) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
        env["PYTHONSAFEPATH"] = "1"  # the data folder must never shadow the package (see demo.py)
        with open(self.workdir / "logs" / f"{name}.log", "ab") as log:
            proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.workdir,
                                    start_new_session=True)
        self.procs[name] = proc
        return proc

    def stop(self) -> None:
        if self._store is not None:
            self._store.dispose()
            self._store = None
        stop_processes(self.procs, node_wait=40, other_wait=10)  # node: its children stop first

    def check_alive(self) -> None:
        for name, proc in self.procs.items():
            if proc.poll() is not None:
                log = (self.workdir / "logs" / f"{name}.log").read_text(errors="replace")[-3000:]
                raise RuntimeError(f"{name} exited with {proc.returncode}:\n{log}")

    def store(self) -> Any:
        if self._store is None:
            from hexnode.config import load_config
            from hexnode.store.db import open_store

            self._store = open_store(load_config(self.config, env={}).database_url, create=False)
        return self._store

    # --- DICOM in ------------------------------------------------------------------------------
    def storescu(self, paths: list[Path], calling: str = SCANNER, options: tuple[str, ...] = ()) -> None:
        proc = subprocess.run([STORESCU, *options, "-aet", calling, "-aec", "HEXNODE", "127.0.0.1", str(self.port),
                               *map(str, paths)], capture_output=True, text=True, env=dcmtk_env(), timeout=600)
        if proc.returncode != 0:
            raise RuntimeError(f"storescu failed ({proc.returncode}): {proc.stderr[-2000:]}")

    def send_corrections(self, paths: list[Path]) -> None:
        # -R: propose the files' own SOP class (dcmtk's default list has no Segmentation Storage)
        self.storescu(paths, READER, ("-R",))

    # --- waiting -------------------------------------------------------------------------------
    def series_states(self, series_uids: list[str]) -> dict[str, tuple[str, str]]:
        from sqlalchemy import select

        from hexnode.store.db import Series

        with self.store().transaction() as s:
            return {u: (st, r or "") for u, st, r in s.execute(
                select(Series.series_uid, Series.state, Series.reason).where(Series.series_uid.in_(series_uids)))}

    def wait_delivered(self, series_uids: list[str], timeout: float) -> dict[str, tuple[str, str]]:
        """Until every series' results (SEG, SR, SC) reached the PACS, or it was closed without them."""
        deadline = time.monotonic() + timeout
        states: dict[str, tuple[str, str]] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            states = self.series_states(series_uids)
            if len(states) == len(set(series_uids)) and all(st in ("delivered", "rejected", "failed")
                                                            for st, _ in states.values()):
                return states
            time.sleep(0.5)
        waiting = {u[-8:]: st for u, (st, _) in states.items() if st not in ("delivered", "rejected", "failed")}
        raise TimeoutError(f"{len(waiting)} series not delivered within {timeout:.0f} s: {waiting}")

    def seg_model_version(self, series_uid: str) -> str:
        """The model version that made hexnode's newest SEG of the series (its Device Serial Number)."""
        import pydicom
        from sqlalchemy import select

        from hexnode.config import load_config
        from hexnode.store.db import Result, Series
        from hexnode.store.spool import Spool

        with self.store().transaction() as s:
            rel = s.execute(select(Result.path).join(Series, Series.id == Result.series_id)
                            .where(Series.series_uid == series_uid, Result.kind == "SEG")
                            .order_by(Result.id.desc())).scalars().first()
        if rel is None:
            return ""
        path = Spool(load_config(self.config, env={}).spool_path).path(rel)
        return str(pydicom.dcmread(path, stop_before_pixels=True).get("DeviceSerialNumber", ""))

    def wait_taken(self, sop_uids: list[str], timeout: float) -> dict[str, Taken]:
        """Until route's label step took every SEG (stored, kept aside, or hexnode's own)."""
        from sqlalchemy import select

        from hexnode.store.db import Correction

        deadline = time.monotonic() + timeout
        out: dict[str, Taken] = {}
        while time.monotonic() < deadline:
            self.check_alive()
            with self.store().transaction() as s:
                out = {c.sop_instance_uid: Taken(c.state, c.reason or "", c.dice, c.hexnode_ml, c.reference_ml)
                       for c in s.execute(select(Correction).where(Correction.sop_instance_uid.in_(sop_uids))
                                          ).scalars() if c.state != "received"}
            if len(out) == len(set(sop_uids)):
                return out
            time.sleep(0.5)
        raise TimeoutError(f"{len(set(sop_uids)) - len(out)} SEG(s) not taken within {timeout:.0f} s")

    # --- the site's commands -----------------------------------------------------------------
    def cli(self, *args: str, timeout: float = 3600) -> tuple[subprocess.CompletedProcess[str], float]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
        env["PYTHONSAFEPATH"] = "1"
        t = time.monotonic()
        proc = subprocess.run([sys.executable, "-m", "hexnode.cli", *args, "--config", str(self.config)],
                              capture_output=True, text=True, env=env, cwd=self.workdir, timeout=timeout)
        return proc, time.monotonic() - t


def corrected_seg(case: SiteCase, out: Path) -> tuple[Path, str]:
    """The reader's correction of `case` (the generator's truth on its slices) written to `out`;
    returns the path and its SOP Instance UID."""
    import pydicom

    from hexnode.devtools.reader_seg import reader_seg

    sources = [pydicom.dcmread(p) for p in case.paths]
    seg = reader_seg(sources, case.truth)
    out.parent.mkdir(parents=True, exist_ok=True)
    seg.save_as(out, enforce_file_format=True)
    return out, str(seg.SOPInstanceUID)


def as_new_scan(case: SiteCase, root: Path) -> SiteCase:
    """`case`'s slices as a new study and series (new UIDs) under `root`: a scan the node never saw,
    with the same truth."""
    import dataclasses

    import pydicom
    from pydicom.uid import generate_uid

    from hexnode.store.spool import uid_hash

    root.mkdir(parents=True, exist_ok=True)
    study, series, frame = generate_uid(), generate_uid(), generate_uid()
    paths = []
    for p in case.paths:
        ds = pydicom.dcmread(p)
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = study, series, frame
        ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = generate_uid()
        paths.append(root / p.name)
        ds.save_as(paths[-1], enforce_file_format=True)
    return dataclasses.replace(case, case_id=uid_hash(series), series_uid=series, paths=paths)
