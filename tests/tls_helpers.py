"""Certificates made by the test (openssl): one CA and leaf certificates for the names a test
needs, so that a peer can present a certificate the CA signed for *another* name — the man in the
middle that a chain check alone lets through."""

from __future__ import annotations

import ssl
import subprocess
from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Leaf:
    cert: Path
    key: Path

    def server_context(self) -> ssl.SSLContext:
        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        return ctx


class TestCA:
    """A throw-away CA in `folder`; `leaf(name, dns=..., ips=...)` issues a server certificate."""

    __test__ = False  # not a pytest class

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self.cert, self.key = folder / "ca.crt", folder / "ca.key"
        self._openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
                      "-days", "2", "-subj", "/CN=hexnode test CA",
                      "-addext", "basicConstraints=critical,CA:TRUE", "-addext", "keyUsage=critical,keyCertSign")

    def _openssl(self, *args: str) -> None:
        subprocess.run(["openssl", *args], cwd=self.folder, check=True, capture_output=True)

    def leaf(self, name: str, *, dns: tuple[str, ...] = (), ips: tuple[str, ...] = ()) -> Leaf:
        """A certificate with CN `name` and exactly these subjectAltNames (DNS `name` when none)."""
        sans = [f"DNS:{d}" for d in dns] + [f"IP:{i}" for i in ips] or [f"DNS:{name}"]
        stem = name.replace("*", "star")
        (self.folder / f"{stem}.ext").write_text(f"subjectAltName={','.join(sans)}\nextendedKeyUsage=serverAuth\n")
        self._openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{stem}.key", "-out", f"{stem}.csr",
                      "-subj", f"/CN={name}")
        self._openssl("x509", "-req", "-in", f"{stem}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
                      "-out", f"{stem}.crt", "-days", "2", "-extfile", f"{stem}.ext")
        return Leaf(self.folder / f"{stem}.crt", self.folder / f"{stem}.key")
