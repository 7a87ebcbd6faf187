"""`hexnode conformance`: the derivable tables of docs/conformance.md, read from the running code.

Nothing here restates a fact by hand; each table comes from the object the node itself uses:

* SCP presentation contexts and association parameters: the AE that ``hexnode receive`` builds
  (:func:`hexnode.receive.scp.build_ae` with the default ``[dicom]`` settings).
* Objects created, their SR templates and coded concepts: the report builders
  (:mod:`hexnode.report`) run on a small in-memory CT series in every outcome the worker can
  produce (high / low risk, no hemorrhage, not analysed, a corrected revision), encoded the way
  the worker writes them and read back; codes are collected by walking every code item.
* SCU presentation contexts: :func:`hexnode.send.scu.requested_contexts` over those objects, and
  the sender's AE from :func:`hexnode.send.scu.build_ae`.
* Character sets: the same builders fed sources that declare each Specific Character Set value
  pydicom knows.
* Settings: the dataclass defaults of :mod:`hexnode.config`.

The document keeps each table between ``BEGIN GENERATED name`` / ``END GENERATED name`` comments;
``--write`` replaces them, ``--check`` exits 1 when one is stale (tests/report/test_conformance.py does
the same and negotiates every listed context with a running receiver, ``hexnode receive`` under ``hexnode serve``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import inspect
import io
import re
import sys
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

DOCUMENT = Path(__file__).resolve().parents[2] / "docs" / "conformance.md"
BEGIN = "<!-- BEGIN GENERATED {name}: `hexnode conformance --write` rewrites this table -->"
END = "<!-- END GENERATED {name} -->"
_BLOCK = re.compile(r"<!-- BEGIN GENERATED ([a-z0-9-]+):[^\n]*-->\n(.*?)<!-- END GENERATED \1 -->", re.S)

# Source character sets that are multi-valued (code extensions) in practice, PS3.5 annex H-K.
_MULTI_VALUED_CHARSETS: tuple[tuple[str, ...], ...] = (
    ("", "ISO 2022 IR 87"),
    ("ISO 2022 IR 13", "ISO 2022 IR 87"),
    ("", "ISO 2022 IR 149"),
    ("", "ISO 2022 IR 58"),
    ("ISO 2022 IR 6", "ISO 2022 IR 100"),
)
_ROLE = {
    "ConceptNameCodeSequence": "concept name",
    "ConceptCodeSequence": "coded value",
    "MeasurementUnitsCodeSequence": "unit",
}


# --- helpers ----------------------------------------------------------------------------------

def _uid_name(uid: str) -> str:
    from pydicom.uid import UID

    name = UID(uid).name
    if name and name != uid:
        return name
    # Newer than pydicom's dictionary: pynetdicom's keyword, if it has one.
    import pynetdicom.sop_class as sop_class

    keyword = next((k for k, v in vars(sop_class).items() if isinstance(v, str) and v == uid and k[0].isupper()), "")
    return f"{keyword} (pynetdicom keyword)" if keyword else "(private or unknown)"


def _table(header: Sequence[str], rows: Iterable[Sequence[object]]) -> str:
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c).replace("|", "\\|") for c in row) + " |" for row in rows]
    return "\n".join(lines) + "\n"


def _code(uid: str) -> str:
    return f"`{uid}`"


def _toml(value: Any) -> str:
    if isinstance(value, bool):
        return "true" if value else "false"
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, list):
        return "[" + ", ".join(_toml(v) for v in value) + "]"
    return str(value)


# --- the objects hexnode creates ---------------------------------------------------------------

@dataclass(frozen=True)
class Built:
    label: str  # e.g. "result SR", "not-analysed SC"
    kind: str  # SEG | SR | SC (the worker's kind_of)
    scenario: str
    ds: Any  # pydicom Dataset, read back from the bytes the worker would write


def example_sources(n: int = 3, size: int = 16, charset: str | Sequence[str] | None = "ISO_IR 100") -> list[Any]:
    """A tiny axial CT series (headers only: the builders never read source pixels)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import CTImageStorage, ExplicitVRLittleEndian

    out = []
    for i in range(n):
        ds = Dataset()
        ds.file_meta = FileMetaDataset()
        ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
        ds.SOPClassUID = CTImageStorage
        ds.SOPInstanceUID = f"2.25.1{i:03d}"
        ds.StudyInstanceUID, ds.SeriesInstanceUID, ds.FrameOfReferenceUID = "2.25.1", "2.25.2", "2.25.3"
        if charset is not None:
            ds.SpecificCharacterSet = list(charset) if not isinstance(charset, str) else charset
        ds.PatientName, ds.PatientID, ds.PatientBirthDate, ds.PatientSex = "Example^Conformance", "EX1", "", ""
        ds.StudyDate, ds.StudyTime, ds.ReferringPhysicianName, ds.StudyID, ds.AccessionNumber = (
            "20260101", "120000", "", "1", "")
        ds.Modality, ds.SeriesNumber, ds.InstanceNumber = "CT", 2, i + 1
        ds.ImageType = ["ORIGINAL", "PRIMARY", "AXIAL"]
        ds.ImagePositionPatient = [0.0, 0.0, 5.0 * i]
        ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
        ds.PixelSpacing, ds.SliceThickness = [1.0, 1.0], 5.0
        ds.Rows = ds.Columns = size
        ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
        ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 1
        out.append(ds)
    return out


