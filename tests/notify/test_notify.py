"""Notifications (issue 23) against real receivers on loopback: an HTTP webhook receiver, an
aiosmtpd SMTP server with STARTTLS + AUTH (a self-signed certificate made for the test), MLLP
listeners answering AA and AE. A High-risk synthetic series through the SCP gives exactly one
message on each target, also when the send process is killed with SIGKILL mid-message and when a
receiver is down for a while; a revised result sends a correction, never a second alarm; no
message body holds the patient's name, ID or birth date."""

from __future__ import annotations

import dataclasses
import email
import email.policy
import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import hl7
import pydicom
import pytest
from notify_peers import HttpReceiver, MllpListener, SmtpReceiver, self_signed_cert
from pydicom.uid import generate_uid
from sqlalchemy import select

from hexnode.admin.status import collect, render
from hexnode.config import Config, ConfigError, NotificationTarget, load_config
from hexnode.devtools.net import wait_for
from hexnode.notify import Finding, Trigger, enqueue
from hexnode.notify.deliver import Notifier
from hexnode.notify.message import message_id
from hexnode.store.db import Event, Notification, Series, Store, Study, open_store
from hexnode.store.spool import Spool

REPO = Path(__file__).resolve().parents[2]
VIEWER = "https://ohif.hospital.example"


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
        ('[[notifications]]\nname = "t"\nurl = "http://x/h"\nbearer_token = "t"\n', "never sent in clear"),
    ):
        with pytest.raises(ConfigError, match=needle):
            load(body)


def test_example_config_documents_notifications(tmp_path: Path) -> None:
    """deploy/hexnode.toml: [notify] with its defaults; the commented [[notifications]] examples load
    (the "# " removed) and name every target setting at least once."""
    text = (REPO / "deploy" / "hexnode.toml").read_text()
    assert load_config(REPO / "deploy" / "hexnode.toml", env={}).notifications == []
    block = text[text.index("# --- begin notification examples"):text.index("# --- end notification examples")]
    examples = "\n".join(line[2:] for line in block.splitlines()[1:])
    cfg = cfg_from(tmp_path, examples)
    assert {n.kind for n in cfg.notifications} == {"webhook", "email", "hl7"}
    assert {n.format for n in cfg.notifications if n.kind == "webhook"} == {"teams", "slack", "json"}
    import tomllib

    named = {k for table in tomllib.loads(examples)["notifications"] for k in table}
    assert named == {f.name for f in dataclasses.fields(NotificationTarget)}


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
    https = HttpReceiver(tls=cert).start()
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
url = "{https.url}/json"
bearer_token = "tok"
tls_ca_file = "{cert[0]}"
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
        plain = https.at("/json")[0]
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
        https.stop()
        smtp.stop()
        mllp.stop()


def one_webhook(url: str, *, triggers: str = '["high_risk"]', extra: str = "") -> str:
    return f"""
[notify]
viewer_url = "{VIEWER}"
backoff_initial_seconds = 0.2
backoff_max_seconds = 0.5
{extra}
[[notifications]]
name = "hook"
kind = "webhook"
url = "{url}"
triggers = {triggers}
"""


def cfg_from(tmp_path: Path, body: str) -> Config:
    p = tmp_path / "hexnode.toml"
    p.write_text(body)
    return load_config(p, env={})


def test_revised_result_sends_a_correction_never_a_second_alarm(db: tuple[Store, int, int], tmp_path: Path) -> None:
    store, study_id, series_id = db
    http = HttpReceiver(status=200).start()
    try:
        cfg = cfg_from(tmp_path, one_webhook(http.url + "/hook"))
        n = notifier(store, cfg, tmp_path)
        with store.transaction() as s:
            enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=high())
        n.run_once()
        # a restart re-runs the same job (same revision): nothing new
        with store.transaction() as s:
            enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=high())
        assert n.run_once() == 0
        # more images arrived: revision 1 is still High → a correction of the delivered alert
        with store.transaction() as s:
            enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=1, finding=high(p=0.72))
        n.run_once()
        # revision 2 is Low: the team is told the alarm no longer stands
        low = Finding(headline="No longer High risk: the revised result is Low risk", accession_number="ACC123",
                      study_uid="1.2.3.4", volume_ml=4.0, probability=0.1, risk="Low", threshold=0.29)
        with store.transaction() as s:
            enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=2, finding=low, retraction=True)
        n.run_once()
        with store.transaction() as s:
            # a second Low revision has nothing left to take back
            assert enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=3, finding=low,
                           retraction=True) == []
        docs = [p.json() for p in http.at("/hook")]
        assert [(d["correction"], d["finding"]["risk"]) for d in docs] == [(False, "High"), (True, "High"), (True, "Low")]
        assert docs[1]["title"].startswith("CORRECTION: High risk") and docs[1]["finding"]["probability"] == 0.72
        assert docs[2]["title"].startswith("CORRECTION: No longer High risk")
        assert len({d["id"] for d in docs}) == 3
    finally:
        http.stop()


