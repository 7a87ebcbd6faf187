"""DICOMweb STOW-RS: POST result objects to ``{url}/studies`` as multipart/related.

``stow_files(dest, files) -> dict[sop_uid, Outcome]``. The response (DICOM JSON) lists stored
objects in ReferencedSOPSequence (0008,1199) and refused ones in FailedSOPSequence (0008,1198)
with a FailureReason (0008,1197); an object is delivered when it is referenced. An HTTP or
network error fails the whole batch, so the caller backs off.
"""

from __future__ import annotations

import json
import os
import urllib.error
import urllib.request
from pathlib import Path

from hexnode.config import Destination
from hexnode.send.scu import Outcome, _client_ssl


def _multipart(parts: list[bytes]) -> tuple[bytes, str]:
    boundary = "hexnode-" + os.urandom(12).hex()
    body = bytearray()
    for part in parts:
        body += f"--{boundary}\r\nContent-Type: application/dicom\r\n\r\n".encode()
        body += part
        body += b"\r\n"
    body += f"--{boundary}--\r\n".encode()
    return bytes(body), f'multipart/related; type="application/dicom"; boundary={boundary}'


def _uids(seq: object) -> dict[str, str]:
    """SOP Instance UID → failure reason ('' for referenced items) from a DICOM JSON sequence."""
    out: dict[str, str] = {}
    if not isinstance(seq, dict):
        return out
    for item in seq.get("Value", []) or []:
        uid = (item.get("00081155", {}).get("Value") or [""])[0]
        reason = (item.get("00081197", {}).get("Value") or [""])[0]
        if uid:
            out[str(uid)] = str(reason)
    return out


def stow_files(dest: Destination, files: dict[str, Path]) -> dict[str, Outcome]:
    outcomes: dict[str, Outcome] = {}
    parts = []
    sent = []
    for uid, path in files.items():
        try:
            parts.append(path.read_bytes())
            sent.append(uid)
        except OSError as exc:
            outcomes[uid] = Outcome(False, f"cannot read {path.name}: {type(exc).__name__}")
    if not parts:
        return outcomes
    body, ctype = _multipart(parts)
    req = urllib.request.Request(dest.url.rstrip("/") + "/studies", data=body, method="POST")
    req.add_header("Content-Type", ctype)
    req.add_header("Accept", "application/dicom+json")
    if dest.bearer_token:
        req.add_header("Authorization", f"Bearer {dest.bearer_token}")
    try:
        with urllib.request.urlopen(req, timeout=dest.timeout_seconds, context=_client_ssl(dest)) as r:
            status, payload = r.status, r.read()
    except urllib.error.HTTPError as exc:
        status, payload = exc.code, exc.read()
        if status not in (202, 409):
            for uid in sent:
                outcomes[uid] = Outcome(False, f"STOW-RS HTTP {status}")
            return outcomes
    except (urllib.error.URLError, OSError) as exc:
        for uid in sent:
            outcomes[uid] = Outcome(False, f"STOW-RS {dest.url}: {getattr(exc, 'reason', exc)}")
        return outcomes
    try:
        doc = json.loads(payload or b"{}")
    except ValueError:
        doc = {}
    if isinstance(doc, list):
        doc = doc[0] if doc else {}
    referenced = _uids(doc.get("00081199"))
    failed = _uids(doc.get("00081198"))
    for uid in sent:
        if uid in referenced:
            outcomes[uid] = Outcome(True, f"STOW-RS HTTP {status}")
        elif uid in failed:
            outcomes[uid] = Outcome(False, f"STOW-RS refused, FailureReason {failed[uid] or '?'}")
        else:
            outcomes[uid] = Outcome(False, f"STOW-RS HTTP {status}: object not in the response")
    return outcomes
