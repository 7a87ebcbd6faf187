"""STOW-RS (dicomweb-client) against a recording DICOMweb peer on loopback: what goes on the wire
(bearer token, Accept, Part 10 parts), what each response status records, TLS with a client
certificate. tests/send/test_send.py sends to a real Orthanc's DICOMweb plugin."""

from __future__ import annotations

import email.parser
import email.policy
import io
import json
import ssl
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
from plumbing_helpers import free_port, make_pki, write_ct
from pydicom import dcmread
from sqlalchemy import select
from tls_helpers import Leaf, TestCA

from hexnode.config import Destination, SendConfig
from hexnode.send.stow import stow_files


@dataclass
class Peer:
    """What the peer answers (status, DICOM JSON) and what it was sent."""

    status: int = 200
    body: object = None  # None: reference every object it was sent
    delay: float = 0.0
    headers: dict[str, str] = field(default_factory=dict)  # more response headers (e.g. Location)
    requests: list[dict[str, object]] = field(default_factory=list)
    url: str = ""


def _item(uid: str, reason: int | None = None) -> dict[str, object]:
    item: dict[str, object] = {"00081150": {"vr": "UI", "Value": ["1.2.840.10008.5.1.4.1.1.7"]},
                               "00081155": {"vr": "UI", "Value": [uid]}}
    if reason is not None:
        item["00081197"] = {"vr": "US", "Value": [reason]}
    return item


def _handler(peer: Peer) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, *_args: object) -> None:
            pass

        def do_POST(self) -> None:
            if "chunked" in self.headers.get("Transfer-Encoding", ""):
                raw = bytearray()
                while (size := int(self.rfile.readline().strip() or b"0", 16)) > 0:
                    raw += self.rfile.read(size)
                    self.rfile.readline()
                self.rfile.readline()
            else:
                raw = bytearray(self.rfile.read(int(self.headers["Content-Length"])))
            msg = email.parser.BytesParser(policy=email.policy.HTTP).parsebytes(
                f"Content-Type: {self.headers['Content-Type']}\r\n\r\n".encode() + bytes(raw))
            parts = [p.get_payload(decode=True) for p in msg.iter_parts()]
            uids = [str(dcmread(io.BytesIO(p)).SOPInstanceUID) for p in parts]
            peer.requests.append({"path": self.path, "headers": dict(self.headers), "uids": uids,
                                  "part_types": [p.get_content_type() for p in msg.iter_parts()]})
            time.sleep(peer.delay)
            body = peer.body if peer.body is not None else {
                "00081199": {"vr": "SQ", "Value": [_item(u) for u in uids]}}
            data = json.dumps(body).encode()
            self.send_response(peer.status)
            for k, v in peer.headers.items():
                self.send_header(k, v)
            self.send_header("Content-Type", "application/dicom+json")
            self.send_header("Content-Length", str(len(data)))
            self.end_headers()
            self.wfile.write(data)

    return Handler


@pytest.fixture
def peer() -> Iterator[Peer]:
    p = Peer()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(p))
    p.url = f"http://127.0.0.1:{server.server_address[1]}/dicom-web"
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield p
    server.shutdown()
    server.server_close()


def _files(tmp_path: Path, n: int = 2) -> dict[str, Path]:
    return {str(dcmread(f).SOPInstanceUID): f for f in write_ct(tmp_path / "objs", n, size=16)}


def test_bearer_token_accept_and_part10_parts_on_the_wire(peer: Peer, tmp_path: Path) -> None:
    files = _files(tmp_path, 3)
    out = stow_files(Destination(name="web", kind="stow", url=peer.url + "/", bearer_token="s3cret"), files)
    assert {u: o.ok for u, o in out.items()} == dict.fromkeys(files, True)
    assert {o.detail for o in out.values()} == {"STOW-RS HTTP 200"}
    (req,) = peer.requests
    assert req["path"] == "/dicom-web/studies"
    headers = req["headers"]
    assert isinstance(headers, dict)
    assert headers["Authorization"] == "Bearer s3cret" and headers["Accept"] == "application/dicom+json"
    assert headers["Content-Type"].startswith('multipart/related; type="application/dicom"')
    assert req["uids"] == list(files) and req["part_types"] == ["application/dicom"] * 3


def test_no_token_no_authorization_header(peer: Peer, tmp_path: Path) -> None:
    stow_files(Destination(name="web", kind="stow", url=peer.url), _files(tmp_path, 1))
    headers = peer.requests[0]["headers"]
    assert isinstance(headers, dict) and "Authorization" not in headers


