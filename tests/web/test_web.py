"""The status/metrics HTTP endpoint: token enforced, no identifiers, real figures from the database;
held against a hostile network with real sockets (half-sent requests, wrong Host headers, oversized
heads), security headers on every answer; the page's red/amber/green summary in Chromium."""

from __future__ import annotations

import base64
import json
import re
import socket
import subprocess
import sys
import threading
import time
import urllib.error
import urllib.request
from datetime import timedelta
from pathlib import Path

import pytest

from hexnode.config import Config, ConfigError, Destination, HttpConfig, load_config
from hexnode.store.db import Job, Outbox, Result, Series, StageBeat, Study, open_store, utcnow
from hexnode.store.queue import enqueue_job, transition
from hexnode.store.spool import uid_hash
from hexnode.web import server as web_server
from hexnode.web.server import StatusServer, host_allowed

SERIES_UID = "1.2.826.0.1.3680043.8.498.4242"
TOKEN = "s3cret-status-token-0042"
REPO = Path(__file__).resolve().parents[2]


@pytest.fixture()
def server(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'hexnode.sqlite'}")
    with store.transaction() as s:
        study = Study(study_uid="1.2.826.0.1.3680043.8.498.1")
        s.add(study)
        s.flush()
        series = Series(series_uid=SERIES_UID, study_id=study.id, calling_ae="ORTHANC", modality="CT")
        s.add(series)
        s.flush()
        transition(s, series, "complete", "test")
        enqueue_job(s, series, "test")
    srv = StatusServer(HttpConfig(enabled=True, bind="127.0.0.1", port=0, token=TOKEN), store,
                       config=Config(data_dir=str(tmp_path)), head_timeout=2.0)
    srv.start()
    yield srv
    srv.stop()
    store.dispose()


def _get(port: int, path: str, token: str | None = None) -> tuple[int, str]:
    req = urllib.request.Request(f"http://127.0.0.1:{port}{path}")
    if token is not None:
        req.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(req, timeout=10) as resp:
            return resp.status, resp.read().decode()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read().decode()


def _raw(port: int, request: bytes, timeout: float = 10) -> tuple[int, dict[str, str], bytes]:
    """One request over a plain socket: (status, headers in lower case, body)."""
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        sock.sendall(request)
        data = b""
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = data.partition(b"\r\n\r\n")
    lines = head.decode("latin-1").split("\r\n")
    headers = {k.strip().lower(): v.strip() for k, _, v in (line.partition(":") for line in lines[1:])}
    return int(lines[0].split()[1]), headers, body


def test_status_and_metrics_need_the_token(server):
    assert _get(server.port, "/status")[0] == 401
    assert _get(server.port, "/metrics", token="wrong")[0] == 401
    assert _get(server.port, "/series/1")[0] == 401
    assert _get(server.port, "/healthz") == (200, "ok\n")
    assert _get(server.port, "/nothing", token=TOKEN)[0] == 404
    assert _get(server.port, "/series/999", token=TOKEN)[0] == 404


def test_status_reports_the_queue_without_uids(server):
    code, body = _get(server.port, "/status", token=TOKEN)
    assert code == 200
    st = json.loads(body)
    assert st["jobs"] == {"queued": 1}
    assert st["series"] == {"queued": 1}
    assert st["queue_depth"]["jobs"] == 1
    waiting = {(q["queue"], q["state"]): q for q in st["queues"]}
    assert waiting[("jobs", "queued")]["count"] == 1 and waiting[("jobs", "queued")]["oldest_seconds"] < 60
    assert waiting[("jobs", "running")] == {"queue": "jobs", "state": "running", "count": 0, "oldest_seconds": None}
    assert [r["series"] for r in st["recent_series"]] == [uid_hash(SERIES_UID)]
    # nothing beats in this test: every stage is reported as not beating, so the summary is red
    assert st["overall"] == "red"
    assert {a["what"] for a in st["attention"]} == {f"{s} is not beating" for s in ("receive", "route", "worker", "send")}
    assert st["disk"]["free_bytes"] > 0 and st["disk"]["min_free_bytes"] == 1024 * 1024 * 1024
    assert SERIES_UID not in body