SCENARIOS = ("high risk", "low risk", "no hemorrhage", "not analysed", "corrected revision",
             "corrected revision, not analysed", "study not analysed")


def _build_all(sources: Sequence[Any], scenarios: Sequence[str] = SCENARIOS) -> list[tuple[str, list[Any]]]:
    """(scenario, datasets) for every outcome the worker writes."""
    import numpy as np

    from hexnode.models.signs import SIGN_NAMES, TITLES
    from hexnode.pipeline.contracts import ExpansionSign, ModelInfo, Prediction
    from hexnode.report import build_not_analysed, build_results
    from hexnode.report.study import Listed, build_study_not_analysed

    model = ModelInfo(name="hexnode-he", version="conformance", threshold=0.5, synthetic_trained=True)
    # every sign coded, both values (Present, Absent) used
    signs = tuple(ExpansionSign(name, TITLES[name], name in ("blend", "island"), 3.0, f"{TITLES[name]}: example")
                  for name in SIGN_NAMES)
    n, size = len(sources), int(sources[0].Rows)
    hu = np.full((n, size, size), 40.0, dtype=np.float32)
    mask = np.zeros((n, size, size), dtype=np.uint8)
    mask[:, 4:8, 4:8] = 1
    empty = np.zeros_like(mask)
    builds: dict[str, Callable[[], list[Any]]] = {
        "high risk": lambda: build_results(sources, hu, mask, Prediction(1.2, 0.9, model, signs=signs)),
        "low risk": lambda: build_results(sources, hu, mask, Prediction(1.2, 0.1, model)),
        "no hemorrhage": lambda: build_results(
            sources, hu, empty, Prediction(0.0, 0.1, model, hemorrhage_detected=False)),
        "not analysed": lambda: build_not_analysed(sources, "example reason", model),
        "corrected revision": lambda: build_results(sources, hu, mask, Prediction(1.2, 0.9, model), revision=1),
        "corrected revision, not analysed": lambda: build_not_analysed(
            sources, "example reason", model, revision=1),
        "study not analysed": lambda: build_study_not_analysed(
            sources, [Listed("#1 ('Topogram')", "localizer/scout image"),
                      Listed("#3 ('Head 5mm bone', kernel H70h)", "bone or sharp kernel reconstruction (H70h)")],
            model),
    }
    return [(name, builds[name]()) for name in scenarios]


@functools.cache
def built_objects() -> tuple[Built, ...]:
    from pydicom import dcmread

    from hexnode.pipeline.run import encode, kind_of

    out = []
    for scenario, datasets in _build_all(example_sources()):
        for ds in datasets:
            back = dcmread(io.BytesIO(encode(ds)))
            kind = kind_of(back)
            prefix = ("study not-analysed" if scenario.startswith("study") else
                      "not-analysed" if "not analysed" in scenario else "result")
            out.append(Built(f"{prefix} {kind}", kind, scenario, back))
    return tuple(out)


