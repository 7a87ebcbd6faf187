"""The receiver under hostile peers: idle connections and PDU-shaped garbage against `hexnode serve`.

`hexnode serve` runs with its default `[dicom]` settings (only the port and the free-disk floor
changed); the hostile peers are plain sockets bound to other loopback addresses (127.0.0.2 …, as
other hosts on the hospital network would be), the real sender is dcmtk `/usr/bin/storescu` from
127.0.0.1 with a 32-slice 512² CT series.

* idle: N connections that connect and send nothing: all from one address and left closed once the
  node closes them (the issue's case), then re-opened as soon as the node closes one (a scanner
  that keeps trying), all from one address, then each from its own. The real series is
  sent every 0.25 s until it goes through; ``refused_for`` is how long it was turned away.
* garbage: M connections, all in flight at once, each sending one PDU-shaped piece of garbage (a
  random PDU type byte, a random 4-byte length, 0-5,000 random bytes) and then waiting for the node to
  close it (at most 35 s). When half of them have started, the real series is sent once.
  Printed: whether it went through and how long it took, how long the garbage took to be dealt with,
  how many garbage connections could not connect, whether serve is still up, and how many log lines
  and tracebacks the garbage produced.

    .venv/bin/python bench/hostile.py [--idle 30] [--garbage 1000] [--seed 22] [--pythonpath DIR]

``--pythonpath`` runs the `hexnode` package found in DIR instead (e.g. an export of an older
commit, to measure before/after with the same harness).
"""

from __future__ import annotations

import argparse
import asyncio
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(HERE))

from ctfiles import write_ct_series  # noqa: E402
from runfrom import env_for  # noqa: E402

from hexnode.devtools.net import dcmtk_env, free_port, wait_port  # noqa: E402

STORESCU = "/usr/bin/storescu"


@dataclass
class Serve:
    proc: subprocess.Popen[bytes]
    port: int
    log: Path

    def log_text(self) -> str:
        return self.log.read_text(errors="replace")

    def stop(self) -> None:
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_serve(work: Path, pythonpath: str | None) -> Serve:
    data = work / "var"
    shutil.rmtree(data, ignore_errors=True)
    data.mkdir(parents=True)
    port = free_port()
    cfg = work / "hexnode.toml"
    cfg.write_text(f'data_dir = "{data}"\nlog_level = "INFO"\n[dicom]\nport = {port}\nmin_free_disk_mb = 1\n'
                   "[series]\nstable_seconds = 3600\n")
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    env["PYTHONSAFEPATH"] = "1"
    if pythonpath:  # the venv's editable install would win over a plain PYTHONPATH (bench/runfrom.py)
        env = env_for(pythonpath, env)
    log = work / "serve.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen([sys.executable, "-m", "hexnode.cli", "serve", "--config", str(cfg)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=work)
    wait_port(port, 90, proc)  # type: ignore[arg-type]
    return Serve(proc, port, log)


def send_series(port: int, folder: Path) -> tuple[bool, float, str]:
    t0 = time.monotonic()
    r = subprocess.run([STORESCU, "-aec", "HEXNODE", "-aet", "SCANNER", "-to", "5", "-ta", "10", "-td", "30",
                        "+sd", "127.0.0.1", str(port), str(folder)],
                       env=dcmtk_env(), capture_output=True, text=True, timeout=120)
    why = ""
    if r.returncode != 0:
        lines = [ln for ln in r.stderr.splitlines() if ln.startswith(("E:", "F:"))]
        why = lines[-1][:120] if lines else f"exit {r.returncode}"
    return r.returncode == 0, time.monotonic() - t0, why


class IdleAttacker:
    """`n` connections that send nothing; each is re-opened as soon as the node closes it."""

    def __init__(self, port: int, n: int, addresses: list[str], reconnect: bool = True) -> None:
        self.port, self.n, self.addresses, self.reconnect = port, n, addresses, reconnect
        self.stop = threading.Event()
        self.opened = 0
        self.threads = [threading.Thread(target=self._run, args=(i,), daemon=True) for i in range(n)]

    def start(self) -> None:
        for t in self.threads:
            t.start()

    def _run(self, i: int) -> None:
        src = self.addresses[i % len(self.addresses)]
        while not self.stop.is_set():
            try:
                s = socket.create_connection(("127.0.0.1", self.port), timeout=5, source_address=(src, 0))
            except OSError:
                self.stop.wait(0.2)
                continue
            self.opened += 1
            s.settimeout(0.5)
            try:
                while not self.stop.is_set():
                    try:
                        if not s.recv(4096):
                            break  # the node closed it: reconnect at once
                    except TimeoutError:
                        continue
                    except OSError:
                        break
            finally:
                s.close()
            if not self.reconnect:
                return

    def close(self) -> None:
        self.stop.set()
        for t in self.threads:
            t.join(5)


def idle_scenario(serve: Serve, folder: Path, n: int, addresses: list[str], limit_s: float,
                  reconnect: bool = True) -> str:
    attacker = IdleAttacker(serve.port, n, addresses, reconnect)
    attacker.start()
    time.sleep(1.0)  # let them all connect
    t0 = time.monotonic()
    attempts, last_why, ok, dt = 0, "", False, 0.0
    try:
        while time.monotonic() - t0 < limit_s:
            attempts += 1
            t_try = time.monotonic()
            ok, dt, why = send_series(serve.port, folder)
            if ok:
                refused = t_try - t0
                break
            last_why = why
            time.sleep(0.25)
        else:
            refused = time.monotonic() - t0
    finally:
        attacker.close()
    where = "1 address" if len(addresses) == 1 else f"{len(addresses)} addresses"
    where += "" if reconnect else ", not reconnecting"
    verdict = f"ok send={dt:.1f}s" if ok else f"NEVER within {limit_s:.0f}s ({last_why})"
    return (f"idle({n} from {where}): refused_for={refused:.1f}s attempts={attempts} {verdict} "
            f"idle_connections_opened={attacker.opened}")


