"""docker-compose.yml for real: the images built here (Debian base from debootstrap, no registry),
the stack (one container per stage: receive, route, worker, send, web) started by compose on a
real dockerd, a synthetic head CT sent with dcmtk's storescu to the Orthanc container and SEG, SR
and SC read back from it, the web container's /status counting the job; the worker container killed mid-job
and started again gives exactly one result set; `down` and `up` without -v keep the spool, the
database and what was delivered; two worker containers on the PostgreSQL container share the
queue, each series analysed once; a worker stopped with SIGSTOP (alive, not beating) turns
unhealthy and healthy again once it runs; every container without capabilities, with its memory
limit and rotated logs, the spool 0700/0600; `down -v` at the end removes the volumes.

The plain-host install (docs/operations.md "Plain host (systemd)") runs here too, in a container of
the hexnode image that the stack is built from: its steps as written, then each systemd unit's own
`ExecStart` as the hexnode user, on a read-only root with only /var/lib/hexnode writable (as
`ProtectSystem=strict` leaves it), a series sent with storescu and its results received by storescp.

The stack is docker-compose.yml itself (`config` output) with one change made here, in
`loopback_variant`: every container on the host's network at free loopback ports (dockerd runs
with --bridge=none, and no traffic may leave 127.0.0.0/8 on these machines), shorter worker
leases and healthcheck intervals so the test takes minutes. Service-name resolution on a compose
network is therefore not exercised here.

dockerd is started only when none answers, and only one this test started is stopped. Build
times (cold: base + images from nothing; warm: every layer cached) go to
tests/output/compose/timings.json.
"""

from __future__ import annotations

import fcntl
import io
import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pydicom
import pytest
from pydicom.uid import generate_uid
from ruamel.yaml import YAML  # installed with pyradiomics (via pykwalify)
from series_helpers import write_series
from sqlalchemy import select

from hexnode.devtools.demo import SC_CLASSES, SEG_CLASS, SR_CLASSES, ResultSet, sr_summary, storescu
from hexnode.devtools.net import free_port, wait_for
from hexnode.store.db import Event, Job, Outbox, Series, open_store

REPO = Path(__file__).resolve().parents[2]
OUT = REPO / "tests" / "output" / "compose"
PROJECT = "hexnode-compose-test"
BASE_IMAGE = "hexnode-base:bookworm"
PASSWORD = "compose-test"
DCIODVFY = "/usr/bin/dciodvfy"
# One compose test per machine at a time: the images, the project name and dockerd are shared.
LOCK = Path("/tmp/hexnode-compose-test.lock")
LEASE_SECONDS = 15  # the killed worker's job comes back after this (production: 120 s)
WEB_TOKEN = "compose-test-token-0042"
WEDGED_AFTER = 10  # seconds without a heartbeat before the worker's health check fails

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which("dockerd") is None or shutil.which("debootstrap") is None,
                       reason="docker.io and debootstrap not installed (scripts/bootstrap.sh installs them)"),
    pytest.mark.skipif(os.geteuid() != 0, reason="dockerd and debootstrap need root"),
]


def run(cmd: list[str], *, timeout: float = 600, check: bool = True, env: dict[str, str] | None = None,
        cwd: Path = REPO) -> subprocess.CompletedProcess[str]:
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout, env=env, cwd=cwd)
    if check and proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {proc.returncode}:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc


def docker_answers() -> bool:
    return run(["docker", "info"], check=False, timeout=30).returncode == 0


def compose_command() -> list[str]:
    """The compose v2 plugin where Debian provides it, else docker-compose 1.29."""
    if run(["docker", "compose", "version"], check=False, timeout=30).returncode == 0:
        return ["docker", "compose"]
    assert shutil.which("docker-compose"), "neither `docker compose` nor docker-compose is installed"
    return ["docker-compose"]


