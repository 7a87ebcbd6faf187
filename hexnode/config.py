"""hexnode settings: one documented TOML file (`deploy/hexnode.toml`) plus environment overrides.

Every key has a sane default, so `hexnode node` (or any stage) runs with no file at all. Values are validated
at start-up; an unknown key is an error (a typo in a hospital config must not pass silently).

Environment overrides use `HEXNODE_<SECTION>_<KEY>`, e.g. `HEXNODE_DATABASE_URL`,
`HEXNODE_DICOM_PORT`. The config file itself is found from `--config`, then `HEXNODE_CONFIG`,
then `./hexnode.toml`.
"""

from __future__ import annotations

import dataclasses
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The settings file or an override is invalid; the message says which key and why."""


@dataclass
class TLSConfig:
    enabled: bool = False
    cert_file: str = ""
    key_file: str = ""
    ca_file: str = ""  # when set, peers must present a certificate signed by this CA
    require_client_cert: bool = False


@dataclass
class DicomConfig:
    ae_title: str = "HEXNODE"
    bind: str = "127.0.0.1"
    port: int = 11112
    # Empty list: accept any calling AE. Otherwise only these may associate.
    allowed_calling_aes: list[str] = field(default_factory=list)
    # Reject associations whose called AE title is not ours.
    require_called_ae: bool = True
    # The Maximum Length Received we advertise, enforced: a P-DATA-TF PDU longer than this is
    # answered A-ABORT before its body is read (hexnode/receive/limits.py). 0 = not limited (a
    # peer can make the receiver buffer any length it claims).
    max_pdu_size: int = 4 * 1024 * 1024
    # The receive fast path (hexnode/receive/fastpath.py): event-driven wake-ups and direct file
    # writes inside pynetdicom's receive path, ~2.5 x pynetdicom's own rate (bench/receive.py).
    # false: plain pynetdicom (chunked receive), e.g. to rule the patches out when diagnosing.
    fast_receive: bool = True
    max_associations: int = 10
    # Hostile and broken peers (hexnode/receive/gate.py): a connection must send a valid
    # A-ASSOCIATE-RQ within this long; until then it waits in a separate pool of this size (the
    # oldest is dropped when it is full), so it never holds one of the max_associations slots.
    association_request_timeout_seconds: float = 5.0
    max_pending_connections: int = 256
    # Open connections (waiting or associated) from one IP address.
    max_connections_per_address: int = 10
    # No data for this long (between PDUs, or in the middle of one): the association is cut off.
    network_timeout_seconds: float = 60.0
    # At most one WARNING line per refused or broken peer address per this many seconds.
    peer_log_interval_seconds: float = 60.0
    # Checked as the dataset's fragments arrive: a transfer that would take the spool's free space
    # below this is aborted (A-ABORT) before it does; below it already, C-STORE answers 0xA700.
    min_free_disk_mb: int = 1024
    # One instance (its dataset as received, or inflated when deflated) larger than this: the
    # association is aborted as the fragments cross it (a deflated one: 0xA700). 0 = no cap.
    max_instance_mb: int = 1024
    # Memory the indexer may allocate beyond its start-up footprint (RLIMIT_DATA): a header that
    # needs more is quarantined instead of taking the machine's memory. 0 = not limited.
    indexer_memory_mb: int = 512
    tls: TLSConfig = field(default_factory=TLSConfig)


@dataclass
class Destination:
    """Where results go. `kind` is "dicom" (C-STORE) or "stow" (DICOMweb STOW-RS)."""

    name: str = "pacs"
    kind: str = "dicom"
    ae_title: str = "ORTHANC"
    host: str = "127.0.0.1"
    port: int = 4242
    url: str = ""  # for kind = "stow", e.g. http://127.0.0.1:8042/dicom-web
    # The calling AEs whose series go back to this destination; empty = every series.
    for_calling_aes: list[str] = field(default_factory=list)
    tls: bool = False
    tls_ca_file: str = ""  # verify the peer against this CA (empty: system CAs)
    tls_cert_file: str = ""  # our client certificate, if the peer requires one
    tls_key_file: str = ""
    bearer_token: str = ""  # STOW-RS: sent as "Authorization: Bearer ..." when set
    timeout_seconds: float = 30.0


@dataclass
class DatabaseConfig:
    # Empty: SQLite file `hexnode.sqlite` in the data dir. PostgreSQL for several workers:
    # postgresql+psycopg://user@host:5432/db
    url: str = ""


@dataclass
class SeriesConfig:
    stable_seconds: float = 10.0
    check_interval_seconds: float = 1.0
    # After a sender stopped part-way (A-ABORT, or failed C-STOREs), how long completion waits for
    # the rest (a PACS retries the failed part); then the series is analysed only if whole.
    aborted_wait_seconds: float = 120.0
    # The study is the unit of the answer: its series are decided together once no instance of the
    # study has arrived for this long (a PACS routing a whole study sends series one after another).
    study_settle_seconds: float = 10.0
    # Selection rules; empty = the built-in head NCCT rules (see hexnode/route/rules.py).
    selection: dict[str, Any] = field(default_factory=dict)


@dataclass
class ReportConfig:
    # False: one "not analysed" SR + SC per study that has no analysable series, none for series
    # passed over or never candidates. True: also one per rejected CT series (the older behaviour).
    per_series_not_analysed: bool = False


@dataclass
class ModelsConfig:
    dir: str = ""  # empty: the repository's models/ folder
    # Tried in order; unavailable providers are skipped (CPU is always last).
    providers: list[str] = field(
        default_factory=lambda: ["TensorrtExecutionProvider", "CUDAExecutionProvider", "CPUExecutionProvider"]
    )


@dataclass
class WorkerConfig:
    lease_seconds: float = 120.0
    heartbeat_seconds: float = 10.0
    max_attempts: int = 3
    poll_seconds: float = 0.5
    # Worker processes `hexnode node` starts (each loads the models once; one per GPU or a few
    # per CPU host). Separately started workers (`hexnode worker`, compose --scale) ignore it.
    processes: int = 1


@dataclass
class SendConfig:
    backoff_initial_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    max_age_seconds: float = 24 * 3600.0
    poll_seconds: float = 0.5


@dataclass
class SpoolConfig:
    dir: str = ""  # empty: `spool/` in the data dir
    retention_days: float = 30.0
    # Every received file is complete and renamed into place before Success, so a killed process
    # loses nothing. fsync (survives a power cut) happens when the file is indexed, a few ms to a
    # second later, unless this is true: then before Success, at a cost of 1-10 ms per instance.
    fsync_before_success: bool = False


@dataclass
class HttpConfig:
    enabled: bool = False
    bind: str = "127.0.0.1"
    port: int = 8470
    token: str = ""  # required when bind is not loopback


@dataclass
class FollowupConfig:
    """Follow-up scans (hexnode/route/followup.py): a patient's later NCCT is measured against the
    first analysed scan of the episode, and the pair becomes one of the site's outcomes."""

    enabled: bool = False
    # Site secret for the patient key, HMAC-SHA256(secret, Patient ID + Issuer of Patient ID): the
    # database holds only that key, never the ID. Required when enabled; prefer the environment
    # (HEXNODE_FOLLOWUP_SECRET) to the file. At least 16 characters.
    secret: str = ""
    # A scan min_hours .. max_hours after the episode's baseline is its follow-up; earlier it is a
    # repeat of the baseline (no outcome); later it starts a new episode (it is a new baseline).
    min_hours: float = 3.0
    max_hours: float = 168.0
    # Expansion observed: "6ml-33pct" (growth > 6 ml or > 33 %) or "12.5ml-33pct" (> 12.5 ml or > 33 %).
    definition: str = "6ml-33pct"
    # hexnode recalibrate: the least pairs and events (observed expansions) it refits on, and the
    # threshold rule: 0 = Youden, else the highest threshold reaching this sensitivity.
    min_pairs: int = 100
    min_events: int = 20
    target_sensitivity: float = 0.0
    # Drift warning: with at least drift_min_pairs, the observed rate outside the 95 % interval of
    # the predicted one, or ECE (10 bins) above drift_max_ece.
    drift_min_pairs: int = 50
    drift_max_ece: float = 0.10


