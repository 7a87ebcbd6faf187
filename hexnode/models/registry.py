"""The model manifest: which files make up a model set, their sha256, and the ONNX providers.

`models/manifest.json` is the single source of truth for a model set. Nothing is loaded before
every listed file has been hashed and compared, so a partly copied or tampered model set is
refused at start-up rather than producing plausible but wrong results.
"""

from __future__ import annotations

import hashlib
import json
import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from hexnode.pipeline.contracts import OperatingPoint

log = logging.getLogger(__name__)

MANIFEST = "manifest.json"
DEFAULT_PROVIDERS = ("TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider")


class ModelIntegrityError(RuntimeError):
    """A model file is missing or its sha256 differs from the manifest."""


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for block in iter(lambda: fh.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


@dataclass(frozen=True)
class Manifest:
    root: Path
    data: dict[str, Any]

    @property
    def name(self) -> str:
        return str(self.data.get("name", "hexnode-he"))

    @property
    def version(self) -> str:
        return str(self.data["version"])

    @property
    def threshold(self) -> float:
        return float(self.data["threshold"]["value"])

    @property
    def synthetic_trained(self) -> bool:
        return bool(self.data.get("training_data", {}).get("synthetic", True))

    @property
    def operating_point(self) -> OperatingPoint | None:
        """The threshold's figures on the training run's held-out test split, where recorded."""
        test = self.data.get("metrics", {}).get("test", {})
        try:
            npv = test.get("npv")
            return OperatingPoint(sensitivity=float(test["sensitivity"]), specificity=float(test["specificity"]),
                                  n=int(test["n"]), npv=None if npv is None else float(npv))
        except (KeyError, TypeError, ValueError):
            return None

    def path(self, role: str) -> Path:
        """The file that plays `role` (seg, cnn, radiomics, lgbm, ...)."""
        for name, entry in self.data["files"].items():
            if entry.get("role") == role:
                return self.root / name
        raise ModelIntegrityError(f"manifest lists no file with role {role!r}")

    def has(self, role: str) -> bool:
        return any(entry.get("role") == role for entry in self.data["files"].values())

    def entry(self, role: str) -> dict[str, Any]:
        for entry in self.data["files"].values():
            if entry.get("role") == role:
                return dict(entry)
        raise ModelIntegrityError(f"manifest lists no file with role {role!r}")


def load_manifest(models_dir: str | Path, *, verify: bool = True) -> Manifest:
    root = Path(models_dir)
    mpath = root / MANIFEST
    if not mpath.is_file():
        raise ModelIntegrityError(f"no {MANIFEST} in {root}")
    try:
        data = json.loads(mpath.read_text())
    except json.JSONDecodeError as exc:
        raise ModelIntegrityError(f"{MANIFEST} is not valid JSON: {exc}") from exc
    if not isinstance(data.get("files"), dict) or not data["files"]:
        raise ModelIntegrityError(f"{MANIFEST} lists no files")
    manifest = Manifest(root, data)
    if verify:
        verify_files(manifest)
    return manifest


def verify_files(manifest: Manifest) -> None:
    for name, entry in manifest.data["files"].items():
        path = manifest.root / name
        if not path.is_file():
            raise ModelIntegrityError(f"model file missing: {name}")
        digest = sha256_file(path)
        if digest != entry.get("sha256"):
            raise ModelIntegrityError(
                f"sha256 mismatch for {name}: manifest {entry.get('sha256')}, file {digest}"
            )


# Shared libraries a GPU provider cannot start without. onnxruntime-gpu lists TensorRT and CUDA
# as available on any machine and, asked for them where these are missing, prints an "EP Error"
# block for every session it creates before falling back; probing first keeps CPU-only hosts quiet.
_PROVIDER_LIBS: dict[str, tuple[str, ...]] = {
    "TensorrtExecutionProvider": ("libnvinfer.so.10", "libnvinfer.so.8", "nvinfer_10.dll"),
    "CUDAExecutionProvider": ("libcuda.so.1", "nvcuda.dll"),  # the NVIDIA driver
}


def _runtime_present(provider: str) -> bool:
    import ctypes

    libs = _PROVIDER_LIBS.get(provider)
    if libs is None:
        return True
    for name in libs:
        try:
            ctypes.CDLL(name)
            return True
        except OSError:
            continue
    return False


def choose_providers(requested: tuple[str, ...] | list[str] | None = None) -> list[str]:
    """The requested providers (default TensorRT, CUDA, CPU) that this onnxruntime build offers."""
    import onnxruntime as ort

    available = set(ort.get_available_providers())
    wanted = list(requested) if requested else list(DEFAULT_PROVIDERS)
    chosen = [p for p in wanted if p in available and _runtime_present(p)]
    if "CPUExecutionProvider" not in chosen:
        chosen.append("CPUExecutionProvider")
    return chosen


def make_session(path: Path, providers: list[str], threads: int = 0) -> Any:
    """An InferenceSession on the first provider that actually initialises.

    onnxruntime-gpu lists CUDA/TensorRT as available even without a GPU or CUDA libraries and
    then falls back silently (or fails at session creation), so the providers the session really
    uses are read back and logged once.
    """
    import onnxruntime as ort

    # the GPU wheel lists CUDA even where its libraries are missing and logs an ERROR while
    # falling back; the provider actually used is logged once by the caller instead
    ort.set_default_logger_severity(4)
    opts = ort.SessionOptions()
    opts.log_severity_level = 3  # provider fallback warnings are summarised in our own log line
    opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    if threads:
        opts.intra_op_num_threads = threads
    last: Exception | None = None
    for i in range(len(providers)):
        try:
            sess = ort.InferenceSession(str(path), sess_options=opts, providers=providers[i:])
            ort.set_default_logger_severity(2)
            return sess
        except Exception as exc:  # a provider that cannot start: try the next one
            last = exc
    ort.set_default_logger_severity(2)
    raise ModelIntegrityError(f"cannot create an ONNX session for {path.name}: {last}")
