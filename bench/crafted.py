"""One crafted input against `hexnode receive`, before and after (issue 32's receive items).

Each scenario starts a fresh `hexnode receive` (SCP + its indexer child) with default `[dicom]`
settings except the port and the free-disk floor, attacks it once from a real peer, then sends a
real 8-slice CT series with dcmtk `storescu` and waits up to 30 s for it to be indexed. Printed per
scenario: what the peer saw, the peak RSS of the receiving process and of its indexer (sampled
every 10 ms over the whole scenario), whether `hexnode receive` is still running, and whether the
series after the attack was indexed.

* bomb: a Deflated Explicit VR Little Endian CT instance with a private OB of ``--bomb-mib`` MiB of
  zeros (about 1 MB on disk for 1 GiB), sent with storescu; with ``--memory-limit-mib`` (root, cgroup
  v1) the receive process and its children run under that memory limit, as in a container.
* spooled: the same bomb already in the spool and not indexed (what the old receiver was left with),
  `hexnode receive` started twice as systemd would restart it.
* pdu: a raw peer associates, then sends one P-DATA-TF header claiming 0x7FFFFFF0 bytes and
  streams ``--pdu-mib`` MiB of zeros as fast as the node takes them.
* disk: (root only) the spool on a ``--disk-mib`` tmpfs with a floor of 3/4 of it; one instance of
  half the tmpfs, then two at once; printed: the lowest free space seen during the transfers.
* phi: a CT series with patient ID and birth date inside RequestAttributesSequence, a private tag
  and person names inside sequences; printed: how many of those values are in the database file.
* uid: a raw C-STORE whose command names instance A and whose data set is instance B, one with a
  NUL inside its UID; then the genuine B: is it indexed under its own UID.

    .venv/bin/python bench/crafted.py [--scenarios bomb,pdu,disk,phi,uid] [--before DIR]

``--before DIR`` runs each scenario a second time with the `hexnode` package in DIR (e.g.
``git archive <commit> hexnode | tar -x -C DIR``; bench/runfrom.py), on the same machine, in the same
run, and prints both.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import socket
import sqlite3
import struct
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(ROOT / "tests"))

from hostile_helpers import (  # noqa: E402
    PHI,
    Peer,
    dataset_of,
    deflate_bomb,
    p_data,
    pdv,
    phi_in_sequences,
    release_rq,
    small_ct,
    store_command,
)
from runfrom import env_for  # noqa: E402

from hexnode.devtools.net import dcmtk_env, free_port, wait_port  # noqa: E402

STORESCU = "/usr/bin/storescu"


@dataclass
class Node:
    proc: subprocess.Popen[bytes]
    port: int
    data: Path
    log: Path
    peak: dict[str, int] = field(default_factory=lambda: {"receive": 0, "indexer": 0})
    indexer_pids: set[int] = field(default_factory=set)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None
    cgroup: Path | None = None

    def start_sampling(self) -> None:
        self._thread = threading.Thread(target=self._sample, daemon=True)
        self._thread.start()

    def _sample(self) -> None:
        while not self._stop.is_set():
            self.peak["receive"] = max(self.peak["receive"], _rss(self.proc.pid))
            for child in _children(self.proc.pid):
                if b"spawn_main" in _cmdline(child):
                    self.indexer_pids.add(child)
                    self.peak["indexer"] = max(self.peak["indexer"], _rss(child))
            self._stop.wait(0.01)

    def alive(self) -> bool:
        return self.proc.poll() is None

    def indexed(self, sop_uids: list[str] | None = None) -> int:
        try:
            con = sqlite3.connect(self.data / "hexnode.sqlite", timeout=5)
            try:
                if sop_uids is None:
                    return int(con.execute("SELECT count(*) FROM instances").fetchone()[0])
                marks = ",".join("?" * len(sop_uids))
                return int(con.execute(f"SELECT count(*) FROM instances WHERE sop_instance_uid IN ({marks})",
                                       sop_uids).fetchone()[0])
            finally:
                con.close()
        except sqlite3.Error:
            return 0

    def stop(self) -> str:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(2)
        state = "running" if self.alive() else f"EXITED (code {self.proc.returncode})"
        if self.alive():
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        if self.cgroup is not None:
            for _ in range(50):
                try:
                    self.cgroup.rmdir()
                    break
                except OSError:
                    time.sleep(0.1)
        return state


def _rss(pid: int) -> int:
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) // 1024
    except (FileNotFoundError, ProcessLookupError):
        pass
    return 0


def _children(pid: int) -> list[int]:
    out = []
    try:
        for task in Path(f"/proc/{pid}/task").iterdir():
            try:
                out += [int(c) for c in (task / "children").read_text().split()]
            except FileNotFoundError:
                continue
    except FileNotFoundError:
        pass
    return out


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except FileNotFoundError:
        return b""


def _cgroup(limit_mib: int) -> Path | None:
    base = Path("/sys/fs/cgroup/memory")
    if not limit_mib or os.geteuid() != 0 or not base.is_dir():
        return None
    cg = base / f"hexnode-bench-{os.getpid()}-{time.monotonic_ns()}"
    cg.mkdir()
    (cg / "memory.limit_in_bytes").write_text(str(limit_mib << 20))
    return cg


def start(work: Path, before: str | None, *, spool: Path | None = None, floor_mb: int = 1,
          memory_limit_mib: int = 0, keep: bool = False, wait: bool = True) -> Node:
    data = work / "node"
    if not keep:
        shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True, exist_ok=True)
    port = free_port()
    cfg = work / "hexnode.toml"
    spool_line = f'[spool]\ndir = "{spool}"\n' if spool else ""
    cfg.write_text(f'data_dir = "{data}"\nlog_level = "INFO"\n[dicom]\nport = {port}\nmin_free_disk_mb = {floor_mb}\n'
                   f"[series]\nstable_seconds = 3600\n{spool_line}")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    env["PYTHONSAFEPATH"] = "1"
    if before:
        env = env_for(before, env)
    log = work / "receive.log"
    cg = _cgroup(memory_limit_mib)
    # the cgroup is joined before exec, so the receiver and every child it starts are in it
    pre = (lambda: (cg / "cgroup.procs").write_text(str(os.getpid()))) if cg else None  # noqa: E731
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hexnode.cli", "receive", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work, preexec_fn=pre)
    node = Node(proc, port, data, log, cgroup=cg)
    node.start_sampling()
    if wait:
        wait_port(port, 120, proc)  # type: ignore[arg-type]
    return node


def storescu(port: int, files: list[Path], extra: list[str] | None = None) -> tuple[int, str]:
    r = subprocess.run([STORESCU, "-v", "-aec", "HEXNODE", "-aet", "SCANNER", "-to", "10", "-ta", "10", "-td", "60",
                        *(extra or []), "127.0.0.1", str(port), *map(str, files)],
                       env=dcmtk_env(), capture_output=True, text=True, timeout=600)
    said = [ln[3:].strip() for ln in r.stderr.splitlines()
            if ln.startswith(("E:", "F:", "W:")) and not ln.startswith("E: Store Failed, file")
            or "Refused" in ln or "Error:" in ln or "Aborted" in ln]
    return r.returncode, "; ".join(dict.fromkeys(x[:90] for x in said))[:200] if said else "ok"


def after(node: Node, work: Path, tag: str) -> str:
    """The real series after the attack: sent, and indexed within 30 s?"""
    from pydicom import dcmread

    if not node.alive():
        return "series after: receive is down"
    files = [work / f"after-{tag}-{i}.dcm" for i in range(8)]
    ds0 = small_ct(size=128)
    for i, f in enumerate(files):
        ds = small_ct(size=128, series_uid=str(ds0.SeriesInstanceUID), study_uid=str(ds0.StudyInstanceUID),  # type: ignore[attr-defined]
                      number=i + 1)
        ds.save_as(f, enforce_file_format=True)  # type: ignore[attr-defined]
    uids = [str(dcmread(f, stop_before_pixels=True).SOPInstanceUID) for f in files]
    rc, _ = storescu(node.port, files)
    deadline = time.monotonic() + 30
    while node.indexed(uids) < len(uids) and time.monotonic() < deadline:
        time.sleep(0.2)
    return f"series after: sent {'ok' if rc == 0 else 'FAILED'}, indexed {node.indexed(uids)}/{len(uids)}"


def report(name: str, node: Node, saw: str, extra: str, work: Path) -> str:
    later = after(node, work, name)
    restarts = len(node.indexer_pids)
    state = node.stop()
    text = node.log.read_text(errors="replace")
    return (f"{name}: peer saw [{saw}] | receive peak RSS {node.peak['receive']} MiB, indexer peak "
            f"{node.peak['indexer']} MiB ({restarts} indexer process(es)) | receive {state} | {later}"
            f"{' | ' + extra if extra else ''} | tracebacks in log: {text.count('Traceback')}")


# --- scenarios ------------------------------------------------------------------------------------------------

def bomb(work: Path, before: str | None, args: argparse.Namespace) -> str:
    path = work / "bomb.dcm"
    if not path.exists():
        deflate_bomb(path, args.bomb_mib)
    node = start(work, before, memory_limit_mib=args.memory_limit_mib)
    rc, saw = storescu(node.port, [path], ["-R", "-xd"])
    time.sleep(args.settle)  # the indexer takes what it takes
    limit = f"memory limit {args.memory_limit_mib} MiB (cgroup)" if node.cgroup else "no memory limit"
    return report("bomb", node, saw,
                  f"{path.stat().st_size / 2**20:.1f} MiB sent, {args.bomb_mib} MiB inflated, {limit}", work)


def spooled(work: Path, before: str | None, args: argparse.Namespace) -> str:
    """The bomb already in the spool, not yet indexed (what the bomb scenario leaves behind with the
    old receiver): `hexnode receive` started twice, as systemd restarts it."""
    from hexnode.store.spool import instance_relpath

    path = work / "bomb.dcm"
    if not path.exists():
        deflate_bomb(path, args.bomb_mib)
    from pydicom import dcmread

    dest = work / "node" / "spool" / instance_relpath(str(dcmread(path, stop_before_pixels=True).SOPInstanceUID))
    shutil.rmtree(work / "node", ignore_errors=True)
    dest.parent.mkdir(parents=True)
    shutil.copyfile(path, dest)
    lines = []
    for attempt in (1, 2):
        node = start(work, before, memory_limit_mib=args.memory_limit_mib, keep=True, wait=False)
        deadline = time.monotonic() + 120
        up = False
        while node.alive() and time.monotonic() < deadline and not up:
            try:
                socket.create_connection(("127.0.0.1", node.port), timeout=1).close()
                up = True
            except OSError:
                time.sleep(0.2)
        time.sleep(args.settle if up else 0)
        state = "listening" if up and node.alive() else "not listening"
        saw = f"start {attempt}: {state}"
        lines.append(report(f"spooled (start {attempt})", node, saw, "", work) if up else
                     f"spooled (start {attempt}): receive {node.stop()} without listening | indexer peak "
                     f"{node.peak['indexer']} MiB ({len(node.indexer_pids)} indexer process(es))")
    quarantined = list((work / "node" / "spool" / "quarantine").glob("*.dcm"))
    return " || ".join(lines) + f" || bomb quarantined: {'yes' if quarantined else 'no'}"


def pdu(work: Path, before: str | None, args: argparse.Namespace) -> str:
    node = start(work, before)
    peer = Peer(node.port, "127.0.0.2")
    cx = peer.associate()
    sent, saw = 0, "associated"
    try:
        peer.sock.settimeout(10)
        peer.sock.sendall(struct.pack(">BBL", 0x04, 0, 0x7FFFFFF0))
        chunk = bytes(1 << 20)
        for _ in range(args.pdu_mib):
            peer.sock.sendall(chunk)
            sent += 1
        saw = f"took all {sent} MiB, no answer"
    except OSError as exc:
        saw = f"cut off after {sent} MiB sent ({type(exc).__name__})"
    try:
        peer.sock.settimeout(2)
        head = peer.sock.recv(10)
        if head[:1] == b"\x07":
            saw += ", A-ABORT received"
    except OSError:
        pass
    peer.close()
    del cx
    time.sleep(1)
    return report("pdu", node, saw, "", work)


def disk(work: Path, before: str | None, args: argparse.Namespace) -> str:
    if os.geteuid() != 0:
        return "disk: skipped (needs root for a tmpfs)"
    mnt = work / "tmpfs"
    mnt.mkdir(exist_ok=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={args.disk_mib}m", "tmpfs", str(mnt)], check=True)
    try:
        floor = args.disk_mib * 3 // 4
        size = int(((args.disk_mib // 2) * 2**20 / 2) ** 0.5)  # a square 16-bit image of half the tmpfs
        big = [work / "big-a.dcm", work / "big-b.dcm"]
        for f in big:
            if not f.exists():
                small_ct(size=size).save_as(f, enforce_file_format=True)  # type: ignore[attr-defined]
        node = start(work, before, spool=mnt / "spool", floor_mb=floor)
        lowest = [args.disk_mib]
        stop = threading.Event()

        def watch() -> None:
            while not stop.is_set():
                st = os.statvfs(mnt)
                lowest[0] = min(lowest[0], st.f_bavail * st.f_frsize >> 20)
                time.sleep(0.002)

        t = threading.Thread(target=watch, daemon=True)
        t.start()
        rc1, saw1 = storescu(node.port, big[:1])
        low1 = lowest[0]
        time.sleep(1)
        for f in (mnt / "spool" / "instances").rglob("*.dcm"):
            f.unlink()  # an operator freed the space: now two at once
        lowest[0] = args.disk_mib
        results: list[tuple[int, str]] = []
        other = threading.Thread(target=lambda: results.append(storescu(node.port, big[1:])))
        other.start()
        results.append(storescu(node.port, big[:1]))
        other.join()
        stop.set()
        t.join()
        saw = f"one: {saw1}; two at once: {' / '.join(s for _, s in results)}"
        extra = (f"tmpfs {args.disk_mib} MiB, floor {floor} MiB, instance {size * size * 2 >> 20} MiB: "
                 f"lowest free {low1} MiB (one), {lowest[0]} MiB (two at once)")
        return report("disk", node, saw, extra, work)
    finally:
        subprocess.run(["umount", "-l", str(mnt)], check=False)


def phi(work: Path, before: str | None, args: argparse.Namespace) -> str:
    node = start(work, before)
    files = phi_in_sequences(work / "phi", 4)
    rc, saw = storescu(node.port, files)
    deadline = time.monotonic() + 30
    while node.indexed() < len(files) and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)
    db = b"".join(p.read_bytes() for p in node.data.glob("hexnode.sqlite*"))
    leaked = [v for v in PHI if v.encode() in db]
    return report("phi", node, saw, f"identifier values in the database file: {len(leaked)} of {len(PHI)} "
                  f"{leaked}", work)


def uid(work: Path, before: str | None, args: argparse.Namespace) -> str:
    node = start(work, before)
    a, b = small_ct(), small_ct()
    paths = {}
    for name, ds in (("a", a), ("b", b)):
        paths[name] = work / f"uid-{name}.dcm"
        ds.save_as(paths[name], enforce_file_format=True)  # type: ignore[attr-defined]
    uid_a, _ = dataset_of(paths["a"])
    uid_b, data_b = dataset_of(paths["b"])

    def raw(command_uid: str, data: bytes) -> str:
        peer = Peer(node.port, "127.0.0.3")
        try:
            cx = peer.associate()
            if cx is None:
                return "not associated"
            peer.send(p_data(pdv(cx, 0x03, store_command(command_uid))))
            peer.send(p_data(pdv(cx, 0x02, data)))
            status = peer.read_status()
            peer.send(release_rq())
            peer.read_pdu()
            return "no status" if status is None else f"0x{status:04X}"
        finally:
            peer.close()

    mismatch = raw(uid_a, data_b)  # instance B's data under A's UID
    nul = small_ct("1.2.826.0.1.3680043.10.999.32\x00.7")
    nul.save_as(work / "uid-nul.dcm", enforce_file_format=True)  # type: ignore[attr-defined]
    nul_status = raw("1.2.826.0.1.3680043.10.999.32\x00.7", dataset_of(work / "uid-nul.dcm")[1])
    genuine = raw(uid_b, data_b)
    time.sleep(2)
    from hexnode.store.spool import instance_relpath

    con = sqlite3.connect(node.data / "hexnode.sqlite", timeout=5)
    try:
        rows = dict(con.execute("SELECT sop_instance_uid, path FROM instances").fetchall())
    finally:
        con.close()
    files = {f"instances/{p.parent.name}/{p.name}" for p in (node.data / "spool" / "instances").rglob("*.dcm")}
    orphans = files - set(rows.values())
    own = rows.get(uid_b) == instance_relpath(uid_b)
    return report("uid", node, f"A's UID with B's data: {mismatch}; a UID with a NUL: {nul_status}; "
                  f"genuine B: {genuine}",
                  f"B's row names B's own file: {'yes' if own else 'NO (' + str(rows.get(uid_b)) + ')'}; "
                  f"spooled files no row names: {len(orphans)}", work)


SCENARIOS = {"bomb": bomb, "spooled": spooled, "pdu": pdu, "disk": disk, "phi": phi, "uid": uid}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--scenarios", default=",".join(SCENARIOS))
    ap.add_argument("--before", default=None, help="also run each scenario with the hexnode package in this directory")
    ap.add_argument("--bomb-mib", type=int, default=1024)
    ap.add_argument("--memory-limit-mib", type=int, default=0, help="cgroup memory limit for receive (root)")
    ap.add_argument("--settle", type=float, default=15.0, help="seconds for the indexer after the bomb")
    ap.add_argument("--pdu-mib", type=int, default=1024)
    ap.add_argument("--disk-mib", type=int, default=256)
    ap.add_argument("--workdir", default=None)
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hexnode-crafted-"))
    work.mkdir(parents=True, exist_ok=True)
    print(f"{os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}; {socket.gethostname()}", flush=True)
    for name in filter(None, args.scenarios.split(",")):
        for label, before in (("before", args.before), ("after", None)):
            if label == "before" and not before:
                continue
            t0 = time.monotonic()
            where = work / f"{name}-{label}"
            where.mkdir(parents=True, exist_ok=True)
            line = SCENARIOS[name](where, before, args)
            print(f"[{label}] {line} ({time.monotonic() - t0:.0f} s)", flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
