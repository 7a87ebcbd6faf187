"""Notifications against hostile input and hostile networks, through the real peers of
tests/notify_peers.py: an accession number and a reason written by whoever sent the images (Slack
and Teams markup, CR/LF, HL7 separators, escape and bidirectional characters) reach every kind of
target as text; a webhook that redirects is not followed (and never gets the token sent on); MLLP
over TLS checks the engine's certificate and name."""

from __future__ import annotations

import email
import email.policy
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pytest
from notify_peers import HttpReceiver, MllpListener, SmtpReceiver, self_signed_cert
from pydicom.uid import generate_uid
from sqlalchemy import select

from hexnode.config import Config, load_config
from hexnode.notify import Finding, Trigger, enqueue
from hexnode.notify.deliver import Notifier
from hexnode.notify.message import teams_text
from hexnode.store.db import Notification, Series, Store, Study, open_store
from hexnode.store.spool import Spool

# What a sender can put in an Accession Number (and a reason quoting a Series Description).
HOSTILE_ACCESSION = ("<!channel> [urgent](https://evil.example/x)\r\nBcc: all@hospital.example"
                     "|A^B~C\\D&E")
HOSTILE_REASON = ('series description "HEAD\rOBX|9|ST|PWNED||owned" \x1b[31m <@U0123> *bold* '
                  "\u202eevil\u202c\x00")
# The same, cleaned: line breaks as spaces, control and format characters gone.
CLEAN_ACCESSION = "<!channel> [urgent](https://evil.example/x) Bcc: all@hospital.example|A^B~C\\D&E"
CLEAN_REASON = 'series description "HEAD OBX|9|ST|PWNED||owned" [31m <@U0123> *bold* evil'


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Store, int]]:
    store = open_store(f"sqlite:///{tmp_path / 'n.sqlite'}")
    with store.transaction() as s:
        study = Study(study_uid=generate_uid())
        s.add(study)
        s.flush()
        series = Series(series_uid=generate_uid(), study_id=study.id, calling_ae="SCANNER")
        s.add(series)
        s.flush()
        series_id = series.id
    yield store, series_id
    store.dispose()


def _cfg(tmp_path: Path, targets: str) -> Config:
    p = tmp_path / "hexnode.toml"
    p.write_text('[notify]\nviewer_url = "https://ohif.hospital.example"\nbackoff_initial_seconds = 0.2\n'
                 "backoff_max_seconds = 0.5\n" + targets)
    return load_config(p, env={})


def _deliver(store: Store, series_id: int, cfg: Config, tmp_path: Path, finding: Finding) -> dict[str, Notification]:
    with store.transaction() as s:
        enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=finding)
    n = Notifier(cfg, store, Spool(tmp_path / "spool"), owner=f"pytest:{os.getpid()}")
    n.run_once()
    with store.transaction() as s:
        rows = {r.target: r for r in s.execute(select(Notification)).scalars()}
        for r in rows.values():
            s.expunge(r)
    return rows


