"""Receive rate of four Storage SCPs in one run: dcmtk `storescp`, plain pynetdicom (chunked
receive, ``maximum_pdu_size = 0``; bench/receive_pynetdicom.py), `hexnode receive` with its receive
fast path (hexnode/receive/fastpath.py) and `hexnode receive` without it. 320 × 512² CT instances
by default, sent with dcmtk `storescu` over loopback, TCP_NODELAY=1 for the dcmtk tools.

    .venv/bin/python bench/receive.py [--rounds 5] [--n 320] [--modes storescp,pynetdicom,...]
                                      [--fsync-before-success]
    .venv/bin/python bench/receive.py --modes hexnode,hexnode-minus-store_rsp,...   # one patch out

The receivers take turns within each round (interleaved, so a burst of other load hits them all
alike), each starting empty (hexnode: a fresh data dir and a fresh `hexnode receive` process, so no
instance is a duplicate). Printed per round and as medians: seconds for the transfer (storescu
start → exit, i.e. until the last Success), MB/s and the rate ratio against storescp (docs/architecture.md §10
target ≥ 0.5), for hexnode also the time until the last instance was indexed and the CPU seconds
the receiving process used during the transfer (less sensitive to other load) and its indexer
child until the last instance was indexed; then the fast
path's gain over plain pynetdicom and over hexnode without it (issue 17 keeps the fast path only
for ≥ 1.3 × over plain pynetdicom). "Without the fast path" is `hexnode receive` with
``[dicom] fast_receive = false``. ``hexnode-minus-NAME`` (not run by default; NAME one of
``hexnode.receive.fastpath.PATCHES``) is `hexnode receive` with the fast path less that one patch, to
see what each earns (the process sets ``fastpath.PATCHES`` before the CLI runs). ``--before DIR`` adds
``hexnode-before``: `hexnode receive` from the package in DIR (e.g. ``git archive <commit> hexnode |
tar -x -C DIR``; bench/runfrom.py), interleaved with the others, for before/after rates.
hexnode answers Success once the complete file is renamed into place and fsyncs it when indexing
(``--fsync-before-success``: before answering, as `[spool] fsync_before_success`); storescp and
the plain pynetdicom SCP never fsync.
"""

from __future__ import annotations

import argparse
import os
import shutil
import signal
import sqlite3
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from ctfiles import write_ct_series  # noqa: E402
from runfrom import env_for  # noqa: E402

from hexnode.devtools.net import dcmtk_env, free_port, wait_port  # noqa: E402


def send(port: int, folder: Path, aec: str) -> float:
    t0 = time.perf_counter()
    r = subprocess.run(["/usr/bin/storescu", "+sd", "-aec", aec, "127.0.0.1", str(port), str(folder)],
                       env=dcmtk_env(), capture_output=True, text=True)
    dt = time.perf_counter() - t0
    if r.returncode != 0:
        raise RuntimeError(f"storescu failed: {r.stderr[-500:]}")
    return dt


def count_indexed(db: Path) -> int:
    try:
        con = sqlite3.connect(db, timeout=5)
        try:
            return int(con.execute("SELECT count(*) FROM instances").fetchone()[0])
        finally:
            con.close()
    except sqlite3.Error:
        return 0


