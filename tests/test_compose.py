"""docker-compose.yml for real: the images built here (Debian base from debootstrap, no registry),
the stack (one container per stage: receive, route, worker, send, web) started by compose on a
real dockerd, a synthetic head CT sent with dcmtk's storescu to the Orthanc container and SEG, SR
and SC read back from it, the web container's /status counting the job; the worker container killed mid-job
and started again gives exactly one result set; `down` and `up` without -v keep the spool, the
database and what was delivered; two worker containers on the PostgreSQL container share the
queue, each series analysed once; `down -v` at the end removes the volumes.

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
import subprocess
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
from hexnode.devtools.net import free_port
from hexnode.store.db import Event, Job, Outbox, Series, open_store

REPO = Path(__file__).resolve().parent.parent
OUT = REPO / "tests" / "output" / "compose"
PROJECT = "hexnode-compose-test"
BASE_IMAGE = "hexnode-base:bookworm"
PASSWORD = "compose-test"
DCIODVFY = "/usr/bin/dciodvfy"
# One compose test per machine at a time: the images, the project name and dockerd are shared.
LOCK = Path("/tmp/hexnode-compose-test.lock")
LEASE_SECONDS = 15  # the killed worker's job comes back after this (production: 120 s)
WEB_TOKEN = "compose-test-token"

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


def wait_for(cond: Callable[[], Any], timeout: float, what: str, every: float = 0.5) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = cond()
        if value:
            return value
        time.sleep(every)
    raise TimeoutError(what)


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
            wait_for(lambda: proc.poll() is not None or docker_answers(), 90, "dockerd did not come up")
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
    hexnode_services = [name for name, svc in services.items() if svc.get("image") == "hexnode:latest"]
    assert set(hexnode_services) == {"hexnode-receive", "hexnode-route", "hexnode-worker", "hexnode-worker-cpu",
                                     "hexnode-send", "hexnode-web"}
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
            raise AssertionError(f"not healthy after {timeout:.0f} s: {self.health()}\n{self.logs()[-4000:]}") from None

    def logs(self, service: str | None = None) -> str:
        return self("logs", "--no-color", *([service] if service else []), check=False).stdout

    def container_logs(self, cid: str) -> str:
        proc = run(["docker", "logs", cid], check=False)
        return proc.stdout + proc.stderr

    # Orthanc, over its REST API on loopback
    def orthanc(self, path: str, body: Any = None) -> Any:
        url = f"http://127.0.0.1:{self.ports['orthanc_http']}{path}"
        data = None if body is None else (body if isinstance(body, bytes) else json.dumps(body).encode())
        with urllib.request.urlopen(urllib.request.Request(url, data=data), timeout=30) as resp:
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
    env = {**os.environ, "POSTGRES_PASSWORD": PASSWORD, "HEXNODE_BASE_IMAGE": BASE_IMAGE}
    ports = {k: free_port() for k in ("postgres", "orthanc_dicom", "orthanc_http", "hexnode", "web")}
    toml = OUT / "hexnode.toml"
    toml.write_text(loopback_hexnode_toml(ports))
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
                    "hexnode-web"):
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
    stack.down()
    assert len(stack.volumes()) == 3 and stack.containers() == []
    stack.up(workers=1)
    assert stack.spool_files() == spool
    assert stack.results(study).sop_uids == res.sop_uids
    [job] = stack.jobs(series)
    assert (job.state, job.attempts) == ("done", 2)
    # the same series again: the index survived, so hexnode sees only duplicates — no second result
    before = stack.routed()
    stack.send(paths)
    wait_for(lambda: stack.routed() > before, 60, "Orthanc did not route the resent series")
    time.sleep(8)  # > hexnode's stable time + a completion check + a send poll
    again = stack.results(study)
    assert again.counts == (1, 1, 1) and again.sop_uids == res.sop_uids
    assert [(j.revision, j.state) for j in stack.jobs(series)] == [(0, "done")]
    assert stack.db(lambda s: sorted(o.state for o in s.execute(select(Outbox)).scalars())) == ["delivered"] * 3


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


def test_hexnode_image_holds_the_runtime_only(stack: Stack) -> None:
    listed = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "pip", "hexnode:latest", "list",
                  "--format", "json"]).stdout
    names = {p["name"].lower() for p in json.loads(listed)}
    assert {"hexnode", "onnxruntime-gpu", "pyradiomics", "lightgbm", "highdicom", "psycopg"} <= names
    assert not names & {"torch", "onnx", "scikit-learn", "pytest", "ruff", "mypy"}, names & {"torch", "onnx"}
    user = run(["docker", "run", "--rm", "--network", "none", "--entrypoint", "id", "hexnode:latest", "-u"]).stdout
    assert user.strip() == "10001"  # not root
