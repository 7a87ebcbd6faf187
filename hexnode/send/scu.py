"""C-STORE of result objects to a DICOM destination, one association per batch.

``store_files(dest, files, calling_ae) -> dict[sop_uid, Outcome]``: every file gets an outcome;
an association that cannot be opened (peer down, rejected) fails the whole batch with that
reason, so the caller backs off. Status 0x0000 and the warning statuses (0x0001, 0xBxxx) count as
delivered: the PACS has the object. Over TLS the peer's certificate must be valid for its name
(hexnode/tls.py); a handshake that fails says why in the outcome.
"""

from __future__ import annotations

import ssl
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from pydicom import dcmread
from pydicom.dataset import Dataset
from pynetdicom import AE, evt

from hexnode.config import Destination
from hexnode.runtime import library_errors
from hexnode.tls import client_context, describe, record_handshake_failures

# TCP connect gives up after this long even when the destination's timeout is longer.
CONNECT_TIMEOUT_MAX_SECONDS = 10.0


@dataclass(frozen=True)
class Outcome:
    ok: bool
    detail: str


def client_ssl(dest: Destination) -> ssl.SSLContext:
    """The destination's TLS context: its CA (or the system CAs), name check on, client certificate."""
    return client_context(dest.tls_ca_file, dest.tls_cert_file, dest.tls_key_file)


def requested_contexts(datasets: Iterable[Dataset]) -> list[tuple[str, str]]:
    """(SOP class, transfer syntax) pairs to propose: each object exactly as it is stored, one
    transfer syntax per context, so nothing is converted on the way out."""
    return sorted({(str(ds.SOPClassUID), str(ds.file_meta.TransferSyntaxUID)) for ds in datasets})


def build_ae(dest: Destination, calling_ae: str, contexts: Iterable[tuple[str, str]]) -> AE:
    """The sender's AE for one association (docs/conformance.md is generated from it)."""
    ae = AE(ae_title=calling_ae)
    ae.acse_timeout = ae.dimse_timeout = ae.network_timeout = dest.timeout_seconds
    ae.connection_timeout = min(CONNECT_TIMEOUT_MAX_SECONDS, dest.timeout_seconds)
    for sop_class, ts in contexts:
        ae.add_requested_context(sop_class, [ts])
    return ae


def store_files(dest: Destination, files: dict[str, Path], calling_ae: str) -> dict[str, Outcome]:
    """`files`: SOP Instance UID → path. Returns an outcome per SOP Instance UID."""
    datasets: dict[str, Dataset] = {}
    outcomes: dict[str, Outcome] = {}
    for uid, path in files.items():
        try:
            datasets[uid] = dcmread(path)
        except Exception as exc:  # the spool file is gone or damaged: report it, don't crash
            outcomes[uid] = Outcome(False, f"cannot read {path.name}: {type(exc).__name__}")
    if not datasets:
        return outcomes
    ae = build_ae(dest, calling_ae, requested_contexts(datasets.values()))
    server_name = dest.tls_server_name or dest.host
    tls = client_ssl(dest) if dest.tls else None
    handshake_failures = record_handshake_failures(tls) if tls is not None else []
    opened: list[bool] = []
    with library_errors("pynetdicom") as lib:  # its ERROR lines become the reason in our one line
        assoc = ae.associate(dest.host, dest.port, ae_title=dest.ae_title,
                             tls_args=(tls, server_name) if tls is not None else None,
                             evt_handlers=[(evt.EVT_CONN_OPEN, lambda _e: opened.append(True))])
    if not assoc.is_established:
        if handshake_failures:  # the TLS reason already says what pynetdicom's lines would
            why = describe(handshake_failures[-1], server_name)
        else:
            if not opened:
                why = "peer down or unreachable (no TCP connection)"
            elif assoc.is_rejected:
                why = "association rejected"
            else:
                why = "association aborted"
            why += f": {lib.reason()}" if lib.reason() else ""
        for uid in datasets:
            outcomes[uid] = Outcome(False, f"{dest.name} {dest.host}:{dest.port}: {why}")
        return outcomes
    try:
        for uid, ds in datasets.items():
            try:
                status = assoc.send_c_store(ds)
            except Exception as exc:
                outcomes[uid] = Outcome(False, f"C-STORE error: {type(exc).__name__}: {exc}")
                continue
            code = getattr(status, "Status", None)
            if code is None:
                outcomes[uid] = Outcome(False, "no C-STORE response (connection lost or timeout)")
            elif code == 0x0000 or code == 0x0001 or (code & 0xF000) == 0xB000:
                outcomes[uid] = Outcome(True, f"C-STORE status 0x{code:04X}")
            else:
                outcomes[uid] = Outcome(False, f"C-STORE status 0x{code:04X}")
            if not assoc.is_established:
                break
    finally:
        if assoc.is_established:
            assoc.release()
    for uid in datasets:
        outcomes.setdefault(uid, Outcome(False, "association ended before this object was sent"))
    return outcomes