def test_202_and_409_record_each_objects_failure_reason(peer: Peer, tmp_path: Path) -> None:
    files = _files(tmp_path, 3)
    a, b, c = files
    dest = Destination(name="web", kind="stow", url=peer.url)
    peer.status, peer.body = 202, {"00081199": {"vr": "SQ", "Value": [_item(a)]},
                                   "00081198": {"vr": "SQ", "Value": [_item(b, 0xA700)]}}
    out = stow_files(dest, files)
    assert out[a].ok and out[a].detail == "STOW-RS HTTP 202"
    assert not out[b].ok and out[b].detail == f"STOW-RS refused, FailureReason {0xA700}"
    assert not out[c].ok and out[c].detail == "STOW-RS HTTP 202: object not in the response"
    peer.status, peer.body = 409, {"00081198": {"vr": "SQ", "Value": [_item(u, 272) for u in files]}}
    out = stow_files(dest, files)
    assert {o.detail for o in out.values()} == {"STOW-RS refused, FailureReason 272"}
    assert not any(o.ok for o in out.values())


@pytest.mark.parametrize("status", [400, 401, 404, 500, 503])
def test_other_http_errors_fail_the_batch_once_without_library_retries(peer: Peer, tmp_path: Path, status: int) -> None:
    files = _files(tmp_path, 2)
    peer.status, peer.body = status, {}
    t0 = time.monotonic()
    out = stow_files(Destination(name="web", kind="stow", url=peer.url), files)
    assert {o.detail for o in out.values()} == {f"STOW-RS HTTP {status}"} and not any(o.ok for o in out.values())
    assert len(peer.requests) == 1 and time.monotonic() - t0 < 5, "the outbox backs off, not dicomweb-client"


def test_network_errors_are_short_and_the_outbox_row_backs_off(tmp_path: Path) -> None:
    from hexnode.config import Config
    from hexnode.send.sender import Sender
    from hexnode.store import queue
    from hexnode.store.db import Outbox, Series, Study, open_store
    from hexnode.store.spool import Spool

    port = free_port()
    dest = Destination(name="web", kind="stow", url=f"http://127.0.0.1:{port}/dicom-web", timeout_seconds=2)
    cfg = Config(data_dir=str(tmp_path / "var"), destinations=[dest], send=SendConfig(backoff_initial_seconds=60))
    store, spool = open_store(cfg.database_url), Spool(cfg.spool_path).prepare()
    files = _files(tmp_path, 1)
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
        for uid, f in files.items():
            rel = spool.result_relpath(ser.series_uid, f.name)
            spool.write_bytes(rel, f.read_bytes())
            queue.add_result(s, job, "SC", uid, rel, [dest.name])
        queue.complete_job(s, job.id, "w")
    assert Sender(cfg, store, spool, owner="t").run_once() == 1
    with store.transaction() as s:
        row = s.execute(select(Outbox)).scalar_one()
        assert row.state == "pending" and row.attempts == 1
        assert row.last_error == f"STOW-RS http://127.0.0.1:{port}/dicom-web: Connection refused", row.last_error


def test_timeout_is_the_destinations(peer: Peer, tmp_path: Path) -> None:
    peer.delay = 3.0
    t0 = time.monotonic()
    out = stow_files(Destination(name="web", kind="stow", url=peer.url, timeout_seconds=1), _files(tmp_path, 1))
    assert {o.detail for o in out.values()} == {f"STOW-RS {peer.url}: timed out after 1 s"}
    assert time.monotonic() - t0 < 2.9


def test_unreadable_file_is_its_own_failure(peer: Peer, tmp_path: Path) -> None:
    files = _files(tmp_path, 1)
    bad = tmp_path / "bad.dcm"
    bad.write_bytes(b"not dicom")
    out = stow_files(Destination(name="web", kind="stow", url=peer.url), {**files, "1.2.3": bad,
                                                                          "1.2.4": tmp_path / "missing.dcm"})
    assert out["1.2.3"].detail == "cannot read bad.dcm: InvalidDicomError"
    assert out["1.2.4"].detail == "cannot read missing.dcm: FileNotFoundError"
    assert all(out[u].ok for u in files) and peer.requests[0]["uids"] == list(files)


def test_https_with_ca_file_and_client_certificate(peer: Peer, tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH, cafile=str(pki / "ca.crt"))
    ctx.verify_mode = ssl.CERT_REQUIRED
    ctx.load_cert_chain(pki / "server.crt", pki / "server.key")
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer))
    server.socket = ctx.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
    files = _files(tmp_path, 1)
    try:
        good = Destination(name="web", kind="stow", url=url, tls=True, tls_ca_file=str(pki / "ca.crt"),
                           tls_cert_file=str(pki / "client.crt"), tls_key_file=str(pki / "client.key"))
        assert all(o.ok for o in stow_files(good, files).values())
        rogue_ca = Destination(name="web", kind="stow", url=url, tls=True, tls_ca_file=str(pki / "rogue.crt"),
                               tls_cert_file=str(pki / "client.crt"), tls_key_file=str(pki / "client.key"))
        out = stow_files(rogue_ca, files)
        assert not any(o.ok for o in out.values())
        assert "TLS: the peer's certificate was not accepted (self-signed certificate in certificate chain)" in \
            next(iter(out.values())).detail
        assert len(peer.requests) == 1
    finally:
        server.shutdown()
        server.server_close()


