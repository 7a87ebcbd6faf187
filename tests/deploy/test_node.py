"""`hexnode node`, the supervisor of a one-machine site, with its real children: a series goes
through receive → route → worker; a child killed with SIGKILL is started again; SIGTERM stops them
all and the node exits 0. And its back-off: a child that keeps failing is restarted at growing
intervals, not in a storm, and the node then stops with status 1."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
import urllib.request
from pathlib import Path

from plumbing_helpers import free_port, models_dir, storescu, wait_port
from series_helpers import write_series
from sqlalchemy import select

from hexnode.config import load_config
from hexnode.devtools.net import wait_for
from hexnode.node import ChildSpec, Supervisor, Timing
from hexnode.store.db import Job, Series, open_store


def children_of(pid: int) -> dict[str, int]:
    """The hexnode stage each direct child of `pid` runs → its pid (from /proc)."""
    out = {}
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        try:
            stat = (d / "stat").read_text()
            cmd = (d / "cmdline").read_bytes().split(b"\0")
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        if ppid == pid and b"hexnode.cli" in cmd:
            out[cmd[cmd.index(b"hexnode.cli") + 1].decode()] = int(d.name)
    return out


def alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    try:  # a zombie is not alive
        return (Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]) != "Z"
    except OSError:
        return False


def write_config(work: Path, dicom_port: int, http_port: int) -> Path:
    cfg = work / "hexnode.toml"
    cfg.write_text(f"""data_dir = "{work / 'data'}"
log_level = "INFO"
[dicom]
port = {dicom_port}
min_free_disk_mb = 1
[[destinations]]
name = "pacs"
ae_title = "NOWHERE"
port = {free_port()}
[series]
stable_seconds = 1.0
study_settle_seconds = 1.0
check_interval_seconds = 0.2
[models]
dir = "{models_dir()}"
providers = ["CPUExecutionProvider"]
[worker]
poll_seconds = 0.2
[http]
enabled = true
port = {http_port}
""")
    return cfg


def test_node_runs_the_stages_restarts_a_killed_one_and_stops_on_sigterm(tmp_path: Path) -> None:
    port, http_port = free_port(), free_port()
    config = write_config(tmp_path, port, http_port)
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    log = tmp_path / "node.log"
    with open(log, "wb") as out:
        node = subprocess.Popen([sys.executable, "-m", "hexnode.cli", "node", "--config", str(config)],
                                stdout=out, stderr=subprocess.STDOUT, env=env, cwd=tmp_path)
    try:
        wait_port(port, 90, node)
        wait_port(http_port, 60, node)
        kids = wait_for(lambda: k if len(k := children_of(node.pid)) == 5 else None, 30,
                        "node did not start five stages")
        assert set(kids) == {"receive", "route", "worker", "send", "web"}, kids
        with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/healthz", timeout=5) as resp:
            assert resp.read().strip() == b"ok"

        # one series through the node's own stages: indexed by receive, queued by route, run by the worker
        paths = write_series(tmp_path / "series", n=12, rows=64, cols=64)
        assert storescu(port, paths, aec="HEXNODE").returncode == 0
        cfg = load_config(config, env={})
        store = open_store(cfg.database_url, create=False)
        try:
            def job_state() -> str | None:
                with store.transaction() as s:
                    return s.execute(select(Job.state).join(Series, Series.id == Job.series_id)).scalars().first()

            assert wait_for(lambda: job_state() == "done", 120, f"no job done: {log.read_text()[-3000:]}")
        finally:
            store.dispose()

        # SIGKILL of the receiver: the node notices and starts a new one that listens again
        os.kill(kids["receive"], signal.SIGKILL)
        new = wait_for(lambda: k if (k := children_of(node.pid).get("receive", kids["receive"])) != kids["receive"]
                       else None, 30, "receive was not restarted")
        wait_port(port, 60)
        assert alive(new) and node.poll() is None
        text = log.read_text()
        assert "receive killed by signal 9" in text and "restarting in 1 s" in text, text[-3000:]
        assert all(alive(kids[name]) for name in ("route", "worker", "send", "web"))  # the others untouched

        node.send_signal(signal.SIGTERM)
        assert node.wait(60) == 0, log.read_text()[-3000:]
        every = [new, *(pid for name, pid in kids.items() if name != "receive")]
        wait_for(lambda: not any(alive(p) for p in every), 10, "a stage outlived the node")
        assert "stopped" in log.read_text().splitlines()[-1]
    finally:
        if node.poll() is None:
            node.kill()
            node.wait()
        for pid in children_of(node.pid).values():
            os.kill(pid, signal.SIGKILL)


def test_a_child_that_keeps_failing_backs_off_and_the_node_then_exits_1(tmp_path: Path) -> None:
    # `hexnode web` with [http] off exits 2 at once: a real child that fails every time
    config = tmp_path / "hexnode.toml"
    config.write_text(f'data_dir = "{tmp_path / "data"}"\n')
    sup = Supervisor([ChildSpec("web", "web")], str(config),
                     Timing(backoff_initial=0.2, backoff_max=0.8, healthy_after=30.0, poll=0.02, stop_grace=10))
    stop = threading.Event()
    result: list[int] = []
    runner = threading.Thread(target=lambda: result.append(sup.run(stop)))
    runner.start()
    waits: list[float] = []  # from the supervisor noticing an exit to the next start
    try:
        wait_for(lambda: sup.children and sup.children[0].starts, 10, "supervisor did not start")
        child = sup.children[0]
        exited_at = None
        starts = child.starts
        deadline = time.monotonic() + 90
        while len(waits) < 5 and time.monotonic() < deadline:
            if exited_at is None and child.proc is None:
                exited_at = time.monotonic()
            elif exited_at is not None and child.starts != starts:
                waits.append(time.monotonic() - exited_at)
                starts, exited_at = child.starts, None
            time.sleep(0.005)
    finally:
        stop.set()
        runner.join(30)
    assert len(waits) == 5, waits
    assert result == [1]  # asked to stop while the child kept failing
    assert child.quick_exits == 5  # six starts, the last stopped by us (not counted)
    # doubling from 0.2 s up to the 0.8 s cap (give or take a poll)
    for got, want in zip(waits, [0.2, 0.4, 0.8, 0.8, 0.8], strict=True):
        assert want - 0.03 <= got <= want + 0.25, waits


def test_serve_is_receive_and_route_under_the_supervisor(tmp_path: Path) -> None:
    from hexnode.config import Config
    from hexnode.node import stages

    cfg = Config()
    assert [s.name for s in stages(cfg, legacy_serve=True)] == ["receive", "route"]
    assert [s.name for s in stages(cfg)] == ["receive", "route", "worker", "send"]
    cfg.http.enabled = True
    cfg.worker.processes = 2
    assert [s.name for s in stages(cfg)] == ["receive", "route", "worker-1", "worker-2", "send", "web"]
    assert [s.command for s in stages(cfg, workers=3)].count("worker") == 3
    assert [s.name for s in stages(cfg, legacy_serve=True)] == ["receive", "route", "web"]
