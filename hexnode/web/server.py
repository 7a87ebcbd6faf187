"""Status and metrics over HTTP for IT monitoring: `hexnode web` (`[http]` in hexnode.toml).

A process of its own: it only reads the database, so a slow scrape or a browser left open never
competes with receiving, and the page stays up while another stage restarts.

GET /             the status page for a browser: what needs attention first, then recent series
                  (web/page.py); refreshes itself
GET /series/ID    one series' history: states, jobs, deliveries, notifications (by its row id)
GET /healthz      "ok" — liveness, no token (it says nothing about the data)
GET /status       the JSON of `hexnode status --json` (no patient identifiers)
GET /outcomes     the JSON of `hexnode outcomes --json` (follow-up pairs: AUC, calibration, drift), and
                  the corrections readers sent back (Dice, volume change per model version)
GET /metrics      Prometheus text (web/metrics.py; the table in docs/operations.md)

A token (`Authorization: Bearer <token>`) guards everything but /healthz whenever one is
configured; a browser gives it as the password of HTTP Basic authentication (any user name),
which it then re-sends on every refresh. Config validation refuses a non-loopback bind without
one, and weak tokens anywhere.

Exposed to a hostile network, it holds out the way a careful server does:

* **Slow or half-sent requests cost no thread.** One acceptor thread reads every request head
  (non-blocking, `selectors`) until its blank line; only a complete head is handed to the
  bounded pool of `THREADS` handler threads. A head not complete within `HEAD_TIMEOUT_SECONDS`
  is answered 408 and closed, one larger than `MAX_HEAD_BYTES` 431; when `MAX_PENDING`
  connections are waiting, the oldest is dropped. So 200 slowloris connections hold 200 file
  descriptors for 10 s, not 200 threads, and the page keeps answering.
* **Host header check.** A request whose Host is not an IP address, `localhost` or one of
  `[http] allowed_hosts` is refused (400): a web page on another site cannot reach a
  loopback-bound status page through DNS rebinding.
* **Security headers** on every answer: a Content-Security-Policy that allows nothing but the
  page's own style sheet (no script, no frame ancestors, no form targets), X-Content-Type-Options,
  X-Frame-Options, Referrer-Policy no-referrer, Cache-Control no-store; no `Server:` banner.
* One request per connection (HTTP/1.0): no idle keep-alive connection holds anything.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import io
import ipaddress
import json
import logging
import selectors
import socket
import threading
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST

from hexnode.admin.status import collect
from hexnode.config import Config, HttpConfig
from hexnode.store.db import Store
from hexnode.store.process import stage_process
from hexnode.web.metrics import metrics_text
from hexnode.web.page import STYLE_HASH, series_html, status_html

log = logging.getLogger(__name__)

THREADS = 8  # handler threads: each serves one complete request (a database read) at a time
QUEUED_PER_THREAD = 4  # complete requests waiting for a thread beyond this get 503
HEAD_TIMEOUT_SECONDS = 10.0  # from accept to the request head's blank line
WRITE_TIMEOUT_SECONDS = 10.0  # each send of the answer
MAX_HEAD_BYTES = 16 * 1024
MAX_PENDING = 512  # connections still sending their head

LOOPBACK_NAMES = ("localhost",)
SECURITY_HEADERS = {
    "Content-Security-Policy": f"default-src 'none'; style-src '{STYLE_HASH}'; img-src 'self'; "
                               "frame-ancestors 'none'; base-uri 'none'; form-action 'none'",
    "X-Content-Type-Options": "nosniff",
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "Cross-Origin-Resource-Policy": "same-origin",
    "Cache-Control": "no-store",
}

# re-exported: tests and other callers format /metrics from a status snapshot
__all__ = ["StatusServer", "host_allowed", "metrics_text", "run_web"]


def host_allowed(host_header: str | None, allowed: list[str]) -> bool:
    """Whether a Host header names this server: an IP address, localhost, or a configured name."""
    if host_header is None:  # HTTP/1.0 without Host: no browser sends that, so no rebinding
        return True
    host = host_header.strip().lower()
    if host.startswith("["):  # [v6]:port
        host = host[1:host.find("]")] if "]" in host else host
    elif host.count(":") == 1:
        host = host.rsplit(":", 1)[0]
    host = host.rstrip(".")
    if not host:
        return False
    try:
        ipaddress.ip_address(host)
        return True
    except ValueError:
        pass
    if host in LOOPBACK_NAMES:
        return True
    for name in allowed:
        name = name.strip().lower().rstrip(".")
        if name.startswith("."):
            if host == name[1:] or host.endswith(name):
                return True
        elif host == name:
            return True
    return False


@dataclass
class _Pending:
    addr: Any
    deadline: float
    head: bytearray = field(default_factory=bytearray)


def _close(conn: socket.socket, answer: bytes | None = None) -> None:
    try:
        if answer:
            conn.setblocking(False)
            conn.send(answer)  # best effort: a peer that does not read gets nothing more
    except OSError:
        pass
    try:
        conn.close()
    except OSError:
        pass


def _plain(code: int, reason: str) -> bytes:
    headers = "".join(f"{k}: {v}\r\n" for k, v in SECURITY_HEADERS.items())
    body = f"{reason}\n".encode()
    return (f"HTTP/1.0 {code} {reason}\r\nContent-Type: text/plain\r\nContent-Length: {len(body)}\r\n"
            f"{headers}Connection: close\r\n\r\n").encode() + body


class StatusServer:
    """The status server over one Store; `start()` runs its acceptor thread and handler pool."""

    def __init__(self, cfg: HttpConfig, store: Store, *, config: Config | None = None,
                 threads: int = THREADS, head_timeout: float = HEAD_TIMEOUT_SECONDS,
                 max_pending: int = MAX_PENDING) -> None:
        self.cfg, self.store, self.config = cfg, store, config
        self.threads, self.head_timeout, self.max_pending = threads, head_timeout, max_pending
        family = socket.AF_INET6 if ":" in cfg.bind else socket.AF_INET
        self._listener = socket.create_server((cfg.bind, cfg.port), family=family, backlog=128)
        self._listener.setblocking(False)
        self._pool = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="hexnode-http")
        self._slots = threading.BoundedSemaphore(threads * (1 + QUEUED_PER_THREAD))
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._handler = self._handler_class()

    @property
    def port(self) -> int:
        return int(self._listener.getsockname()[1])

    def _authorised(self, header: str | None) -> bool:
        if not self.cfg.token:
            return True
        if header is None:
            return False
        if header.startswith("Basic "):
            try:
                given = base64.b64decode(header[6:], validate=True).decode().partition(":")[2]
            except (binascii.Error, UnicodeDecodeError):
                return False
            return hmac.compare_digest(given.encode(), self.cfg.token.encode())
        return hmac.compare_digest(header.encode(), f"Bearer {self.cfg.token}".encode())

    # --- the acceptor: request heads are read here, without a thread per connection

    def _accept_loop(self) -> None:
        sel = selectors.DefaultSelector()
        sel.register(self._listener, selectors.EVENT_READ, None)
        pending: OrderedDict[socket.socket, _Pending] = OrderedDict()
        try:
            while not self._stop.is_set():
                for key, _ in sel.select(timeout=0.25):
                    if key.data is None:
                        self._accept(sel, pending)
                    else:
                        self._read(sel, pending, key.fileobj)  # type: ignore[arg-type]
                now = time.monotonic()
                for conn in [c for c, p in pending.items() if p.deadline <= now]:
                    sel.unregister(conn)
                    del pending[conn]
                    _close(conn, _plain(408, "Request Timeout"))
        finally:
            for conn in pending:
                _close(conn)
            sel.close()

    def _accept(self, sel: selectors.BaseSelector, pending: OrderedDict[socket.socket, _Pending]) -> None:
        while True:
            try:
                conn, addr = self._listener.accept()
            except (BlockingIOError, InterruptedError):
                return
            except OSError as exc:  # out of file descriptors: let the backlog wait
                log.warning("http: accept failed (%s)", exc)
                return
            conn.setblocking(False)
            pending[conn] = _Pending(addr, time.monotonic() + self.head_timeout)
            sel.register(conn, selectors.EVENT_READ, True)
            while len(pending) > self.max_pending:  # the oldest waiting connection goes first
                old, _ = pending.popitem(last=False)
                sel.unregister(old)
                _close(old)

    def _read(self, sel: selectors.BaseSelector, pending: OrderedDict[socket.socket, _Pending],
              conn: socket.socket) -> None:
        p = pending[conn]
        try:
            chunk = conn.recv(4096)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            chunk = b""
        if not chunk:
            sel.unregister(conn)
            del pending[conn]
            _close(conn)
            return
        p.head += chunk
        end = p.head.find(b"\r\n\r\n")
        if end < 0 and len(p.head) <= MAX_HEAD_BYTES:
            return
        sel.unregister(conn)
        del pending[conn]
        if end < 0 or end > MAX_HEAD_BYTES:
            _close(conn, _plain(431, "Request Header Fields Too Large"))
            return
        if not self._slots.acquire(blocking=False):
            _close(conn, _plain(503, "Service Unavailable"))
            return
        self._pool.submit(self._serve, conn, p.addr, bytes(p.head[:end + 4]))

    def _serve(self, conn: socket.socket, addr: Any, head: bytes) -> None:
        try:
            conn.setblocking(True)
            conn.settimeout(WRITE_TIMEOUT_SECONDS)
            self._handler((conn, head), addr, self)  # type: ignore[arg-type]  # (socket, head) and this server
        except Exception:
            log.debug("http: request from %s failed", addr, exc_info=True)
        finally:
            self._slots.release()
            _close(conn)

    # --- the answers

    def snapshot(self) -> dict[str, Any]:
        return collect(self.store, cfg=self.config)

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            # a malformed request line is answered with a status line and headers, never HTTP/0.9's bare body
            default_request_version = "HTTP/1.0"

            def setup(self) -> None:
                # the head was read by the acceptor; nothing more is read from the socket
                conn, head = self.request
                self.connection = conn
                self.rfile = io.BytesIO(head)
                self.wfile = conn.makefile("wb")

            def send_response(self, code: int, message: str | None = None) -> None:
                # BaseHTTPRequestHandler's, without the Server: banner
                self.log_request(code)
                self.send_response_only(code, message)
                self.send_header("Date", self.date_time_string())

            def end_headers(self) -> None:
                for k, v in SECURITY_HEADERS.items():
                    self.send_header(k, v)
                super().end_headers()

            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                if not host_allowed(self.headers.get("Host"), server.cfg.allowed_hosts):
                    self._send(400, "text/plain", b"host not allowed ([http] allowed_hosts)\n")
                    return
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                    return
                series_id = None
                if path.startswith("/series/") and path[8:].isdigit():
                    series_id = int(path[8:])
                elif path not in ("/", "/status", "/metrics", "/outcomes"):
                    self._send(404, "text/plain", b"not found\n")
                    return
                if not server._authorised(self.headers.get("Authorization")):
                    # the page asks a browser for the token (as a Basic password); API clients use Bearer
                    browser = path == "/" or series_id is not None
                    self._send(401, "text/plain", b"token required\n",
                               {"WWW-Authenticate": 'Basic realm="hexnode status"' if browser else "Bearer"})
                    return
                if path == "/outcomes":
                    self._outcomes()
                    return
                if series_id is not None:
                    self._series(series_id)
                    return
                try:
                    st = server.snapshot()
                except Exception:
                    log.exception("status collection failed")
                    self._send(500, "text/plain", b"status unavailable\n")
                    return
                if path == "/":
                    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                    self._send(200, "text/html; charset=utf-8", status_html(st, generated_at=now).encode())
                elif path == "/status":
                    self._send(200, "application/json", json.dumps(st).encode())
                else:
                    self._send(200, CONTENT_TYPE_LATEST, metrics_text(st).encode())

            def _series(self, series_id: int) -> None:
                from hexnode.web.history import series_history

                try:
                    history = series_history(server.store, series_id, server.config)
                except Exception:
                    log.exception("series history failed")
                    self._send(500, "text/plain", b"history unavailable\n")
                    return
                if history is None:
                    self._send(404, "text/plain", b"no such series\n")
                    return
                self._send(200, "text/html; charset=utf-8", series_html(history).encode())

            def _outcomes(self) -> None:
                from hexnode.store.corrections import summary as corrections_summary
                from hexnode.store.outcomes import summarise

                try:
                    with server.store.transaction() as s:
                        corrections = corrections_summary(s)
                    body = json.dumps({**summarise(server.store), "corrections": corrections}).encode()
                except Exception:
                    log.exception("outcomes summary failed")
                    self._send(500, "text/plain", b"outcomes unavailable\n")
                    return
                self._send(200, "application/json", body)

            def _send(self, code: int, ctype: str, body: bytes, extra: dict[str, str] | None = None) -> None:
                self.send_response(code)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(body)))
                for k, v in (extra or {}).items():
                    self.send_header(k, v)
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, format: str, *args: Any) -> None:  # noqa: A002
                # http.server writes every request to stderr; keep the node's log for what matters.
                log.debug("http %s", format % args)

        return Handler

    def start(self) -> None:
        self._thread = threading.Thread(target=self._accept_loop, name="hexnode-http-accept", daemon=True)
        self._thread.start()
        log.info("status HTTP on %s:%d (%s)", self.cfg.bind, self.port,
                 "token required" if self.cfg.token else "no token: loopback only")

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)
        self._pool.shutdown(wait=True, cancel_futures=True)
        self._listener.close()


def run_web(args: argparse.Namespace) -> int:
    """`hexnode web`: the status server until SIGTERM/SIGINT; refuses to start with [http] off."""
    with stage_process(args, "web") as proc:
        if not proc.cfg.http.enabled:
            log.error("[http] enabled = false: nothing to serve (set it, or HEXNODE_HTTP_ENABLED=true)")
            return 2
        http = StatusServer(proc.cfg.http, proc.store, config=proc.cfg)
        http.start()
        try:
            while not proc.stop.wait(1.0):
                pass
        finally:
            log.info("stopping")
            http.stop()
    return 0