@pytest.fixture(scope="module")
def dockerd() -> Iterator[None]:
    OUT.mkdir(parents=True, exist_ok=True)
    with open(LOCK, "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        proc = None
        if not docker_answers():
            # No bridge and no iptables rules: containers use the host network, on loopback only.
            log = open(OUT / "dockerd.log", "ab")  # noqa: SIM115 - lives as long as dockerd
            proc = subprocess.Popen(["dockerd", "--bridge=none", "--iptables=false", "--ip-masq=false"],
                                    stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
            log.close()
            wait_for(lambda: proc.poll() is not None or docker_answers(), 90, "dockerd did not come up", every=0.5)
            assert proc.poll() is None, (OUT / "dockerd.log").read_text()[-3000:]
        try:
            yield
        finally:
            if proc is not None:
                proc.terminate()  # dockerd stops its containers and its containerd, then exits
                try:
                    proc.wait(60)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait()


def _target(volume: str | dict[str, Any]) -> str:
    return str(volume["target"]) if isinstance(volume, dict) else volume.split(":")[1]


def loopback_variant(config: dict[str, Any], ports: dict[str, int], hexnode_toml: Path) -> dict[str, Any]:
    """docker-compose.yml's services on the host network at `ports`; test timings shortened."""
    services = config["services"]
    for svc in services.values():
        svc["network_mode"] = "host"
        svc.pop("ports", None)  # published ports do not exist on the host network
        svc.pop("networks", None)
        if "build" in svc:
            svc["build"]["network"] = "host"  # apt and pip inside the build
        if "healthcheck" in svc:
            svc["healthcheck"]["interval"] = "2s"
            if svc.get("image") == "hexnode:latest":
                # `hexnode health` is a Python process (about 0.5 s of CPU): every 5 s, and patient
                # with a machine whose two cores run other tests too (production: 15-30 s, 20 s)
                svc["healthcheck"].update(interval="5s", timeout="120s")
    config.pop("networks", None)

    pg = services["postgres"]
    pg["environment"]["PGPORT"] = str(ports["postgres"])
    pg["command"] = ["-c", "listen_addresses=127.0.0.1"]
    orthanc = services["orthanc"]
    orthanc["environment"].update({
        "HEXNODE_HOST": "127.0.0.1", "HEXNODE_PORT": str(ports["hexnode"]),
        "ORTHANC__DicomPort": str(ports["orthanc_dicom"]), "ORTHANC__HttpPort": str(ports["orthanc_http"]),
        "ORTHANC__StableAge": "2",
    })
    # the test's sender, registered as a site registers its scanners (deploy/compose/orthanc.env)
    orthanc["environment"]["ORTHANC__DicomModalities__scanner"] = json.dumps(
        {"AET": "SCANNER", "Host": "127.0.0.1", "Port": 104})
    hexnode_services = [name for name, svc in services.items() if svc.get("image") == "hexnode:latest"]
    assert set(hexnode_services) == {"hexnode-receive", "hexnode-route", "hexnode-worker", "hexnode-worker-cpu",
                                     "hexnode-send", "hexnode-web", "hexnode-purge"}
    for name in hexnode_services:
        svc = services[name]
        env = svc["environment"]
        assert "@postgres:5432/" in env["HEXNODE_DATABASE_URL"], env
        env["HEXNODE_DATABASE_URL"] = env["HEXNODE_DATABASE_URL"].replace("@postgres:5432/", f"@127.0.0.1:{ports['postgres']}/")
        env.update({"HEXNODE_WORKER_LEASE_SECONDS": str(LEASE_SECONDS), "HEXNODE_WORKER_HEARTBEAT_SECONDS": "3",
                    "HEXNODE_SERIES_STABLE_SECONDS": "2"})
        # 1.29 prints volumes as "src:dst:mode", the v2 plugin as mappings
        mounts = [v for v in svc["volumes"] if _target(v) == "/etc/hexnode/hexnode.toml"]
        assert len(mounts) == 1, svc["volumes"]
        mount: Any = (f"{hexnode_toml}:/etc/hexnode/hexnode.toml:ro" if isinstance(mounts[0], str) else
                      {"type": "bind", "source": str(hexnode_toml), "target": "/etc/hexnode/hexnode.toml", "read_only": True})
        svc["volumes"] = [v for v in svc["volumes"] if v not in mounts] + [mount]
    # a worker that stops beating turns unhealthy after WEDGED_AFTER s (production: 60 s)
    test = services["hexnode-worker-cpu"]["healthcheck"]["test"]
    assert test[:4] == ["CMD", "hexnode", "health", "worker"], test
    services["hexnode-worker-cpu"]["healthcheck"]["test"] = [*test, "--max-age", str(WEDGED_AFTER)]
    web = services["hexnode-web"]["environment"]
    assert web["HEXNODE_HTTP_ENABLED"] == "true" and web["HEXNODE_HTTP_BIND"] == "0.0.0.0", web
    # on the host network, the container's 0.0.0.0 would be the host's: loopback, a free port
    web.update({"HEXNODE_HTTP_BIND": "127.0.0.1", "HEXNODE_HTTP_PORT": str(ports["web"]), "HEXNODE_HTTP_TOKEN": WEB_TOKEN})
    return config


def loopback_hexnode_toml(ports: dict[str, int]) -> str:
    """deploy/compose/hexnode.toml with loopback in place of the service names."""
    text = (REPO / "deploy" / "compose" / "hexnode.toml").read_text()
    for old, new in (('bind = "0.0.0.0"', 'bind = "127.0.0.1"'),
                     ("port = 11112", f"port = {ports['hexnode']}"),
                     ('host = "orthanc"', 'host = "127.0.0.1"'),
                     ("port = 4242", f"port = {ports['orthanc_dicom']}")):
        assert text.count(old) == 1, old
        text = text.replace(old, new)
    return text


@dataclass(frozen=True)
class JobRow:
    id: int
    revision: int
    state: str
    attempts: int
    error: str | None


@dataclass
class Stack:
    compose: list[str]
    env: dict[str, str]
    ports: dict[str, int]

    def __call__(self, *args: str, timeout: float = 600, check: bool = True) -> subprocess.CompletedProcess[str]:
        return run([*self.compose, *args], timeout=timeout, check=check, env=self.env)

    def up(self, workers: int = 1) -> None:
        self("up", "-d", "--no-build", "--scale", f"hexnode-worker-cpu={workers}")
        self.wait_healthy(timeout=180)

    def down(self, *, volumes: bool = False) -> None:
        self("down", *(["-v"] if volumes else []), timeout=300)

    def containers(self, service: str | None = None) -> list[str]:
        filters = ["--filter", f"label=com.docker.compose.project={PROJECT}"]
        if service:
            filters += ["--filter", f"label=com.docker.compose.service={service}"]
        return run(["docker", "ps", "-aq", *filters]).stdout.split()

    def health(self) -> dict[str, str]:
        ids = self.containers()
        if not ids:
            return {}
        fmt = "{{.Name}} {{.State.Status}} {{if .State.Health}}{{.State.Health.Status}}{{else}}none{{end}}"
        out = run(["docker", "inspect", "--format", fmt, *ids]).stdout.split("\n")
        return {line.split()[0].lstrip("/"): " ".join(line.split()[1:]) for line in out if line.strip()}

    def wait_healthy(self, timeout: float) -> None:
        def all_healthy() -> bool:
            h = self.health()
            dead = [n for n, s in h.items() if s.startswith(("exited", "dead"))]
            assert not dead, f"containers stopped: {dead}\n{self.logs()[-4000:]}"
            return bool(h) and all(s == "running healthy" for s in h.values())

        try:
            wait_for(all_healthy, timeout, "containers not healthy", every=1)
        except TimeoutError:
            sick = [cid for cid in self.containers() if "unhealthy" in run(
                ["docker", "inspect", "--format", "{{.State.Health.Status}}", cid], check=False).stdout]
            probes = "\n".join(run(["docker", "inspect", "--format", "{{.Name}} {{json .State.Health.Log}}", cid],
                                    check=False).stdout[-1500:] for cid in sick)
            raise AssertionError(f"not healthy after {timeout:.0f} s: {self.health()}\n{probes}\n"
                                 f"{self.logs()[-4000:]}") from None

    def logs(self, service: str | None = None) -> str:
        return self("logs", "--no-color", *([service] if service else []), check=False).stdout

    def container_logs(self, cid: str) -> str:
        proc = run(["docker", "logs", cid], check=False)
        return proc.stdout + proc.stderr

    # Orthanc, over its REST API on loopback
    def orthanc(self, path: str, body: Any = None, method: str | None = None) -> Any:
        url = f"http://127.0.0.1:{self.ports['orthanc_http']}{path}"
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        with urllib.request.urlopen(urllib.request.Request(url, data=data, method=method), timeout=30) as resp:
            raw = resp.read()
        return json.loads(raw) if raw[:1] in (b"{", b"[") else raw

    def results(self, study_uid: str) -> ResultSet:
        out = ResultSet()
        found = self.orthanc("/tools/find", {"Level": "Instance", "Query": {"StudyInstanceUID": study_uid}})
        for oid in found:
            tags = self.orthanc(f"/instances/{oid}/simplified-tags")
            cls = str(tags.get("SOPClassUID", ""))
            kind = "seg" if cls == SEG_CLASS else "sr" if cls in SR_CLASSES else "sc" if cls in SC_CLASSES else None
            if kind:
                getattr(out, kind).append(oid)
                out.sop_uids.add(str(tags["SOPInstanceUID"]))
        return out

    def wait_results(self, study_uid: str, timeout: float, *, want_seg: bool = True) -> ResultSet:
        def ready() -> ResultSet | None:
            res = self.results(study_uid)
            return res if res.sr and res.sc and (res.seg or not want_seg) else None

        try:
            res: ResultSet = wait_for(ready, timeout, "no results", every=1)
            return res
        except TimeoutError:
            raise AssertionError(f"no SEG+SR+SC for the study within {timeout:.0f} s\n{self.logs()[-6000:]}") from None

    def send(self, paths: list[Path]) -> None:
        storescu(paths, self.ports["orthanc_dicom"])

    def routed(self) -> int:
        """Series the Orthanc container has sent to hexnode since it started."""
        return "\n".join(self.container_logs(c) for c in self.containers("orthanc")).count("sent to hexnode")

    @property
    def database_url(self) -> str:
        return f"postgresql+psycopg://hexnode:{PASSWORD}@127.0.0.1:{self.ports['postgres']}/hexnode"

    def jobs(self, series_uid: str) -> list[JobRow]:
        def rows(s: Any) -> list[JobRow]:
            sid = s.execute(select(Series.id).where(Series.series_uid == series_uid)).scalar_one_or_none()
            q = select(Job).where(Job.series_id == sid).order_by(Job.id)
            return [JobRow(j.id, j.revision, j.state, j.attempts, j.error) for j in s.execute(q).scalars()]

        result: list[JobRow] = self.db(rows)
        return result

    def db(self, fn: Callable[[Any], Any]) -> Any:
        store = open_store(self.database_url, create=False)
        try:
            with store.transaction() as s:
                return fn(s)
        finally:
            store.dispose()

    def web_status(self) -> dict[str, Any]:
        """GET /status of the web container, with its token."""
        req = urllib.request.Request(f"http://127.0.0.1:{self.ports['web']}/status",
                                     headers={"Authorization": f"Bearer {WEB_TOKEN}"})
        with urllib.request.urlopen(req, timeout=30) as resp:
            status: dict[str, Any] = json.loads(resp.read())
        return status

    def spool_files(self) -> list[str]:
        cid = self.containers("hexnode-receive")[0]
        out = run(["docker", "exec", cid, "find", "/var/lib/hexnode/spool", "-type", "f", "-name", "*.dcm"]).stdout
        return sorted(out.split())

    def peak_memory(self, key: str) -> None:
        """Each container's peak memory since it started (cgroup), under `key` in timings.json."""
        peaks = {}
        for cid in self.containers():
            full, name = run(["docker", "inspect", "--format", "{{.Id}} {{.Name}}", cid]).stdout.split()
            for f in (Path(f"/sys/fs/cgroup/memory/docker/{full}/memory.max_usage_in_bytes"),
                      Path(f"/sys/fs/cgroup/system.slice/docker-{full}.scope/memory.peak")):
                if f.exists():
                    peaks[name.lstrip("/").removeprefix(PROJECT + "_")] = f"{int(f.read_text()) / 2 ** 20:.0f} MiB"
        timings = json.loads((OUT / "timings.json").read_text())
        timings[key] = peaks
        (OUT / "timings.json").write_text(json.dumps(timings, indent=2))

    def volumes(self) -> list[str]:
        return run(["docker", "volume", "ls", "-q", "--filter", f"label=com.docker.compose.project={PROJECT}"]).stdout.split()


def copy_site_cas() -> None:
    """The CA certificates this host trusts beyond Debian's (a TLS-inspecting proxy's), for pip in
    the image build (deploy/ca/README.md)."""
    for crt in Path("/usr/local/share/ca-certificates").glob("**/*.crt"):
        dst = REPO / "deploy" / "ca" / crt.name
        if not dst.exists() or dst.read_bytes() != crt.read_bytes():
            shutil.copyfile(crt, dst)


@pytest.fixture(scope="module")
def stack(dockerd: None) -> Iterator[Stack]:
    compose = compose_command()
    env = {**os.environ, "POSTGRES_PASSWORD": PASSWORD, "HEXNODE_HTTP_TOKEN": WEB_TOKEN, "HEXNODE_BASE_IMAGE": BASE_IMAGE}
    ports = {k: free_port() for k in ("postgres", "orthanc_dicom", "orthanc_http", "hexnode", "web")}
    toml = OUT / "hexnode.toml"
    toml.write_text(loopback_hexnode_toml(ports))
    toml.chmod(0o644)  # the containers' user has no capabilities; CI may run under umask 077
    config = YAML(typ="safe").load(run([*compose, "-f", "docker-compose.yml", "config"], env=env).stdout)
    stack_file = OUT / "docker-compose.loopback.yml"
    with open(stack_file, "w") as f:
        YAML(typ="safe").dump(loopback_variant(config, ports, toml), f)
    s = Stack([*compose, "-p", PROJECT, "-f", str(stack_file), "--project-directory", str(REPO), "--profile", "cpu"],
              env, ports)
    s("down", "-v", check=False)  # what a killed earlier run may have left
    timings: dict[str, Any] = {"compose": " ".join(compose)}
    t = time.monotonic()
    had_base = run(["docker", "image", "inspect", BASE_IMAGE], check=False).returncode == 0
    run([str(REPO / "deploy" / "base-image.sh"), BASE_IMAGE], timeout=900)
    timings["base_image_s" if not had_base else "base_image_cached_s"] = round(time.monotonic() - t, 1)
    copy_site_cas()
    t = time.monotonic()
    # The three images side by side (every hexnode service shares one image: built once here),
    # then the whole file, which finds every layer cached.
    build = s("build", "--force-rm", "--parallel", "postgres", "orthanc", "hexnode-receive", timeout=1800)
    s("build", "--force-rm", timeout=600)
    timings["build_s"] = round(time.monotonic() - t, 1)
    timings["build_steps_cached"] = build.stdout.count("Using cache")
    timings["build_steps_run"] = len(re.findall(r"^ ---> Running in ", build.stdout, re.M))
    (OUT / "timings.json").write_text(json.dumps(timings, indent=2))
    try:
        yield s
    finally:
        (OUT / "compose.log").write_text(s.logs())
        s.down(volumes=True)
        assert s.volumes() == [], "down -v left volumes behind"
        assert s.containers() == []


def dciodvfy_errors(data: bytes, path: Path) -> list[str]:
    path.write_bytes(data)
    proc = subprocess.run([DCIODVFY, str(path)], capture_output=True, text=True)
    return [line for line in (proc.stdout + proc.stderr).splitlines() if line.startswith("Error")]


@pytest.fixture(scope="module")
def head_ct(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Path], dict[str, Any]]:
    from hexnode.synth.dicom import write_case
    from hexnode.synth.phantom import generate_case

    case = generate_case(5, 0)
    d = tmp_path_factory.mktemp("case")
    paths = write_case(case, d)
    return case, paths, json.loads((d / "truth.json").read_text())


def test_round_trip_worker_killed_mid_job_and_down_up(stack: Stack, head_ct: tuple[Any, list[Path], dict[str, Any]],
                                                      tmp_path: Path) -> None:
    case, paths, truth = head_ct
    study, series = truth["study_instance_uid"], truth["series_instance_uid"]
    stack.up(workers=1)
    ps = stack("ps").stdout
    (OUT / "ps.txt").write_text(ps)
    for service in ("postgres", "orthanc", "hexnode-receive", "hexnode-route", "hexnode-worker-cpu", "hexnode-send",
                    "hexnode-web", "hexnode-purge"):
        assert re.search(rf"{PROJECT}[_-]{service}[_-]1\s.*\b(Up|running)\b.*\bhealthy\b", ps), ps

    # storescu to the Orthanc container; its routing sends the stable series to hexnode-receive
    stack.send(paths)
    [worker] = stack.containers("hexnode-worker-cpu")
    wait_for(lambda: re.search(r"job \d+: series", stack.container_logs(worker)), 120, "the worker never claimed the job",
             every=0.1)
    run(["docker", "kill", worker])  # SIGKILL mid-job: no clean shutdown, the lease is left running
    [job] = stack.jobs(series)
    assert (job.state, job.attempts) == ("running", 1), "the job was not mid-way when the worker was killed"
    assert stack.results(study).counts == (0, 0, 0)
    stack("start", "hexnode-worker-cpu")  # the same container back (restart policy skips a docker kill)

    res = stack.wait_results(study, LEASE_SECONDS + 180)
    time.sleep(3)  # anything more the stack would send has arrived by now
    res = stack.results(study)
    assert res.counts == (1, 1, 1), res
    [job] = stack.jobs(series)
    assert (job.state, job.attempts) == ("done", 2), job
    history = stack.db(lambda s: [(e.to_state, e.detail or "") for e in s.execute(
        select(Event).where(Event.entity == "job", Event.entity_id == job.id).order_by(Event.id)).scalars()])
    assert [state for state, _ in history] == ["queued", "running", "queued", "running", "done"], history
    assert "expired" in history[2][1], history  # taken back when the killed worker's lease ran out
    st = stack.web_status()  # the web container reads the same database
    assert st["jobs"].get("done") == 1 and sum(st["series"].values()) == 1, st
    # every stage beats from its own container; nothing needs attention
    assert all(v["processes"] == 1 and v["age_seconds"] < 30 for v in st["stages"].values()), st["stages"]
    assert (st["overall"], st["attention"]) == ("green", []), st["attention"]
    assert st["destinations"]["orthanc"]["last_delivered_seconds"] < 300
    for kind, oid in (("seg", res.seg[0]), ("sr", res.sr[0]), ("sc", res.sc[0])):
        assert dciodvfy_errors(stack.orthanc(f"/instances/{oid}/file"), tmp_path / f"{kind}.dcm") == [], kind
    sr = pydicom.dcmread(io.BytesIO(stack.orthanc(f"/instances/{res.sr[0]}/file")))
    assert sr_summary(sr)["volume_ml"] == pytest.approx(case.truth.volume_ml, rel=0.10)

    # the backup the README gives: a consistent dump from the running database
    [pg] = stack.containers("postgres")
    dump = run(["docker", "exec", pg, "pg_dump", "-U", "hexnode", "hexnode"]).stdout
    assert "CREATE TABLE public.jobs" in dump and "COPY public.outbox" in dump

    # down and up without -v: spool, database and delivered state are all still there
    spool = stack.spool_files()
    delivered = stack.db(lambda s: sorted(o.state for o in s.execute(select(Outbox)).scalars()))
    assert delivered == ["delivered"] * 3, delivered
    assert len(spool) >= len(paths) + 3
    stack.peak_memory("memory_peak_head_ct")  # a whole synthetic head CT analysed on CPU
    stack.down()
    assert len(stack.volumes()) == 3 and stack.containers() == []
    stack.up(workers=1)
    assert stack.spool_files() == spool
    assert stack.results(study).sop_uids == res.sop_uids
    [job] = stack.jobs(series)
    assert (job.state, job.attempts) == ("done", 2)
    # the same series again: the index survived, so hexnode sees only duplicates — no second result.
    # Orthanc routes an instance it already holds only once (OverwriteInstances false): the series is
    # sent again as after Orthanc had deleted it.
    before = stack.routed()
    for found in stack.orthanc("/tools/lookup", series.encode(), method="POST"):
        stack.orthanc(f"/series/{found['ID']}", method="DELETE")
    stack.send(paths)
    wait_for(lambda: stack.routed() > before, 60, "Orthanc did not route the resent series", every=0.5)
    time.sleep(8)  # > hexnode's stable time + a completion check + a send poll
    again = stack.results(study)
    assert again.counts == (1, 1, 1) and again.sop_uids == res.sop_uids
    assert [(j.revision, j.state) for j in stack.jobs(series)] == [(0, "done")]
    assert stack.db(lambda s: sorted(o.state for o in s.execute(select(Outbox)).scalars())) == ["delivered"] * 3


def test_containers_are_hardened_and_a_wedged_worker_turns_unhealthy(stack: Stack) -> None:
    stack.up(workers=1)
    ids = stack.containers()
    fmt = ("{{.Name}}|{{json .HostConfig.CapDrop}}|{{json .HostConfig.CapAdd}}|{{json .HostConfig.SecurityOpt}}|"
           "{{.HostConfig.Memory}}|{{.HostConfig.LogConfig.Type}}|{{json .HostConfig.LogConfig.Config}}")
    for line in run(["docker", "inspect", "--format", fmt, *ids]).stdout.strip().splitlines():
        name, drop, add, secopt, memory, log_type, log_cfg = line.split("|")
        assert json.loads(drop) == ["ALL"] and json.loads(add) in (None, []), line
        assert json.loads(secopt) == ["no-new-privileges:true"], line
        assert int(memory) >= 128 * 1024 ** 2, line
        assert log_type == "json-file" and json.loads(log_cfg) == {"max-file": "5", "max-size": "10m"}, line
    # what hexnode wrote is its user's alone
    [receive] = stack.containers("hexnode-receive")
    loose = run(["docker", "exec", receive, "find", "/var/lib/hexnode", "-perm", "/077"]).stdout.split()
    assert loose == [], loose
    assert run(["docker", "exec", receive, "stat", "-c", "%a %U", "/var/lib/hexnode"]).stdout.split() == ["700", "hexnode"]
    # each container's memory in use against its limit, for the report
    stats = run(["docker", "stats", "--no-stream", "--format", "{{.Name}} {{.MemUsage}}", *ids]).stdout
    timings = json.loads((OUT / "timings.json").read_text())
    timings["memory"] = dict(line.split(" ", 1) for line in stats.strip().splitlines())
    (OUT / "timings.json").write_text(json.dumps(timings, indent=2))

    # SIGSTOP: the worker process is there, holding its database connection, and does nothing
    [worker] = stack.containers("hexnode-worker-cpu")
    pid = run(["docker", "inspect", "--format", "{{.State.Pid}}", worker]).stdout.strip()
    name = run(["docker", "inspect", "--format", "{{.Name}}", worker]).stdout.strip().lstrip("/")
    os.kill(int(pid), signal.SIGSTOP)
    try:
        t = time.monotonic()
        wait_for(lambda: stack.health().get(name) == "running unhealthy", WEDGED_AFTER + 240,
                 "a wedged worker stayed healthy", every=1)
        noticed = time.monotonic() - t
        probe = run(["docker", "inspect", "--format", "{{json .State.Health.Log}}", worker]).stdout
        assert "worker: UNHEALTHY: last heartbeat" in probe, probe
        # /status shows the silence too (its own verdict turns red at 60 s, the production limit)
        assert stack.web_status()["stages"]["worker"]["age_seconds"] > WEDGED_AFTER
    finally:
        os.kill(int(pid), signal.SIGCONT)
    wait_for(lambda: stack.health().get(name) == "running healthy", 180, "the worker did not recover", every=1)
    timings = json.loads((OUT / "timings.json").read_text())
    timings["wedged_worker_unhealthy_after_s"] = round(noticed, 1)
    (OUT / "timings.json").write_text(json.dumps(timings, indent=2))


def test_two_worker_containers_share_the_queue(stack: Stack, tmp_path: Path) -> None:
    stack.up(workers=2)
    workers = stack.containers("hexnode-worker-cpu")
    assert len(workers) == 2
    studies, series_uids, files = [], [], []
    for i in range(4):
        study, series = generate_uid(), generate_uid()
        studies.append(study)
        series_uids.append(series)
        # 12 slices of 5 mm: an analysable head series, small enough to keep this quick
        files += write_series(tmp_path / f"s{i}", n=12, rows=64, cols=64, study_uid=study, series_uid=series,
                              SeriesNumber=2)
    stack.send(files)
    for study in studies:
        stack.wait_results(study, 240, want_seg=False)
    time.sleep(3)
    for study in studies:
        counts = stack.results(study).counts
        assert counts[1:] == (1, 1) and counts[0] <= 1, counts
    jobs = [j for uid in series_uids for j in stack.jobs(uid)]
    assert len(jobs) == 4 and all((j.state, j.attempts) == ("done", 1) for j in jobs), [(j.state, j.attempts) for j in jobs]
    ids = {j.id for j in jobs}
    claims = stack.db(lambda s: [e.entity_id for e in s.execute(
        select(Event).where(Event.entity == "job", Event.to_state == "running")).scalars() if e.entity_id in ids])
    assert sorted(claims) == sorted(ids)  # each claimed exactly once
    # Both containers took jobs: on the host network both are "<host>:1" to the database, so
    # tell them apart by their own logs.
    done_by = [{int(m) for m in re.findall(r"job (\d+): series \S+ (?:reported|not analysed)", stack.container_logs(w))} & ids
               for w in workers]
    assert done_by[0] | done_by[1] == ids and not done_by[0] & done_by[1], done_by
    assert done_by[0] and done_by[1], done_by
    stack.peak_memory("memory_peak_two_workers")


def test_hexnode_image_holds_the_runtime_only(stack: Stack) -> None:
    listed = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "pip", "hexnode:latest", "list",
                  "--format", "json"]).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"hexnode", "onnxruntime-gpu", "pyradiomics", "lightgbm", "highdicom", "psycopg"} <= names
    assert not names & {"torch", "onnx", "scikit-learn", "pytest", "ruff", "mypy"}, names & {"torch", "onnx"}
    user = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "id", "hexnode:latest", "-u"]).stdout
    assert user.strip() == "10001"  # not root