def _https(peer: Peer, leaf: Leaf) -> ThreadingHTTPServer:
    server = ThreadingHTTPServer(("127.0.0.1", 0), _handler(peer))
    server.socket = leaf.server_context().wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server


PACS_NAME = "pacs.hospital.test"


def test_https_checks_the_servers_name_and_never_sends_the_token_to_an_impostor(tmp_path: Path) -> None:
    """The PACS's certificate names it and localhost, not its IP; the impostor's certificate is from
    the same CA, for another host. Right name → stored; IP without tls_server_name → refused; IP with
    the expected name → stored; the impostor is refused before any byte of the request (token
    included) reaches it, and the outcome says why."""
    ca = TestCA(tmp_path / "ca")
    pacs, impostor = Peer(), Peer()
    servers = [_https(pacs, ca.leaf(PACS_NAME, dns=(PACS_NAME, "localhost"))),
               _https(impostor, ca.leaf("other.hospital.test"))]
    pacs_port, impostor_port = (srv.server_address[1] for srv in servers)
    files = _files(tmp_path, 1)
    try:
        def send(url: str, **kw: object) -> tuple[bool, str]:
            dest = Destination(name="web", kind="stow", url=url, tls=True, tls_ca_file=str(ca.cert),
                               bearer_token="s3cret", timeout_seconds=5, **kw)  # type: ignore[arg-type]
            (out,) = stow_files(dest, files).values()
            return out.ok, out.detail

        assert send(f"https://localhost:{pacs_port}/dicom-web") == (True, "STOW-RS HTTP 200")
        ok, why = send(f"https://127.0.0.1:{pacs_port}/dicom-web")
        assert not ok and "TLS: the peer's certificate is not valid for '127.0.0.1'" in why, why
        assert send(f"https://127.0.0.1:{pacs_port}/dicom-web", tls_server_name=PACS_NAME) == (True, "STOW-RS HTTP 200")
        ok, why = send(f"https://127.0.0.1:{impostor_port}/dicom-web", tls_server_name=PACS_NAME)
        assert not ok and why.startswith(f"STOW-RS https://127.0.0.1:{impostor_port}/dicom-web: TLS: the peer's "
                                         f"certificate is not valid for '{PACS_NAME}' (Hostname mismatch"), why
        assert len(pacs.requests) == 2 and impostor.requests == []
        assert all(r["headers"]["Authorization"] == "Bearer s3cret" for r in pacs.requests)  # type: ignore[index]
        # an https URL uses the destination's CA and name check even without tls = true
        plain_flag = Destination(name="web", kind="stow", url=f"https://127.0.0.1:{pacs_port}/dicom-web",
                                 tls_ca_file=str(ca.cert), tls_server_name=PACS_NAME)
        assert all(o.ok for o in stow_files(plain_flag, files).values())
    finally:
        for srv in servers:
            srv.shutdown()
            srv.server_close()


def test_a_redirect_is_not_followed_and_names_where_it_pointed(peer: Peer, tmp_path: Path) -> None:
    """requests would turn the POST into a GET (nothing stored) or re-send it elsewhere."""
    peer.status, peer.body = 302, {}
    peer.headers["Location"] = "https://elsewhere.hospital.test:8443/dicom-web/studies?sig=secret"
    files = _files(tmp_path, 1)
    (out,) = stow_files(Destination(name="web", kind="stow", url=peer.url), files).values()
    assert not out.ok and out.detail == (f"STOW-RS {peer.url}: HTTP 302: redirect to https://elsewhere.hospital.test:8443/… "
                                         "not followed (it would drop the POST body or send the credentials elsewhere); "
                                         "configure the final URL")
    assert len(peer.requests) == 1


def test_config_refuses_a_token_in_clear_and_tls_without_https(tmp_path: Path) -> None:
    from hexnode.config import ConfigError, load_config

    for body, needle in (
        ('kind = "stow"\nurl = "http://pacs.example/dicom-web"\nbearer_token = "t"\n', "never sent in clear"),
        ('kind = "stow"\nurl = "http://pacs.example/dicom-web"\ntls = true\n', "needs an https:// URL"),
        ('kind = "stow"\nurl = "pacs.example/dicom-web"\n', "http:// or https:// URL"),
    ):
        p = tmp_path / "h.toml"
        p.write_text(f'[[destinations]]\nname = "web"\n{body}')
        with pytest.raises(ConfigError, match=needle):
            load_config(p, env={})
    p.write_text('[[destinations]]\nname = "web"\nkind = "stow"\nurl = "https://10.0.0.5/dicom-web"\n'
                 'bearer_token = "t"\ntls_server_name = "pacs.hospital.example"\n')
    assert load_config(p, env={}).destinations[0].tls_server_name == "pacs.hospital.example"
