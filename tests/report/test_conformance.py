"""docs/conformance.md cannot drift: its generated tables equal what the code generates now, a running
`hexnode serve` negotiates exactly the contexts it lists (pynetdicom as SCU), and the sender proposes
exactly the contexts it lists (a pynetdicom SCP records them).

Association negotiation only, no data: all listed SOP class x transfer syntax pairs go in a handful
of associations of up to 128 single-syntax contexts each.
"""

from __future__ import annotations

import os
import re
import subprocess
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from plumbing_helpers import REPO
from pynetdicom import AE, build_context, evt
from pynetdicom.sop_class import (  # type: ignore[attr-defined]
    CTImageStorage,
    ModalityPerformedProcedureStep,
    ModalityWorklistInformationFind,
    StorageCommitmentPushModel,
    StudyRootQueryRetrieveInformationModelFind,
    Verification,
)
from report_helpers import dciodvfy

from hexnode.admin import conformance
from hexnode.config import Destination
from hexnode.devtools.net import free_port, wait_port
from hexnode.pipeline.run import encode
from hexnode.send.scu import store_files

DOC = REPO / "docs" / "conformance.md"
CALLING = "CONFSCU"
MAX_CONTEXTS = 128  # odd presentation context IDs 1..255
EXPLICIT_LE = "1.2.840.10008.1.2.1"
IMPLICIT_LE = "1.2.840.10008.1.2"


def _rows(block: str) -> list[list[str]]:
    lines = [ln for ln in block.strip().splitlines() if ln.startswith("|")][2:]  # no header, no rule
    return [[c.strip() for c in re.split(r"(?<!\\)\|", ln.strip()[1:-1])] for ln in lines]


def _uids(cell: str) -> list[str]:
    return re.findall(r"`([0-9]+(?:\.[0-9]+)+)`", cell)


class Documented:
    """What docs/conformance.md says, parsed from its tables (not from the generator)."""

    def __init__(self, text: str) -> None:
        blocks = conformance.document_blocks(text)
        self.syntaxes = [_uids(r[2])[0] for r in _rows(blocks["scp-transfer-syntaxes"])]
        self.contexts: dict[str, list[str]] = {}
        for r in _rows(blocks["scp-sop-classes"]):
            self.contexts[_uids(r[1])[0]] = self.syntaxes if "Table 4.2-2" in r[2] else _uids(r[2])
        self.refused_syntaxes = [_uids(r[1])[0] for r in _rows(blocks["scp-transfer-syntaxes-refused"])]
        self.refused_storage = [_uids(r[1])[0] for r in _rows(blocks["scp-storage-not-accepted"])]
        assoc = {r[0]: r[1] for r in _rows(blocks["scp-association"])}
        self.max_pdu = int(next(v for k, v in assoc.items() if k.startswith("Maximum PDU")))
        self.implementation_uid = _uids(assoc["Implementation Class UID"])[0]
        self.scu_contexts = sorted((_uids(r[2])[0], _uids(r[3])[0]) for r in _rows(blocks["scu-contexts"]))


@pytest.fixture(scope="module")
def documented() -> Documented:
    doc = Documented(DOC.read_text())
    # A parse that found nothing would make every check below pass vacuously.
    assert len(doc.contexts) > 100 and len(doc.syntaxes) >= 4 and doc.refused_syntaxes and doc.scu_contexts
    return doc


