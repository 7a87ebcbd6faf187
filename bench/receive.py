"""Receive rate: 320 × 512² CT instances sent with dcmtk `storescu` to `hexnode serve` and to dcmtk
`storescp` (default mode), interleaved in the same run, TCP_NODELAY=1 for both dcmtk tools.

    .venv/bin/python bench/receive.py [--rounds 3] [--n 320] [--fsync-before-success]

For every round both receivers start empty (hexnode: a fresh data dir and a fresh `hexnode serve`
process, so no instance is a duplicate). Printed per round and as medians: seconds for the
transfer (storescu start → exit, i.e. until the last Success), MB/s, the ratio hexnode/storescp
rate (DESIGN §6 target ≥ 0.5; "best" compares the fastest round of each, the one least disturbed
by other processes on a shared machine), and for hexnode also the time until the last instance was indexed
in the database. hexnode answers Success once the complete file is renamed into place and fsyncs
it when indexing (``--fsync-before-success``: before answering, as `[spool] fsync_before_success`);
storescp never fsyncs.
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

from hexnode.netutil import dcmtk_env, free_port, wait_port  # noqa: E402


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


def round_hexnode(folder: Path, work: Path, n: int, fsync: bool = False) -> tuple[float, float]:
    data = work / "hexnode-var"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    cfg = data / "hexnode.toml"
    cfg.write_text(f'data_dir = "{data}"\nlog_level = "WARNING"\n[dicom]\nport = {port}\nmin_free_disk_mb = 1\n'
                   "[series]\nstable_seconds = 3600\n"
                   f"[spool]\nfsync_before_success = {'true' if fsync else 'false'}\n")
    proc = subprocess.Popen([str(ROOT / ".venv" / "bin" / "hexnode"), "serve", "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=open(data / "serve.log", "wb"))  # noqa: SIM115
    try:
        wait_port(port)
        t0 = time.perf_counter()
        dt = send(port, folder, "HEXNODE")
        while count_indexed(data / "hexnode.sqlite") < n:
            if time.perf_counter() - t0 > 120:
                raise TimeoutError("instances were not indexed within 120 s")
            time.sleep(0.02)
        return dt, time.perf_counter() - t0
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(30)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--n", type=int, default=320)
    ap.add_argument("--work", default=str(ROOT / "bench" / "output" / "receive"))
    ap.add_argument("--fsync-before-success", action="store_true",
                    help="hexnode fsyncs each instance before answering (default: when indexing)")
    args = ap.parse_args()
    work = Path(args.work)
    folder = work / f"ct{args.n}"
    if len(list(folder.glob("*.dcm"))) != args.n:
        shutil.rmtree(folder, ignore_errors=True)
        write_ct_series(folder, args.n)
    mb = sum(p.stat().st_size for p in folder.glob("*.dcm")) / 1e6
    print(f"{args.n} instances, {mb:.1f} MB, {os.cpu_count()} CPUs, load {os.getloadavg()[0]:.2f}, "
          f"hexnode fsync {'before Success' if args.fsync_before_success else 'when indexed'}")
    ref, hx, idx = [], [], []
    for r in range(args.rounds):
        t_ref = round_storescp(folder, work)
        t_hx, t_idx = round_hexnode(folder, work, args.n, args.fsync_before_success)
        ref.append(t_ref)
        hx.append(t_hx)
        idx.append(t_idx)
        print(f"round {r + 1}: storescp {t_ref:.3f} s ({mb / t_ref:.0f} MB/s)  hexnode {t_hx:.3f} s "
              f"({mb / t_hx:.0f} MB/s, all indexed {t_idx:.3f} s)  ratio {t_ref / t_hx:.2f}")
    m_ref, m_hx, m_idx = statistics.median(ref), statistics.median(hx), statistics.median(idx)
    b_ref, b_hx = min(ref), min(hx)
    print(f"best:   storescp {b_ref:.3f} s {mb / b_ref:.0f} MB/s | hexnode serve {b_hx:.3f} s "
          f"{mb / b_hx:.0f} MB/s | ratio {b_ref / b_hx:.2f} (least disturbed by other load)")
    print(f"median: storescp {m_ref:.3f} s {mb / m_ref:.0f} MB/s | hexnode serve {m_hx:.3f} s "
          f"{mb / m_hx:.0f} MB/s (indexed {m_idx:.3f} s) | ratio {m_ref / m_hx:.2f} (target >= 0.5)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
