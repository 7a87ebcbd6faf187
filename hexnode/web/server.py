"""Status and metrics over HTTP for IT monitoring: `hexnode web` (`[http]` in hexnode.toml).

A process of its own: it only reads the database, so a slow scrape or a browser left open never
competes with receiving, and the page stays up while another stage restarts.

GET /          the same facts as a plain HTML page for a browser, refreshing itself (web/page.py)
GET /healthz   "ok" — liveness, no token (it says nothing about the data)
GET /status    the JSON of `hexnode status --json` (no patient identifiers)
GET /outcomes  the JSON of `hexnode outcomes --json` (follow-up pairs: AUC, calibration, drift; no identifiers)
GET /metrics   Prometheus text (prometheus_client): series/jobs/deliveries by state, queue depths, stage medians

A token (`Authorization: Bearer <token>`) guards /, /status and /metrics whenever one is configured;
a browser gives it as the password of HTTP Basic authentication (any user name), which it then
re-sends on every refresh;
config validation refuses a non-loopback bind without one, so the queue's health and the series
hashes are never readable from the network by anyone who can reach the port.
"""

from __future__ import annotations

import argparse
import base64
import binascii
import hmac
import json
import logging
import threading
from collections.abc import Callable, Iterator
from datetime import UTC, datetime
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, generate_latest
from prometheus_client.core import GaugeMetricFamily

from hexnode.config import HttpConfig, load_config
from hexnode.runtime import setup_logging, stop_on_signals
from hexnode.status import collect
from hexnode.store.db import Store, open_store
from hexnode.web.page import status_html

log = logging.getLogger(__name__)


class StatusCollector:
    """prometheus_client collector over `collect()`: every scrape reads the database once.

    Gauges, not counters: the figures are the database's current state, which every process
    writes; no process holds a count that a restart would reset."""

    def __init__(self, snapshot: Callable[[], dict[str, Any]]) -> None:
        self.snapshot = snapshot

    def collect(self) -> Iterator[GaugeMetricFamily]:
        st = self.snapshot()
        for name, help_, label, values in (
            ("hexnode_series", "Series by state.", "state", st["series"]),
            ("hexnode_jobs", "Jobs by state.", "state", st["jobs"]),
            ("hexnode_deliveries", "Outbox deliveries by state.", "state", st["outbox"]),
            ("hexnode_queue_depth", "Jobs queued or running; deliveries pending or sending.", "queue",
             st["queue_depth"]),
            ("hexnode_stage_median_seconds", "Median seconds per stage over the last finished jobs.", "stage",
             st["median_seconds"]),
            ("hexnode_notifications", "Notifications (alerts, IT warnings) by state.", "state",
             st.get("notifications", {}).get("states", {})),
        ):
            family = GaugeMetricFamily(name, help_, labels=[label])
            for key, value in sorted(values.items()):
                family.add_metric([key], float(value))
            yield family
        oc = st.get("outcomes") or {}
        drift = GaugeMetricFamily("hexnode_outcomes_drift", "1 when a model version's follow-up outcomes drift "
                                  "(observed expansion rate outside the predicted 95 % interval, or ECE too high).",
                                  labels=["model_version"])
        pairs = GaugeMetricFamily("hexnode_outcome_pairs", "Scored follow-up outcome pairs per model version.",
                                  labels=["model_version"])
        for version, d in sorted((oc.get("versions") or {}).items()):
            drift.add_metric([version], 1.0 if d["drift"] else 0.0)
            pairs.add_metric([version], float(d["pairs"]))
        yield drift
        yield pairs
        yield GaugeMetricFamily("hexnode_quarantined_instances", "Received files whose header could not be read.",
                                value=float(st["quarantined_instances"]))


def metrics_text(st: dict[str, Any]) -> str:
    """Prometheus exposition format of a `collect()` result (prometheus_client's own writer)."""
    registry = CollectorRegistry(auto_describe=False)
    registry.register(StatusCollector(lambda: st))
    return generate_latest(registry).decode()


class StatusServer:
    """A small threaded HTTP server over one Store; `start()` runs it in a daemon thread."""

    def __init__(self, cfg: HttpConfig, store: Store) -> None:
        self.cfg = cfg
        self.store = store
        self._httpd = ThreadingHTTPServer((cfg.bind, cfg.port), self._handler_class())
        self._thread: threading.Thread | None = None

    @property
    def port(self) -> int:
        return int(self._httpd.server_address[1])

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

    def _handler_class(self) -> type[BaseHTTPRequestHandler]:
        server = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                path = self.path.split("?", 1)[0]
                if path == "/healthz":
                    self._send(200, "text/plain", b"ok\n")
                    return
                if path not in ("/", "/status", "/metrics", "/outcomes"):
                    self._send(404, "text/plain", b"not found\n")
                    return
                if not server._authorised(self.headers.get("Authorization")):
                    # the page asks a browser for the token (as a Basic password); API clients use Bearer
                    challenge = 'Basic realm="hexnode status"' if path == "/" else "Bearer"
                    self._send(401, "text/plain", b"token required\n", {"WWW-Authenticate": challenge})
                    return
                if path == "/outcomes":
                    self._outcomes()
                    return
                try:
                    st = collect(server.store)
                except Exception:
                    log.exception("status collection failed")
                    self._send(500, "text/plain", b"status unavailable\n")
                    return
                if path == "/":
                    now = datetime.now(UTC).isoformat(timespec="seconds").replace("+00:00", "Z")
                    self._send(200, "text/html; charset=utf-8", status_html(st, generated_at=now).encode(),
                               {"Cache-Control": "no-store"})
                elif path == "/status":
                    self._send(200, "application/json", json.dumps(st).encode())
                else:
                    self._send(200, CONTENT_TYPE_LATEST, metrics_text(st).encode())

            def _outcomes(self) -> None:
                from hexnode.store.outcomes import summarise

                try:
                    body = json.dumps(summarise(server.store)).encode()
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
        self._thread = threading.Thread(target=self._httpd.serve_forever, name="hexnode-http", daemon=True)
        self._thread.start()
        log.info("status HTTP on %s:%d (%s)", self.cfg.bind, self.port,
                 "token required" if self.cfg.token else "no token: loopback only")

    def stop(self) -> None:
        self._httpd.shutdown()
        self._httpd.server_close()


def run_web(args: argparse.Namespace) -> int:
    """`hexnode web`: the status server until SIGTERM/SIGINT; refuses to start with [http] off."""
    cfg = load_config(getattr(args, "config", None))
    setup_logging(cfg.log_level)
    if not cfg.http.enabled:
        log.error("[http] enabled = false: nothing to serve (set it, or HEXNODE_HTTP_ENABLED=true)")
        return 2
    stop = stop_on_signals()
    store = open_store(cfg.database_url)
    http = StatusServer(cfg.http, store)
    http.start()
    try:
        while not stop.wait(1.0):
            pass
    finally:
        log.info("stopping")
        http.stop()
        store.dispose()
    return 0