def round_storescp(folder: Path, work: Path) -> float:
    out = work / "storescp-out"
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    port = free_port()
    proc = subprocess.Popen(["/usr/bin/storescp", "-od", str(out), str(port)], env=dcmtk_env(),
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        return send(port, folder, "STORESCP")
    finally:
        proc.terminate()
        proc.wait(10)


# `hexnode receive` with every fast-path patch but one (argv[1] names it)
MINUS_PATCH = ("import sys; from hexnode.receive import fastpath; out = sys.argv.pop(1); "
               "assert out in fastpath.PATCHES, out; "
               "fastpath.PATCHES = tuple(p for p in fastpath.PATCHES if p != out); "
               "from hexnode.cli import main; sys.exit(main(sys.argv[1:]))")


def round_pynetdicom(folder: Path, work: Path) -> float:
    out = work / "pynetdicom-out"
    shutil.rmtree(out, ignore_errors=True)
    port = free_port()
    proc = subprocess.Popen([sys.executable, str(HERE / "receive_pynetdicom.py"), str(port), str(out)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        dt = send(port, folder, "PYNETDICOM")
        return dt
    finally:
        proc.terminate()
        proc.wait(30)


def cpu_seconds(pid: int) -> float:
    """User + system CPU seconds of one process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def children(pid: int) -> list[int]:
    """The child processes of `pid` (Linux /proc)."""
    out = []
    for task in Path(f"/proc/{pid}/task").iterdir():
        try:
            out += [int(c) for c in (task / "children").read_text().split()]
        except OSError:
            pass
    return out


def round_hexnode(folder: Path, work: Path, n: int, fsync: bool = False,
                  mode: str = "hexnode", before: str | None = None) -> tuple[float, float, float, float]:
    data = work / f"{mode}-var"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    cfg = data / "hexnode.toml"
    cfg.write_text(f'data_dir = "{data}"\nlog_level = "WARNING"\n[dicom]\nport = {port}\nmin_free_disk_mb = 1\n'
                   f"fast_receive = {'false' if mode == 'hexnode-nofast' else 'true'}\n"
                   "[series]\nstable_seconds = 3600\n"
                   f"[spool]\nfsync_before_success = {'true' if fsync else 'false'}\n")
    venv = ROOT / ".venv" / "bin"
    minus = mode.removeprefix("hexnode-minus-") if mode.startswith("hexnode-minus-") else None
    cmd = [str(venv / "hexnode")] if minus is None else [str(venv / "python"), "-c", MINUS_PATCH, minus]
    env = None
    if mode == "hexnode-before":  # the package in --before DIR, its own defaults (bench/runfrom.py)
        assert before is not None
        cmd, env = [str(venv / "python"), "-m", "hexnode.cli"], env_for(before)
    # `receive` (SCP + indexer child), not `serve`: serve is now a supervisor over receive + route,
    # and the CPU seconds below must be the receiving process's own
    proc = subprocess.Popen([*cmd, "receive", "--config", str(cfg)], env=env, cwd=data,
                            stdout=subprocess.DEVNULL, stderr=open(data / "receive.log", "wb"))  # noqa: SIM115
    try:
        wait_port(port)
        cpu0 = cpu_seconds(proc.pid)
        kids = children(proc.pid)  # the indexer
        kid0 = sum(cpu_seconds(k) for k in kids)
        t0 = time.perf_counter()
        dt = send(port, folder, "HEXNODE")
        cpu = cpu_seconds(proc.pid) - cpu0  # the receiving process (the indexer is a child)
        while count_indexed(data / "hexnode.sqlite") < n:
            if time.perf_counter() - t0 > 120:
                raise TimeoutError("instances were not indexed within 120 s")
            time.sleep(0.02)
        t_indexed = time.perf_counter() - t0
        return dt, t_indexed, cpu, sum(cpu_seconds(k) for k in kids) - kid0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


MODES = ("storescp", "pynetdicom", "hexnode", "hexnode-nofast")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=5)
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--modes", default=",".join(MODES), help=f"comma-separated, of {', '.join(MODES)}")
    ap.add_argument("--work", default=str(ROOT / "bench" / "output" / "receive"))
    ap.add_argument("--fsync-before-success", action="store_true",
                    help="hexnode fsyncs each instance before answering (default: when indexing)")
    ap.add_argument("--before", default=None,
                    help="also run mode hexnode-before: `hexnode receive` from the package in this directory")
    args = ap.parse_args()
    modes = [m for m in args.modes.split(",") if m]
    if args.before and "hexnode-before" not in modes:
        modes.append("hexnode-before")
    if unknown := {m for m in modes if not m.startswith("hexnode-minus-") and m != "hexnode-before"} - set(MODES):
        ap.error(f"unknown modes {', '.join(sorted(unknown))}")
    work = Path(args.work)
    folder = work / f"ct{args.n}"
    if len(list(folder.glob("*.dcm"))) != args.n:
        shutil.rmtree(folder, ignore_errors=True)
        write_ct_series(folder, args.n)
    mb = sum(p.stat().st_size for p in folder.glob("*.dcm")) / 1e6
    print(f"{args.n} instances, {mb:.1f} MB, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"{args.rounds} rounds, hexnode fsync {'before Success' if args.fsync_before_success else 'when indexed'}")
    times: dict[str, list[float]] = {m: [] for m in modes}
    indexed: dict[str, list[float]] = {m: [] for m in modes if m.startswith("hexnode")}
    cpu: dict[str, list[float]] = {m: [] for m in indexed}
    idx_cpu: dict[str, list[float]] = {m: [] for m in indexed}
    for r in range(args.rounds):
        cells = []
        for mode in modes:
            if mode == "storescp":
                t = round_storescp(folder, work)
            elif mode == "pynetdicom":
                t = round_pynetdicom(folder, work)
            else:
                t, t_idx, t_cpu, t_idx_cpu = round_hexnode(folder, work, args.n, args.fsync_before_success, mode,
                                                           args.before)
                indexed[mode].append(t_idx)
                cpu[mode].append(t_cpu)
                idx_cpu[mode].append(t_idx_cpu)
            times[mode].append(t)
            cells.append(f"{mode} {t:.3f} s ({mb / t:.0f} MB/s)")
        print(f"round {r + 1}: " + "  ".join(cells))
    med = {m: statistics.median(ts) for m, ts in times.items()}
    print(f"median of {args.rounds}:")
    for m in modes:
        ratio = f"  {med['storescp'] / med[m]:.2f} x storescp" if "storescp" in med else ""
        idx = (f"  (all indexed {statistics.median(indexed[m]):.3f} s, receiver CPU {statistics.median(cpu[m]):.2f} s, "
               f"indexer CPU {statistics.median(idx_cpu[m]):.2f} s)" if m in indexed else "")
        print(f"  {m:<15} {med[m]:.3f} s  {mb / med[m]:6.0f} MB/s{ratio}{idx}")
    if "hexnode" in med:
        gains = [f"{med[o] / med['hexnode']:.2f} x {o}" for o in ("pynetdicom", "hexnode-nofast") if o in med]
        if gains:
            print(f"fast path: hexnode {', '.join(gains)} (issue 17: kept only if >= 1.3 x pynetdicom)")
        for m in modes:
            if m.startswith("hexnode-minus-"):
                cpu_ratio = statistics.median(cpu[m]) / statistics.median(cpu["hexnode"])
                print(f"  without {m.removeprefix('hexnode-minus-')}: {med[m] / med['hexnode']:.2f} x the fast path's "
                      f"time, {cpu_ratio:.2f} x its receiver CPU")
    return 0


if __name__ == "__main__":
    sys.exit(main())