@pytest.fixture(scope="module")
def serve(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    d = tmp_path_factory.mktemp("conformance")
    port = free_port()
    cfg = d / "hexnode.toml"
    cfg.write_text(f'data_dir = "{d / "var"}"\n[dicom]\nport = {port}\nmin_free_disk_mb = 1\n'
                   f'allowed_calling_aes = ["{CALLING}"]\n')
    with open(d / "serve.log", "wb") as log:
        proc = subprocess.Popen([str(REPO / ".venv" / "bin" / "hexnode"), "serve", "--config", str(cfg)],
                                stdout=log, stderr=subprocess.STDOUT, env={**os.environ, "PYTHONUNBUFFERED": "1"})
        try:
            wait_port(port, 60, proc)  # type: ignore[arg-type]
            yield port
        finally:
            proc.terminate()
            proc.wait(30)


@dataclass
class Negotiated:
    established: bool
    results: dict[int, tuple[int, str | None]]  # index in the proposal: (result, accepted syntax)
    max_pdu: int | None = None
    implementation_uid: str | None = None
    rejection: tuple[int, int, int] | None = None  # A-ASSOCIATE-RJ result, source, reason


def negotiate(port: int, pairs: list[tuple[str, list[str]]], *, calling: str = CALLING,
              called: str = "HEXNODE") -> Negotiated:
    """Propose `pairs` (abstract syntax, transfer syntaxes) as contexts 1, 3, 5, ... and release."""
    assert len(pairs) <= MAX_CONTEXTS
    contexts = []
    for i, (abstract, syntaxes) in enumerate(pairs):
        cx = build_context(abstract, syntaxes)
        cx.context_id = 2 * i + 1
        contexts.append(cx)
    assoc = AE(ae_title=calling).associate("127.0.0.1", port, contexts=contexts, ae_title=called)
    out = Negotiated(assoc.is_established, {})
    if assoc.is_rejected:
        rj: Any = assoc.acceptor.primitive
        out.rejection = (int(rj.result), int(rj.result_source), int(rj.diagnostic))
    if assoc.is_established:
        for cx in assoc.accepted_contexts:
            out.results[(int(cx.context_id or 0) - 1) // 2] = (0, str(cx.transfer_syntax[0]))
        for cx in assoc.rejected_contexts:
            out.results[(int(cx.context_id or 0) - 1) // 2] = (int(cx.result or 0), None)
        out.max_pdu = assoc.acceptor.maximum_length
        out.implementation_uid = str(assoc.acceptor.implementation_class_uid)
        assoc.release()
    return out


def test_generated_tables_are_current() -> None:
    assert conformance.DOCUMENT == DOC  # what `hexnode conformance --write` rewrites by default
    text = DOC.read_text()
    blocks = conformance.generate()
    assert set(conformance.document_blocks(text)) == set(blocks)
    stale = conformance.stale_blocks(text, blocks)
    assert not stale, f"docs/conformance.md is stale in {stale}: run `hexnode conformance --write` and review"


def test_serve_accepts_exactly_each_documented_context(serve: int, documented: Documented) -> None:
    pairs = [(sop, [ts]) for sop, syntaxes in documented.contexts.items() for ts in syntaxes]
    for start in range(0, len(pairs), MAX_CONTEXTS):
        batch = pairs[start:start + MAX_CONTEXTS]
        n = negotiate(serve, batch)
        assert n.established
        wrong = [(batch[i], got) for i, got in n.results.items() if got != (0, batch[i][1][0])]
        assert not wrong, f"documented as accepted, but: {wrong[:5]}"
        assert len(n.results) == len(batch)
        assert (n.max_pdu, n.implementation_uid) == (documented.max_pdu, documented.implementation_uid)


def test_serve_refuses_what_is_not_documented(serve: int, documented: Documented) -> None:
    refused_sops = [*documented.refused_storage, StudyRootQueryRetrieveInformationModelFind,
                    ModalityWorklistInformationFind, StorageCommitmentPushModel, ModalityPerformedProcedureStep,
                    "1.2.826.0.1.3680043.9.9999.1"]  # a private SOP class
    assert not set(refused_sops) & set(documented.contexts)
    refused_ts = [*documented.refused_syntaxes, "1.2.826.0.1.3680043.9.9999.2"]  # a private syntax
    pairs: list[tuple[str, list[str]]] = [(Verification, [IMPLICIT_LE])]  # keeps the association up
    pairs += [(sop, [EXPLICIT_LE]) for sop in refused_sops]
    pairs += [(CTImageStorage, [ts]) for ts in refused_ts]
    expected = [0] + [3] * len(refused_sops) + [4] * len(refused_ts)
    for start in range(0, len(pairs), MAX_CONTEXTS - 1):
        batch = pairs[start:start + MAX_CONTEXTS - 1]
        want = expected[start:start + MAX_CONTEXTS - 1]
        if start:
            batch, want = [pairs[0], *batch], [0, *want]
        n = negotiate(serve, batch)
        assert n.established
        got = [n.results[i][0] for i in range(len(batch))]
        wrong = [(batch[i], g, w) for i, (g, w) in enumerate(zip(got, want, strict=True)) if g != w]
        assert not wrong, f"(context, result, documented result): {wrong[:5]}"


def test_serve_prefers_the_documented_order(serve: int, documented: Documented) -> None:
    verification = documented.contexts[Verification]
    n = negotiate(serve, [(CTImageStorage, documented.syntaxes[::-1]), (Verification, verification[::-1])])
    assert n.results == {0: (0, documented.syntaxes[0]), 1: (0, verification[0])}


def test_serve_rejects_unknown_calling_and_called_ae(serve: int) -> None:
    for calling, called, reason in (("STRANGER", "HEXNODE", 3), (CALLING, "NOTHEXNODE", 7)):
        n = negotiate(serve, [(Verification, [IMPLICIT_LE])], calling=calling, called=called)
        assert n.rejection == (1, 1, reason)


def test_sender_proposes_exactly_the_documented_contexts(tmp_path: Path, documented: Documented) -> None:
    files: dict[str, Path] = {}
    for b in conformance.built_objects():
        path = tmp_path / f"{b.kind}-{len(files)}.dcm"
        path.write_bytes(encode(b.ds))
        errors, _ = dciodvfy(path)
        assert not errors, (b.label, b.scenario, errors)
        files[f"{b.ds.SOPInstanceUID}.{len(files)}"] = path  # same UID in several outcomes: keep all
    proposed: list[list[tuple[str, list[str]]]] = []

    def on_requested(event: evt.Event) -> None:
        rq = event.assoc.requestor.primitive
        assert rq is not None
        proposed.append([(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax])
                         for cx in rq.presentation_context_definition_list])

    scp = AE(ae_title="PACS")
    for sop, ts in documented.scu_contexts:
        scp.add_supported_context(sop, [ts])
    port = free_port()
    server = scp.start_server(("127.0.0.1", port), block=False, evt_handlers=[
        (evt.EVT_REQUESTED, on_requested), (evt.EVT_C_STORE, lambda _e: 0x0000)])
    assert server is not None
    try:
        outcomes = store_files(Destination(ae_title="PACS", port=port), files, "HEXNODE")
    finally:
        server.shutdown()
    assert outcomes and all(o.ok for o in outcomes.values()), outcomes
    assert len(proposed) == 1
    assert all(len(syntaxes) == 1 for _, syntaxes in proposed[0])  # one syntax per context
    assert sorted((sop, syntaxes[0]) for sop, syntaxes in proposed[0]) == documented.scu_contexts
