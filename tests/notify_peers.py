"""Real notification receivers on loopback for tests/notify/test_notify.py: an HTTP(S) webhook receiver
(http.server; it can answer a redirect, and records GETs too), an SMTP server with STARTTLS and
AUTH (aiosmtpd, a self-signed certificate made with openssl for the test), and an MLLP listener
answering AA or AE (python-hl7's asyncio server), in clear or over TLS. Each can stall its first
exchange until released, so a test can kill the sender mid-message."""

from __future__ import annotations

import asyncio
import json
import ssl
import subprocess
import threading
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

from hexnode.devtools.net import free_port


def self_signed_cert(folder: Path) -> tuple[Path, Path]:
    """A certificate for 127.0.0.1 (and its key), which the client is told to trust (tls_ca_file)."""
    cert, key = folder / "cert.pem", folder / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                    "-addext", "subjectAltName=IP:127.0.0.1,DNS:localhost", "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True)
    return cert, key


class _Stall:
    """Hold the first exchange until released (then let every later one through)."""

    def __init__(self, enabled: bool) -> None:
        self.enabled = enabled
        self.reached = threading.Event()
        self.release = threading.Event()
        self._used = False
        self._lock = threading.Lock()

    def wait_if_first(self) -> bool:
        with self._lock:
            first = self.enabled and not self._used
            self._used = True
        if first:
            self.reached.set()
            self.release.wait(60)
        return first


# --- HTTP ------------------------------------------------------------------------------------
@dataclass
class Posted:
    path: str
    headers: dict[str, str]
    body: bytes
    method: str = "POST"

    def json(self) -> Any:
        return json.loads(self.body)


class HttpReceiver:
    """Records every POST (and GET); answers `status` (202 like Teams Workflows, 200 like Slack),
    or a redirect to `redirect_to` with `status` 301/302/307/308. `tls`: (certificate, key) to
    serve HTTPS with."""

    def __init__(self, port: int | None = None, status: int = 202, redirect_to: str = "",
                 tls: tuple[Path, Path] | None = None) -> None:
        self.port = port or free_port()
        self.status = status
        self.redirect_to = redirect_to
        self.tls = tls
        self.posts: list[Posted] = []
        self._server: ThreadingHTTPServer | None = None
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, format: str, *args: object) -> None:  # noqa: A002
                pass

            def _record(self, method: str) -> None:
                body = self.rfile.read(int(self.headers.get("Content-Length", "0")))
                outer.posts.append(Posted(self.path, dict(self.headers.items()), body, method))
                self.send_response(outer.status)
                if outer.redirect_to:
                    self.send_header("Location", outer.redirect_to)
                self.send_header("Content-Length", "0")
                self.end_headers()

            def do_POST(self) -> None:  # noqa: N802
                self._record("POST")

            def do_GET(self) -> None:  # noqa: N802
                self._record("GET")

        self._handler = Handler

    @property
    def url(self) -> str:
        return f"{'https' if self.tls else 'http'}://127.0.0.1:{self.port}"

    def start(self) -> HttpReceiver:
        self._server = ThreadingHTTPServer(("127.0.0.1", self.port), self._handler)
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*self.tls)
            self._server.socket = ctx.wrap_socket(self._server.socket, server_side=True)
        self._server.daemon_threads = True
        threading.Thread(target=self._server.serve_forever, daemon=True).start()
        return self

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None

    def at(self, path: str) -> list[Posted]:
        return [p for p in self.posts if p.path == path]


# --- SMTP ------------------------------------------------------------------------------------
@dataclass
class Mail:
    mail_from: str
    rcpt_tos: list[str]
    content: bytes
    tls: bool
    login: str