def _walk_codes(ds: Any, found: dict[tuple[str, str, str], set[tuple[str, str]]], label: str) -> None:
    for elem in ds:
        if elem.VR != "SQ":
            continue
        for item in elem.value:
            value = item.get("CodeValue") or item.get("LongCodeValue") or item.get("URNCodeValue")
            if value and "CodingSchemeDesignator" in item:
                key = (str(item.CodingSchemeDesignator), str(value), str(item.get("CodeMeaning", "")))
                found.setdefault(key, set()).add((label, _ROLE.get(elem.keyword, elem.keyword)))
            _walk_codes(item, found, label)


def _concept(item: Any) -> tuple[str, str] | None:
    seq = item.get("ConceptNameCodeSequence")
    if not seq:
        return None
    return str(seq[0].CodingSchemeDesignator), str(seq[0].CodeValue)


def _templates(ds: Any) -> list[str]:
    """SR templates in `ds`: the root's ContentTemplateSequence, the rest recognised by the
    content items PS3.16 defines them with (a measurement group is TID 1410 when it holds an
    image region SCOORD, TID 1411 when it references a segment or a volume surface, else 1501)."""
    found: list[str] = []

    def add(text: str) -> None:
        if text not in found:
            found.append(text)

    for item in ds.get("ContentTemplateSequence", []):
        add(f"TID {item.TemplateIdentifier} ({item.MappingResource}), root ContentTemplateSequence")

    def walk(items: Sequence[Any]) -> None:
        for item in items:
            concept = _concept(item)
            children = item.get("ContentSequence", [])
            child_concepts = {_concept(c) for c in children}
            child_types = {str(c.get("ValueType", "")) for c in children}
            if concept == ("DCM", "121005"):
                add("TID 1002 Observer Context / TID 1004 Device Observer Identifying Attributes")
            elif concept == ("DCM", "111028"):
                add("TID 1600 Image Library, TID 1601 Image Library Entry Groups")
            elif concept == ("DCM", "125007"):
                # 111030 Image Region / 121214 Referenced Segmentation Frame: planar (TID 1410);
                # 121191 Referenced Segment / 121231 Volume Surface: volumetric (TID 1411).
                if "SCOORD" in child_types or child_concepts & {("DCM", "111030"), ("DCM", "121214")}:
                    add("TID 1410 Planar ROI Measurements and Qualitative Evaluations")
                elif child_concepts & {("DCM", "121191"), ("DCM", "121231")}:
                    add("TID 1411 Volumetric ROI Measurements and Qualitative Evaluations")
                else:
                    add("TID 1501 Measurement and Qualitative Evaluation Group")
            elif concept == ("UMLS", "C0034375"):
                add("TID 1500 row 12 Qualitative Evaluations (TEXT comments, DCM 121106)")
            walk(children)

    walk(ds.get("ContentSequence", []))
    return found


# --- the tables -------------------------------------------------------------------------------

@functools.cache
def _scp_ae() -> Any:
    from hexnode.config import DicomConfig
    from hexnode.receive.scp import build_ae

    return build_ae(DicomConfig())


def scp_contexts() -> list[tuple[str, list[str]]]:
    """(abstract syntax, transfer syntaxes in preference order) of every context the receiver accepts."""
    return [(str(cx.abstract_syntax), [str(t) for t in cx.transfer_syntax]) for cx in _scp_ae().supported_contexts]


def storage_syntaxes() -> list[str]:
    from pydicom.uid import CTImageStorage

    return dict(scp_contexts())[str(CTImageStorage)]


def table_scp_transfer_syntaxes() -> str:
    rows = [(i, _uid_name(ts), _code(ts)) for i, ts in enumerate(storage_syntaxes(), 1)]
    return _table(("Preference", "Transfer Syntax", "UID"), rows)


def refused_transfer_syntaxes() -> list[str]:
    """Every transfer syntax in pydicom's UID dictionary that the receiver does not accept for storage."""
    from pydicom.uid import UID, UID_dictionary

    accepted = set(storage_syntaxes())
    return sorted((uid for uid in UID_dictionary if UID(uid).is_transfer_syntax and uid not in accepted),
                  key=lambda uid: [int(part) for part in uid.split(".")])