@dataclass
class NotifyConfig:
    """`[notify]`: what every notification target shares (hexnode/notify)."""

    # The site's OHIF viewer (e.g. https://ohif.hospital.example): messages link to
    # <viewer_url>/viewer?StudyInstanceUIDs=<study UID>. Empty: no link.
    viewer_url: str = ""
    backoff_initial_seconds: float = 2.0
    backoff_max_seconds: float = 120.0
    # An alert not delivered within this long is `failed` (visible in `hexnode status`; `hexnode resend`).
    max_age_seconds: float = 6 * 3600.0


@dataclass
class NotificationTarget:
    """One `[[notifications]]` entry: a kind (webhook | email | hl7), the triggers it listens to, a target."""

    name: str = ""
    kind: str = "webhook"
    # high_risk | expansion_observed | not_analysed | delivery_failed | drift_warning
    triggers: list[str] = field(default_factory=lambda: ["high_risk"])
    for_calling_aes: list[str] = field(default_factory=list)  # empty: series from every sender
    # PHI decision: messages carry no patient name, ID or birth date. A site that needs them (e.g. an
    # interface engine that files by patient ID) turns fields on here: patient_name, patient_id, birth_date.
    phi_fields: list[str] = field(default_factory=list)
    timeout_seconds: float = 10.0
    # webhook: HTTP POST of JSON. format: teams (Adaptive Card, Teams Workflows), slack (Block Kit), json.
    url: str = ""
    format: str = "json"
    bearer_token: str = ""
    tls_ca_file: str = ""  # https: verify against this CA (empty: system CAs)
    # email (SMTP). security: starttls (port 587), tls (implicit, port 465), none (a local relay only).
    smtp_host: str = "127.0.0.1"
    smtp_port: int = 587
    security: str = "starttls"
    username: str = ""
    password: str = ""
    mail_from: str = "hexnode@localhost"
    mail_to: list[str] = field(default_factory=list)
    # hl7: ORU^R01 over MLLP to an interface engine; the ACK (MSA-1 AA/CA) is checked.
    host: str = "127.0.0.1"
    port: int = 2575
    sending_application: str = "HEXNODE"
    sending_facility: str = ""
    receiving_application: str = ""
    receiving_facility: str = ""


