"""Debian's Orthanc on loopback, for `hexnode demo`, the end-to-end tests and the benchmarks.

The repository's `orthanc/orthanc.json` is the one configuration (sites use it as is); this module
renders it to free ports and folders under a work dir, starts `/usr/sbin/Orthanc`, and offers the
few REST calls the demo and tests need (urllib only: nothing to install).
"""

from __future__ import annotations

import json
import subprocess
import time
import urllib.error
import urllib.request
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parents[2]  # hexnode/devtools/orthanc.py -> the repository
ORTHANC_BIN = "/usr/sbin/Orthanc"
PLUGIN_DIRS = ("/usr/share/orthanc/plugins", "/usr/lib/orthanc")


def _plugin(name: str) -> str:
    for d in PLUGIN_DIRS:
        for p in sorted(Path(d).glob(f"lib{name}.so*")):
            return str(p)
    raise FileNotFoundError(f"Orthanc plugin {name} not found in {', '.join(PLUGIN_DIRS)} (apt-get install orthanc-python orthanc-dicomweb)")


@dataclass
class OrthancConfig:
    workdir: Path
    http_port: int
    dicom_port: int
    aet: str = "ORTHANC"
    hexnode_aet: str = "HEXNODE"
    hexnode_port: int = 11112
    stable_age: int = 2
    sender_aet: str = "SCANNER"  # the AE title Orthanc accepts stores from besides hexnode's
    routing: dict[str, Any] = field(default_factory=dict)  # overrides of orthanc.json's "Hexnode" section

    @property
    def config_path(self) -> Path:
        return self.workdir / "orthanc.json"

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.http_port}"


def render_config(cfg: OrthancConfig, *, route_to: tuple[str, str, int] | None = None) -> Path:
    """Write orthanc/orthanc.json adapted to `cfg` (ports, folders, plugin paths) into the work dir.

    `route_to` = (AE, host, port) of the routing target; default: hexnode on loopback.
    """
    base = json.loads((REPO / "orthanc" / "orthanc.json").read_text())
    cfg.workdir.mkdir(parents=True, exist_ok=True)
    storage = cfg.workdir / "storage"
    storage.mkdir(exist_ok=True)
    aet, host, port = route_to or (cfg.hexnode_aet, "127.0.0.1", cfg.hexnode_port)
    base.update(
        StorageDirectory=str(storage),
        IndexDirectory=str(storage),
        HttpPort=cfg.http_port,
        DicomPort=cfg.dicom_port,
        DicomAet=cfg.aet,
        StableAge=cfg.stable_age,
        Plugins=[_plugin("OrthancPython"), _plugin("OrthancDicomWeb")],
        PythonScript=str(REPO / "orthanc" / "hexnode_routing.py"),
    )
    base["DicomModalities"]["hexnode"].update(AET=aet, Host=host, Port=port)
    # Orthanc accepts stores only from registered modalities: the demo's and tests' storescu sends
    # as SCANNER (a site registers its own scanners and PACS the same way)
    base["DicomModalities"]["scanner"] = {"AET": cfg.sender_aet, "Host": "127.0.0.1", "Port": 104}
    if aet != cfg.hexnode_aet:  # routed to a stand-in: hexnode's own AE still sends results back
        base["DicomModalities"]["hexnode-results"] = {"AET": cfg.hexnode_aet, "Host": "127.0.0.1",
                                                      "Port": cfg.hexnode_port}
    base["Hexnode"].update(cfg.routing)
    base["Hexnode"]["SkipCallingAets"] = sorted({cfg.hexnode_aet, aet})
    cfg.config_path.write_text(json.dumps(base, indent=2))
    return cfg.config_path


class Orthanc:
    """A running Orthanc process with a tiny REST client."""

    def __init__(self, cfg: OrthancConfig, proc: subprocess.Popen[bytes]) -> None:
        self.cfg = cfg
        self.proc = proc

    @classmethod
    def start(cls, cfg: OrthancConfig, *, route_to: tuple[str, str, int] | None = None,
              timeout: float = 60.0) -> Orthanc:
        path = render_config(cfg, route_to=route_to)
        log = open(cfg.workdir / "orthanc.log", "ab")  # noqa: SIM115 - lives as long as the process
        # its own session: a Ctrl-C meant for the caller must not stop Orthanc under it (the caller
        # stops it with `stop()`)
        # jobs saved by an earlier run are resumed, as at a site (the routing queue relies on them)
        proc = subprocess.Popen([ORTHANC_BIN, str(path)], stdout=log, stderr=subprocess.STDOUT,
                                cwd=cfg.workdir, start_new_session=True)
        log.close()
        orthanc = cls(cfg, proc)
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if proc.poll() is not None:
                raise RuntimeError(f"Orthanc exited with {proc.returncode}; see {cfg.workdir / 'orthanc.log'}")
            try:
                orthanc.get("/system")
                return orthanc
            except OSError:
                time.sleep(0.2)
        orthanc.stop()
        raise TimeoutError(f"Orthanc did not answer on {cfg.url} within {timeout:.0f} s")

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(15)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def _request(self, method: str, path: str, body: bytes | None = None) -> bytes:
        req = urllib.request.Request(self.cfg.url + path, data=body, method=method)
        with urllib.request.urlopen(req, timeout=30) as resp:
            return bytes(resp.read())

    def get(self, path: str) -> Any:
        return json.loads(self._request("GET", path))

    def delete(self, path: str) -> None:
        self._request("DELETE", path)

    def get_bytes(self, path: str) -> bytes:
        return self._request("GET", path)

    def post(self, path: str, payload: Any) -> Any:
        raw = self._request("POST", path, json.dumps(payload).encode())
        return json.loads(raw) if raw else None

    def upload(self, path: Path) -> dict[str, Any]:
        """Store one DICOM file through REST (POST /instances); Orthanc's answer (ID, Status)."""
        return dict(json.loads(self._request("POST", "/instances", path.read_bytes())))

    def lookup(self, dicom_uid: str) -> list[dict[str, Any]]:
        """Orthanc resources whose DICOM UID is `dicom_uid` (/tools/lookup takes the bare UID)."""
        return list(json.loads(self._request("POST", "/tools/lookup", dicom_uid.encode())))

    def find_instances(self, **query: str) -> list[dict[str, Any]]:
        """Instances matching DICOM tags (Orthanc /tools/find), with their tags expanded."""
        found = self.post("/tools/find", {"Level": "Instance", "Query": query, "Expand": True})
        return list(found)