def table_scp_transfer_syntaxes_refused() -> str:
    from pydicom.uid import UID

    rows = [(_uid_name(uid), _code(uid), "retired" if UID(uid).is_retired else "")
            for uid in refused_transfer_syntaxes()]
    return _table(("Transfer Syntax", "UID", "Retired"), rows)


def table_scp_sop_classes() -> str:
    common = storage_syntaxes()
    rows = []
    for uid, syntaxes in scp_contexts():
        cell = "every syntax of Table 4.2-2" if syntaxes == common else ", ".join(_code(t) for t in syntaxes)
        rows.append((_uid_name(uid), _code(uid), cell))
    return _table(("SOP Class", "UID", "Transfer Syntaxes"), rows)


def table_scp_storage_not_accepted() -> str:
    from pynetdicom import AllStoragePresentationContexts

    accepted = {uid for uid, _ in scp_contexts()}
    rows = [
        (_uid_name(str(cx.abstract_syntax)), _code(str(cx.abstract_syntax)))
        for cx in AllStoragePresentationContexts
        if cx.abstract_syntax and str(cx.abstract_syntax) not in accepted
    ]
    return _table(("SOP Class", "UID"), rows)


def table_scp_association() -> str:
    import pynetdicom

    from hexnode.config import DicomConfig
    from hexnode.receive.scp import TLS_MINIMUM_VERSION

    ae, cfg = _scp_ae(), DicomConfig()
    rows = [
        ("AE title (`[dicom] ae_title`)", f"`{ae.ae_title}`"),
        ("Port (`[dicom] port`), interface (`bind`)", f"{cfg.port}, {cfg.bind}"),
        ("Called AE title must be ours (`require_called_ae`)", _toml(ae.require_called_aet)),
        ("Calling AE titles allowed (`allowed_calling_aes`)", ", ".join(ae.require_calling_aet) or "any"),
        ("Maximum PDU length received (`max_pdu_size`, 0 = unlimited)", ae.maximum_pdu_size),
        ("Simultaneous associations (`max_associations`)", ae.maximum_associations),
        ("ACSE timeout (s): waiting for association messages", ae.acse_timeout),
        ("DIMSE timeout (s)", ae.dimse_timeout),
        ("Network (idle) timeout (s)", ae.network_timeout),
        ("Implementation Class UID", _code(str(pynetdicom.PYNETDICOM_IMPLEMENTATION_UID))),
        ("Implementation Version Name", f"`{pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION}`"),
        ("TLS minimum version (`[dicom.tls]`)", str(TLS_MINIMUM_VERSION.name).replace("v1_", " 1.")),
    ]
    return _table(("Parameter", "Default"), rows)


def table_scu_contexts() -> str:
    from hexnode.send.scu import requested_contexts

    by_context: dict[tuple[str, str], list[str]] = {}
    for b in built_objects():
        for pair in requested_contexts([b.ds]):
            if b.label not in by_context.setdefault(pair, []):
                by_context[pair].append(b.label)
    rows = [
        (", ".join(labels), _uid_name(sop), _code(sop), f"{_uid_name(ts)} {_code(ts)}")
        for (sop, ts), labels in sorted(by_context.items())
    ]
    return _table(("Objects", "SOP Class", "UID", "Transfer Syntax (the only one proposed)"), rows)


def table_scu_association() -> str:
    import pynetdicom

    from hexnode.config import Destination, DicomConfig
    from hexnode.send.scu import build_ae

    dest = Destination()
    ae = build_ae(dest, DicomConfig().ae_title, [])
    # store_files leaves associate()'s max_pdu at its default: that is what the sender offers.
    max_pdu = inspect.signature(ae.associate).parameters["max_pdu"].default
    rows = [
        ("Calling AE title (`[dicom] ae_title`)", f"`{ae.ae_title}`"),
        ("Called AE title, host, port (`[[destinations]]`)", f"`{dest.ae_title}`, {dest.host}, {dest.port}"),
        ("Maximum PDU length received", max_pdu),
        ("TCP connect timeout (s)", ae.connection_timeout),
        ("ACSE, DIMSE and network timeouts (s) (`timeout_seconds`)",
         f"{ae.acse_timeout}, {ae.dimse_timeout}, {ae.network_timeout}"),
        ("Implementation Class UID", _code(str(pynetdicom.PYNETDICOM_IMPLEMENTATION_UID))),
        ("Implementation Version Name", f"`{pynetdicom.PYNETDICOM_IMPLEMENTATION_VERSION}`"),
    ]
    return _table(("Parameter", "Default"), rows)


