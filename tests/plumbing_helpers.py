"""Shared helpers for the store/receive/send tests: free ports, a PostgreSQL schema per test,
real peers (dcmtk, Orthanc) started on loopback."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import time
import urllib.request
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from hexnode.devtools.net import dcmtk_env, free_port, wait_port  # noqa: F401  (re-exported for the tests)

REPO = Path(__file__).resolve().parent.parent

# Receive tests that run in both modes of [dicom] fast_receive: on a test, it overrides the
# `fast_receive` fixture that conftest's make_receiver reads.
BOTH_RECEIVE_MODES = pytest.mark.parametrize("fast_receive", [True, False], ids=["fast", "plain"])


def models_dir() -> Path:
    """The committed models (HEXNODE_TEST_MODELS may point at another trained set)."""
    import pytest

    path = Path(os.environ.get("HEXNODE_TEST_MODELS", REPO / "models"))
    if not (path / "manifest.json").exists():
        pytest.fail(f"no trained models in {path} (models/manifest.json is committed by the models team)")
    return path


PG_URL = os.environ.get("HEXNODE_TEST_PG_URL", "postgresql+psycopg://postgres@127.0.0.1:5432/test")


LEGACY_SCHEMA = Path(__file__).parent / "legacy_schema"


def legacy_ddl(version: str, dialect: str) -> list[str]:
    """The statements of a database as hexnode schema `version` ("v1".."v4") created it, in
    `dialect` ("sqlite" | "postgresql"): its real DDL and schema_version row (tests/legacy_schema)."""
    lines = (LEGACY_SCHEMA / f"{version}.{dialect}.sql").read_text().splitlines()
    ddl = "\n".join(line for line in lines if not line.startswith("--"))
    return [s.strip() for s in ddl.split(";\n") if s.strip()]


def pg_available() -> bool:
    try:
        with socket.create_connection(("127.0.0.1", 5432), timeout=1):
            return True
    except OSError:
        return False


@contextmanager
def pg_schema() -> Iterator[str]:
    """A fresh PostgreSQL schema for one test, dropped afterwards."""
    from sqlalchemy import create_engine, text

    name = f"hexnode_t_{uuid.uuid4().hex[:12]}"
    engine = create_engine(PG_URL)
    try:
        yield name
    finally:
        with engine.begin() as conn:
            conn.execute(text(f'DROP SCHEMA IF EXISTS "{name}" CASCADE'))
        engine.dispose()



@contextmanager
def store_on(kind: str, sqlite_url: str) -> Iterator[Any]:
    """An open Store on SQLite (`sqlite_url`) or, for "postgresql", on a fresh schema of the real
    PostgreSQL (the test is skipped when none runs); disposed afterwards."""
    from hexnode.store.db import open_store

    if kind == "sqlite":
        store = open_store(sqlite_url)
        try:
            yield store
        finally:
            store.dispose()
        return
    if not pg_available():
        pytest.skip("PostgreSQL not running on 127.0.0.1:5432")
    with pg_schema() as schema:
        store = open_store(PG_URL, schema=schema)
        try:
            yield store
        finally:
            store.dispose()


@dataclass
class Orthanc:
    proc: subprocess.Popen[bytes]
    http_port: int
    dicom_port: int
    aet: str
    workdir: Path

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"

    def get(self, path: str) -> object:
        with urllib.request.urlopen(self.url + path, timeout=10) as r:
            return json.loads(r.read())

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()


def start_orthanc(workdir: Path, *, aet: str = "ORTHANC", modalities: dict[str, list[object]] | None = None,
                  dicomweb: bool = False, dicom_port: int | None = None, http_port: int | None = None) -> Orthanc:
    """Debian's Orthanc on loopback with a generated config (free ports, storage in workdir)."""
    orthanc_bin = shutil.which("Orthanc") or "/usr/sbin/Orthanc"
    workdir.mkdir(parents=True, exist_ok=True)
    http_port = http_port or free_port()
    dicom_port = dicom_port or free_port()
    plugins = []
    if dicomweb:
        plugins = [p for p in ("/usr/share/orthanc/plugins/libOrthancDicomWeb.so",) if Path(p).exists()]
    config = {
        "Name": "hexnode-test",
        "StorageDirectory": str(workdir / "storage"),
        "IndexDirectory": str(workdir / "storage"),
        "HttpPort": http_port,
        "DicomPort": dicom_port,
        "DicomAet": aet,
        "RemoteAccessAllowed": False,
        "AuthenticationEnabled": False,
        "DicomCheckCalledAet": False,
        "DicomModalities": modalities or {},
        "Plugins": plugins,
        "DicomWeb": {"Enable": True, "Root": "/dicom-web/"},
        "StableAge": 1,
        "ConcurrentJobs": 1,
        "HttpThreadsCount": 4,
    }
    cfg_path = workdir / "orthanc.json"
    cfg_path.write_text(json.dumps(config, indent=2))
    log = open(workdir / "orthanc.log", "wb")  # noqa: SIM115 - kept open for the process' lifetime
    proc = subprocess.Popen([orthanc_bin, str(cfg_path)], stdout=log, stderr=subprocess.STDOUT, cwd=workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"Orthanc exited: {(workdir / 'orthanc.log').read_text()[-2000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{http_port}/system", timeout=1):
                break
        except OSError:
            time.sleep(0.1)
    else:
        proc.kill()
        raise TimeoutError("Orthanc did not start")
    wait_port(dicom_port)
    return Orthanc(proc, http_port, dicom_port, aet, workdir)