def _strings(doc: Any) -> Iterator[str]:
    if isinstance(doc, str):
        yield doc
    elif isinstance(doc, dict):
        for v in doc.values():
            yield from _strings(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _strings(v)


def test_hostile_accession_and_reason_reach_every_kind_as_text(db: tuple[Store, int], cert: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    store, series_id = db
    http, smtp, mllp = HttpReceiver(status=200).start(), SmtpReceiver(*cert).start(), MllpListener().start()
    try:
        cfg = _cfg(tmp_path, f"""
[[notifications]]
name = "slack"
kind = "webhook"
format = "slack"
url = "{http.url}/slack"
[[notifications]]
name = "teams"
kind = "webhook"
format = "teams"
url = "{http.url}/teams"
[[notifications]]
name = "json"
kind = "webhook"
url = "{http.url}/json"
[[notifications]]
name = "mail"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
tls_ca_file = "{cert[0]}"
username = "{smtp.user}"
password = "{smtp.password}"
mail_from = "hexnode@hospital.example"
mail_to = ["stroke-team@hospital.example"]
[[notifications]]
name = "ris"
kind = "hl7"
host = "127.0.0.1"
port = {mllp.port}
""")
        finding = Finding(headline="High risk of hematoma expansion", accession_number=HOSTILE_ACCESSION,
                          study_uid="1.2.3.4", series="abc123", volume_ml=18.4, probability=0.61, risk="High",
                          threshold=0.29, reason=HOSTILE_REASON, positive=True)
        rows = _deliver(store, series_id, cfg, tmp_path, finding)
        # every kind delivered at the first attempt (the e-mail builder used to raise on CR/LF, every retry)
        assert {t: (r.state, r.attempts) for t, r in rows.items()} == dict.fromkeys(
            ["slack", "teams", "json", "mail", "ris"], ("delivered", 1)), {t: r.last_error for t, r in rows.items()}

        # Slack: what mrkdwn reads (`text` and every mrkdwn object) holds no <, > or bare &: no mention
        slack = http.at("/slack")[0].json()
        mrkdwn = [slack["text"]] + [o["text"] for o in _mrkdwn_objects(slack)]
        assert all("<" not in t and ">" not in t for t in mrkdwn), mrkdwn
        assert all(o["verbatim"] is True for o in _mrkdwn_objects(slack))
        assert "&lt;!channel&gt; [urgent](https://evil.example/x) Bcc: all@hospital.example|A^B~C\\D&amp;E" in slack["text"]
        assert any("&lt;@U0123&gt;" in t for t in mrkdwn)
        assert slack["blocks"][0]["text"] == {"type": "plain_text", "text": slack["blocks"][0]["text"]["text"]}

        # Teams: the card's Markdown shows the text: no link, emphasis or tag forms from it
        card = http.at("/teams")[0].json()["attachments"][0]["content"]
        facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
        assert facts["Accession number"] == teams_text(CLEAN_ACCESSION)
        assert facts["Accession number"].startswith(r"\<!channel\> \[urgent\](https://evil.example/x) Bcc:")
        assert facts["Reason"] == teams_text(CLEAN_REASON) and r"\<@U0123\> \*bold\*" in facts["Reason"]
        texts = [b["text"] for b in card["body"] if b["type"] == "TextBlock"] + [*facts, *facts.values()]
        assert not [t for t in texts if re.search(r"(?<!\\)[\[<*_`]", t)], texts

        # plain JSON: the values cleaned, nothing else changed (the consumer escapes for its own use)
        doc = http.at("/json")[0].json()
        assert doc["finding"]["accession_number"] == CLEAN_ACCESSION and doc["finding"]["reason"] == CLEAN_REASON
        assert not [t for t in _strings(doc) if re.search(r"[\x00-\x1f\x7f\u202a-\u202e]", t)]

        # e-mail: one Subject line, no header injected from the accession number, the configured recipient only
        (mail,) = smtp.mails
        assert mail.rcpt_tos == ["stroke-team@hospital.example"]
        m = email.message_from_bytes(mail.content, policy=email.policy.default)
        assert m["Subject"] == f"[hexnode] High risk of hematoma expansion (accession {CLEAN_ACCESSION})"
        assert "Bcc" not in m and not [k for k in m.keys() if k.lower().startswith("bcc")]
        assert "Accession number:" in m.get_body().get_content() and CLEAN_REASON in m.get_body().get_content()

        # HL7: every separator escaped, the value intact after unescaping, no segment injected
        (raw,) = mllp.messages
        oru = hl7.parse(raw)
        assert [str(seg[0]) for seg in oru] == ["MSH", "PID", "ORC", "OBR"] + ["OBX"] * 8
        obr = oru.segment("OBR")
        assert oru.unescape(str(obr[3])) == CLEAN_ACCESSION == oru.unescape(str(obr[18]))
        assert r"all@hospital.example\F\A\S\B\R\C\E\D\T\E" in raw
        reason = next(o for o in oru.segments("OBX") if str(o[3][0][0]) == "REASON")
        assert oru.unescape(str(reason[5])) == CLEAN_REASON
    finally:
        http.stop()
        smtp.stop()
        mllp.stop()


def _mrkdwn_objects(doc: Any) -> Iterator[dict[str, Any]]:
    if isinstance(doc, dict):
        if doc.get("type") == "mrkdwn":
            yield doc
        for v in doc.values():
            yield from _mrkdwn_objects(v)
    elif isinstance(doc, list):
        for v in doc:
            yield from _mrkdwn_objects(v)


def test_webhook_redirects_are_failures_naming_the_location_and_the_token_stays(
        db: tuple[Store, int], cert: tuple[Path, Path], tmp_path: Path) -> None:
    """A 302 to another host (urllib turned the POST into a GET carrying the bearer token, dropped
    the alert and recorded the other host's 200 as delivered) and an http → https 301 (the alert
    lost silently): both are failed attempts whose reason names where the redirect pointed."""
    store, series_id = db
    elsewhere = HttpReceiver(status=200).start()
    hook = HttpReceiver(status=302, redirect_to=f"{elsewhere.url}/collect?sig=x", tls=cert).start()
    new_home = HttpReceiver(status=200, tls=cert).start()
    moved = HttpReceiver(status=301, redirect_to=f"{new_home.url}/hook").start()
    try:
        cfg = _cfg(tmp_path, f"""
[[notifications]]
name = "engine"
kind = "webhook"
url = "{hook.url}/hook"
bearer_token = "s3cret"
tls_ca_file = "{cert[0]}"
[[notifications]]
name = "moved"
kind = "webhook"
format = "slack"
url = "{moved.url}/hook"
tls_ca_file = "{cert[0]}"
""")
        rows = _deliver(store, series_id, cfg, tmp_path, Finding(headline="High risk", accession_number="ACC1",
                                                                  positive=True))
        assert elsewhere.posts == [] and new_home.posts == []  # nothing followed: no GET, no token elsewhere
        (posted,) = hook.posts
        assert posted.method == "POST" and posted.headers["Authorization"] == "Bearer s3cret" and posted.json()
        assert rows["engine"].state == "pending" and rows["engine"].attempts == 1
        assert rows["engine"].last_error == (
            f"HTTP 302: redirect to http://127.0.0.1:{elsewhere.port}/… not followed (it would drop the POST body "
            "or send the credentials elsewhere); configure the final URL")
        assert rows["moved"].state == "pending" and rows["moved"].last_error.startswith(
            f"HTTP 301: redirect to https://127.0.0.1:{new_home.port}/… not followed")
        assert "sig=x" not in rows["engine"].last_error  # the new place's path and query may be a secret
    finally:
        for r in (elsewhere, hook, new_home, moved):
            r.stop()


def test_mllp_over_tls_checks_the_engines_certificate_and_name(db: tuple[Store, int], cert: tuple[Path, Path],
                                                               tmp_path: Path) -> None:
    """The engine listens with TLS (its certificate names 127.0.0.1 and localhost): hexnode with
    tls = true and the CA delivers; expecting another name it sends nothing and says why; in
    clear it gets no ACK from a TLS port."""
    store, series_id = db
    engine = MllpListener(tls=cert).start()
    try:
        cfg = _cfg(tmp_path, "".join(f"""
[[notifications]]
name = "{name}"
kind = "hl7"
host = "127.0.0.1"
port = {engine.port}
timeout_seconds = 3.0
{extra}
""" for name, extra in (("ris-tls", f'tls = true\ntls_ca_file = "{cert[0]}"'),
                        ("ris-named", f'tls = true\ntls_ca_file = "{cert[0]}"\ntls_server_name = "localhost"'),
                        ("ris-wrong-name", f'tls = true\ntls_ca_file = "{cert[0]}"\ntls_server_name = "engine.test"'),
                        ("ris-clear", ""))))
        rows = _deliver(store, series_id, cfg, tmp_path, Finding(headline="High risk", accession_number="ACC1",
                                                                  positive=True))
        assert rows["ris-tls"].state == "delivered" and rows["ris-named"].state == "delivered"
        assert len(engine.messages) == 2 and all("ACC1" in m for m in engine.messages)
        assert rows["ris-wrong-name"].state == "pending" and rows["ris-wrong-name"].last_error.startswith(
            f"MLLP 127.0.0.1:{engine.port}: TLS: the peer's certificate is not valid for 'engine.test' "
            "(Hostname mismatch"), rows["ris-wrong-name"].last_error
        assert rows["ris-clear"].state == "pending" and rows["ris-clear"].last_error.startswith(
            f"MLLP 127.0.0.1:{engine.port}: "), rows["ris-clear"].last_error
    finally:
        engine.stop()


def test_config_refuses_a_webhook_token_over_http_and_names_mllp_tls(tmp_path: Path) -> None:
    from hexnode.config import ConfigError

    with pytest.raises(ConfigError, match="never sent in clear"):
        _cfg(tmp_path, '[[notifications]]\nname = "t"\nurl = "http://engine.example/h"\nbearer_token = "t"\n')
    cfg = _cfg(tmp_path, '[[notifications]]\nname = "t"\nkind = "hl7"\nhost = "10.0.0.7"\ntls = true\n'
                         'tls_server_name = "engine.hospital.example"\n')
    assert cfg.notifications[0].tls and cfg.notifications[0].tls_server_name == "engine.hospital.example"
