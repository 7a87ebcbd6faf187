"""What a notification says: the finding (stored as the row's payload) and its renderings.

A `Finding` is built when the trigger fires (worker, sender) and stored as JSON in the
``notifications`` row; it holds no patient name, ID or birth date. A `Message` is what the
deliverer sends: the finding, whether it corrects an earlier alert, the viewer link, and the
patient fields the target turned on (read from the spool at send time, never stored). One
`Message` renders as plain text (e-mail), a Teams Adaptive Card, Slack Block Kit, a plain JSON
document, or HL7 (hexnode/notify/hl7v2.py).

Every text in a finding may come from outside — an accession number or a reason from a DICOM
header any sender wrote, a peer's error text — so a `Message` holds it cleaned (`clean`: no
control or invisible format characters, bounded length): a line break in an accession number
must not split an e-mail header or an HL7 segment. Each rendering then escapes what its markup
would read: Slack mrkdwn (``&``, ``<``, ``>``: ``<!channel>`` stays text, not a mention), Teams
Adaptive Card Markdown (``[link](url)``, emphasis), HL7 separators (hexnode/notify/hl7v2.py).
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import unicodedata
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from hexnode.pipeline.contracts import NOT_FOR_CLINICAL_USE

SCHEMA = "hexnode.notification/1"
PHI_LABELS = {"patient_name": "Patient name", "patient_id": "Patient ID", "birth_date": "Birth date"}
# The longest text a message carries from one field (a DICOM SH is 16 characters, a reason a line).
MAX_TEXT = 500
_LINE_BREAKS = frozenset("\r\n\t\v\f\x1c\x1d\x1e\x85\u2028\u2029")


def clean(value: object, limit: int = MAX_TEXT) -> str:
    """`value` as one line of visible text: line breaks and tabs become spaces; other control
    characters, invisible format characters (bidirectional overrides, zero-width) and lone
    surrogates are dropped; runs of spaces collapse; at most `limit` characters."""
    out = []
    for ch in str(value):
        if ch in _LINE_BREAKS:
            out.append(" ")
        elif unicodedata.category(ch) not in ("Cc", "Cf", "Cs", "Zl", "Zp"):
            out.append(ch)
    text = " ".join("".join(out).split())
    return text if len(text) <= limit else text[:limit - 1] + "…"


@dataclass(frozen=True)
class Finding:
    """The finding a notification reports; every field is safe to store and log (no PHI)."""

    headline: str  # e.g. "High risk of hematoma expansion"
    accession_number: str = ""
    study_uid: str = ""  # for the viewer link (not a patient identifier)
    series: str = ""  # the series' UID hash, as the logs and `hexnode status` name it
    calling_ae: str = ""
    volume_ml: float | None = None
    probability: float | None = None
    risk: str | None = None  # High | Low
    threshold: float | None = None
    model: str = ""  # name and version
    reason: str | None = None  # why not analysed, why a delivery failed
    # True for an alarm (High risk, expansion observed); False for an all-clear, a not-analysed
    # notice or an IT warning. A correction of a delivered alarm by a later non-alarm says "no longer".
    positive: bool = False
    facts: dict[str, str] = field(default_factory=dict)  # more, e.g. the follow-up's growth in ml
    not_for_clinical_use: str = NOT_FOR_CLINICAL_USE

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def cleaned(self) -> Finding:
        """Every text field through `clean` (numbers as they are)."""
        texts: dict[str, Any] = {f.name: clean(getattr(self, f.name)) for f in dataclasses.fields(self)
                                 if isinstance(getattr(self, f.name), str)}
        return dataclasses.replace(self, **texts, facts={clean(k, 100): clean(v) for k, v in self.facts.items()})

    @classmethod
    def from_json(cls, raw: dict[str, Any]) -> Finding:
        known = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in raw.items() if k in known})


def viewer_link(viewer_url: str, study_uid: str) -> str:
    """The site's OHIF opened on the study (the URL hexnode.viewer builds for the demo's viewer)."""
    if not viewer_url or not study_uid:
        return ""
    from hexnode.viewer import study_url

    return study_url(viewer_url, study_uid)


def message_id(key: str) -> str:
    """A stable 20-character id of a notification (its key's hash): the same on every retry, so a
    receiver can drop a duplicate (HL7 MSH-10, the e-mail Message-ID, the webhook Idempotency-Key)."""
    return "HXN" + hashlib.sha256(key.encode()).hexdigest()[:17].upper()


@dataclass(frozen=True)
class Message:
    id: str
    trigger: str
    correction: bool
    finding: Finding
    created_at: datetime
    viewer_link: str = ""
    patient: dict[str, str] = field(default_factory=dict)  # only the fields a target turned on

    def __post_init__(self) -> None:
        # whatever built it (the deliverer, a test), a message never holds uncleaned outside text
        object.__setattr__(self, "finding", self.finding.cleaned())
        object.__setattr__(self, "patient", {k: clean(v, 200) for k, v in self.patient.items()})

    @property
    def title(self) -> str:
        f = self.finding
        head = f.headline
        if self.correction:
            head = f"CORRECTION: {head}"
        return head + (f" (accession {f.accession_number})" if f.accession_number else "")

    def facts(self) -> list[tuple[str, str]]:
        f = self.finding
        out: list[tuple[str, str]] = []
        if f.accession_number:
            out.append(("Accession number", f.accession_number))
        for key, label in PHI_LABELS.items():
            if key in self.patient:
                out.append((label, self.patient[key]))
        if f.risk is not None:
            out.append(("Risk of expansion", f.risk))
        if f.volume_ml is not None:
            out.append(("Hematoma volume", f"{f.volume_ml:.1f} ml"))
        if f.probability is not None:
            out.append(("Expansion probability", f"{100 * f.probability:.0f} %"))
        if f.threshold is not None:
            out.append(("Threshold (High at or above)", f"{100 * f.threshold:.0f} %"))
        if f.reason:
            out.append(("Reason", f.reason))
        out += list(f.facts.items())
        if f.model:
            out.append(("Model", f.model))
        if f.series:
            out.append(("Series", f.series))
        if f.calling_ae:
            out.append(("Sent by", f.calling_ae))
        return out

    def correction_note(self) -> str:
        if not self.correction:
            return ""
        return ("This corrects hexnode's earlier notification for this study: the result was revised "
                "(more images arrived, or a later series replaced the analysed one).")

    def text(self) -> str:
        """Plain text (the e-mail body)."""
        lines = [self.title, ""]
        if self.correction:
            lines += [self.correction_note(), ""]
        width = max((len(k) for k, _ in self.facts()), default=0)
        lines += [f"{k + ':':<{width + 1}} {v}" for k, v in self.facts()]
        if self.viewer_link:
            lines += ["", f"Open in the viewer: {self.viewer_link}"]
        lines += ["", self.finding.not_for_clinical_use, f"hexnode notification {self.id}"]
        return "\n".join(lines) + "\n"


def plain_json(msg: Message) -> dict[str, Any]:
    """The plain schema, for anything that is not Teams or Slack (an interface engine, a script)."""
    doc: dict[str, Any] = {
        "schema": SCHEMA,
        "id": msg.id,
        "trigger": msg.trigger,
        "correction": msg.correction,
        "title": msg.title,
        "created_at": msg.created_at.isoformat(timespec="seconds") + "Z",
        "finding": msg.finding.to_json(),
        "viewer_url": msg.viewer_link or None,
    }
    if msg.patient:
        doc["patient"] = dict(msg.patient)
    return doc


_MARKDOWN = re.compile(r"([\\`*_~\[\]<>])")
_LIST_MARKER = re.compile(r"^(\d+)\.(?=\s|$)|^([-+#])(?=\s|$)")


def teams_text(text: str) -> str:
    """`text` as literal text in Adaptive Card Markdown (TextBlock, Fact title and value): the
    characters that make emphasis, links, code or a mention tag are backslash-escaped, and so is
    a list or heading marker at the start."""
    escaped = _MARKDOWN.sub(r"\\\1", text)
    return _LIST_MARKER.sub(lambda m: f"{m.group(1)}\\." if m.group(1) else f"\\{m.group(2)}", escaped)


def slack_text(text: str) -> str:
    """`text` as literal text in Slack mrkdwn: &, < and > as entities (Slack's rule), so that
    `<!channel>`, `<@U123>` or `<https://x|click>` stay text."""
    return text.replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")


def teams_card(msg: Message) -> dict[str, Any]:
    """An Adaptive Card message, as a Teams "Workflows" incoming webhook (Post to a channel when a
    webhook request is received) accepts it."""
    alarm = msg.finding.positive  # High risk (also a correction that is still High): red
    body: list[dict[str, Any]] = [
        {"type": "TextBlock", "text": teams_text(msg.title), "weight": "Bolder", "size": "Medium", "wrap": True,
         "color": "Attention" if alarm else ("Warning" if msg.correction else "Default")},
    ]
    if msg.correction:
        body.append({"type": "TextBlock", "text": teams_text(msg.correction_note()), "wrap": True})
    body.append({"type": "FactSet", "facts": [{"title": teams_text(k), "value": teams_text(v)}
                                              for k, v in msg.facts()]})
    body.append({"type": "TextBlock", "text": teams_text(msg.finding.not_for_clinical_use), "isSubtle": True,
                 "wrap": True, "size": "Small"})
    card: dict[str, Any] = {
        "$schema": "http://adaptivecards.io/schemas/adaptive-card.json",
        "type": "AdaptiveCard",
        "version": "1.4",
        "body": body,
    }
    if msg.viewer_link:
        card["actions"] = [{"type": "Action.OpenUrl", "title": "Open in viewer", "url": msg.viewer_link}]
    return {
        "type": "message",
        "summary": msg.title,
        "attachments": [{"contentType": "application/vnd.microsoft.card.adaptive", "contentUrl": None,
                         "content": card}],
    }


def slack_blocks(msg: Message) -> dict[str, Any]:
    """A Slack incoming-webhook message: `text` (the notification line) and Block Kit blocks."""
    facts = msg.facts()
    blocks: list[dict[str, Any]] = [
        {"type": "header", "text": {"type": "plain_text", "text": msg.title[:150]}},
    ]
    if msg.correction:
        blocks.append({"type": "section", "text": _mrkdwn(msg.correction_note())})
    # a section holds at most 10 fields
    for i in range(0, len(facts), 10):
        blocks.append({"type": "section", "fields": [_mrkdwn(f"*{slack_text(k)}*\n{slack_text(v)}", escaped=True)
                                                     for k, v in facts[i:i + 10]]})
    if msg.viewer_link:
        blocks.append({"type": "actions", "elements": [
            {"type": "button", "text": {"type": "plain_text", "text": "Open in viewer"}, "url": msg.viewer_link}]})
    blocks.append({"type": "context", "elements": [_mrkdwn(msg.finding.not_for_clinical_use)]})
    # `text` (the notification line) is read as mrkdwn too; the header block is plain_text
    return {"text": slack_text(msg.title), "blocks": blocks}


def _mrkdwn(text: str, *, escaped: bool = False) -> dict[str, Any]:
    """A mrkdwn text object; verbatim: no automatic links, channel names or mentions."""
    return {"type": "mrkdwn", "text": text if escaped else slack_text(text), "verbatim": True}
