"""Webhook: an HTTP(S) POST of JSON — a Teams Workflows Adaptive Card, Slack Block Kit, or the plain
schema (hexnode/notify/message.py) for anything else. 2xx is delivered; anything else, a timeout
or a refused connection is a failed attempt. The stable message id goes in ``Idempotency-Key``
so a receiver can drop a resend.

Redirects are never followed: urllib would turn the POST into a GET without the alert (and a 200
from the new place would read as delivered) and carry ``Authorization`` to whatever host the
Location names. A 3xx is a failed attempt whose reason names where it pointed."""

from __future__ import annotations

import json
import ssl
import urllib.error
import urllib.request
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from hexnode.config import NotificationTarget
from hexnode.notify.message import Message, clean, plain_json, slack_blocks, teams_card


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


class _NoRedirect(urllib.request.HTTPRedirectHandler):
    """Declines every redirect: urllib then raises the 3xx as an HTTPError (handled below)."""

    def redirect_request(self, req: urllib.request.Request, fp: Any, code: int, msg: str, headers: Any,
                         newurl: str) -> None:
        return None


def redirect_refused(status: int, location: str | None) -> str:
    """Why a 3xx answer is a failure, naming where it pointed: scheme, host and port only (a
    webhook URL's path and query are its secret, and so may the new one's be)."""
    where = urlsplit(location or "")
    target = f"{where.scheme}://{where.netloc}/…" if where.scheme and where.netloc else (location or "nowhere")
    return (f"HTTP {status}: redirect to {target} not followed (it would drop the POST body or send the "
            "credentials elsewhere); configure the final URL")


def send_webhook(target: NotificationTarget, msg: Message) -> Sent:
    body = json.dumps(payload(target, msg), ensure_ascii=False).encode()
    headers = {"Content-Type": "application/json; charset=utf-8", "Idempotency-Key": msg.id,
               "User-Agent": "hexnode-notify"}
    if target.bearer_token:
        headers["Authorization"] = f"Bearer {target.bearer_token}"
    req = urllib.request.Request(target.url, data=body, headers=headers, method="POST")
    handlers: list[urllib.request.BaseHandler] = [_NoRedirect()]
    if target.url.startswith("https"):
        handlers.append(urllib.request.HTTPSHandler(context=ssl.create_default_context(
            cafile=target.tls_ca_file or None)))
    opener = urllib.request.build_opener(*handlers)
    try:
        with opener.open(req, timeout=target.timeout_seconds) as resp:
            resp.read(65536)
            return Sent(True, f"HTTP {resp.status}")
    except urllib.error.HTTPError as exc:
        if 300 <= exc.code < 400:
            return Sent(False, redirect_refused(exc.code, exc.headers.get("Location")))
        # The body may explain (Slack: "invalid_blocks"); a short part of it goes into the error.
        text = clean(exc.read(300).decode(errors="replace"))
        return Sent(False, f"HTTP {exc.code} {exc.reason}" + (f": {text}" if text else ""))
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        return Sent(False, f"{_where(target.url)}: {reason}")


def _where(url: str) -> str:
    # The URL of a Teams or Slack webhook is its secret: name the host only.
    return urlsplit(url).netloc or "webhook"
