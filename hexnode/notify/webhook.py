"""Webhook: an HTTP(S) POST of JSON — a Teams Workflows Adaptive Card, Slack Block Kit, or the plain
schema (hexnode/notify/message.py) for anything else. 2xx is delivered; anything else, a timeout
or a refused connection is a failed attempt. The stable message id goes in ``Idempotency-Key``
so a receiver can drop a resend."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any

from hexnode.config import NotificationTarget
from hexnode.notify.message import Message, plain_json, slack_blocks, teams_card


@dataclass(frozen=True)
class Sent:
    ok: bool
    detail: str


def payload(target: NotificationTarget, msg: Message) -> dict[str, Any]:
    if target.format == "teams":
        return teams_card(msg)
    if target.format == "slack":
        return slack_blocks(msg)
    return plain_json(msg)


def send_webhook(target: NotificationTarget, msg: Message) -> Sent:
    body = json.dumps(payload(target, msg), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": msg.id,
               "User-Agent": "hexnode-notify"}
    if target.bearer_token:
        headers["Authorization"] = f"Bearer {target.bearer_token}"
    req = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    context = ssl.create_default_context(cafile=target.tls_ca_file or None) if target.url.startswith("https") else None
    try:
        with urllib.request.urlopen(req, timeout=target.timeout_seconds, context=context) as resp:
            resp.read(65536)
            return Sent(True, f"HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        # The body may explain (Slack: "invalid_blocks"); a short part of it goes into the error.
        text = exc.read(300).decode(errors="replace").strip()
        return Sent(False, f"HTTP {exc.code} {exc.reason}" + (f": {text}" if text else ""))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Sent(False, f"{_where(target.url)}: {reason}")


def _where(url: str) -> str:
    # The URL of a Teams or Slack webhook is its secret: name the host only.
    from urllib.parse import urlsplit

    return urlsplit(url).netloc or "webhook"
