"""`hexnode echo DEST` against real peers: Debian's Orthanc (C-ECHO, and its DICOMweb plugin for a
STOW destination), Orthanc refusing our called AE title, a closed port, dcmtk's storescp over TLS
(certificates made with openssl, as docs/operations.md shows) and a DICOMweb root that wants a
bearer token. Each gives one line and the exit status an admin's script can test."""

from __future__ import annotations

import http.server
import os
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
from plumbing_helpers import Orthanc, free_port, make_pki, start_orthanc, wait_port
from tls_helpers import TestCA

from hexnode.devtools.net import dcmtk_env

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def orthanc(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Orthanc]:
    o = start_orthanc(tmp_path_factory.mktemp("orthanc"), aet="PACS", dicomweb=True)
    yield o
    o.stop()


def echo(tmp_path: Path, toml: str, *args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    cfg = tmp_path / "hexnode.toml"
    cfg.write_text(f'data_dir = "{tmp_path / "var"}"\n[dicom]\nae_title = "HEXNODE"\n' + toml)
    clean = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    return subprocess.run([sys.executable, "-m", "hexnode.cli", "echo", "--config", str(cfg), *args],
                          capture_output=True, text=True, timeout=120, env={**clean, **(env or {})}, cwd=tmp_path)


def test_c_echo_to_orthanc_and_qido_on_its_dicomweb_root(orthanc: Orthanc, tmp_path: Path) -> None:
    r = echo(tmp_path, f"""
[[destinations]]
name = "pacs"
ae_title = "PACS"
port = {orthanc.dicom_port}
[[destinations]]
name = "web"
kind = "stow"
url = "{orthanc.url}/dicom-web"
""")
    assert r.returncode == 0, r.stdout + r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].startswith(f"echo pacs (dicom PACS@127.0.0.1:{orthanc.dicom_port}): OK: C-ECHO status 0x0000 in ")
    assert lines[1].startswith(f"echo web (stow {orthanc.url}/dicom-web): OK: QIDO-RS GET studies?limit=1: HTTP 200")
    assert len(lines) == 2
    # which settings and no database: one line on stderr, and no pynetdicom lines anywhere
    assert r.stderr.splitlines() == [f"hexnode echo: config {tmp_path / 'hexnode.toml'}; no database"]
    # one destination by name
    one = echo(tmp_path, f'[[destinations]]\nname = "pacs"\nae_title = "PACS"\nport = {orthanc.dicom_port}\n', "pacs")
    assert one.returncode == 0 and len(one.stdout.splitlines()) == 1