def test_metrics_are_prometheus_text(server):
    from prometheus_client.parser import text_string_to_metric_families

    with server.store.transaction() as s:
        now = utcnow()
        s.add(StageBeat(instance="h:1:a", stage="route", host="h", pid=1, started_at=now, beat_at=now - timedelta(seconds=7)))
        s.add(StageBeat(instance="h:2:b", stage="worker", host="h", pid=2, started_at=now, beat_at=now,
                        busy_since=now - timedelta(seconds=30)))
    code, body = _get(server.port, "/metrics", token=TOKEN)
    assert code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body) for s in fam.samples}
    assert samples[("hexnode_jobs", (("state", "queued"),))] == 1
    assert samples[("hexnode_queue_depth", (("queue", "jobs"),))] == 1
    assert samples[("hexnode_quarantined_instances", ())] == 0
    assert samples[("hexnode_queue_items", (("queue", "jobs"), ("state", "queued")))] == 1
    assert 0 <= samples[("hexnode_queue_oldest_age_seconds", (("queue", "jobs"), ("state", "queued")))] < 60
    assert 7 <= samples[("hexnode_stage_heartbeat_age_seconds", (("stage", "route"),))] < 30
    assert samples[("hexnode_stage_heartbeat_age_seconds", (("stage", "send"),))] == float("inf")  # never beat
    assert 30 <= samples[("hexnode_stage_busy_seconds", (("stage", "worker"),))] < 60
    assert samples[("hexnode_stage_processes", (("stage", "worker"),))] == 1
    assert samples[("hexnode_spool_free_bytes", ())] > 0
    assert samples[("hexnode_status", ())] == 2  # receive and send never beat: red
    assert samples[("hexnode_attention_items", (("level", "red"),))] == 2
    assert "# TYPE hexnode_series gauge" in body
    assert SERIES_UID not in body and uid_hash(SERIES_UID) not in body