@dataclass
class Config:
    data_dir: str = "var"
    log_level: str = "INFO"
    dicom: DicomConfig = field(default_factory=DicomConfig)
    destinations: list[Destination] = field(default_factory=lambda: [Destination()])
    database: DatabaseConfig = field(default_factory=DatabaseConfig)
    series: SeriesConfig = field(default_factory=SeriesConfig)
    report: ReportConfig = field(default_factory=ReportConfig)
    models: ModelsConfig = field(default_factory=ModelsConfig)
    worker: WorkerConfig = field(default_factory=WorkerConfig)
    send: SendConfig = field(default_factory=SendConfig)
    spool: SpoolConfig = field(default_factory=SpoolConfig)
    http: HttpConfig = field(default_factory=HttpConfig)
    followup: FollowupConfig = field(default_factory=FollowupConfig)
    notify: NotifyConfig = field(default_factory=NotifyConfig)
    notifications: list[NotificationTarget] = field(default_factory=list)

    # Derived paths, so no module builds them twice.
    @property
    def data_path(self) -> Path:
        return Path(self.data_dir).expanduser().resolve()

    @property
    def spool_path(self) -> Path:
        return Path(self.spool.dir).expanduser().resolve() if self.spool.dir else self.data_path / "spool"

    @property
    def database_url(self) -> str:
        return self.database.url or f"sqlite:///{self.data_path / 'hexnode.sqlite'}"

    @property
    def model_versions_path(self) -> Path:
        """Where `hexnode recalibrate` writes new model versions (one folder each)."""
        return self.data_path / "models"

    @property
    def models_path(self) -> Path:
        if self.models.dir:
            return Path(self.models.dir).expanduser().resolve()
        return Path(__file__).resolve().parent.parent / "models"


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a TOML table, recursing into nested dataclasses."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    fields = {f.name: f for f in dataclasses.fields(cls)}
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown setting (known: {', '.join(sorted(fields))})")
        default = getattr(cls(), key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
        elif key == "destinations":
            if not isinstance(value, list):
                raise ConfigError(f"{where}.destinations: expected an array of tables")
            kwargs[key] = [_build(Destination, v, f"{where}.destinations[{i}]") for i, v in enumerate(value)]
        elif key == "notifications":
            if not isinstance(value, list):
                raise ConfigError(f"{where}.notifications: expected an array of tables")
            kwargs[key] = [_build(NotificationTarget, v, f"{where}.notifications[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[key] = _coerce(value, default, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    if isinstance(default, bool):
        if isinstance(value, str):
            if value.lower() in ("1", "true", "yes", "on"):
                return True
            if value.lower() in ("0", "false", "no", "off"):
                return False
        if not isinstance(value, bool):
            raise ConfigError(f"{where}: expected true/false, got {value!r}")
        return value
    if isinstance(default, int):
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if isinstance(default, float):
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(default, list):
        if isinstance(value, str):
            return [v.strip() for v in value.split(",") if v.strip()]
        if not isinstance(value, list):
            raise ConfigError(f"{where}: expected a list, got {value!r}")
        return value
    if isinstance(default, dict):
        if not isinstance(value, dict):
            raise ConfigError(f"{where}: expected a table, got {value!r}")
        return value
    if not isinstance(value, str):
        raise ConfigError(f"{where}: expected a string, got {value!r}")
    return value


def _env_overrides(env: dict[str, str]) -> dict[str, Any]:
    """HEXNODE_<SECTION>_<KEY>=value → {section: {key: value}}; HEXNODE_DATA_DIR for top-level."""
    out: dict[str, Any] = {}
    top = {f.name for f in dataclasses.fields(Config)}
    for name, value in env.items():
        if not name.startswith("HEXNODE_") or name == "HEXNODE_CONFIG":
            continue
        rest = name[len("HEXNODE_"):].lower()
        if rest in top:
            out[rest] = value
            continue
        section, _, key = rest.partition("_")
        if section in top and key:
            out.setdefault(section, {})[key] = value
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def validate(cfg: Config) -> Config:
    if not 0 < cfg.dicom.port < 65536:
        raise ConfigError(f"dicom.port: {cfg.dicom.port} is not a TCP port")
    if not cfg.dicom.ae_title or len(cfg.dicom.ae_title) > 16:
        raise ConfigError("dicom.ae_title: 1 to 16 characters")
    for d in cfg.destinations:
        if d.kind not in ("dicom", "stow"):
            raise ConfigError(f"destinations.{d.name}.kind: 'dicom' or 'stow', got {d.kind!r}")
        if d.kind == "stow" and not d.url:
            raise ConfigError(f"destinations.{d.name}.url: required for kind = 'stow'")
    for key in ("association_request_timeout_seconds", "network_timeout_seconds"):
        if not getattr(cfg.dicom, key) > 0:
            raise ConfigError(f"dicom.{key}: must be > 0")
    for key in ("max_associations", "max_pending_connections", "max_connections_per_address"):
        if getattr(cfg.dicom, key) < 1:
            raise ConfigError(f"dicom.{key}: must be >= 1")
    for key in ("max_pdu_size", "max_instance_mb", "indexer_memory_mb", "min_free_disk_mb"):
        if getattr(cfg.dicom, key) < 0:
            raise ConfigError(f"dicom.{key}: must be >= 0")
    if 0 < cfg.dicom.max_pdu_size < 4096:
        raise ConfigError("dicom.max_pdu_size: 0 (not limited) or at least 4096 bytes")
    if 0 < cfg.dicom.indexer_memory_mb < 64:
        raise ConfigError("dicom.indexer_memory_mb: 0 (not limited) or at least 64 MB")
    if cfg.worker.processes < 1:
        raise ConfigError("worker.processes: must be >= 1")
    if cfg.dicom.peer_log_interval_seconds < 0:
        raise ConfigError("dicom.peer_log_interval_seconds: must be >= 0")
    if cfg.dicom.tls.enabled and not (cfg.dicom.tls.cert_file and cfg.dicom.tls.key_file):
        raise ConfigError("dicom.tls: cert_file and key_file are required when enabled")
    loopback = cfg.http.bind in ("127.0.0.1", "::1", "localhost")
    if cfg.http.enabled and not loopback and not cfg.http.token:
        raise ConfigError("http.token: required when http.bind is not loopback")
    if cfg.series.stable_seconds < 0:
        raise ConfigError("series.stable_seconds: must be >= 0")
    if cfg.series.aborted_wait_seconds < 0:
        raise ConfigError("series.aborted_wait_seconds: must be >= 0")
    if cfg.series.study_settle_seconds < 0:
        raise ConfigError("series.study_settle_seconds: must be >= 0")
    fu = cfg.followup
    if fu.enabled and len(fu.secret) < 16:
        raise ConfigError("followup.secret: follow-up linking is enabled but the site secret is "
                          + ("missing" if not fu.secret else "shorter than 16 characters")
                          + "; set [followup] secret or HEXNODE_FOLLOWUP_SECRET (patients are stored only as "
                            "HMAC-SHA256 keys under it)")
    if not 0 <= fu.min_hours < fu.max_hours:
        raise ConfigError("followup: 0 <= min_hours < max_hours required")
    if fu.definition not in ("6ml-33pct", "12.5ml-33pct"):
        raise ConfigError(f"followup.definition: '6ml-33pct' or '12.5ml-33pct', got {fu.definition!r}")
    if fu.min_pairs < 2 or fu.min_events < 1:
        raise ConfigError("followup: min_pairs >= 2 and min_events >= 1 required")
    if not 0 <= fu.target_sensitivity < 1:
        raise ConfigError("followup.target_sensitivity: 0 (Youden) or a sensitivity below 1")
    _validate_notifications(cfg)
    if cfg.log_level.upper() not in ("DEBUG", "INFO", "WARNING", "ERROR"):
        raise ConfigError(f"log_level: DEBUG, INFO, WARNING or ERROR, got {cfg.log_level!r}")
    return cfg


NOTIFICATION_KINDS = ("webhook", "email", "hl7")
NOTIFICATION_TRIGGERS = ("high_risk", "expansion_observed", "not_analysed", "delivery_failed", "drift_warning")
PHI_FIELDS = ("patient_name", "patient_id", "birth_date")


def _validate_notifications(cfg: Config) -> None:
    names: set[str] = set()
    for i, n in enumerate(cfg.notifications):
        where = f"notifications[{i}]"
        if not n.name or len(n.name) > 64:
            raise ConfigError(f"{where}.name: 1 to 64 characters (it names the target in status and the database)")
        if n.name in names:
            raise ConfigError(f"{where}.name: {n.name!r} is used twice")
        names.add(n.name)
        if n.kind not in NOTIFICATION_KINDS:
            raise ConfigError(f"{where}.kind: one of {', '.join(NOTIFICATION_KINDS)}, got {n.kind!r}")
        for key, allowed in (("triggers", NOTIFICATION_TRIGGERS), ("phi_fields", PHI_FIELDS)):
            bad = [v for v in getattr(n, key) if v not in allowed]
            if bad:
                raise ConfigError(f"{where}.{key}: {bad} not among {', '.join(allowed)}")
        if not n.triggers:
            raise ConfigError(f"{where}.triggers: at least one")
        if not n.timeout_seconds > 0:
            raise ConfigError(f"{where}.timeout_seconds: must be > 0")
        if n.kind == "webhook":
            if not n.url.startswith(("http://", "https://")):
                raise ConfigError(f"{where}.url: an http:// or https:// URL is required for a webhook")
            if n.format not in ("teams", "slack", "json"):
                raise ConfigError(f"{where}.format: teams, slack or json, got {n.format!r}")
        elif n.kind == "email":
            if not n.mail_to:
                raise ConfigError(f"{where}.mail_to: at least one address")
            if n.security not in ("starttls", "tls", "none"):
                raise ConfigError(f"{where}.security: starttls, tls or none, got {n.security!r}")
            if n.username and n.security == "none":
                raise ConfigError(f"{where}.security: a password is never sent in clear; use starttls or tls")
        elif not 0 < n.port < 65536:
            raise ConfigError(f"{where}.port: {n.port} is not a TCP port")
    for key in ("backoff_initial_seconds", "backoff_max_seconds", "max_age_seconds"):
        if not getattr(cfg.notify, key) > 0:
            raise ConfigError(f"notify.{key}: must be > 0")


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the settings file (if any), apply environment overrides, validate."""
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    candidate = Path(path) if path else (Path(env["HEXNODE_CONFIG"]) if env.get("HEXNODE_CONFIG") else None)
    if candidate is None and Path("hexnode.toml").is_file():
        candidate = Path("hexnode.toml")
    if candidate is not None:
        try:
            raw = tomllib.loads(candidate.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {candidate} does not exist") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{candidate}: {exc}") from None
    raw = _merge(raw, _env_overrides(env))
    return validate(_build(Config, raw, "config"))