def test_refusing_peers_fail_with_the_reason_on_one_line(orthanc: Orthanc, tmp_path: Path) -> None:
    closed, refusing = free_port(), free_port()
    # dcmtk's storescp --refuse: every association is rejected
    scp = subprocess.Popen(["/usr/bin/storescp", "--refuse", str(refusing)], env=dcmtk_env(),
                           stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(refusing)
        r = echo(tmp_path, f"""
[[destinations]]
name = "refusing"
ae_title = "STORESCP"
port = {refusing}
[[destinations]]
name = "down"
port = {closed}
[[destinations]]
name = "web-down"
kind = "stow"
url = "http://127.0.0.1:{closed}/dicom-web"
[[destinations]]
name = "not-dicomweb"
kind = "stow"
url = "{orthanc.url}/no-such-root"
""")
    finally:
        scp.terminate()
        scp.wait(10)
    assert r.returncode == 1
    lines = r.stdout.splitlines()
    assert len(lines) == 4, r.stdout
    # storescp --refuse answers A-ASSOCIATE-RJ and closes at once: on a loaded machine pynetdicom can
    # see the close before it reads the RJ, and then all it can say is that the association ended
    refused = f"echo refusing (dicom STORESCP@127.0.0.1:{refusing}): FAILED: "
    assert lines[0].startswith(refused + "association rejected: ") and "Rejected" in lines[0] or \
        lines[0].startswith(refused + "association aborted"), lines[0]
    assert lines[1].startswith(f"echo down (dicom ORTHANC@127.0.0.1:{closed}): FAILED: no connection: ")
    assert "Connection refused" in lines[1]
    assert lines[2].startswith("echo web-down (stow ") and "FAILED: no connection: ConnectionError: [Errno 111]" in lines[2]
    assert "FAILED: QIDO-RS GET studies: HTTP 404" in lines[3] and "DICOMweb root" in lines[3]
    assert "pynetdicom" not in r.stderr and "Traceback" not in r.stderr
    assert len(r.stderr.splitlines()) == 1  # the config line only: no library ERROR lines
    unknown = echo(tmp_path, "", "nope")
    assert unknown.returncode == 2 and "no destination 'nope' in the settings (known: pacs)" in unknown.stderr


def test_c_echo_over_tls_to_dcmtk_storescp(tmp_path: Path) -> None:
    pki = make_pki(tmp_path / "pki")
    port = free_port()
    scp = subprocess.Popen(["/usr/bin/storescp", "-aet", "TLSPACS", "+tls", str(pki / "server.key"),
                            str(pki / "server.crt"), "+cf", str(pki / "ca.crt"), "-od", str(tmp_path), str(port)],
                           env=dcmtk_env(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_port(port)
        base = f"""
[[destinations]]
name = "tls-pacs"
ae_title = "TLSPACS"
port = {port}
tls = true
tls_cert_file = "{pki / 'client.crt'}"
tls_key_file = "{pki / 'client.key'}"
"""
        ok = echo(tmp_path, base + f'tls_ca_file = "{pki / "ca.crt"}"\n')
        assert ok.returncode == 0, ok.stdout + ok.stderr
        assert ok.stdout.startswith(f"echo tls-pacs (dicom TLSPACS@127.0.0.1:{port}, TLS): OK: C-ECHO status 0x0000")
        # the peer's certificate is not signed by the CA we trust: refused, and the line says TLS
        rogue = echo(tmp_path, base + f'tls_ca_file = "{pki / "rogue.crt"}"\n')
        assert rogue.returncode == 1
        assert "FAILED: TLS: the peer's certificate was not accepted" in rogue.stdout
        assert "no association" in rogue.stdout and "not sent" not in rogue.stdout
        # plain DICOM to a TLS port: no association
        plain = echo(tmp_path, f'[[destinations]]\nname = "plain"\nae_title = "TLSPACS"\nport = {port}\n'
                               'timeout_seconds = 5.0\n')
        assert plain.returncode == 1 and "FAILED" in plain.stdout
    finally:
        scp.terminate()
        scp.wait(10)


class _TokenRoot(http.server.BaseHTTPRequestHandler):
    """A DICOMweb root that answers QIDO-RS only with the right bearer token."""

    def log_message(self, *_args: object) -> None:
        pass

    def do_GET(self) -> None:
        ok = self.headers.get("Authorization") == "Bearer s3cret-token" and self.path.startswith("/dicom-web/studies")
        body = b"[]" if ok else b'{"error": "unauthorised"}'
        self.send_response(200 if ok else 401)
        self.send_header("Content-Type", "application/dicom+json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)


def test_stow_destination_echo_sends_its_bearer_token(tmp_path: Path) -> None:
    # a bearer token is only ever sent over HTTPS (config refuses http:// with a token)
    ca = TestCA(tmp_path / "ca")
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _TokenRoot)
    server.socket = ca.leaf("pacs.test", ips=("127.0.0.1",)).server_context().wrap_socket(
        server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    url = f"https://127.0.0.1:{server.server_address[1]}/dicom-web"
    try:
        toml = f'[[destinations]]\nname = "web"\nkind = "stow"\nurl = "{url}"\ntls_ca_file = "{ca.cert}"\n'
        ok = echo(tmp_path, toml, env={"HEXNODE_DESTINATIONS_0_BEARER_TOKEN": "s3cret-token"})
        assert ok.returncode == 0 and "OK: QIDO-RS GET studies?limit=1: HTTP 200" in ok.stdout, ok.stdout + ok.stderr
        assert "HEXNODE_DESTINATIONS_0_BEARER_TOKEN" in ok.stderr  # named as an override ...
        assert "s3cret-token" not in ok.stdout + ok.stderr  # ... never its value
        refused = echo(tmp_path, toml)
        assert refused.returncode == 1
        assert "FAILED: QIDO-RS GET studies: HTTP 401 Unauthorized (bearer_token missing or refused)" in refused.stdout
    finally:
        server.shutdown()
