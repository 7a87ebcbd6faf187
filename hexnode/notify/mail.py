"""E-mail over SMTP (stdlib smtplib): STARTTLS (587) or implicit TLS (465) with the server's
certificate verified, then AUTH when a username is set; plain SMTP only for a relay without a
password. The Message-ID is the notification's stable id, so a resend is recognisable."""

from __future__ import annotations

import smtplib
import ssl
from datetime import UTC
from email.message import EmailMessage
from email.utils import format_datetime

from hexnode.config import NotificationTarget
from hexnode.notify.message import Message, clean
from hexnode.notify.webhook import Sent


def build_email(target: NotificationTarget, msg: Message) -> EmailMessage:
    m = EmailMessage()
    m["Subject"] = f"[hexnode] {msg.title}"
    m["From"] = target.mail_from
    m["To"] = ", ".join(target.mail_to)
    m["Date"] = format_datetime(msg.created_at.replace(tzinfo=UTC))
    domain = target.mail_from.rpartition("@")[2] or "hexnode"
    m["Message-ID"] = f"<{msg.id}@{domain}>"
    m["X-Hexnode-Trigger"] = msg.trigger
    if msg.correction:
        m["X-Hexnode-Correction"] = "yes"
    if msg.finding.positive and not msg.correction:
        m["Importance"] = "high"
        m["X-Priority"] = "1"
    m.set_content(msg.text())
    return m


def send_email(target: NotificationTarget, msg: Message) -> Sent:
    mail = build_email(target, msg)
    context = ssl.create_default_context(cafile=target.tls_ca_file or None)
    try:
        smtp: smtplib.SMTP
        if target.security == "tls":
            smtp = smtplib.SMTP_SSL(target.smtp_host, target.smtp_port, timeout=target.timeout_seconds, context=context)
        else:
            smtp = smtplib.SMTP(target.smtp_host, target.smtp_port, timeout=target.timeout_seconds)
        with smtp:
            smtp.ehlo()
            if target.security == "starttls":
                smtp.starttls(context=context)  # raises when the server does not offer it: no silent clear text
                smtp.ehlo()
            if target.username:
                smtp.login(target.username, target.password)
            refused = smtp.send_message(mail)
    except (smtplib.SMTPException, OSError) as exc:
        return Sent(False, clean(f"SMTP {target.smtp_host}:{target.smtp_port}: {type(exc).__name__}: {exc}"))
    if refused:
        return Sent(True, f"accepted for {len(target.mail_to) - len(refused)} of {len(target.mail_to)} recipients; "
                          f"refused: {', '.join(sorted(refused))}")
    return Sent(True, f"accepted for {len(target.mail_to)} recipients")