# systemd, the part of it the units use, in a few lines of the image's own python3: each unit's
# ExecStart as its User and Group (no supplementary groups), with its UMask, WorkingDirectory and
# Environment only (a clean environment, as systemd gives), StateDirectory made as systemd makes it;
# every line of output prefixed with the unit, on this container's log (the journal's place).
# `runner.py UNIT...` runs them until SIGTERM (then SIGTERM to each, and waits);
# `runner.py --once UNIT` runs a oneshot unit and exits with its status.
UNIT_RUNNER = r"""
import grp, os, pwd, shlex, signal, subprocess, sys, threading

def unit(name):
    out = {}
    for line in open(f"/etc/systemd/system/{name}.service"):
        line = line.strip()
        if line and not line.startswith(("#", ";", "[")):
            key, _, value = line.partition("=")
            out.setdefault(key.strip(), []).append(value.strip())
    return out

def start(name):
    u = unit(name)
    pw, gid = pwd.getpwnam(u["User"][0]), grp.getgrnam(u["Group"][0]).gr_gid
    for d in u.get("StateDirectory", []):
        path = "/var/lib/" + d
        os.makedirs(path, exist_ok=True)
        os.chown(path, pw.pw_uid, gid)
        os.chmod(path, int(u.get("StateDirectoryMode", ["0755"])[0], 8))
    env = {"PATH": "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin", "HOME": pw.pw_dir, "USER": pw.pw_name,
           "LOGNAME": pw.pw_name, "SHELL": pw.pw_shell, "LANG": "C.UTF-8"}
    env.update(e.split("=", 1) for e in u.get("Environment", []))
    proc = subprocess.Popen(shlex.split(u["ExecStart"][0]), user=pw.pw_uid, group=gid, extra_groups=[],
                            umask=int(u.get("UMask", ["0022"])[0], 8), cwd=u.get("WorkingDirectory", ["/"])[0],
                            env=env, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
    def pump():
        for line in proc.stdout:
            sys.stdout.write(f"{name}: {line.decode(errors='replace')}")
            sys.stdout.flush()
        print(f"{name}: exited with status {proc.wait()}", flush=True)
    thread = threading.Thread(target=pump)
    thread.start()
    return proc, thread

if sys.argv[1] == "--once":
    proc, thread = start(sys.argv[2])
    thread.join()
    sys.exit(proc.returncode)
units = [start(n) for n in sys.argv[1:]]
stop = threading.Event()
signal.signal(signal.SIGTERM, lambda *_: stop.set())
stop.wait()
for proc, _ in units:
    proc.terminate()
for proc, thread in units:
    proc.wait(120)
    thread.join(10)
"""


