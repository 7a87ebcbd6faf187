"""Crash safety: bench/chaos.py with 3 runs (kill -9 of serve while receiving, of the worker while
its job runs, of the sender while delivering), real Orthanc + hexnode processes → every series has
exactly one SEG, SR and SC in Orthanc. And the completion rule that keeps a series whose headers
announce more images from being analysed half-received after a crash."""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path

import pytest
from plumbing_helpers import models_dir
from series_helpers import index, write_series
from sqlalchemy import select

from hexnode.config import Config
from hexnode.route.completion import INCOMPLETE_WAIT_FACTOR
from hexnode.route.service import check_once
from hexnode.store.db import Series, open_store, utcnow
from hexnode.store.spool import Spool

REPO = Path(__file__).resolve().parents[2]



@pytest.mark.slow
@pytest.mark.skipif(not Path("/usr/sbin/Orthanc").exists(), reason="Debian orthanc not installed")
def test_chaos_three_runs_lose_and_duplicate_nothing(tmp_path: Path) -> None:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    proc = subprocess.run(
        [sys.executable, str(REPO / "bench" / "chaos.py"), "--runs", "3", "--seed", "7",
         "--phases", "receive,job,send", "--models", str(models_dir()), "--workdir", str(tmp_path / "chaos")],
        capture_output=True, text=True, env=env, timeout=900, cwd=REPO)
    last = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else ""
    assert last.startswith("runs=3 series=3 "), proc.stdout[-3000:] + proc.stderr[-3000:]
    figures = dict(part.split("=") for part in last.split())
    assert (figures["lost"], figures["duplicated"]) == ("0", "0"), proc.stdout[-3000:]
    assert proc.returncode == 0
    for phase in ("receive", "job", "send"):
        assert f"({phase:<7})" in proc.stdout  # each kind of kill happened


def test_series_announcing_more_images_waits_before_completing(tmp_path: Path) -> None:
    cfg = Config()
    cfg.data_dir = str(tmp_path)
    cfg.series.stable_seconds = 1.0
    store = open_store(cfg.database_url)
    spool = Spool(cfg.spool_path).prepare()
    paths = write_series(tmp_path / "s", n=12, rows=16, cols=16, ImagesInAcquisition=12)
    t0 = utcnow() - timedelta(seconds=3)
    index(store, spool, paths[:4], t0)  # 4 of 12 arrived, then the sender (or we) crashed

    def state() -> str:
        with store.transaction() as s:
            return str(s.execute(select(Series.state)).scalar_one())

    check_once(store, cfg, spool, now=utcnow())
    assert state() == "received"  # stable for 3 s > stable_seconds, but 8 images are announced
    check_once(store, cfg, spool, now=t0 + timedelta(seconds=INCOMPLETE_WAIT_FACTOR + 1))
    assert state() != "received"  # the wait is bounded: it completes (and is reported) anyway
    store.dispose()