def _other(ds: Any) -> str:
    notes = []
    if "SegmentationType" in ds:
        segments = ", ".join(f"#{g.SegmentNumber} '{g.SegmentLabel}' {g.SegmentAlgorithmType}" for g in ds.SegmentSequence)
        refs = ds.get("ReferencedSeriesSequence") or []
        n_refs = len(refs[0].get("ReferencedInstanceSequence", [])) if refs else 0
        notes.append(f"SegmentationType {ds.SegmentationType}, segments {segments}; {ds.NumberOfFrames} frames "
                     f"for {n_refs} source images")
    if "CompletionFlag" in ds:
        notes.append(f"CompletionFlag {ds.CompletionFlag}, VerificationFlag {ds.VerificationFlag}")
    if "PredecessorDocumentsSequence" in ds:
        notes.append("PredecessorDocumentsSequence names the previous revision's SR")
    if "BurnedInAnnotation" in ds:
        notes.append(f"{ds.Rows}x{ds.Columns} {ds.PhotometricInterpretation}, BurnedInAnnotation {ds.BurnedInAnnotation}")
    if "ContributingEquipmentSequence" in ds:
        n = sum(1 for e in ds.ContributingEquipmentSequence
                if any(p.CodeValue == "1630" for p in e.get("PurposeOfReferenceCodeSequence", [])))
        notes.append(f"Contributing Equipment: {n} item(s) with purpose 99IHE 1630")
    return "; ".join(notes)


def table_created_objects() -> str:
    rows = []
    seen: set[tuple[str, str]] = set()
    for b in built_objects():
        ds = b.ds
        if b.scenario not in ("high risk", "not analysed", "corrected revision"):
            continue
        key = (b.label, b.scenario)
        if key in seen:
            continue
        seen.add(key)
        rows.append((
            b.label, b.scenario, f"{_uid_name(str(ds.SOPClassUID))} {_code(str(ds.SOPClassUID))}",
            _uid_name(str(ds.file_meta.TransferSyntaxUID)), ds.Modality, ds.SeriesNumber,
            f"`{ds.SeriesDescription}`", _other(ds),
        ))
    return _table(("Object", "Example outcome", "SOP Class", "Transfer Syntax", "Modality", "Series Number",
                   "Series Description", "Notes"), rows)


def table_sr_templates() -> str:
    per_label: dict[str, list[str]] = {}
    for b in built_objects():
        if b.kind != "SR":
            continue
        have = per_label.setdefault(b.label, [])
        have.extend(t for t in _templates(b.ds) if t not in have)
    rows = [(label, t) for label, templates in per_label.items() for t in templates]
    return _table(("Object", "Template (how it is identified)"), rows)


def table_codes() -> str:
    found: dict[tuple[str, str, str], set[tuple[str, str]]] = {}
    for b in built_objects():
        _walk_codes(b.ds, found, b.label)
    rows = []
    for (scheme, value, meaning), uses in sorted(found.items()):
        objects = sorted({label for label, _ in uses})
        roles = sorted({role for _, role in uses})
        rows.append((scheme, f"`{value}`", meaning, ", ".join(roles), ", ".join(objects)))
    return _table(("Scheme", "Code", "Meaning", "Used as", "In"), rows)


def table_character_sets() -> str:
    from pydicom.charset import python_encoding

    # pydicom's table also holds aliases that are no DICOM term ("ISO 2022 GBK"): leave them out.
    dicom_terms = sorted(t for t in python_encoding if re.fullmatch(r"ISO_IR \d+|ISO 2022 IR \d+|GB18030|GBK", t))
    terms: list[str | tuple[str, ...] | None] = [None, *dicom_terms, *_MULTI_VALUED_CHARSETS]
    rows = []
    for term in terms:
        shown = "(absent)" if term is None else "\\".join(term) if isinstance(term, tuple) else term
        try:
            built = _build_all(example_sources(2, 16, term), ("high risk", "not analysed"))
            datasets = [ds for _, group in built for ds in group]
            values = {"\\".join(v) if not isinstance(v := ds.get("SpecificCharacterSet"), str) and v is not None
                      else str(v if v is not None else "(absent)") for ds in datasets}
            outcome = ", ".join(sorted(values))
        except Exception as exc:  # this is the finding: the builders refuse the value
            outcome = f"**no result object can be built** ({type(exc).__name__}: {str(exc)[:80]})"
        rows.append((f"`{shown}`", outcome))
    return _table(("Source Specific Character Set (0008,0005)", "SEG, SR, SC Specific Character Set"), rows)