def install_steps() -> dict[str, str]:
    """The plain-host section's shell blocks, by step name, as an administrator copies them."""
    text = (REPO / "docs" / "operations.md").read_text()
    return {m[1]: m[2] for m in re.finditer(r"<!-- install-step: (\w+) -->\n```bash\n(.*?)```", text, re.S)}


def source_tar() -> bytes:
    """The release as /opt/hexnode/src: the files git knows of (committed or not, never ignored),
    with the modes a clone under `umask 022` gives (as the install section says), whatever this
    checkout's umask was."""
    import tarfile

    def as_released(info: tarfile.TarInfo) -> tarfile.TarInfo:
        info.mode = 0o755 if info.isdir() or info.mode & 0o100 else 0o644
        info.uid = info.gid = 0
        info.uname = info.gname = "root"
        return info

    names = run(["git", "ls-files", "--cached", "--others", "--exclude-standard", "-z"]).stdout.split("\0")
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name in sorted(n for n in names if n and (REPO / n).is_file()):
            tar.add(REPO / name, arcname=f"src/{name}", filter=as_released)
    return buf.getvalue()


def test_plain_host_install_runs_the_units(stack: Stack, tmp_path: Path) -> None:
    steps = install_steps()
    assert list(steps) == ["packages", "user", "software", "config", "units", "start", "check"], list(steps)
    stack("stop", timeout=300)  # the stack's containers idle on the same CPUs otherwise
    name, image, volume = "hexnode-plainhost-test", "hexnode-plainhost:test", "hexnode-plainhost-data"
    ports = {k: free_port() for k in ("dicom", "web", "sink")}
    for cleanup in (["docker", "rm", "-f", name], ["docker", "volume", "rm", volume], ["docker", "rmi", image]):
        run(cleanup, check=False)
    received = tmp_path / "received"
    received.mkdir()
    sink = subprocess.Popen(["/usr/bin/storescp", "-aet", "PACS", "-od", str(received), str(ports["sink"])],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    timings: dict[str, float] = {}
    try:
        # A root to install into: the hexnode image's Debian (python3, python3-venv, libgomp1 are there;
        # the "packages" step is the only one not run). What the image's own layout would otherwise
        # answer for is removed first; its virtual environment (/opt/hexnode/.venv, built by
        # deploy/Dockerfile with the same pip commands) stands in for the empty one step 3 creates:
        # pip then finds every dependency installed and builds only hexnode itself, with no network.
        run(["docker", "run", "-d", "--name", name, "--network", "host", "--user", "0", "--entrypoint", "sleep",
             "hexnode:latest", "infinity"])
        # (/var/lib/hexnode is the image's VOLUME, a mount point here: given back to root, not removed)
        run(["docker", "exec", name, "sh", "-c", "userdel hexnode && rm -rf /etc/hexnode "
             "&& chown root:root /var/lib/hexnode && chmod 0755 /var/lib/hexnode"])
        proc = subprocess.run(["docker", "cp", "-", f"{name}:/opt/hexnode"], input=source_tar(), capture_output=True)
        assert proc.returncode == 0, proc.stderr
        # the one build dependency the image's environment lacks (versioneer, for pyradiomics' build),
        # handed to pip as a local folder, as on a site without internet access
        wheels = tmp_path / "wheels"
        run([sys.executable, "-m", "pip", "download", "--no-deps", "-q", "-d", str(wheels), "versioneer>=0.29"])
        run(["docker", "cp", str(wheels), f"{name}:/tmp/wheels"])
        for step in ("user", "software", "config", "units"):
            t = time.monotonic()
            run(["docker", "exec", "-e", "PIP_NO_INDEX=1", "-e", "PIP_FIND_LINKS=/tmp/wheels", name,
                 "bash", "-euxo", "pipefail", "-c", steps[step]], timeout=600)
            timings[step] = round(time.monotonic() - t, 1)
        # the administrator's edits (the lines marked EDIT), for this machine's free ports
        settings = "/etc/hexnode/hexnode.toml"
        edits = {'bind = "0.0.0.0"': 'bind = "127.0.0.1"', "port = 11112": f"port = {ports['dicom']}",
                 'host = "pacs.hospital.example"': 'host = "127.0.0.1"', "port = 104": f"port = {ports['sink']}",
                 "port = 8470": f"port = {ports['web']}"}
        script = "import sys; p = sys.argv[1]; t = open(p).read()\n" + "".join(
            f"assert t.count({old!r}) == 1, {old!r}; t = t.replace({old!r}, {new!r})\n" for old, new in edits.items()
        ) + "open(p, 'w').write(t)\n"
        run(["docker", "exec", name, "python3", "-c", script, settings])
        listing = run(["docker", "exec", name, "stat", "-c", "%n %a %U %G", "/etc/hexnode", settings, "/var/lib/hexnode",
                       "/etc/systemd/system/hexnode-receive.service", "/etc/systemd/system/hexnode-purge.timer"]).stdout
        assert listing.split("\n")[:3] == ["/etc/hexnode 750 root hexnode", f"{settings} 640 root hexnode",
                                           "/var/lib/hexnode 700 hexnode hexnode"], listing
        run(["docker", "commit", name, image])
        run(["docker", "rm", "-f", name])

        # ProtectSystem=strict and PrivateTmp: the root read-only, /var/lib/hexnode (StateDirectory)
        # and a private /tmp writable. (A commit leaves out the VOLUME's content: the new volume starts
        # as the image's folder, and the runner gives it to the hexnode user as StateDirectory= does.)
        stages = ["hexnode-receive", "hexnode-route", "hexnode-worker", "hexnode-send", "hexnode-web"]
        run(["docker", "run", "-d", "--name", name, "--network", "host", "--user", "0", "--read-only",
             "--tmpfs", "/tmp", "--tmpfs", "/run", "-v", f"{volume}:/var/lib/hexnode", "--entrypoint", "python3",
             image, "-c", UNIT_RUNNER, *stages])
        t = time.monotonic()
        health_loop = steps["check"].splitlines()[0]  # the check step's `hexnode health` for every stage
        assert health_loop.startswith("for s in receive route worker send web; do runuser -u hexnode")

        def healthy() -> bool:
            # -e: every stage's check must pass, not only the loop's last
            return run(["docker", "exec", name, "bash", "-ec", health_loop], check=False, timeout=120).returncode == 0

        try:
            wait_for(healthy, 180, "the units never became healthy", every=2)
        except TimeoutError:
            raise AssertionError(stack.container_logs(name)[-5000:]) from None
        timings["healthy_after_start_s"] = round(time.monotonic() - t, 1)

        # a series as the PACS sends it, the results back at the PACS
        t = time.monotonic()
        study = generate_uid()
        files = write_series(tmp_path / "ct", n=12, rows=64, cols=64, study_uid=study, SeriesNumber=2)
        storescu(files, ports["dicom"], calling="PACS", called="HEXNODE")

        def results() -> dict[str, int]:
            classes: dict[str, int] = {}
            for f in received.rglob("*"):
                if f.is_file():
                    cls = str(pydicom.dcmread(f, stop_before_pixels=True).SOPClassUID)
                    kind = "seg" if cls == SEG_CLASS else "sr" if cls in SR_CLASSES else "sc" if cls in SC_CLASSES else cls
                    classes[kind] = classes.get(kind, 0) + 1
            return classes

        try:
            got = wait_for(lambda: (r := results()).get("sr") and r.get("sc") and r, 240, "no results", every=1)
        except TimeoutError:
            raise AssertionError(stack.container_logs(name)[-6000:]) from None
        timings["series_to_results_s"] = round(time.monotonic() - t, 1)
        assert got["sr"] == 1 and got["sc"] == 1 and got.get("seg", 0) <= 1, got

        # everything written is under /var/lib/hexnode, the hexnode user's alone
        loose = run(["docker", "exec", name, "find", "/var/lib/hexnode", "(", "!", "-user", "hexnode", "-o", "-perm",
                     "/077", ")", "-printf", "%p %m %u\n"]).stdout
        assert loose == "", loose
        owned = run(["docker", "exec", name, "find", "/var/lib/hexnode", "-maxdepth", "1", "-printf", "%f\n"]).stdout.split()
        assert {"hexnode.sqlite", "spool"} <= set(owned), owned
        # the web unit: every stage beating, nothing needing attention, the delivery counted
        req = urllib.request.Request(f"http://127.0.0.1:{ports['web']}/status")
        with urllib.request.urlopen(req, timeout=30) as resp:
            st = json.loads(resp.read())
        assert all(v["processes"] == 1 for v in st["stages"].values()) and st["overall"] == "green", st["attention"]
        assert st["destinations"]["pacs"]["last_delivered_seconds"] is not None
        # the purge unit (what hexnode-purge.timer starts) runs as the hexnode user and succeeds
        purge = run(["docker", "exec", name, "python3", "-c", UNIT_RUNNER, "--once", "hexnode-purge"], check=False)
        assert purge.returncode == 0, purge.stdout + purge.stderr
        logs = stack.container_logs(name)
        assert "exited with status" not in logs, logs[-3000:]  # no unit died on the read-only root
        assert "hexnode-worker: " in logs and "hexnode-receive: " in logs
        t = time.monotonic()
        run(["docker", "stop", "-t", "120", name], timeout=180)
        timings["stop_s"] = round(time.monotonic() - t, 1)
        assert "exited with status 0" in stack.container_logs(name)
    finally:
        sink.terminate()
        sink.wait(10)
        (OUT / "plain-host.log").write_text(stack.container_logs(name))
        for cleanup in (["docker", "rm", "-f", name], ["docker", "volume", "rm", volume], ["docker", "rmi", image]):
            run(cleanup, check=False)
        all_timings = json.loads((OUT / "timings.json").read_text())
        all_timings["plain_host"] = timings
        (OUT / "timings.json").write_text(json.dumps(all_timings, indent=2))