@dataclass
class SmtpReceiver:
    """aiosmtpd with STARTTLS required and AUTH (user/password); `stall_first` holds the first
    session after RCPT TO, before DATA, until `stall.release` is set."""

    cert: Path
    key: Path
    user: str = "hexnode"
    password: str = "s3cret"
    stall_first: bool = False
    port: int = field(default_factory=free_port)
    mails: list[Mail] = field(default_factory=list)
    logins: list[str] = field(default_factory=list)

    def start(self) -> SmtpReceiver:
        from aiosmtpd.controller import Controller
        from aiosmtpd.smtp import AuthResult, LoginPassword

        self.stall = _Stall(self.stall_first)
        outer = self

        def authenticator(server: Any, session: Any, envelope: Any, mechanism: str, auth_data: Any) -> Any:
            ok = (isinstance(auth_data, LoginPassword) and auth_data.login.decode() == outer.user
                  and auth_data.password.decode() == outer.password)
            if ok:
                outer.logins.append(auth_data.login.decode())
            return AuthResult(success=ok)

        class Handler:
            async def handle_RCPT(self, server: Any, session: Any, envelope: Any, address: str,  # noqa: N802
                                  rcpt_options: Any) -> str:
                envelope.rcpt_tos.append(address)
                await asyncio.get_running_loop().run_in_executor(None, outer.stall.wait_if_first)
                return "250 OK"

            async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
                outer.mails.append(Mail(envelope.mail_from, list(envelope.rcpt_tos), envelope.content,
                                        session.ssl is not None, str(session.authenticated)))
                return "250 Message accepted for delivery"

        ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
        ctx.load_cert_chain(self.cert, self.key)
        self._controller = Controller(Handler(), hostname="127.0.0.1", port=self.port, tls_context=ctx,
                                      require_starttls=True, authenticator=authenticator, auth_required=True,
                                      auth_require_tls=True)
        self._controller.start()
        return self

    def stop(self) -> None:
        self.stall.release.set()
        self._controller.stop()


# --- MLLP ------------------------------------------------------------------------------------
@dataclass
class MllpListener:
    """Answers every ORU with an ACK of `ack_code` (AA, or AE with an error text); records them.
    `tls`: (certificate, key) to listen with MLLP over TLS."""

    ack_code: str = "AA"
    port: int = field(default_factory=free_port)
    stall_first: bool = False
    tls: tuple[Path, Path] | None = None
    messages: list[str] = field(default_factory=list)

    def start(self) -> MllpListener:
        import hl7
        from hl7.mllp import start_hl7_server

        self.stall = _Stall(self.stall_first)
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()
        outer = self

        async def on_client(reader: Any, writer: Any) -> None:
            try:
                while not reader.at_eof():
                    msg = await reader.readmessage()
                    outer.messages.append(str(msg))
                    await asyncio.get_running_loop().run_in_executor(None, outer.stall.wait_if_first)
                    ack = msg.create_ack(outer.ack_code)
                    if outer.ack_code != "AA":
                        text = str(ack).replace("\r", "\n").rstrip("\n").split("\n")
                        text[-1] += "|observation not accepted by the test engine"
                        ack = hl7.parse("\r".join(text))
                    writer.writemessage(ack)
                    await writer.drain()
            except (asyncio.IncompleteReadError, ConnectionError):
                pass
            finally:
                writer.close()

        tls: dict[str, Any] = {}
        if self.tls:
            ctx = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
            ctx.load_cert_chain(*self.tls)
            tls = {"ssl": ctx}

        async def main() -> None:
            self._server = await start_hl7_server(on_client, "127.0.0.1", self.port, encoding="utf-8", **tls)
            ready.set()
            await self._server.serve_forever()

        def run() -> None:
            try:
                self._loop.run_until_complete(main())
            except asyncio.CancelledError:
                pass

        self._thread = threading.Thread(target=run, daemon=True)
        self._thread.start()
        assert ready.wait(10), "MLLP listener did not start"
        return self

    def stop(self) -> None:
        self.stall.release.set()

        def close() -> None:
            self._server.close()
            for task in asyncio.all_tasks(self._loop):
                task.cancel()

        self._loop.call_soon_threadsafe(close)
        self._thread.join(10)