def test_newer_result_before_delivery_supersedes_the_unsent_alert(db: tuple[Store, int, int], tmp_path: Path) -> None:
    store, _, series_id = db
    http = HttpReceiver().start()
    try:
        cfg = cfg_from(tmp_path, one_webhook(http.url + "/hook"))
        with store.transaction() as s:
            enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=high(p=0.5))
            enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=1, finding=high(p=0.7))
        notifier(store, cfg, tmp_path).run_once()
        (only,) = [p.json() for p in http.at("/hook")]
        assert only["correction"] is False and only["finding"]["probability"] == 0.7
        with store.transaction() as s:
            assert [r.state for r in s.execute(select(Notification).order_by(Notification.id)).scalars()] == [
                "superseded", "delivered"]
    finally:
        http.stop()


def test_receiver_down_for_a_while_is_delivered_later(db: tuple[Store, int, int], tmp_path: Path) -> None:
    store, _, series_id = db
    http = HttpReceiver()  # its port is free: nothing listens yet
    cfg = cfg_from(tmp_path, one_webhook(http.url + "/hook"))
    n = notifier(store, cfg, tmp_path)
    with store.transaction() as s:
        (nid,) = enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=high())
    deadline = time.monotonic() + 3
    while time.monotonic() < deadline:
        n.run_once()
        time.sleep(0.1)
    st = collect(store)
    (retrying,) = st["notifications"]["retrying"]
    assert retrying["id"] == nid and retrying["attempts"] >= 3 and "Connection refused" in retrying["error"]
    assert "notifications being retried" in render(st)
    http.start()
    try:
        wait_for(lambda: n.run_once() or http.at("/hook"), 5, "not delivered after the receiver came back")
        assert len(http.at("/hook")) == 1
        with store.transaction() as s:
            row = s.get(Notification, nid)
            assert row is not None and row.state == "delivered" and row.attempts >= 4
    finally:
        http.stop()


