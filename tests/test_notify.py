"""Notifications (issue 23) against real receivers on loopback: an HTTP webhook receiver, an
aiosmtpd SMTP server with STARTTLS + AUTH (a self-signed certificate made for the test), MLLP
listeners answering AA and AE. A High-risk synthetic series through the SCP gives exactly one
message on each target, also when the send process is killed with SIGKILL mid-message and when a
receiver is down for a while; a revised result sends a correction, never a second alarm; no
message body holds the patient's name, ID or birth date."""

from __future__ import annotations

import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from email.message import Message as MailMessage
from pathlib import Path
from typing import Any

import hl7
import pydicom
import pytest
from notify_peers import HttpReceiver, MllpListener, SmtpReceiver, self_signed_cert
from pydicom.uid import generate_uid
from sqlalchemy import select

from hexnode.config import Config, ConfigError, NotificationTarget, load_config
from hexnode.notify import Finding, Trigger, enqueue
from hexnode.notify.deliver import Notifier
from hexnode.notify.message import message_id
from hexnode.receive.spool import Spool
from hexnode.status import collect, render
from hexnode.store.db import Event, Notification, Series, Store, Study, open_store

REPO = Path(__file__).resolve().parent.parent
VIEWER = "https://ohif.hospital.example"


def wait_for(cond: Callable[[], Any], timeout: float, what: str) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(0.1)
    raise TimeoutError(what)