def table_config_defaults() -> str:
    from hexnode.config import Destination, DicomConfig, SpoolConfig, TLSConfig

    rows = []
    for section, obj in (("dicom", DicomConfig()), ("dicom.tls", TLSConfig()), ("[destinations]", Destination())):
        for f in dataclasses.fields(obj):
            value = getattr(obj, f.name)
            if dataclasses.is_dataclass(value):
                continue
            rows.append((f"`[{section}]`", f"`{f.name}`", f"`{_toml(value)}`"))
    spool = SpoolConfig()
    rows.append(("`[spool]`", "`fsync_before_success`", f"`{_toml(spool.fsync_before_success)}`"))
    return _table(("Section", "Key", "Default"), rows)


TABLES: dict[str, Callable[[], str]] = {
    "scp-association": table_scp_association,
    "scp-transfer-syntaxes": table_scp_transfer_syntaxes,
    "scp-transfer-syntaxes-refused": table_scp_transfer_syntaxes_refused,
    "scp-sop-classes": table_scp_sop_classes,
    "scp-storage-not-accepted": table_scp_storage_not_accepted,
    "scu-association": table_scu_association,
    "scu-contexts": table_scu_contexts,
    "created-objects": table_created_objects,
    "sr-templates": table_sr_templates,
    "codes": table_codes,
    "character-sets": table_character_sets,
    "config-defaults": table_config_defaults,
}


def generate() -> dict[str, str]:
    return {name: make() for name, make in TABLES.items()}


def document_blocks(text: str) -> dict[str, str]:
    return {m.group(1): m.group(2) for m in _BLOCK.finditer(text)}


def update_document(text: str, blocks: dict[str, str]) -> str:
    missing = set(blocks) - set(document_blocks(text))
    if missing:
        raise ValueError(f"document has no generated block for {', '.join(sorted(missing))}")

    def replace(m: re.Match[str]) -> str:
        name = m.group(1)
        body = blocks.get(name, m.group(2))
        return f"{BEGIN.format(name=name)}\n{body}{END.format(name=name)}"

    return _BLOCK.sub(replace, text)


def stale_blocks(text: str, blocks: dict[str, str]) -> list[str]:
    have = document_blocks(text)
    return [name for name, body in blocks.items() if have.get(name) != body]


def run_conformance(args: argparse.Namespace) -> int:
    blocks = generate()
    if args.write or args.check:
        path = Path(args.write or args.check)
        text = path.read_text()
        if args.check:
            stale = stale_blocks(text, blocks)
            if stale:
                print(f"{path}: stale tables: {', '.join(stale)} (run hexnode conformance --write {path})")
                return 1
            print(f"{path}: all {len(blocks)} generated tables are current")
            return 0
        path.write_text(update_document(text, blocks))
        print(f"{path}: {len(blocks)} tables written")
        return 0
    for name, body in blocks.items():
        print(f"{BEGIN.format(name=name)}\n{body}{END.format(name=name)}\n")
    return 0


def add_arguments(p: argparse.ArgumentParser) -> None:
    group = p.add_mutually_exclusive_group()
    group.add_argument("--write", nargs="?", const=str(DOCUMENT), metavar="DOC",
                       help="rewrite the generated tables in DOC (default docs/conformance.md)")
    group.add_argument("--check", nargs="?", const=str(DOCUMENT), metavar="DOC",
                       help="exit 1 if a generated table in DOC is stale")


if __name__ == "__main__":
    parser = argparse.ArgumentParser(prog="python -m hexnode.admin.conformance", description=__doc__.splitlines()[0])
    add_arguments(parser)
    sys.exit(run_conformance(parser.parse_args()))