def test_hl7_error_ack_retries_then_fails_visibly_and_resend_delivers(db: tuple[Store, int, int],
                                                                      tmp_path: Path) -> None:
    store, _, series_id = db
    bad = MllpListener(ack_code="AE").start()
    cfg = cfg_from(tmp_path, f"""
[notify]
backoff_initial_seconds = 0.2
backoff_max_seconds = 0.3
max_age_seconds = 1.5
[[notifications]]
name = "ris"
kind = "hl7"
port = {bad.port}
""")
    n = notifier(store, cfg, tmp_path)
    try:
        with store.transaction() as s:
            (nid,) = enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=high())
        wait_for(lambda: n.run_once() == 0 and collect(store)["notifications"]["failed"], 10, "never failed")
    finally:
        bad.stop()
    assert len(bad.messages) >= 2 and len({hl7.parse(m).segment("MSH")[10][0] for m in bad.messages}) == 1
    st = collect(store)
    (failed,) = st["notifications"]["failed"]
    assert failed["id"] == nid and "ACK AE" in failed["error"] and "not accepted by the test engine" in failed["error"]
    assert "FAILED notifications" in render(st) and f"#{nid} high_risk" in render(st)
    # `hexnode status` and `hexnode resend --notification ID`, as a site runs them
    good = MllpListener(ack_code="AA", port=bad.port).start()
    try:
        config = tmp_path / "hexnode.toml"
        config.write_text(config.read_text().replace('[notify]', f'data_dir = "{tmp_path}"\n[database]\n'
                                                     f'url = "{store.url}"\n[notify]'))
        run = [sys.executable, "-m", "hexnode.cli"]
        out = subprocess.run([*run, "status", "--config", str(config)], capture_output=True, text=True, check=True)
        assert f"#{nid} high_risk" in out.stdout and "ACK AE" in out.stdout
        out = subprocess.run([*run, "resend", "--config", str(config), "--notification", str(nid)],
                             capture_output=True, text=True, check=True)
        assert f"queued again: 1 notifications ({nid})" in out.stdout
        out = subprocess.run([*run, "send", "--once", "--config", str(config)], capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, out.stderr[-2000:]
        assert len(good.messages) == 1
        with store.transaction() as s:
            row = s.get(Notification, nid)
            assert row is not None and row.state == "delivered"
            events = [e.to_state for e in s.execute(select(Event).where(Event.entity == "notification",
                                                                        Event.entity_id == nid)).scalars()]
        assert events[0] == "pending" and "failed" in events and events[-1] == "delivered"
    finally:
        good.stop()


# --- a High-risk synthetic series through the SCP, a real send process, SIGKILL, a receiver down ------
class Scenario:
    def __init__(self, workdir: Path, cert: tuple[Path, Path]) -> None:
        from hexnode.synth.dicom import write_series as synth_series
        from hexnode.synth.phantom import generate_case

        # seed 5, case 1: a 12 ml bleed the bundled models call High (p 0.34 >= 0.30), 34 slices
        self.paths = synth_series(generate_case(5, 1), workdir / "high")
        self.partial = synth_series(generate_case(5, 4, n_slices=10), workdir / "partial")  # does not cover the brain
        self.stopped = sorted(synth_series(generate_case(5, 7), workdir / "stopped"))[:10]  # sent, then A-ABORT
        head = pydicom.dcmread(self.paths[0], stop_before_pixels=True)
        self.accession, self.study_uid = str(head.AccessionNumber), str(head.StudyInstanceUID)
        self.phi = [str(head.PatientName), str(head.PatientName).split("^")[1], str(head.PatientID),
                    str(head.PatientBirthDate), f"{head.PatientBirthDate[:4]}-01-01"]
        assert all(self.phi) and self.accession
        self.http = HttpReceiver().start()
        self.smtp = SmtpReceiver(*cert, stall_first=True).start()
        self.mllp = MllpListener()  # not started: the interface engine is down at first
        extra = f"""
[[notifications]]
name = "engine-json"
kind = "webhook"
url = "{self.http.url}/engine"
phi_fields = ["patient_id"]
[[notifications]]
name = "it"
kind = "webhook"
url = "{self.http.url}/it"
triggers = ["delivery_failed"]
[send]
backoff_initial_seconds = 0.5
backoff_max_seconds = 1.0
max_age_seconds = 4.0
"""
        from node_helpers import Node

        self.node = Node(workdir, series_extra="aborted_wait_seconds = 2.0",
                         extra_toml=targets_toml(self.http, self.smtp, self.mllp.port, cert[0], extra))
        self.log = workdir / "send.log"
        self.senders: list[subprocess.Popen[bytes]] = []

    def start_sender(self) -> subprocess.Popen[bytes]:
        env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
        with open(self.log, "ab") as log:
            proc = subprocess.Popen([sys.executable, "-m", "hexnode.cli", "send", "--config", str(self.node.config)],
                                    stdout=log, stderr=subprocess.STDOUT, env=env, cwd=self.node.workdir)
        self.senders.append(proc)
        return proc

    def send_then_abort(self, paths: list[Path]) -> None:
        """C-STORE these instances, then A-ABORT: a sender that stopped part-way."""
        from node_helpers import CALLING
        from pynetdicom import AE

        ae = AE(ae_title=CALLING)
        ae.add_requested_context("1.2.840.10008.5.1.4.1.1.2", ["1.2.840.10008.1.2.1"])
        assoc = ae.associate("127.0.0.1", self.node.port, ae_title="HEXNODE")
        assert assoc.is_established
        for path in paths:
            status = assoc.send_c_store(pydicom.dcmread(path))
            assert status and int(status.Status) == 0
        assoc.abort()

    def rows(self) -> list[Notification]:
        with self.node.store.transaction() as s:
            return list(s.execute(select(Notification).order_by(Notification.id)).scalars())

    def row(self, target: str, trigger: str = "high_risk") -> Notification:
        return next(r for r in self.rows() if r.target == target and r.trigger == trigger)

    def stop(self) -> None:
        for p in self.senders:
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
                try:
                    p.wait(20)
                except subprocess.TimeoutExpired:
                    p.kill()
        self.node.stop()
        self.http.stop()
        self.smtp.stop()
        if hasattr(self.mllp, "stall"):
            self.mllp.stop()


@pytest.fixture(scope="module")
def alerted(tmp_path_factory: pytest.TempPathFactory, cert: tuple[Path, Path]) -> Iterator[dict[str, Any]]:
    sc = Scenario(tmp_path_factory.mktemp("notify-node"), cert)
    seen: dict[str, Any] = {"sc": sc}
    try:
        first = sc.start_sender()
        out = sc.node.process(sc.paths)
        assert out.state == "reported", (out.reason, out.job_error)
        # the sender delivered the Teams card, then stalls inside the SMTP transaction (after RCPT
        # TO, before DATA): killed there, mid-notification
        assert sc.smtp.stall.reached.wait(60), sc.log.read_text()[-3000:]
        seen["teams_before_kill"] = len(sc.http.at("/teams"))
        first.send_signal(signal.SIGKILL)
        first.wait(10)
        sc.smtp.stall.release.set()
        seen["mails_after_kill"] = len(sc.smtp.mails)
        sc.start_sender()
        wait_for(lambda: sc.smtp.mails, 30, "no e-mail after the restart")
        # the interface engine is still down: the HL7 message is retried with back-off
        # (`hexnode status` lists it as retried whenever it is not in the middle of an attempt)
        seen["retrying"] = wait_for(lambda: [n for n in collect(sc.node.store)["notifications"]["retrying"]
                                             if n["target"] == "ris" and n["attempts"] >= 3], 30,
                                    "the HL7 message was not retried")
        sc.mllp.start()
        wait_for(lambda: sc.mllp.messages and sc.row("ris").state == "delivered", 30, "HL7 not delivered later")
        # the PACS never answers: the objects fail at [send] max_age_seconds → one IT warning
        wait_for(lambda: sc.http.at("/it"), 40, "no delivery-failed warning")
        # a series that does not cover the brain: the stroke team hears it will get no result
        out = sc.node.process(sc.partial)
        seen["partial"] = out
        wait_for(lambda: any(r.trigger == "not_analysed" and r.state == "delivered" for r in sc.rows()), 30,
                 "no not-analysed notice")
        # a sender that stops after 10 instances: after [series] aborted_wait_seconds, not analysed
        sc.send_then_abort(sc.stopped)
        uid = str(pydicom.dcmread(sc.stopped[0], stop_before_pixels=True).SeriesInstanceUID)
        sc.node.wait_decided([uid], timeout=60)
        sc.node.drain()
        seen["stopped"] = sc.node.outcome(uid)
        wait_for(lambda: len([r for r in sc.rows() if r.trigger == "not_analysed" and r.state == "delivered"]) == 2,
                 30, "no notice for the stopped sender")
        wait_for(lambda: len(sc.http.at("/it")) == 3, 40, "no delivery-failed warning for the later series")
        time.sleep(3)  # anything more the sender would send, it has sent
        seen["rows"] = sc.rows()
        yield seen
    finally:
        sc.stop()


def test_high_risk_series_through_the_scp_alerts_each_target_exactly_once(alerted: dict[str, Any]) -> None:
    sc: Scenario = alerted["sc"]
    high_rows = [r for r in alerted["rows"] if r.trigger == "high_risk"]
    assert sorted(r.target for r in high_rows) == ["engine-json", "ris", "stroke-mail", "stroke-teams"]
    assert all(r.state == "delivered" and not r.correction for r in high_rows)
    teams = [p.json() for p in sc.http.at("/teams")]
    assert len(teams) == 3  # the High alert and (below) two not-analysed notices
    card = teams[0]["attachments"][0]["content"]
    facts = {f["title"]: f["value"] for b in card["body"] if b["type"] == "FactSet" for f in b["facts"]}
    assert card["body"][0]["text"] == f"High risk of hematoma expansion (accession {sc.accession})"
    assert facts["Risk of expansion"] == "High" and facts["Model"].startswith("hexnode")
    assert card["actions"][0]["url"] == f"{VIEWER}/viewer?StudyInstanceUIDs={sc.study_uid}"
    assert len(sc.smtp.mails) == 1 and len(sc.mllp.messages) == 1 and len(sc.http.at("/engine")) == 1
    oru = hl7.parse(sc.mllp.messages[0])
    assert str(oru.segment("OBR")[18]) == sc.accession and str(oru.segment("OBR")[25]) == "F"
    # the numbers are the SR's: the engine's JSON carries the same probability the worker logged
    doc = sc.http.at("/engine")[0].json()
    assert doc["finding"]["risk"] == "High" and doc["finding"]["probability"] >= doc["finding"]["threshold"]


def test_sigkill_of_the_sender_mid_notification_still_sends_exactly_one(alerted: dict[str, Any]) -> None:
    sc: Scenario = alerted["sc"]
    assert alerted["teams_before_kill"] == 1 and alerted["mails_after_kill"] == 0
    assert len(sc.smtp.mails) == 1 and len(sc.http.at("/teams")) == 3
    mail = next(r for r in alerted["rows"] if r.target == "stroke-mail")
    assert mail.attempts == 2  # the killed attempt, then the one that delivered
    with sc.node.store.transaction() as s:
        details = [e.detail or "" for e in s.execute(select(Event).where(
            Event.entity == "notification", Event.entity_id == mail.id)).scalars()]
    assert any("died" in d for d in details), details


def test_interface_engine_down_for_a_while_gets_the_message_later(alerted: dict[str, Any]) -> None:
    sc: Scenario = alerted["sc"]
    (retrying,) = alerted["retrying"]
    assert retrying["attempts"] >= 3 and "ConnectionRefusedError" in retrying["error"]
    ris = next(r for r in alerted["rows"] if r.target == "ris" and r.trigger == "high_risk")
    assert ris.state == "delivered" and ris.attempts >= 4 and len(sc.mllp.messages) == 1


def test_failed_pacs_delivery_warns_it_once_and_not_analysed_series_notifies(alerted: dict[str, Any]) -> None:
    sc: Scenario = alerted["sc"]
    it = [p.json() for p in sc.http.at("/it")]
    # SEG + SR + SC of the High series and SR + SC of each not-analysed one failed to the one PACS:
    # one warning per series and destination
    assert [d["trigger"] for d in it] == ["delivery_failed"] * 3
    assert len({d["finding"]["series"] for d in it}) == 3
    first = next(d for d in it if d["finding"]["accession_number"] == sc.accession)
    assert first["finding"]["facts"]["Destination"] == "pacs" and "resend" in first["finding"]["facts"]["Action"]
    failed_rows = [r for r in alerted["rows"] if r.trigger == "delivery_failed"]
    assert len(failed_rows) == 3 and {r.state for r in failed_rows} == {"delivered"}
    assert alerted["partial"].state == "rejected" and "cover" in alerted["partial"].reason
    notices = [p.json()["attachments"][0]["content"]["body"][0]["text"] for p in sc.http.at("/teams")][1:]
    assert notices[0].startswith("Not analysed: the series does not cover the brain")
    assert alerted["stopped"].state == "rejected" and alerted["stopped"].reason.startswith("the sender stopped")
    assert notices[1].startswith("Not analysed: the sender stopped part-way")
    assert [r.target for r in alerted["rows"] if r.trigger == "not_analysed"] == ["stroke-teams"] * 2


def test_no_patient_identifier_in_any_message_or_row_unless_turned_on(alerted: dict[str, Any]) -> None:
    sc: Scenario = alerted["sc"]
    bodies = {f"http {i} {p.path}": p.body.decode() for i, p in enumerate(sc.http.posts) if p.path != "/engine"}
    bodies |= {f"mail {i}": m.content.decode(errors="replace") for i, m in enumerate(sc.smtp.mails)}
    bodies |= {f"hl7 {i}": m for i, m in enumerate(sc.mllp.messages)}
    assert len(bodies) == 8  # 3 Teams cards, 3 IT warnings, 1 e-mail, 1 HL7 message
    for where, body in bodies.items():
        for value in sc.phi:
            assert value not in body, f"{value!r} in {where}"
    rows = json.dumps([[r.key, r.payload, r.last_error] for r in alerted["rows"]])
    with sc.node.store.transaction() as s:
        rows += json.dumps([e.detail for e in s.execute(select(Event)).scalars()])
    for value in sc.phi:
        assert value not in rows, f"{value!r} in the database"
    # the one target that turned patient_id on gets it (read from the spool at send time), nothing else
    doc = sc.http.at("/engine")[0].json()
    assert doc["patient"] == {"patient_id": sc.phi[2]}
    assert sc.phi[0] not in sc.http.at("/engine")[0].body.decode() and sc.phi[3] not in sc.http.at("/engine")[0].body.decode()


def test_worker_outcomes_become_alarms_retractions_and_not_analysed_notices(db: tuple[Store, int, int],
                                                                             tmp_path: Path) -> None:
    """on_result (the worker's hook) decides from the stored result: High → alarm; a later Low answer
    → "no longer High risk" only after a delivered alarm; incomplete coverage → not-analysed notice."""
    from pydicom.dataset import Dataset

    from hexnode.notify import on_result
    from hexnode.pipeline.contracts import ModelInfo, Prediction
    from hexnode.pipeline.run import Produced

    store, _, series_id = db
    http = HttpReceiver().start()
    try:
        cfg = cfg_from(tmp_path, one_webhook(http.url + "/hook", triggers='["high_risk", "not_analysed"]'))
        sr = Dataset()
        sr.Modality, sr.AccessionNumber, sr.StudyInstanceUID = "SR", "ACC9", "1.2.826.0.1.9"
        info = ModelInfo("hexnode-he", "9.9", threshold=0.3)

        def result(p: float | None, cause: str | None = None) -> Produced:
            pred = None if p is None else Prediction(volume_ml=10.0, probability=p, model=info)
            return Produced(datasets=[sr], prediction=pred, reason=None if p is not None else "does not cover",
                            cause=cause)

        n = notifier(store, cfg, tmp_path)
        with store.transaction() as s:
            # Low first, nothing delivered before: nothing to say
            assert on_result(s, cfg, series_id=series_id, revision=0, produced=result(0.1), answers=True) == []
            assert len(on_result(s, cfg, series_id=series_id, revision=1, produced=result(0.6), answers=True)) == 1
        n.run_once()
        with store.transaction() as s:
            # a series that is not the study's answer never retracts
            assert on_result(s, cfg, series_id=series_id, revision=2, produced=result(0.1), answers=False) == []
            assert len(on_result(s, cfg, series_id=series_id, revision=3, produced=result(0.1), answers=True)) == 1
            ids = on_result(s, cfg, series_id=series_id, revision=4, produced=result(None, "incomplete_coverage"),
                            answers=False)
            assert len(ids) == 1
        n.run_once()
        docs = [p.json() for p in http.at("/hook")]
        assert [(d["trigger"], d["correction"], d["finding"]["risk"]) for d in docs] == [
            ("high_risk", False, "High"), ("high_risk", True, "Low"), ("not_analysed", False, None)]
        assert docs[0]["viewer_url"] == f"{VIEWER}/viewer?StudyInstanceUIDs=1.2.826.0.1.9"
        assert docs[0]["finding"]["model"] == "hexnode-he 9.9" and docs[0]["finding"]["accession_number"] == "ACC9"
        assert docs[2]["title"] == "Not analysed: the series does not cover the brain (accession ACC9)"
    finally:
        http.stop()


def test_follow_up_expansion_alarms_corrects_and_drift_warns_once_a_day(db: tuple[Store, int, int],
                                                                        tmp_path: Path) -> None:
    """on_followup (the worker's hook after a follow-up's outcome is recorded): expansion observed →
    an alarm with the measured growth; a revised follow-up without expansion corrects it; a drift
    the pair revealed → one warning per model version and day, however many pairs confirm it."""
    from pydicom.dataset import Dataset

    from hexnode.notify import on_followup
    from hexnode.pipeline.followup import Recorded
    from hexnode.pipeline.run import Produced
    from hexnode.series.followup import growth

    store, _, series_id = db
    http = HttpReceiver().start()
    try:
        cfg = cfg_from(tmp_path, one_webhook(http.url + "/hook", triggers='["expansion_observed", "drift_warning"]'))
        sr = Dataset()
        sr.Modality, sr.AccessionNumber, sr.StudyInstanceUID = "SR", "ACC7", "1.2.826.0.1.7"
        produced = Produced(datasets=[sr], prediction=None, reason=None)
        grown = Recorded(growth=growth(10.0, 19.0), hours=20.0, drift_version="hexnode-he 9.9", drift_pairs=60,
                         drift_reasons=["ECE 0.14 > 0.10"])
        n = notifier(store, cfg, tmp_path)
        with store.transaction() as s:
            assert on_followup(s, cfg, series_id=series_id, revision=0, produced=produced, recorded=Recorded()) == []
            first = on_followup(s, cfg, series_id=series_id, revision=0, produced=produced, recorded=grown)
            assert len(first) == 2
            # the same job retried: the same rows, nothing new
            assert on_followup(s, cfg, series_id=series_id, revision=0, produced=produced, recorded=grown) == first
        n.run_once()
        with store.transaction() as s:
            same = Recorded(growth=growth(10.0, 10.5), hours=20.0, drift_version="hexnode-he 9.9", drift_pairs=61,
                            drift_reasons=["ECE 0.14 > 0.10"])
            again = on_followup(s, cfg, series_id=series_id, revision=1, produced=produced, recorded=same)
            assert len(again) == 2 and first[1] in again  # the correction, and today's drift row again
        n.run_once()
        docs = [p.json() for p in http.at("/hook")]
        got = sorted((d["trigger"], d["correction"], d["finding"]["headline"]) for d in docs)
        assert got == [
            ("drift_warning", False, "Model drift on this site's outcomes: hexnode-he 9.9"),
            ("expansion_observed", False, "Hematoma expansion observed on the follow-up scan"),
            ("expansion_observed", True, "No longer expansion: the revised follow-up shows no"),
        ]
        alarm = next(d for d in docs if d["trigger"] == "expansion_observed" and not d["correction"])
        assert alarm["finding"]["facts"]["Growth"].startswith("growth: +9.0 ml (+90 %) over 20.0 h")
        assert alarm["finding"]["accession_number"] == "ACC7"
    finally:
        http.stop()


def test_email_refuses_a_relay_without_starttls(db: tuple[Store, int, int], tmp_path: Path) -> None:
    """security = "starttls" against a server that does not offer it: a failed attempt, no clear-text mail."""
    from aiosmtpd.controller import Controller

    got: list[bytes] = []

    class Handler:
        async def handle_DATA(self, server: Any, session: Any, envelope: Any) -> str:  # noqa: N802
            got.append(envelope.content)
            return "250 OK"

    from hexnode.devtools.net import free_port

    port = free_port()
    ctl = Controller(Handler(), hostname="127.0.0.1", port=port)
    ctl.start()
    store, _, series_id = db
    try:
        cfg = cfg_from(tmp_path, f"""
[[notifications]]
name = "mail"
kind = "email"
smtp_port = {port}
mail_to = ["a@hospital.example"]
""")
        with store.transaction() as s:
            (nid,) = enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=high())
        notifier(store, cfg, tmp_path).run_once()
        with store.transaction() as s:
            row = s.get(Notification, nid)
            assert row is not None and row.state == "pending" and "STARTTLS" in (row.last_error or "")
        assert got == []
    finally:
        ctl.stop()


