"""`hexnode echo [DEST]`: can the node reach a destination, the way the sender will?

A `kind = "dicom"` destination gets a C-ECHO from our AE title (`[dicom] ae_title`) to its AE
title, host and port, over TLS when `tls = true` with the same certificates, CA and host-name rule
as a delivery (hexnode.send.scu's SSL context). A `kind = "stow"` destination gets a QIDO-RS
`GET {url}/studies?limit=1` with its bearer token and TLS settings (hexnode.send.stow's client):
the same server, authentication and certificate check as a STOW-RS POST, without storing
anything. One line per destination, e.g.

    echo pacs (dicom ORTHANC@10.0.0.5:104, TLS): OK: C-ECHO status 0x0000 in 14 ms
    echo pacs (dicom ORTHANC@10.0.0.5:104): FAILED: association rejected: Reason: Called AE title not recognised

Exit status 0 when every destination answered, 1 when one did not, 2 for an unknown name. The
libraries' own error lines are folded into that one line (hexnode.runtime.library_errors).
"""

from __future__ import annotations

import argparse
import re
import sys
import time
from dataclasses import dataclass

from hexnode.config import Config, Destination, load_config
from hexnode.runtime import library_errors, one_line

VERIFICATION = "1.2.840.10008.1.1"


@dataclass(frozen=True)
class EchoResult:
    ok: bool
    detail: str
    seconds: float


def describe(dest: Destination) -> str:
    if dest.kind == "stow":
        return f"stow {dest.url}"
    return f"dicom {dest.ae_title}@{dest.host}:{dest.port}" + (", TLS" if dest.tls else "")


def echo_dicom(dest: Destination, calling_ae: str) -> EchoResult:
    from pynetdicom import AE, evt

    from hexnode.send.scu import CONNECT_TIMEOUT_MAX_SECONDS, client_ssl
    from hexnode.tls import describe, record_handshake_failures

    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_seconds
    ae.connection_timeout = min(CONNECT_TIMEOUT_MAX_SECONDS, dest.timeout_seconds)
    ae.add_requested_context(VERIFICATION)
    t = time.perf_counter()
    try:
        tls = client_ssl(dest) if dest.tls else None
    except (OSError, ValueError) as exc:  # a certificate or key file missing or unreadable
        return EchoResult(False, f"TLS set-up: {type(exc).__name__}: {exc}", 0.0)
    server_name = dest.tls_server_name or dest.host
    handshake_failures = record_handshake_failures(tls) if tls is not None else []
    opened: list[bool] = []
    with library_errors("pynetdicom") as lib:
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                             tls_args=(tls, server_name) if tls is not None else None,
                             evt_handlers=[(evt.EVT_CONN_OPEN, lambda _e: opened.append(True))])
        try:
            if not assoc.is_established:
                why = lib.reason()
                if handshake_failures:
                    return EchoResult(False, describe(handshake_failures[-1], server_name, "no association"),
                                      time.perf_counter() - t)
                if assoc.is_rejected:
                    what = "association rejected"
                elif not opened:
                    what = "no connection" + (" (TLS handshake failed?)" if tls is not None and "SSL" in why else "")
                else:
                    what = "association aborted"
                return EchoResult(False, f"{what}: {why}" if why else what, time.perf_counter() - t)
            status = assoc.send_c_echo()
            code = getattr(status, "Status", None)
            seconds = time.perf_counter() - t
            if code is None:
                return EchoResult(False, f"no C-ECHO response within {dest.timeout_seconds:g} s", seconds)
            if code != 0x0000:
                return EchoResult(False, f"C-ECHO status 0x{code:04X}", seconds)
            return EchoResult(True, "C-ECHO status 0x0000", seconds)
        finally:
            if assoc.is_established:
                assoc.release()


def echo_stow(dest: Destination) -> EchoResult:
    import requests

    from hexnode.send.stow import client_for

    statuses: list[int] = []
    t = time.perf_counter()
    try:
        client = client_for(dest, statuses)
        client.search_for_studies(limit=1)
    except requests.HTTPError as exc:
        code = exc.response.status_code if exc.response is not None else (statuses[-1] if statuses else 0)
        hint = {401: " (bearer_token missing or refused)", 403: " (bearer_token not allowed to query)",
                404: " (url is not the DICOMweb root?)"}.get(code, "")
        reason = exc.response.reason if exc.response is not None else ""
        return EchoResult(False, f"QIDO-RS GET studies: HTTP {code} {reason}{hint}", time.perf_counter() - t)
    except requests.RequestException as exc:  # urllib3's text nests the cause: say the cause
        text = str(exc)
        cause = re.search(r"\[(?:Errno -?\d+|SSL[^\]]*)\][^'\")]*", text)
        detail = cause.group(0).strip() if cause else (text.splitlines()[0][:300] if text else "")
        return EchoResult(False, f"no connection: {type(exc).__name__}: {detail}", time.perf_counter() - t)
    except (OSError, ValueError) as exc:  # a certificate file missing, a malformed answer
        return EchoResult(False, f"{type(exc).__name__}: {exc}", time.perf_counter() - t)
    code = statuses[-1] if statuses else 0
    return EchoResult(True, f"QIDO-RS GET studies?limit=1: HTTP {code}", time.perf_counter() - t)


def echo(dest: Destination, cfg: Config) -> EchoResult:
    return echo_stow(dest) if dest.kind == "stow" else echo_dicom(dest, cfg.dicom.ae_title)


def line(dest: Destination, result: EchoResult) -> str:
    outcome = f"OK: {result.detail}" if result.ok else f"FAILED: {result.detail}"
    return one_line(f"echo {dest.name} ({describe(dest)}): {outcome} in {result.seconds * 1000:.0f} ms")


def run_echo(args: argparse.Namespace) -> int:
    cfg = load_config(getattr(args, "config", None))
    name = getattr(args, "destination", None)
    chosen = [d for d in cfg.destinations if name is None or d.name == name]
    if not chosen:
        known = ", ".join(d.name for d in cfg.destinations) or "none"
        print(f"hexnode echo: no destination {name!r} in the settings (known: {known})", file=sys.stderr)
        return 2
    failed = 0
    for dest in chosen:
        result = echo(dest, cfg)
        print(line(dest, result))
        failed += not result.ok
    return 1 if failed else 0