def test_metrics_table_in_the_docs_is_current_and_complete(server):
    """docs/operations.md's table is `hexnode metrics`' output, and names every metric /metrics serves."""
    proc = subprocess.run([sys.executable, "-m", "hexnode.cli", "metrics", "--check"], capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    doc = (REPO / "docs" / "operations.md").read_text()
    served = {line.split()[2] for line in _get(server.port, "/metrics", token=TOKEN)[1].splitlines()
              if line.startswith("# TYPE ")}
    documented = {m for m in served if f"| `{m}` |" in doc}
    assert served and documented == served, served - documented


@pytest.fixture(params=["sqlite", "postgresql"])
def any_store(request, tmp_path):
    """The same figures from SQLite and from the real PostgreSQL (a fresh schema)."""
    from plumbing_helpers import store_on

    with store_on(request.param, f"sqlite:///{tmp_path / 'hexnode.sqlite'}") as store:
        yield store


def test_last_delivery_per_destination(any_store, tmp_path):
    store = any_store
    cfg = Config(data_dir=str(tmp_path), destinations=[Destination(name="pacs"), Destination(name="archive")])
    with store.transaction() as s:
        study = Study(study_uid="1.2.3")
        s.add(study)
        s.flush()
        series = Series(series_uid="1.2.3.4", study_id=study.id, modality="CT")
        s.add(series)
        s.flush()
        job = Job(series_id=series.id, state="done")
        s.add(job)
        s.flush()
        for i, (dest, state, attempts, delivered) in enumerate((
                ("pacs", "delivered", 1, utcnow() - timedelta(minutes=5)),
                ("pacs", "pending", 3, None), ("archive", "failed", 9, None))):
            r = Result(job_id=job.id, series_id=series.id, kind="SR", sop_instance_uid=f"1.2.3.4.{i}", path=f"r{i}")
            s.add(r)
            s.flush()
            s.add(Outbox(result_id=r.id, destination=dest, state=state, attempts=attempts, delivered_at=delivered,
                         last_error=None if delivered else "association rejected",
                         queued_at=utcnow() - timedelta(minutes=20)))
    from hexnode.admin.status import collect
    from hexnode.web.metrics import metrics_text

    with store.transaction() as s:
        s.add(StageBeat(instance="h:1:a", stage="worker", host="h", pid=1, started_at=utcnow(), beat_at=utcnow()))
    st = collect(store, cfg=cfg)
    assert st["stages"]["worker"]["processes"] == 1 and st["stages"]["route"]["age_seconds"] is None
    assert {(q["queue"], q["state"]): q["count"] for q in st["queues"]}[("deliveries", "pending")] == 1
    assert [r["state"] for r in st["recent_series"]] == ["received"]
    assert 290 < st["destinations"]["pacs"]["last_delivered_seconds"] < 400
    assert st["destinations"]["pacs"]["retrying"] == 1 and st["destinations"]["archive"]["failed"] == 1
    assert st["destinations"]["archive"]["last_delivered_seconds"] is None
    levels = {a["what"]: a["level"] for a in st["attention"]}
    assert levels["deliveries to archive failed"] == "red"
    assert levels["pacs down? deliveries being retried"] == "red"  # retried for 20 min: down, not a hiccup
    text = metrics_text(st)
    assert 'hexnode_destination_last_delivery_age_seconds{destination="archive"} +Inf' in text
    assert 'hexnode_destination_retrying{destination="pacs"} 1.0' in text


def test_weak_tokens_are_refused():
    env = {"HEXNODE_HTTP_ENABLED": "true", "HEXNODE_HTTP_BIND": "0.0.0.0"}
    with pytest.raises(ConfigError, match="http.token: required"):
        load_config(env=env)
    for weak, why in (("hexnode", "well-known"), ("changeme", "well-known"), ("CHANGEME", "well-known"),
                      ("t", "shorter than 16"), ("abc123", "shorter than 16"), ("a" * 32, "distinct")):
        with pytest.raises(ConfigError, match=why):
            load_config(env={**env, "HEXNODE_HTTP_TOKEN": weak})
        with pytest.raises(ConfigError, match=why):  # on loopback too: a token set is a token that guards
            load_config(env={"HEXNODE_HTTP_ENABLED": "true", "HEXNODE_HTTP_TOKEN": weak})
    assert load_config(env={**env, "HEXNODE_HTTP_TOKEN": TOKEN}).http.token == TOKEN


def test_host_header_names():
    assert host_allowed("127.0.0.1:8470", []) and host_allowed("[::1]:8470", []) and host_allowed("10.1.2.3", [])
    assert host_allowed("localhost:8470", []) and host_allowed("LOCALHOST.", []) and host_allowed(None, [])
    assert not host_allowed("evil.example", []) and not host_allowed("localhost.evil.example:8470", [])
    assert not host_allowed("", []) and not host_allowed(":8470", [])
    assert host_allowed("status.hospital.example:8470", ["status.hospital.example"])
    assert host_allowed("a.b.hospital.example", [".hospital.example"]) and host_allowed("hospital.example", [".hospital.example"])
    assert not host_allowed("xhospital.example", [".hospital.example"])


def test_wrong_host_refused_and_security_headers_on_every_answer(server):
    port = server.port
    auth = f"Authorization: Bearer {TOKEN}\r\n"
    code, headers, body = _raw(port, b"GET /status HTTP/1.1\r\nHost: rebind.attacker.example\r\n" + auth.encode() + b"\r\n")
    assert code == 400 and b"host not allowed" in body and b"queued" not in body
    for host in (f"127.0.0.1:{port}", f"localhost:{port}"):
        code, _, body = _raw(port, f"GET /status HTTP/1.1\r\nHost: {host}\r\n{auth}\r\n".encode())
        assert code == 200 and json.loads(body)["jobs"] == {"queued": 1}
    answers = [_raw(port, f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1\r\n{a}\r\n".encode())
               for path, a in (("/", auth), ("/status", auth), ("/metrics", auth), ("/healthz", ""), ("/", ""),
                               ("/nowhere", auth), ("/series/1", auth))]
    answers.append(_raw(port, b"GET / HTTP/1.1\r\nHost: evil.example\r\n\r\n"))
    answers.append(_raw(port, b"BREW / HTCPCP/1.0\r\n\r\n"))
    assert [a[0] for a in answers] == [200, 200, 200, 200, 401, 404, 200, 400, 400]
    for _code, headers, _ in answers:
        assert "server" not in headers, headers
        assert headers["x-content-type-options"] == "nosniff" and headers["x-frame-options"] == "DENY"
        assert headers["referrer-policy"] == "no-referrer" and headers["cache-control"] == "no-store"
        csp = headers["content-security-policy"]
        assert "default-src 'none'" in csp and "frame-ancestors 'none'" in csp and "script-src" not in csp


def test_half_sent_requests_do_not_exhaust_the_server(server):
    """200 slowloris connections (a head that never ends) hold no handler thread: the page still
    answers at once, no thread is started per connection, and each is closed with 408 after the
    head timeout (2 s here, 10 s by default)."""
    threads_before = threading.active_count()
    slow = []
    for _ in range(200):
        sock = socket.create_connection(("127.0.0.1", server.port), timeout=10)
        sock.sendall(b"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Slow: ")
        slow.append(sock)
    try:
        t = time.monotonic()
        code, _, body = _raw(server.port, f"GET /status HTTP/1.1\r\nHost: 127.0.0.1\r\nAuthorization: Bearer {TOKEN}"
                                          "\r\n\r\n".encode())
        answered = time.monotonic() - t
        assert code == 200 and json.loads(body)["jobs"] == {"queued": 1}
        assert answered < 2.0, answered
        assert threading.active_count() <= threads_before + web_server.THREADS, threading.active_count()
        # each gets 408 once its head has not been completed within the timeout
        t = time.monotonic()
        answers = []
        for sock in slow:
            data = b""
            while chunk := sock.recv(4096):
                data += chunk
            answers.append(data.split(b"\r\n", 1)[0])
        assert set(answers) == {b"HTTP/1.0 408 Request Timeout"}
        assert time.monotonic() - t < 6
    finally:
        for sock in slow:
            sock.close()


def test_oversized_head_and_pending_limit(tmp_path):
    store = open_store(f"sqlite:///{tmp_path / 'hexnode.sqlite'}")
    srv = StatusServer(HttpConfig(enabled=True, port=0), store, max_pending=20, head_timeout=30)
    srv.start()
    try:
        code, headers, _ = _raw(srv.port, b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nX-Big: " + b"a" * 20000 + b"\r\n\r\n")
        assert code == 431 and headers["x-frame-options"] == "DENY"
        # beyond max_pending waiting connections the oldest are dropped, never the newest
        idle = [socket.create_connection(("127.0.0.1", srv.port), timeout=10) for _ in range(40)]
        time.sleep(0.5)
        dropped = 0
        for sock in idle[:20]:
            sock.settimeout(3)
            try:
                dropped += sock.recv(1) == b""
            except (TimeoutError, ConnectionResetError):
                pass
        assert dropped >= 19, dropped
        code, _, body = _raw(srv.port, b"GET /healthz HTTP/1.0\r\n\r\n")
        assert (code, body) == (200, b"ok\n")
        for sock in idle:
            sock.close()
    finally:
        srv.stop()
        store.dispose()


def _page_fixture(tmp_path: Path):
    """A node with something to show: a series delivered, one whose result is being retried to a
    PACS that is down, a failed job, a rejected series; route and worker beating, send silent."""
    store = open_store(f"sqlite:///{tmp_path / 'hexnode.sqlite'}")
    now = utcnow()
    with store.transaction() as s:
        study = Study(study_uid="1.2.826.0.1.3680043.8.498.77")
        s.add(study)
        s.flush()
        rows = []
        for i, (state, reason) in enumerate((("delivered", "chosen: axial soft tissue 5 mm"),
                                             ("reported", "chosen: axial soft tissue 5 mm"),
                                             ("failed", "worker: out of memory (3 attempts)"),
                                             ("rejected", "bone kernel (BONE)"))):
            x = Series(series_uid=f"{SERIES_UID}.{i}", study_id=study.id, calling_ae="ORTHANC", modality="CT",
                       instance_count=36, state=state, reason=reason, state_at=now - timedelta(minutes=30 - i))
            s.add(x)
            s.flush()
            rows.append(x)
        job = Job(series_id=rows[1].id, state="done", attempts=1, created_at=now - timedelta(minutes=25),
                  started_at=now - timedelta(minutes=25), finished_at=now - timedelta(minutes=24))
        s.add(job)
        s.add(Job(series_id=rows[2].id, state="failed", attempts=3, error="MemoryError", finished_at=now))
        s.flush()
        for k, kind in enumerate(("SEG", "SR", "SC")):
            r = Result(job_id=job.id, series_id=rows[1].id, kind=kind, sop_instance_uid=f"1.2.9.{k}", path=f"r/{k}")
            s.add(r)
            s.flush()
            o = Outbox(result_id=r.id, destination="pacs", state="sending", attempts=6,
                       last_error="association rejected: ORTHANC at 10.0.0.5:104 (connection refused)",
                       queued_at=now - timedelta(minutes=24), next_attempt_at=now + timedelta(seconds=60))
            s.add(o)
            s.flush()
            transition(s, o, "pending", "attempt 6 failed: connection refused")
        for stage, age in (("receive", 2), ("route", 1), ("worker", 3)):
            s.add(StageBeat(instance=f"h:{stage}", stage=stage, host="h", pid=1, started_at=now - timedelta(hours=1),
                            beat_at=now - timedelta(seconds=age)))
        s.add(StageBeat(instance="h:send", stage="send", host="h", pid=2, started_at=now - timedelta(hours=1),
                        beat_at=now - timedelta(minutes=4)))
        delivered = rows[0].id
    return store, delivered


class _Beating:
    """receive, route and worker beating every second while the page is looked at (as running
    stages do); send's last beat stays minutes old."""

    def __init__(self, store) -> None:
        self.store, self.stop = store, threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self.stop.wait(1.0):
            with self.store.transaction() as s:
                for stage in ("receive", "route", "worker"):
                    s.get(StageBeat, f"h:{stage}").beat_at = utcnow()

    def __enter__(self) -> _Beating:
        self.thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.thread.join(5)


def test_status_page_in_a_browser(tmp_path):
    """IT's page at /: the token (as a Basic password), the red summary first (PACS down, send not
    beating, failed analyses), recent series with links to their history, no identifiers, refreshing."""
    import playwright.sync_api as pw_api  # installed by `make install`
    from report_helpers import OUTPUT
    from viewer_helpers import launch

    store, _ = _page_fixture(tmp_path)
    cfg = Config(data_dir=str(tmp_path), destinations=[Destination(name="pacs")])
    srv = StatusServer(HttpConfig(enabled=True, port=0, token=TOKEN), store, config=cfg)
    srv.start()
    url = f"http://127.0.0.1:{srv.port}/"
    beating = _Beating(store).__enter__()
    try:
        assert _get(srv.port, "/")[0] == 401
        with pw_api.sync_playwright() as pw:
            browser = launch(pw)
            try:
                denied = browser.new_page()  # no credentials: chromium's auth challenge fails the load
                try:
                    assert denied.goto(url).status == 401
                except pw_api.Error as exc:
                    assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
                context = browser.new_context(http_credentials={"username": "it", "password": TOKEN},
                                              viewport={"width": 1280, "height": 900})
                page = context.new_page()
                violations: list[str] = []
                page.on("console", lambda m: violations.append(m.text) if "Content Security Policy" in m.text else None)
                assert page.goto(url).status == 200
                refresh = page.get_attribute("meta[http-equiv='refresh']", "content")
                # it reloads itself (with the credentials): wait for that, then look right after it
                with page.expect_navigation(timeout=(int(refresh or 0) + 15) * 1000) as reloaded:
                    pass
                assert reloaded.value.status == 200
                (OUTPUT / "web").mkdir(parents=True, exist_ok=True)
                page.screenshot(path=str(OUTPUT / "web" / "status.png"))
                summary = page.locator("#summary")
                box = summary.bounding_box()
                summary_class = summary.get_attribute("class")
                summary_text = summary.inner_text()
                # the style sheet applied under the page's own CSP: the summary box is red-bordered
                border = page.evaluate("getComputedStyle(document.querySelector('#summary')).borderTopColor")
                text = page.inner_text("body")
                html = page.content()
                page.click("text=" + uid_hash(f"{SERIES_UID}.1"))
                page.wait_for_load_state()
                history = page.inner_text("body")
                page.screenshot(path=str(OUTPUT / "web" / "series.png"), full_page=True)
            finally:
                browser.close()
    finally:
        beating.__exit__()
        srv.stop()
        store.dispose()
    assert box is not None and box["y"] < 150 and box["y"] + box["height"] < 900  # first thing on screen
    assert summary_class == "summary red" and border == "rgb(176, 0, 32)" and not violations
    assert summary_text.splitlines()[0].strip() == "RED Needs attention now"
    assert "pacs down? deliveries being retried: 3 retried for 2" in summary_text  # 24 min and counting
    assert re.search(r"send is not beating: last heartbeat [4-9] min ago \(limit 60 s\)", summary_text), summary_text
    assert "analyses failed (24 h)" in summary_text
    assert "route is not beating" not in summary_text
    assert "Rejected without a report in the last 24 h" in summary_text and "bone kernel (BONE) (1)" in summary_text
    # below the summary: stages, destinations, recent series (newest change first) with their state
    assert text.index("Stages") < text.index("Destinations") < text.index("Recent series") < text.index("Queue depth")
    recent = text[text.index("Recent series"):text.index("Queue depth")]
    assert [h for h in (uid_hash(f"{SERIES_UID}.{i}") for i in (3, 2, 1, 0)) if h in recent] == \
        [uid_hash(f"{SERIES_UID}.{i}") for i in (3, 2, 1, 0)]
    assert recent.index(uid_hash(f"{SERIES_UID}.3")) < recent.index(uid_hash(f"{SERIES_UID}.0"))
    assert "failed\tworker: out of memory" in recent
    assert refresh is not None and int(refresh) > 0
    assert SERIES_UID not in html and "<script" not in html
    # the history page of the series being retried
    assert f"series {uid_hash(f'{SERIES_UID}.1')}" in history and "Deliveries" in history
    assert "attempt 6 failed: connection refused" in history and SERIES_UID not in history


def test_series_history_page_headers(tmp_path):
    store, delivered = _page_fixture(tmp_path)
    srv = StatusServer(HttpConfig(enabled=True, port=0, token=TOKEN), store)
    srv.start()
    try:
        basic = base64.b64encode(f"it:{TOKEN}".encode()).decode()
        code, headers, body = _raw(srv.port, f"GET /series/{delivered} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                                             f"Authorization: Basic {basic}\r\n\r\n".encode())
        assert code == 200 and headers["content-type"].startswith("text/html")
        assert uid_hash(f"{SERIES_UID}.0").encode() in body and SERIES_UID.encode() not in body
        assert "style-src 'sha256-" in headers["content-security-policy"]
    finally:
        srv.stop()
        store.dispose()