def test_status_page_and_metrics_show_notifications(db: tuple[Store, int, int], tmp_path: Path) -> None:
    from hexnode.web.page import status_html
    from hexnode.web.server import metrics_text

    store, _, series_id = db
    cfg = cfg_from(tmp_path, one_webhook("http://127.0.0.1:9/hook"))
    with store.transaction() as s:
        enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=high())
    st = collect(store)
    assert st["notifications"]["states"] == {"pending": 1}
    assert 'hexnode_notifications{state="pending"} 1.0' in metrics_text(st)
    assert "Notifications by state" in status_html(st, generated_at="now")


def test_postgresql_two_senders_claim_each_notification_once(tmp_path: Path) -> None:
    """On PostgreSQL (several send processes) a due notification is claimed by one of them only."""
    from plumbing_helpers import PG_URL, pg_available, pg_schema

    from hexnode.notify import state

    if not pg_available():
        pytest.skip("PostgreSQL not running on 127.0.0.1:5432")
    with pg_schema() as schema:
        store = open_store(PG_URL, schema=schema)
        try:
            cfg = cfg_from(tmp_path, one_webhook("http://127.0.0.1:9/hook"))
            with store.transaction() as s:
                for _ in range(6):  # six studies (one study's newer alert would supersede the older)
                    study = Study(study_uid=generate_uid())
                    s.add(study)
                    s.flush()
                    x = Series(series_uid=generate_uid(), study_id=study.id)
                    s.add(x)
                    s.flush()
                    enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=x.id, revision=0,
                            finding=high(study_uid=study.study_uid))
            # two claims in two open transactions: SKIP LOCKED hands each row to one of them
            with store.transaction() as s1, store.transaction() as s2:
                got_a = state.claim_due(s1, "send@a:1", lease_seconds=60, limit=4)
                got_b = state.claim_due(s2, "send@b:1", lease_seconds=60, limit=10)
            assert len(got_a) == 4 and len(got_b) == 2 and not {d.id for d in got_a} & {d.id for d in got_b}
        finally:
            store.dispose()