@pytest.fixture(scope="module")
def cert(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    return self_signed_cert(tmp_path_factory.mktemp("tls"))


def targets_toml(http: HttpReceiver, smtp: SmtpReceiver, mllp_port: int, cert: Path, extra: str = "") -> str:
    return f"""
[notify]
viewer_url = "{VIEWER}"
backoff_initial_seconds = 0.3
backoff_max_seconds = 1.0
[[notifications]]
name = "stroke-teams"
kind = "webhook"
format = "teams"
url = "{http.url}/teams"
triggers = ["high_risk", "not_analysed"]
[[notifications]]
name = "stroke-mail"
kind = "email"
smtp_host = "127.0.0.1"
smtp_port = {smtp.port}
security = "starttls"
tls_ca_file = "{cert}"
username = "{smtp.user}"
password = "{smtp.password}"
mail_from = "hexnode@hospital.example"
mail_to = ["stroke-team@hospital.example", "neuro-oncall@hospital.example"]
[[notifications]]
name = "ris"
kind = "hl7"
host = "127.0.0.1"
port = {mllp_port}
receiving_application = "ENGINE"
receiving_facility = "HOSP"
{extra}"""


# --- unit level: config, rendering ------------------------------------------------------------
def test_config_rejects_bad_notification_settings(tmp_path: Path) -> None:
    def load(body: str) -> Config:
        p = tmp_path / "h.toml"
        p.write_text(body)
        return load_config(p, env={})

    cfg = load('[[notifications]]\nname = "t"\nkind = "webhook"\nurl = "https://x.example/hook"\n')
    assert cfg.notifications[0].triggers == ["high_risk"] and cfg.notifications[0].phi_fields == []
    for body, needle in (
        ('[[notifications]]\nname = "t"\nkind = "pager"\n', "kind"),
        ('[[notifications]]\nname = "t"\nurl = "https://x/h"\ntriggers = ["always"]\n', "triggers"),
        ('[[notifications]]\nname = "t"\nurl = "https://x/h"\nphi_fields = ["ssn"]\n', "phi_fields"),
        ('[[notifications]]\nname = "t"\nkind = "email"\n', "mail_to"),
        ('[[notifications]]\nname = "t"\nkind = "email"\nmail_to = ["a@b"]\nsecurity = "none"\nusername = "u"\n',
         "clear"),
        ('[[notifications]]\nname = "t"\nurl = "https://x/h"\n[[notifications]]\nname = "t"\nurl = "https://x/h"\n',
         "twice"),
        ('[[notifications]]\nname = "t"\nurl = "https://x/h"\nsmtp_hots = "x"\n', "unknown"),
    ):
        with pytest.raises(ConfigError, match=needle):
            load(body)


def test_example_config_documents_notifications() -> None:
    """deploy/hexnode.toml keeps every setting with its default; its [[notifications]] examples load."""
    cfg = load_config(REPO / "deploy" / "hexnode.toml", env={})
    assert cfg.notify.viewer_url == "" and cfg.notifications == []
    text = (REPO / "deploy" / "hexnode.toml").read_text()
    examples = "\n".join(line[2:] for line in text.splitlines() if line.startswith("# ") and "#" not in line[2:3])
    start = examples.index("[[notifications]]")
    import tomllib

    raw = tomllib.loads(examples[start:examples.index("# end of notification examples")]
                        if "# end of notification examples" in examples else examples[start:])
    kinds = {n["kind"] for n in raw["notifications"]}
    assert kinds == {"webhook", "email", "hl7"}


# --- one study, real peers, no node --------------------------------------------------------------
@pytest.fixture
def db(tmp_path: Path) -> Iterator[tuple[Store, int, int]]:
    store = open_store(f"sqlite:///{tmp_path / 'n.sqlite'}")
    with store.transaction() as s:
        study = Study(study_uid=generate_uid())
        s.add(study)
        s.flush()
        series = Series(series_uid=generate_uid(), study_id=study.id, calling_ae="SCANNER")
        s.add(series)
        s.flush()
        ids = (study.id, series.id)
    yield store, *ids
    store.dispose()


def high(study_uid: str = "1.2.3.4", acc: str = "ACC123", p: float = 0.61) -> Finding:
    return Finding(headline="High risk of hematoma expansion", accession_number=acc, study_uid=study_uid,
                   series="abc123", volume_ml=18.4, probability=p, risk="High", threshold=0.29,
                   model="hexnode-he 1.0", positive=True)


def notifier(store: Store, cfg: Config, tmp_path: Path) -> Notifier:
    return Notifier(cfg, store, Spool(tmp_path / "spool"), owner=f"pytest:{os.getpid()}")


def test_each_kind_delivers_once_and_parses(db: tuple[Store, int, int], cert: tuple[Path, Path],
                                            tmp_path: Path) -> None:
    store, _, series_id = db
    http = HttpReceiver().start()
    smtp = SmtpReceiver(*cert).start()
    mllp = MllpListener().start()
    try:
        p = tmp_path / "h.toml"
        p.write_text(targets_toml(http, smtp, mllp.port, cert[0], extra=f"""
[[notifications]]
name = "slack"
kind = "webhook"
format = "slack"
url = "{http.url}/slack"
[[notifications]]
name = "engine-json"
kind = "webhook"
url = "{http.url}/json"
bearer_token = "tok"
"""))
        cfg = load_config(p, env={})
        with store.transaction() as s:
            ids = enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=high())
            again = enqueue(s, cfg, trigger="high_risk", series_id=series_id, revision=0, finding=high())
        assert len(ids) == 5 and again == ids  # idempotent per (series, revision, trigger, target)
        n = notifier(store, cfg, tmp_path)
        assert n.run_once() == 5 and n.run_once() == 0
        with store.transaction() as s:
            msg_ids = {r.target: message_id(r.key) for r in s.execute(select(Notification)).scalars()}
        assert len(set(msg_ids.values())) == 5
        link = f"{VIEWER}/viewer?StudyInstanceUIDs=1.2.3.4"
        teams = http.at("/teams")[0].json()
        card = teams["attachments"][0]
        assert teams["type"] == "message" and card["contentType"] == "application/vnd.microsoft.card.adaptive"
        facts = {f["title"]: f["value"] for b in card["content"]["body"] if b["type"] == "FactSet" for f in b["facts"]}
        assert facts["Accession number"] == "ACC123" and facts["Risk of expansion"] == "High"
        assert facts["Hematoma volume"] == "18.4 ml" and facts["Expansion probability"] == "61 %"
        assert card["content"]["actions"][0]["url"] == link
        assert "not for clinical use" in json.dumps(card)
        slack = http.at("/slack")[0].json()
        assert slack["text"].startswith("High risk of hematoma expansion") and slack["blocks"][0]["type"] == "header"
        assert any(e.get("url") == link for b in slack["blocks"] for e in b.get("elements", []))
        plain = http.at("/json")[0]
        assert plain.headers["Authorization"] == "Bearer tok"
        doc = plain.json()
        assert doc["schema"] == "hexnode.notification/1" and doc["viewer_url"] == link and "patient" not in doc
        assert doc["finding"]["probability"] == 0.61 and doc["finding"]["threshold"] == 0.29
        assert plain.headers["Idempotency-Key"] == doc["id"] == msg_ids["engine-json"]
        # e-mail: over STARTTLS, authenticated, to both recipients
        (mail,) = smtp.mails
        assert mail.tls and smtp.logins == ["hexnode"]
        assert sorted(mail.rcpt_tos) == ["neuro-oncall@hospital.example", "stroke-team@hospital.example"]
        m = email.message_from_bytes(mail.content, policy=email.policy.default)
        assert m["Subject"] == "[hexnode] High risk of hematoma expansion (accession ACC123)"
        assert m["Message-ID"] == f"<{msg_ids['stroke-mail']}@hospital.example>"
        body = m.get_body().get_content()
        assert link in body and "not for clinical use" in body and "Hematoma volume:" in body
        # HL7: ORU^R01, final, accession in OBR-2/3/18, PID without identifiers
        (raw,) = mllp.messages
        oru = hl7.parse(raw)
        assert str(oru.segment("MSH")[9]) == "ORU^R01^ORU_R01" and str(oru.segment("MSH")[10]) == msg_ids["ris"]
        obr = oru.segment("OBR")
        assert str(obr[3]) == "ACC123" and str(obr[18]) == "ACC123" and str(obr[25]) == "F"
        pid = oru.segment("PID")
        assert str(pid[3]) == "" and str(pid[5]) == "" and str(pid[7]) == ""
        obx = {str(o[3][0][0]): o for o in oru.segments("OBX")}
        assert str(obx["118565006"][5]) == "18.4" and str(obx["HE-RISK"][5]) == "75540009^High^SCT"
        with store.transaction() as s:
            rows = list(s.execute(select(Notification).order_by(Notification.id)).scalars())
            assert [r.state for r in rows] == ["delivered"] * 5 and all(not r.correction for r in rows)
            assert {r.target: r.attempts for r in rows} == dict.fromkeys(
                ["stroke-teams", "stroke-mail", "ris", "slack", "engine-json"], 1)
    finally:
        http.stop()
        smtp.stop()
        mllp.stop()