def ct_slice(*, number: int, position: list[float], size: int, study_uid: str, series_uid: str,
             sop_instance: str | None = None, sop_class: str = "1.2.840.10008.5.1.4.1.1.2",
             modality: str = "CT") -> Any:
    """One small CT (or other SOP class) slice without pixel data, explicit VR little endian file
    meta, with patient identifiers (the tests check none of them reaches a log or the database)."""
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    ds = Dataset()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.SOPClassUID = sop_class
    ds.SOPInstanceUID = sop_instance or generate_uid()
    ds.file_meta.MediaStorageSOPClassUID = sop_class
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.StudyInstanceUID, ds.SeriesInstanceUID = study_uid, series_uid
    ds.Modality = modality
    ds.PatientName, ds.PatientID, ds.PatientBirthDate = "SECRET^PATIENT", "PID-SECRET-42", "19700101"
    ds.SeriesNumber, ds.InstanceNumber = 3, number
    ds.ImagePositionPatient = position
    ds.ImageOrientationPatient = [1, 0, 0, 0, 1, 0]
    ds.PixelSpacing = [0.5, 0.5]
    ds.SliceThickness = 5.0
    ds.Rows = ds.Columns = size
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    return ds


def write_ct(out: Path, n: int, *, size: int = 64, series_uid: str | None = None, study_uid: str | None = None,
             sop_class: str = "1.2.840.10008.5.1.4.1.1.2", modality: str = "CT", seed: int = 0,
             first_index: int = 0) -> list[Path]:
    """`n` small CT (or other SOP class) slices, explicit VR little endian, one series."""
    import numpy as np
    from pydicom.uid import generate_uid

    out.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(seed)
    study_uid = study_uid or generate_uid()
    series_uid = series_uid or generate_uid()
    paths = []
    for i in range(first_index, first_index + n):
        ds = ct_slice(number=i + 1, position=[-16.0, -16.0, 5.0 * i], size=size, study_uid=study_uid,
                      series_uid=series_uid, sop_class=sop_class, modality=modality)
        ds.RescaleIntercept, ds.RescaleSlope = -1024, 1
        ds.PixelData = rng.integers(0, 2000, (size, size), dtype=np.uint16).tobytes()
        p = out / f"img{i:04d}.dcm"
        ds.save_as(p, enforce_file_format=True)
        paths.append(p)
    return paths


def storescu(port: int, files: list[Path] | Path, *, aec: str = "HEXNODE", aet: str = "STORESCU",
             extra: list[str] | None = None, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    """dcmtk's storescu (/usr/bin: the venv has pynetdicom's script of the same name)."""
    args = ["/usr/bin/storescu", "-aec", aec, "-aet", aet, *(extra or [])]
    if isinstance(files, Path):
        args += ["+sd", "+r", "127.0.0.1", str(port), str(files)]
    else:
        args += ["127.0.0.1", str(port), *map(str, files)]
    return subprocess.run(args, env=dcmtk_env(), capture_output=True, text=True, timeout=timeout)


def make_pki(d: Path) -> Path:
    """A throw-away CA with server, client and an unsigned "rogue" certificate (openssl)."""
    d.mkdir(parents=True, exist_ok=True)

    def ossl(*args: str) -> None:
        subprocess.run(["openssl", *args], cwd=d, check=True, capture_output=True)

    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.crt",
         "-days", "2", "-subj", "/CN=hexnode test CA")
    for name in ("server", "client"):
        ossl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr",
             "-subj", f"/CN={name}")
        (d / f"{name}.ext").write_text("subjectAltName=IP:127.0.0.1,DNS:localhost\n")
        ossl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key", "-CAcreateserial",
             "-out", f"{name}.crt", "-days", "2", "-extfile", f"{name}.ext")
    ossl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "rogue.key", "-out", "rogue.crt",
         "-days", "2", "-subj", "/CN=rogue")
    return d