def test_unacknowledged_hl7_message_is_resent_with_the_same_control_id(db: tuple[Store, int, int],
                                                                       tmp_path: Path) -> None:
    """The engine took the message but its ACK never came (here: later than timeout_seconds): the
    retry carries the same MSH-10, so an engine that keeps control ids files it once."""
    store, _, series_id = db
    engine = MllpListener(stall_first=True).start()
    try:
        cfg = cfg_from(tmp_path, f"""
[notify]
backoff_initial_seconds = 0.2
[[notifications]]
name = "ris"
kind = "hl7"
port = {engine.port}
timeout_seconds = 1.0
""")
        with store.transaction() as s:
            (nid,) = enqueue(s, cfg, trigger=Trigger.HIGH_RISK, series_id=series_id, revision=0, finding=high())
        n = notifier(store, cfg, tmp_path)
        n.run_once()
        with store.transaction() as s:
            row = s.get(Notification, nid)
            assert row is not None and row.state == "pending" and "no ACK" in (row.last_error or "")
        engine.stall.release.set()
        def delivered() -> bool:
            n.run_once()
            return collect(store)["notifications"]["states"] == {"delivered": 1}

        wait_for(delivered, 10, "not delivered on retry")
        ids = [str(hl7.parse(m).segment("MSH")[10]) for m in engine.messages]
        assert len(ids) == 2 and ids[0] == ids[1] and engine.messages[0] == engine.messages[1]
    finally:
        engine.stop()


