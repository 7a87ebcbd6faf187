"""HL7 v2.5.1 ORU^R01 over MLLP to a RIS or EMR interface engine, with the ACK checked (python-hl7).

The message is one observation report for the study, filed by its accession number (OBR-2
placer order number, OBR-3 filler order number and OBR-18, where IHE Radiology carries it) so
that the engine matches it to the order without a patient identifier: PID-3, PID-5 and PID-7 stay
empty unless the target turns ``phi_fields`` on. OBR-25 / OBX-11 say F (final) or C (corrected:
it replaces an earlier report for the study). MSH-10 is the notification's stable id, the same on
every retry, so an engine that remembers control ids drops a resend.

An ACK with MSA-1 AA (or CA) for our MSH-10 is success; AE / AR (CE / CR), a NAK for another
message, no answer within ``timeout_seconds`` or a refused connection is a failed attempt (with
MSA-3 / ERR as the reason), retried with back-off like any delivery.

``tls = true`` sends it as MLLP over TLS:
the engine's certificate chain and name are verified (``tls_ca_file``; ``tls_server_name`` when
``host`` is an IP), with our client certificate when the engine asks for one. Every value is
escaped for its field (| ^ ~ \\ & as \\F\\ \\S\\ \\R\\ \\E\\ \\T\\); the message's texts carry no line breaks
(hexnode/notify/message.py `clean`), so no value can start a segment of its own.
"""

from __future__ import annotations

import asyncio
import ssl
from dataclasses import dataclass

import hl7
from hl7.mllp import open_hl7_connection

from hexnode.config import NotificationTarget
from hexnode.notify.message import Message, clean
from hexnode.tls import client_context, describe

# Our own codes for what SNOMED CT and LOINC do not name (the SR's private scheme, hexnode/report/codes.py).
LOCAL = "99HEXNODE"
_SEPARATORS = hl7.parse("MSH|^~\\&|")


def _e(value: object) -> str:
    """One value escaped for a field (|, ^, ~, \\ and & in free text must not split it)."""
    return str(_SEPARATORS.escape(str(value))) if value not in (None, "") else ""


def _ts(msg: Message) -> str:
    return msg.created_at.strftime("%Y%m%d%H%M%S") + "+0000"


def build_oru(msg: Message, target: NotificationTarget) -> str:
    """The ORU^R01 message, segments separated by CR."""
    f = msg.finding
    status = "C" if msg.correction else "F"
    ts = _ts(msg)
    acc = _e(f.accession_number)
    segs = [
        "|".join(["MSH", "^~\\&", _e(target.sending_application), _e(target.sending_facility),
                  _e(target.receiving_application), _e(target.receiving_facility), ts, "", "ORU^R01^ORU_R01",
                  msg.id, "P", "2.5.1", "", "", "", "", "", "UNICODE UTF-8"]),  # MSH-18: what MLLP carries
        "|".join(["PID", "1", "", _e(msg.patient.get("patient_id", "")), "",
                  _e(msg.patient.get("patient_name", "")), "", _e(msg.patient.get("birth_date", ""))]),
        "|".join(["ORC", "RE", acc, acc, "", "CM"]),
    ]
    obr = ["OBR", "1", acc, acc, f"HEXNODE-{msg.trigger.upper()}^{_e(f.headline)}^{LOCAL}"] + [""] * 21
    obr[7] = ts  # OBR-7 observation date/time: when the finding was made
    obr[18] = acc  # OBR-18 placer field 1: the accession number (IHE RAD)
    obr[22] = ts  # OBR-22 results report/status change
    obr[24] = "CT"  # OBR-24 diagnostic service section
    obr[25] = status  # OBR-25 result status
    segs.append("|".join(obr))
    obx: list[tuple[str, str, str, str]] = [("ST", f"HEADLINE^{_e('Finding')}^{LOCAL}", _e(msg.title), "")]
    if f.volume_ml is not None:
        obx.append(("NM", "118565006^Volume^SCT", f"{f.volume_ml:.1f}", "cm3^cm3^UCUM"))
    if f.probability is not None:
        obx.append(("NM", f"HE-PROBABILITY^{_e('Probability of hematoma expansion')}^{LOCAL}",
                    f"{f.probability:.3f}", "1^1^UCUM"))
    if f.risk is not None:
        code = "75540009^High^SCT" if f.risk == "High" else "62482003^Low^SCT"
        obx.append(("CWE", f"HE-RISK^{_e('Risk of hematoma expansion')}^{LOCAL}", code, ""))
    if f.threshold is not None:
        obx.append(("NM", f"HE-THRESHOLD^{_e('Risk threshold')}^{LOCAL}", f"{f.threshold:.3f}", "1^1^UCUM"))
    if f.reason:
        obx.append(("TX", f"REASON^Reason^{LOCAL}", _e(f.reason), ""))
    for i, (k, v) in enumerate(f.facts.items()):
        obx.append(("ST", f"FACT-{i + 1}^{_e(k)}^{LOCAL}", _e(v), ""))
    if f.model:
        obx.append(("ST", f"MODEL^{_e('Model version')}^{LOCAL}", _e(f.model), ""))
    if msg.correction:
        obx.append(("TX", f"CORRECTION^Correction^{LOCAL}", _e(msg.correction_note()), ""))
    if msg.viewer_link:
        obx.append(("TX", f"VIEWER^{_e('Viewer link')}^{LOCAL}", _e(msg.viewer_link), ""))
    obx.append(("TX", f"DISCLAIMER^Disclaimer^{LOCAL}", _e(f.not_for_clinical_use), ""))
    for n, (vtype, ident, value, units) in enumerate(obx, start=1):
        segs.append("|".join(["OBX", str(n), vtype, ident, "", value, units, "", "", "", "", status]))
    text = "\r".join(segs)
    hl7.parse(text)  # our own message must parse: a builder bug fails here, not at the engine
    return text


