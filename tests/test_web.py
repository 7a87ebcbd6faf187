"""The status/metrics HTTP endpoint: token enforced, no identifiers, real figures from the database."""

from __future__ import annotations

import json
import urllib.error
import urllib.request

import pytest

from hexnode.config import ConfigError, HttpConfig, load_config
from hexnode.store.db import Series, Study, open_store
from hexnode.store.queue import enqueue_job, transition
from hexnode.store.spool import uid_hash
from hexnode.web.server import StatusServer

SERIES_UID = "1.2.826.0.1.3680043.8.498.4242"


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
    srv = StatusServer(HttpConfig(enabled=True, bind="127.0.0.1", port=0, token="s3cret"), store)
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


def test_status_and_metrics_need_the_token(server):
    assert _get(server.port, "/status")[0] == 401
    assert _get(server.port, "/metrics", token="wrong")[0] == 401
    assert _get(server.port, "/healthz") == (200, "ok\n")
    assert _get(server.port, "/nothing", token="s3cret")[0] == 404


def test_status_reports_the_queue_without_uids(server):
    code, body = _get(server.port, "/status", token="s3cret")
    assert code == 200
    st = json.loads(body)
    assert st["jobs"] == {"queued": 1}
    assert st["series"] == {"queued": 1}
    assert st["queue_depth"]["jobs"] == 1
    assert SERIES_UID not in body


def test_metrics_are_prometheus_text(server):
    from prometheus_client.parser import text_string_to_metric_families

    code, body = _get(server.port, "/metrics", token="s3cret")
    assert code == 200
    samples = {(s.name, tuple(sorted(s.labels.items()))): s.value
               for fam in text_string_to_metric_families(body) for s in fam.samples}
    assert samples[("hexnode_jobs", (("state", "queued"),))] == 1
    assert samples[("hexnode_queue_depth", (("queue", "jobs"),))] == 1
    assert samples[("hexnode_quarantined_instances", ())] == 0
    assert "# TYPE hexnode_series gauge" in body
    assert SERIES_UID not in body and uid_hash(SERIES_UID) not in body


def test_non_loopback_bind_requires_a_token():
    env = {"HEXNODE_HTTP_ENABLED": "true", "HEXNODE_HTTP_BIND": "0.0.0.0"}
    with pytest.raises(ConfigError, match="http.token"):
        load_config(env=env)
    assert load_config(env={**env, "HEXNODE_HTTP_TOKEN": "t"}).http.token == "t"


def test_status_page_in_a_browser(server):
    """IT's page at /: the token (as a Basic password), the facts, no identifiers, self-refreshing."""
    import playwright.sync_api as pw_api  # installed by `make install`
    from report_helpers import OUTPUT
    from viewer_helpers import launch

    assert _get(server.port, "/")[0] == 401
    url = f"http://127.0.0.1:{server.port}/"
    with pw_api.sync_playwright() as pw:
        browser = launch(pw)
        try:
            denied = browser.new_page()  # no credentials: chromium's auth challenge fails the load
            try:
                assert denied.goto(url).status == 401
            except pw_api.Error as exc:
                assert "ERR_INVALID_AUTH_CREDENTIALS" in str(exc)
            context = browser.new_context(http_credentials={"username": "it", "password": "s3cret"},
                                          viewport={"width": 1280, "height": 1000})
            page = context.new_page()
            assert page.goto(url).status == 200
            refresh = page.get_attribute("meta[http-equiv='refresh']", "content")
            # it reloads itself (with the credentials): wait for that, then look right after it,
            # not while the next reload replaces the page
            with page.expect_navigation(timeout=(int(refresh or 0) + 15) * 1000) as reloaded:
                pass
            assert reloaded.value.status == 200
            (OUTPUT / "web").mkdir(parents=True, exist_ok=True)
            page.screenshot(path=str(OUTPUT / "web" / "status.png"))
            text = page.inner_text("body")
            html = page.content()
        finally:
            browser.close()
    assert "hexnode status" in text and "Queue depth" in text
    assert "jobs (queued + running)\t1" in text
    assert "Series by state" in text and "queued\t1" in text
    assert "Failed deliveries" in text and "Rejected or failed series" in text
    assert refresh is not None and int(refresh) > 0
    assert SERIES_UID not in html and "<script" not in html