async def _garbage_one(port: int, src: str, rng: random.Random, results: dict[str, int],
                       started: asyncio.Event, count: list[int], half: int) -> None:
    payload = bytes([rng.randrange(256), 0]) + rng.randrange(2**32).to_bytes(4, "big") + rng.randbytes(
        rng.randrange(5001))
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port, local_addr=(src, 0)), timeout=10)
    except (TimeoutError, OSError):
        results["connect_failed"] += 1
        return
    finally:
        count[0] += 1
        if count[0] >= half:
            started.set()
    try:
        writer.write(payload)
        await writer.drain()
        try:
            await asyncio.wait_for(reader.read(), timeout=35)  # until the node closes it
            results["closed_by_node"] += 1
        except TimeoutError:
            results["still_open_after_35s"] += 1
    except OSError:
        results["closed_by_node"] += 1  # reset while we were still sending
    finally:
        writer.close()


async def _garbage(port: int, m: int, seed: int, addresses: list[str], real: asyncio.Future[tuple[bool, float, str]],
                   folder: Path) -> tuple[dict[str, int], float]:
    rng = random.Random(seed)
    results = {"connect_failed": 0, "closed_by_node": 0, "still_open_after_35s": 0}
    started = asyncio.Event()
    count = [0]
    t0 = time.monotonic()
    tasks = [asyncio.create_task(_garbage_one(port, addresses[i % len(addresses)], random.Random(rng.random()),
                                              results, started, count, m // 2)) for i in range(m)]
    await started.wait()
    loop = asyncio.get_running_loop()
    real.set_result(await loop.run_in_executor(None, send_series, port, folder))
    await asyncio.gather(*tasks)
    return results, time.monotonic() - t0


def garbage_scenario(serve: Serve, folder: Path, m: int, seed: int, addresses: list[str]) -> str:
    before = serve.log_text()

    async def run() -> tuple[dict[str, int], float, tuple[bool, float, str]]:
        real: asyncio.Future[tuple[bool, float, str]] = asyncio.get_running_loop().create_future()
        results, took = await _garbage(serve.port, m, seed, addresses, real, folder)
        return results, took, real.result()

    results, took, (ok, dt, why) = asyncio.run(run())
    time.sleep(1.0)
    after = serve.log_text()[len(before):]
    alive = serve.proc.poll() is None
    ok2, dt2, why2 = send_series(serve.port, folder) if alive else (False, 0.0, "serve is down")
    real = f"ok in {dt:.1f}s" if ok else f"FAILED ({why})"
    again = f"ok in {dt2:.1f}s" if ok2 else f"FAILED ({why2})"
    lines = after.splitlines()
    return (f"garbage({m} in flight): real_send_in_the_middle={real} garbage_took={took:.1f}s "
            f"connect_failed={results['connect_failed']} closed_by_node={results['closed_by_node']} "
            f"still_open_after_35s={results['still_open_after_35s']} serve_alive={'yes' if alive else 'NO'} "
            f"send_after={again} log_lines={len(lines)} tracebacks={after.count('Traceback')}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--idle", type=int, default=30)
    ap.add_argument("--garbage", type=int, default=1000)
    ap.add_argument("--slices", type=int, default=32)
    ap.add_argument("--seed", type=int, default=22)
    ap.add_argument("--idle-limit", type=float, default=60.0, help="give up on the real send after this long")
    ap.add_argument("--pythonpath", default=None, help="run the hexnode package from this directory")
    ap.add_argument("--workdir", default=None)
    ap.add_argument("--skip", default="", help="comma list of scenarios to skip: idle1once,idle1,idleN,garbage")
    args = ap.parse_args()
    work = Path(args.workdir or tempfile.mkdtemp(prefix="hexnode-hostile-"))
    work.mkdir(parents=True, exist_ok=True)
    folder = work / "series"
    shutil.rmtree(folder, ignore_errors=True)
    write_ct_series(folder, args.slices, seed=args.seed)
    skip = set(filter(None, args.skip.split(",")))
    serve = start_serve(work, args.pythonpath)
    try:
        ok, dt, why = send_series(serve.port, folder)
        print(f"baseline: {args.slices} slices {'ok' if ok else 'FAILED ' + why} in {dt:.1f}s", flush=True)
        if "idle1once" not in skip:
            print(idle_scenario(serve, folder, args.idle, ["127.0.0.2"], args.idle_limit, reconnect=False), flush=True)
            time.sleep(2)
        if "idle1" not in skip:
            print(idle_scenario(serve, folder, args.idle, ["127.0.0.2"], args.idle_limit), flush=True)
            time.sleep(2)
        if "idleN" not in skip:
            addrs = [f"127.0.0.{2 + i}" for i in range(args.idle)]
            print(idle_scenario(serve, folder, args.idle, addrs, args.idle_limit), flush=True)
            time.sleep(2)
        if "garbage" not in skip:
            addrs = [f"127.0.1.{1 + i}" for i in range(100)]
            print(garbage_scenario(serve, folder, args.garbage, args.seed, addrs), flush=True)
    finally:
        serve.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