@dataclass(frozen=True)
class AckResult:
    ok: bool
    detail: str


def check_ack(ack: hl7.Message, control_id: str) -> AckResult:
    try:
        msa = ack.segment("MSA")
    except KeyError:
        return AckResult(False, "the answer has no MSA segment")
    code = str(msa[1]).strip()
    acked = str(msa[2]).strip() if len(msa) > 2 else ""
    text = str(msa[3]).strip() if len(msa) > 3 else ""
    try:
        err = str(ack.segment("ERR")).strip()
    except KeyError:
        err = ""
    if acked != control_id:
        return AckResult(False, f"ACK {code} for message {acked!r}, not ours ({control_id})")
    if code in ("AA", "CA"):
        return AckResult(True, f"ACK {code}")
    why = clean("; ".join(x for x in (text, err) if x))  # the engine's words, for status and logs
    return AckResult(False, f"ACK {code or '(empty)'}" + (f": {why}" if why else ""))


def server_name(target: NotificationTarget) -> str:
    return target.tls_server_name or target.host


async def _exchange(target: NotificationTarget, text: str) -> hl7.Message:
    tls: dict[str, object] = {}
    if target.tls:
        tls = {"ssl": client_context(target.tls_ca_file, target.tls_cert_file, target.tls_key_file),
               "server_hostname": server_name(target)}
    reader, writer = await open_hl7_connection(target.host, target.port, encoding="utf-8", **tls)
    try:
        writer.writemessage(hl7.parse(text))
        await writer.drain()
        return await reader.readmessage()
    finally:
        writer.close()
        try:
            await writer.wait_closed()
        except OSError:
            pass


def send_hl7(target: NotificationTarget, msg: Message) -> AckResult:
    text = build_oru(msg, target)

    async def run() -> hl7.Message:
        return await asyncio.wait_for(_exchange(target, text), target.timeout_seconds)

    try:
        ack = asyncio.run(run())
    except TimeoutError:
        return AckResult(False, f"no ACK from {target.host}:{target.port} within {target.timeout_seconds:.0f} s")
    except ssl.SSLError as exc:
        return AckResult(False, f"MLLP {target.host}:{target.port}: {describe(exc, server_name(target))}")
    except (OSError, EOFError, asyncio.IncompleteReadError) as exc:
        return AckResult(False, f"MLLP {target.host}:{target.port}: {type(exc).__name__}: {exc}")
    return check_ack(ack, msg.id)
