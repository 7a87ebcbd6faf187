"""`hexnode health STAGE` against real stage processes: a stage beating is healthy, the same process
stopped with SIGSTOP (alive, wedged, not beating) turns unhealthy within the limit and healthy again
once it runs; receive must also answer a C-ECHO; a stage that stopped cleanly leaves no heartbeat."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest

from hexnode.config import load_config
from hexnode.devtools.net import free_port, wait_for
from hexnode.health import check
from hexnode.store.db import StageBeat, open_store, utcnow


def _health(cfg: Path, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "hexnode.cli", "health", *args, "--config", str(cfg)],
                          capture_output=True, text=True, timeout=60)


@pytest.fixture()
def site(tmp_path: Path) -> Path:
    cfg = tmp_path / "hexnode.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n[dicom]\nport = {free_port()}\nallowed_calling_aes = ["PACS"]\n'
                   f'[series]\ncheck_interval_seconds = 0.5\n[http]\nenabled = true\nport = {free_port()}\n')
    return cfg


def _start(cfg: Path, stage: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-m", "hexnode.cli", stage, "--config", str(cfg)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def test_a_wedged_stage_turns_unhealthy_and_recovers(site: Path) -> None:
    cfg = load_config(site, env={})
    limit = 7.0  # > the 5 s between beats
    route = _start(site, "route")
    receive = _start(site, "receive")
    try:
        wait_for(lambda: check(cfg, "route", max_age=limit)[0], 60, "route never healthy")
        wait_for(lambda: check(cfg, "receive", max_age=limit)[0], 60, "receive never healthy")
        healthy = _health(site, "receive")
        assert healthy.returncode == 0 and healthy.stdout.startswith("receive: healthy: last heartbeat"), healthy
        send = _health(site, "send")
        assert send.returncode == 1 and "send: UNHEALTHY: no heartbeat recorded" in send.stderr

        route.send_signal(signal.SIGSTOP)  # alive, holding its database handle, not beating
        receive.send_signal(signal.SIGSTOP)  # its SCP stops answering too
        try:
            wait_for(lambda: not check(cfg, "route", max_age=limit)[0], 30, "a stopped route stayed healthy")
            wedged = _health(site, "route", "--max-age", str(limit))
            assert wedged.returncode == 1 and "route: UNHEALTHY: last heartbeat" in wedged.stderr, wedged
            assert "(limit 7 s)" in wedged.stderr
            ok, why = check(cfg, "receive", max_age=3600)  # a fresh enough beat, but no C-ECHO answer
            assert not ok and why.startswith("C-ECHO"), why
        finally:
            route.send_signal(signal.SIGCONT)
            receive.send_signal(signal.SIGCONT)
        wait_for(lambda: check(cfg, "route", max_age=limit)[0], 30, "route did not recover")
        wait_for(lambda: check(cfg, "receive", max_age=limit)[0], 30, "receive did not recover")

        receive.terminate()  # a clean stop removes its heartbeat: "not running", not "stale"
        assert receive.wait(30) == 0
        assert check(cfg, "receive") == (False, "no heartbeat recorded (not running, or never reached its loop)")
    finally:
        for p in (route, receive):
            if p.poll() is None:
                p.send_signal(signal.SIGCONT)
                p.terminate()
                p.wait(30)


def test_worker_on_a_long_job_and_other_hosts(site: Path) -> None:
    cfg = load_config(site, env={})
    store = open_store(cfg.database_url)
    host = socket.gethostname()[:128]
    now = utcnow()
    with store.transaction() as s:
        # a worker on this host, on a job for 20 s (its loop does not beat meanwhile)
        s.add(StageBeat(instance=f"{host}:1:a", stage="worker", host=host, pid=1, started_at=now,
                        beat_at=now - timedelta(seconds=20), busy_since=now - timedelta(seconds=20)))
        # a send process on another host (another container): not this host's
        s.add(StageBeat(instance="other:1:b", stage="send", host="other", pid=1, started_at=now, beat_at=now))
    store.dispose()
    assert check(cfg, "worker", max_age=5, max_busy=60) == (True, "on a job for 20 s (limit 60 s)")
    ok, why = check(cfg, "worker", max_age=5, max_busy=10)
    assert not ok and why == "on one job for 20 s (limit 10 s)"
    assert check(cfg, "send")[0] is False and check(cfg, "send", any_host=True)[0] is True


def test_web_health_and_no_database_created(site: Path, tmp_path: Path) -> None:
    from hexnode.web.server import StatusServer

    cfg = load_config(site, env={})
    # no database yet: health says so and creates none
    ok, why = check(cfg, "route")
    assert not ok and why.startswith("no database at") and not Path(cfg.database_url[len("sqlite:///"):]).exists()
    assert check(cfg, "web")[0] is False
    store = open_store(cfg.database_url)
    srv = StatusServer(cfg.http, store)
    srv.start()
    try:
        assert check(cfg, "web") == (True, "GET /healthz answered ok")
    finally:
        srv.stop()
        store.dispose()


def test_stage_commands_create_private_files(site: Path) -> None:
    """Whatever umask a stage is started with, its database and spool are the hexnode user's alone."""
    old = os.umask(0o022)
    try:
        proc = subprocess.run([sys.executable, "-m", "hexnode.cli", "db", "upgrade", "--config", str(site)],
                              capture_output=True, text=True, timeout=60)
    finally:
        os.umask(old)
    assert proc.returncode == 0, proc.stderr
    db = Path(load_config(site, env={}).database_url[len("sqlite:///"):])
    assert db.stat().st_mode & 0o777 == 0o600
    assert db.parent.stat().st_mode & 0o777 == 0o700


def test_a_restarted_process_replaces_only_its_own_stage_row(tmp_path: Path) -> None:
    """Containers on a host network share the host name and are all pid 1: a restarted worker drops
    the dead worker's row, never the other stages' rows; a clean stop removes its own."""
    from hexnode.store.heartbeat import Beater, beats

    store = open_store(f"sqlite:///{tmp_path / 'h.sqlite'}")
    try:
        route, dead_worker = Beater(store, "route"), Beater(store, "worker")
        route.start()
        dead_worker.start()  # killed: never stops
        worker = Beater(store, "worker")
        worker.start()
        with store.transaction() as s:
            rows = {(b.stage, b.instance) for b in beats(s)}
        assert rows == {("route", route.instance), ("worker", worker.instance)}
        worker.stop()
        with store.transaction() as s:
            assert [b.stage for b in beats(s)] == ["route"]
    finally:
        store.dispose()