def test_produce_names_why_a_series_was_not_analysed(tmp_path: Path) -> None:
    """produce() tags incomplete coverage and a sender that stopped part-way, the causes the
    not_analysed trigger listens to (the SCP path of the first is in the node scenario above)."""
    from plumbing_helpers import models_dir

    from hexnode.models.analyser import Models
    from hexnode.pipeline.run import produce
    from hexnode.synth.dicom import write_series as synth_series
    from hexnode.synth.phantom import generate_case

    models = Models.load(models_dir(), ["CPUExecutionProvider"])
    paths = synth_series(generate_case(5, 4, n_slices=10), tmp_path / "partial")
    assert produce(paths, models).cause == "incomplete_coverage"
    stopped = produce(paths, models, stopped="10 instances arrived before the association was aborted")
    assert stopped.cause == "sender_stopped" and (stopped.reason or "").startswith("the sender stopped part-way")
    assert produce(paths[:4] + paths[6:], models, stopped="8 instances arrived").cause == "sender_stopped"


def test_an_older_database_gets_the_table_on_upgrade(tmp_path: Path) -> None:
    """A database made before notifications existed (hexnode's schema version 4, before Alembic):
    opening it upgrades it, and the baseline revision creates the table it lacks."""
    from plumbing_helpers import legacy_ddl
    from sqlalchemy import inspect, text

    from hexnode.store import migrate
    from hexnode.store.db import make_engine

    url = f"sqlite:///{tmp_path / 'old.sqlite'}"
    engine = make_engine(url)
    with engine.begin() as conn:  # the real DDL of schema version 4
        for statement in legacy_ddl("v4", "sqlite"):
            conn.execute(text(statement))
    assert "notifications" not in inspect(engine).get_table_names()
    engine.dispose()
    store = open_store(url)
    try:
        assert "notifications" in inspect(store.engine).get_table_names()
        assert migrate.current(store) == migrate.head()
    finally:
        store.dispose()
