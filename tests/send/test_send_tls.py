"""C-STORE over TLS to dcmtk's storescp (`+tls`, certificates made by the test): the peer's
certificate must be valid for the name hexnode expects — the host it connects to, or the
destination's `tls_server_name` for a peer addressed by IP. A certificate the same CA signed for
another name is a man in the middle: nothing is sent, and the delivery's status says why."""

from __future__ import annotations

import argparse
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest
from plumbing_helpers import write_ct
from pydicom import dcmread
from sqlalchemy import select
from tls_helpers import Leaf, TestCA

from hexnode.config import Config, Destination, SendConfig
from hexnode.devtools.net import free_port, wait_port
from hexnode.send.scu import store_files
from hexnode.send.sender import Sender
from hexnode.store import queue
from hexnode.store.db import Outbox, Series, Study, open_store
from hexnode.store.spool import Spool

PACS_NAME = "pacs.hospital.test"


class StoreSCP:
    """dcmtk storescp with TLS: `+tls key cert`, no client certificate asked for (-ic)."""

    def __init__(self, folder: Path, leaf: Leaf) -> None:
        self.port = free_port()
        self.received = folder / "received"
        self.received.mkdir(parents=True)
        with open(folder / "storescp.log", "wb") as log:
            self.proc = subprocess.Popen(["storescp", "-aet", "PACS", "-od", str(self.received),
                                          "+tls", str(leaf.key), str(leaf.cert), "-ic", str(self.port)],
                                         stdout=log, stderr=subprocess.STDOUT)
        wait_port(self.port, 20, self.proc)

    def files(self) -> list[Path]:
        return sorted(self.received.iterdir())

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(10)


@pytest.fixture(scope="module")
def ca(tmp_path_factory: pytest.TempPathFactory) -> TestCA:
    return TestCA(tmp_path_factory.mktemp("ca"))


@pytest.fixture(scope="module")
def pacs(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """The real PACS: its certificate names it (and localhost), not its IP address."""
    scp = StoreSCP(tmp_path_factory.mktemp("pacs"), ca.leaf(PACS_NAME, dns=(PACS_NAME, "localhost")))
    yield scp
    scp.stop()


@pytest.fixture(scope="module")
def impostor(ca: TestCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[StoreSCP]:
    """A man in the middle with a certificate from the same CA, for another host."""
    scp = StoreSCP(tmp_path_factory.mktemp("impostor"), ca.leaf("other.hospital.test"))
    yield scp
    scp.stop()


def _one(tmp_path: Path, name: str) -> tuple[str, Path]:
    (f,) = write_ct(tmp_path / name, 1, size=16)
    return str(dcmread(f).SOPInstanceUID), f


def _dest(ca: TestCA, scp: StoreSCP, **kw: str) -> Destination:
    return Destination(name="pacs", ae_title="PACS", port=scp.port, tls=True, tls_ca_file=str(ca.cert),
                       timeout_seconds=10, **kw)  # type: ignore[arg-type]


def test_right_name_delivers_and_ip_peer_with_its_expected_name_delivers(ca: TestCA, pacs: StoreSCP,
                                                                          tmp_path: Path) -> None:
    uid, f = _one(tmp_path, "a")
    out = store_files(_dest(ca, pacs, host="localhost"), {uid: f}, "HEXNODE")
    assert out[uid].ok, out[uid].detail
    uid2, f2 = _one(tmp_path, "b")
    out = store_files(_dest(ca, pacs, host="127.0.0.1", tls_server_name=PACS_NAME), {uid2: f2}, "HEXNODE")
    assert out[uid2].ok, out[uid2].detail
    assert {str(dcmread(p).SOPInstanceUID) for p in pacs.files()} >= {uid, uid2}


def test_ip_peer_without_a_name_in_its_certificate_is_refused(ca: TestCA, pacs: StoreSCP, tmp_path: Path) -> None:
    """Connected by IP, the certificate must carry that IP; this one names the host only."""
    before = len(pacs.files())
    uid, f = _one(tmp_path, "c")
    out = store_files(_dest(ca, pacs, host="127.0.0.1"), {uid: f}, "HEXNODE")
    assert not out[uid].ok
    assert "TLS: the peer's certificate is not valid for '127.0.0.1'" in out[uid].detail, out[uid].detail
    assert "tls_server_name" in out[uid].detail
    assert len(pacs.files()) == before


def test_certificate_for_another_name_fails_the_delivery_and_status_says_why(
        ca: TestCA, impostor: StoreSCP, tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """The impostor's chain is valid (same CA); its name is not: nothing reaches it, the outbox row
    backs off with the reason, and `hexnode status` shows it."""
    dest = _dest(ca, impostor, host="127.0.0.1", tls_server_name=PACS_NAME)
    cfg = Config(data_dir=str(tmp_path / "var"), destinations=[dest], send=SendConfig(backoff_initial_seconds=60))
    store, spool = open_store(cfg.database_url), Spool(cfg.spool_path).prepare()
    uid, f = _one(tmp_path, "d")
    with store.transaction() as s:
        study = Study(study_uid="1.2.3.9")
        s.add(study)
        s.flush()
        ser = Series(series_uid="1.2.3.9.1", study_id=study.id, calling_ae="CT")
        s.add(ser)
        s.flush()
        queue.transition(s, ser, "complete")
        queue.enqueue_job(s, ser)
        job = queue.claim_job(s, "w", 60, max_attempts=3)
        rel = spool.result_relpath(ser.series_uid, f.name)
        spool.write_bytes(rel, f.read_bytes())
        queue.add_result(s, job, "SC", uid, rel, [dest.name])
        queue.complete_job(s, job.id, "w")
    assert Sender(cfg, store, spool, owner="t").run_once() == 1
    with store.transaction() as s:
        row = s.execute(select(Outbox)).scalar_one()
        assert row.state == "pending" and row.attempts == 1
        assert row.last_error.startswith(f"pacs 127.0.0.1:{impostor.port}: TLS: the peer's certificate is not "
                                         f"valid for '{PACS_NAME}' (Hostname mismatch"), row.last_error
    assert impostor.files() == []
    from hexnode.admin.status import run_status

    cfg_file = tmp_path / "hexnode.toml"
    cfg_file.write_text(f'data_dir = "{tmp_path / "var"}"\n')
    assert run_status(argparse.Namespace(config=str(cfg_file), json=False)) == 0
    assert f"certificate is not valid for '{PACS_NAME}'" in capsys.readouterr().out
    store.dispose()


def test_untrusted_chain_is_refused_with_its_reason(ca: TestCA, pacs: StoreSCP, tmp_path: Path) -> None:
    """No CA file: the system CAs, which did not sign the test CA (the name matches, the chain not)."""
    uid, f = _one(tmp_path, "e")
    dest = Destination(name="pacs", ae_title="PACS", host="localhost", port=pacs.port, tls=True, timeout_seconds=10)
    out = store_files(dest, {uid: f}, "HEXNODE")
    assert not out[uid].ok
    assert out[uid].detail.endswith("TLS: the peer's certificate was not accepted (unable to get local issuer "
                                    "certificate); not sent"), out[uid].detail
