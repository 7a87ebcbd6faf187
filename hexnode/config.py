"""hexnode settings: one documented TOML file (`deploy/hexnode.toml`) plus environment overrides.

Every key has a sane default, so `hexnode node` (or any stage) runs with no file at all. Values are validated
at start-up; an unknown key is an error (a typo in a hospital config must not pass silently).

The file is found from `--config`, then `HEXNODE_CONFIG`, then `./hexnode.toml`. Every key can be
overridden from the environment: `HEXNODE_` and the key's path in upper case, parts joined by `_`:

    HEXNODE_LOG_LEVEL=DEBUG                     log_level (top level)
    HEXNODE_DICOM_PORT=104                      [dicom] port: typed like the TOML (an integer)
    HEXNODE_DICOM_TLS_ENABLED=true              [dicom.tls] enabled (a nested table)
    HEXNODE_DICOM_ALLOWED_CALLING_AES=CT1,CT2   a list: comma-separated, or JSON '["CT1","CT2"]'
    HEXNODE_DESTINATIONS_0_HOST=pacs.example    the first [[destinations]] (an array of tables)
    HEXNODE_DESTINATIONS_1_KIND=stow            index = the count: adds one (defaults + what is set)
    HEXNODE_DESTINATIONS='[{"name": "pacs", "host": "10.0.0.5", "port": 104}]'   the whole array (JSON)
    HEXNODE_DICOM_TLS='{"enabled": true, "cert_file": "/etc/hexnode/tls/node.crt"}'  a table (JSON, merged)
    HEXNODE_SERIES_SELECTION_DISABLE='["head"]' a key of a free-form table: JSON (else plain text)

A name that is not a setting is an error naming the variable (apart from NOT_SETTINGS: variables
of other tools that share the prefix). A file's array absent from the file starts from its
defaults (one destination `pacs`), so `HEXNODE_DESTINATIONS_0_HOST` works without a file.

Schema style: every setting is a field with a default of a dataclass here; a nested table is a
field whose default is a dataclass, an array of tables a `list[SomeDataclass]` field. The loader,
the environment overrides and the docs test (tests/deploy/test_docs.py) read the schema from those
declarations, so a new key needs nothing else here.
"""

from __future__ import annotations

import dataclasses
import json
import os
import tomllib
import typing
import urllib.parse
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


class ConfigError(ValueError):
    """The settings file or an override is invalid; the message says which key and why."""


class DatabaseMissing(RuntimeError):
    """A command that reads the node's database found none where the settings point
    (hexnode.store.db.open_existing): it must not make a new, empty one and report from it."""


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
    # The name the peer's certificate must carry (and the SNI sent); empty: `host` (dicom) or the
    # URL's host (stow). For a peer addressed by IP whose certificate names a host.
    tls_server_name: str = ""
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
    check_interval_seconds: float = 0.25
    # After a sender stopped part-way (A-ABORT, or failed C-STOREs), how long completion waits for
    # the rest (a PACS retries the failed part); then the series is analysed only if whole.
    aborted_wait_seconds: float = 120.0
    # The study is the unit of the answer: its series are decided together once no instance of the
    # study has arrived for this long (a PACS routing a whole study sends series one after another).
    study_settle_seconds: float = 10.0
    # Selection rules; empty = the built-in head NCCT rules (see hexnode/series/rules.py).
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
    poll_seconds: float = 0.25
    # Worker processes `hexnode node` starts (each loads the models once; one per GPU or a few
    # per CPU host). Separately started workers (`hexnode worker`, compose --scale) ignore it.
    processes: int = 1


@dataclass
class SendConfig:
    backoff_initial_seconds: float = 2.0
    backoff_max_seconds: float = 300.0
    max_age_seconds: float = 24 * 3600.0
    poll_seconds: float = 0.25


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
    token: str = ""  # required when bind is not loopback; at least 16 characters, not a known default
    # Host names (besides IP addresses and localhost) the page may be reached by; ".example.org"
    # also allows its subdomains. Any other Host header is refused (DNS rebinding).
    allowed_hosts: list[str] = field(default_factory=list)


@dataclass
class FollowupConfig:
    """Follow-up scans (hexnode/series/followup.py): a patient's later NCCT is measured against the
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
    tls_ca_file: str = ""  # https, SMTP TLS, MLLP over TLS: verify against this CA (empty: system CAs)
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
    # hl7: MLLP over TLS; the engine's certificate and name are verified (tls_ca_file), with
    # tls_server_name as the name when `host` is an IP; our client certificate if it asks for one.
    tls: bool = False
    tls_server_name: str = ""
    tls_cert_file: str = ""
    tls_key_file: str = ""


@dataclass
class Config:
    data_dir: str = "var"
    log_level: str = "INFO"
    # text: "time LEVEL logger: message"; json: one object per line (ts, level, stage, logger,
    # message, series ...) for a log collector. Either way one line per record.
    log_format: str = "text"
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


def _settings(cls: type) -> dict[str, dataclasses.Field[Any]]:
    """The settings of table `cls`: its init fields (``source`` and ``overrides`` are not settings)."""
    return {f.name: f for f in dataclasses.fields(cls) if f.init}


def _default(cls: type, key: str) -> Any:
    f = _settings(cls)[key]
    if f.default_factory is not dataclasses.MISSING:
        return f.default_factory()
    return f.default


def _array_item(cls: type, key: str) -> type | None:
    """The dataclass of an array of tables (`list[Destination]`: ``[[destinations]]``), else None."""
    hint = typing.get_type_hints(cls).get(key)
    if typing.get_origin(hint) is list:
        (item,) = typing.get_args(hint) or (None,)
        if isinstance(item, type) and dataclasses.is_dataclass(item):
            return item
    return None


def _build(cls: type, raw: dict[str, Any], where: str) -> Any:
    """Build dataclass `cls` from a TOML table, recursing into nested tables and arrays of tables."""
    if not isinstance(raw, dict):
        raise ConfigError(f"{where}: expected a table, got {type(raw).__name__}")
    fields = _settings(cls)
    kwargs: dict[str, Any] = {}
    for key, value in raw.items():
        if key not in fields:
            raise ConfigError(f"{where}.{key}: unknown setting (known: {', '.join(sorted(fields))})")
        default = _default(cls, key)
        item = _array_item(cls, key)
        if dataclasses.is_dataclass(default):
            kwargs[key] = _build(type(default), value, f"{where}.{key}")
        elif item is not None:
            if not isinstance(value, list):
                raise ConfigError(f"{where}.{key}: expected an array of tables")
            kwargs[key] = [_build(item, v, f"{where}.{key}[{i}]") for i, v in enumerate(value)]
        else:
            kwargs[key] = _coerce(value, default, f"{where}.{key}")
    return cls(**kwargs)


def _coerce(value: Any, default: Any, where: str) -> Any:
    """`value` (from TOML, or a string from the environment) as the type of `default`."""
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
        if isinstance(value, bool) or isinstance(value, float) and not value.is_integer():
            raise ConfigError(f"{where}: expected an integer, got {value!r}")
        try:
            return int(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected an integer, got {value!r}") from None
    if isinstance(default, float):
        if isinstance(value, bool):
            raise ConfigError(f"{where}: expected a number, got {value!r}")
        try:
            return float(value)
        except (TypeError, ValueError):
            raise ConfigError(f"{where}: expected a number, got {value!r}") from None
    if isinstance(default, list):
        if isinstance(value, str):
            if value.lstrip().startswith("["):
                value = _json(value, where)
            else:
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


def _json(text: str, where: str) -> Any:
    try:
        return json.loads(text)
    except ValueError as exc:  # the value itself is not quoted: it may hold a token or a password
        raise ConfigError(f"{where}: not valid JSON ({exc})") from None


# Names with the prefix that are not settings: the settings file itself, the compose build's base
# image, the Orthanc routing script's target (orthanc/hexnode_routing.py, in Orthanc's environment)
# and the test harness's own variables.
NOT_SETTINGS = frozenset({"HEXNODE_CONFIG", "HEXNODE_BASE_IMAGE", "HEXNODE_HOST", "HEXNODE_PORT", "HEXNODE_AET"})
NOT_SETTINGS_PREFIXES = ("HEXNODE_TEST_",)
ENV_PREFIX = "HEXNODE_"


@dataclass(frozen=True)
class EnvTarget:
    """What one environment variable sets: the path from the top (keys, and indexes into arrays
    of tables) and how its text is read."""

    path: tuple[str | int, ...]
    # value: typed like `default`; table: a JSON object merged into a table (or one array entry);
    # tables: a JSON array replacing an array of tables; free: a key of a free-form table (JSON, else text)
    kind: str
    default: Any = None

    @property
    def dotted(self) -> str:
        return "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in self.path).lstrip(".")


def _resolve(cls: type, tokens: list[str], path: tuple[str | int, ...]) -> list[EnvTarget]:
    """Every way `tokens` (the name's lower-case parts) name a setting below table `cls`."""
    out: list[EnvTarget] = []
    fields = _settings(cls)
    for k in range(1, len(tokens) + 1):
        name = "_".join(tokens[:k])
        if name not in fields:
            continue
        rest, here = tokens[k:], (*path, name)
        default = _default(cls, name)
        item = _array_item(cls, name)
        if dataclasses.is_dataclass(default):
            out += _resolve(type(default), rest, here) if rest else [EnvTarget(here, "table")]
        elif item is not None:
            if not rest:
                out.append(EnvTarget(here, "tables"))
            elif rest[0].isdigit():
                entry = (*here, int(rest[0]))
                out += _resolve(item, rest[1:], entry) if rest[1:] else [EnvTarget(entry, "table")]
        elif isinstance(default, dict):
            out.append(EnvTarget((*here, "_".join(rest)), "free") if rest else EnvTarget(here, "table"))
        elif not rest:
            out.append(EnvTarget(here, "value", default))
    return out


def env_target(name: str) -> EnvTarget | None:
    """The setting environment variable `name` overrides; None for a name that is not a setting
    (see NOT_SETTINGS). An unknown or ambiguous name is a ConfigError naming the variable."""
    if not name.startswith(ENV_PREFIX) or name in NOT_SETTINGS or name.startswith(NOT_SETTINGS_PREFIXES):
        return None
    tokens = name[len(ENV_PREFIX):].lower().split("_")
    found = _resolve(Config, tokens, ())
    if len(found) > 1:
        raise ConfigError(f"{name}: ambiguous, could set {' or '.join(t.dotted for t in found)}")
    if not found:
        raise ConfigError(f"{name}: no such setting ({_closest(tokens)}; "
                          f"arrays of tables by index, e.g. HEXNODE_DESTINATIONS_0_HOST)")
    return found[0]


def _closest(tokens: list[str]) -> str:
    """The deepest table the name's first parts reach, with its keys: what the admin may have meant."""
    cls: type = Config
    where = "top level"
    while tokens:
        for k in range(len(tokens), 0, -1):
            name = "_".join(tokens[:k])
            if name in _settings(cls):
                default = _default(cls, name)
                item = _array_item(cls, name)
                if dataclasses.is_dataclass(default):
                    cls, tokens, where = type(default), tokens[k:], f"{where}.{name}" if cls is not Config else name
                    break
                if item is not None and tokens[k:] and tokens[k].isdigit():
                    cls, tokens, where = item, tokens[k + 1:], f"{name}[{tokens[k]}]"
                    break
        else:
            break
    return f"{where} has: {', '.join(sorted(_settings(cls)))}"


def _env_value(name: str, text: str, target: EnvTarget) -> Any:
    where = f"{name} ({target.dotted})"
    if target.kind == "value":
        return _coerce(text, target.default, where)
    if target.kind == "free":  # typed by its JSON form, like TOML: true, 5.0, ["head"], {...}; else text
        try:
            return json.loads(text)
        except ValueError:
            return text
    value = _json(text, where)
    if target.kind == "tables":
        if not isinstance(value, list) or not all(isinstance(v, dict) for v in value):
            raise ConfigError(f"{where}: expected a JSON array of objects, e.g. '[{{\"name\": \"pacs\"}}]'")
    elif not isinstance(value, dict):
        raise ConfigError(f"{where}: expected a JSON object, e.g. '{{\"enabled\": true}}'")
    return value


def _put(raw: dict[str, Any], cls: type, path: tuple[str | int, ...], value: Any, kind: str, name: str) -> None:
    """Set `value` at `path` in the raw settings `raw` (a TOML table), creating what is missing.
    An array of tables absent from the file starts from its defaults (one `pacs` destination)."""
    key = path[0]
    assert isinstance(key, str)
    if len(path) == 1:
        if kind == "table" and isinstance(raw.get(key), dict):
            raw[key] = _merge(raw[key], value)
        else:
            raw[key] = value
        return
    default: Any = _default(cls, key)
    item = _array_item(cls, key)
    if item is not None:
        entries = raw.get(key)
        if entries is None:
            entries = raw[key] = [dataclasses.asdict(d) for d in default]
        if not isinstance(entries, list):
            raise ConfigError(f"{name}: {key} in the settings file is not an array of tables")
        index = path[1]
        assert isinstance(index, int)
        if index > len(entries):
            raise ConfigError(f"{name}: there are {len(entries)} {key}; the next index, {len(entries)}, adds one")
        if index == len(entries):
            entries.append({})
        if not isinstance(entries[index], dict):
            raise ConfigError(f"{name}: {key}[{index}] in the settings file is not a table")
        if len(path) == 2:
            entries[index] = _merge(entries[index], value)
        else:
            _put(entries[index], item, path[2:], value, kind, name)
        return
    sub = raw.setdefault(key, {})
    if not isinstance(sub, dict):
        raise ConfigError(f"{name}: {key} in the settings file is not a table")
    if dataclasses.is_dataclass(default):
        _put(sub, type(default), path[1:], value, kind, name)
    else:  # a free-form table: the rest of the name is one key
        sub[str(path[1])] = value


def apply_env(raw: dict[str, Any], env: dict[str, str]) -> tuple[dict[str, Any], list[str]]:
    """The settings file's table with every HEXNODE_* override applied; and the names applied.

    A whole table or array (JSON) before the keys inside it, entries by ascending index, so
    `HEXNODE_DESTINATIONS='[...]'` and `HEXNODE_DESTINATIONS_1_HOST` combine predictably."""
    found = [(name, target) for name in env if (target := env_target(name)) is not None]

    def order(item: tuple[str, EnvTarget]) -> tuple[tuple[int, str], ...]:
        # a path before the paths below it (a prefix sorts first), entries by index
        return tuple((p, "") if isinstance(p, int) else (-1, p) for p in item[1].path)

    out = _deepcopy(raw)
    for name, target in sorted(found, key=order):
        _put(out, Config, target.path, _env_value(name, env[name], target), target.kind, name)
    return out, sorted(name for name, _ in found)


def _deepcopy(value: Any) -> Any:
    if isinstance(value, dict):
        return {k: _deepcopy(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_deepcopy(v) for v in value]
    return value


def env_names(cls: type | None = None, prefix: str = ENV_PREFIX) -> list[str]:
    """Every setting's variable name (arrays of tables with index 0), for documentation and tests."""
    cls = cls or Config
    out: list[str] = []
    for name in _settings(cls):
        default = _default(cls, name)
        item = _array_item(cls, name)
        here = f"{prefix}{name.upper()}"
        if dataclasses.is_dataclass(default):
            out += env_names(type(default), here + "_")
        elif item is not None:
            out.append(here)
            out += env_names(item, here + "_0_")
        else:
            out.append(here)
    return out


def _merge(base: dict[str, Any], extra: dict[str, Any]) -> dict[str, Any]:
    merged = dict(base)
    for key, value in extra.items():
        if isinstance(value, dict) and isinstance(merged.get(key), dict):
            merged[key] = _merge(merged[key], value)
        else:
            merged[key] = value
    return merged


def redact_url(url: str) -> str:
    """A database URL without its password (in the user part or a `password=` query parameter)."""
    try:
        parts = urllib.parse.urlsplit(url)
        if parts.password is None and "password=" not in parts.query.lower():
            return url  # untouched: urlunsplit would drop the empty host of sqlite:////abs/path
        netloc = parts.netloc
        if parts.password is not None:
            netloc = f"{parts.username or ''}@{netloc.rsplit('@', 1)[1]}"
        query = "&".join(q for q in parts.query.split("&") if q and not q.lower().startswith("password="))
        return urllib.parse.urlunsplit(parts._replace(netloc=netloc, query=query))
    except ValueError:
        return url.split("://", 1)[0] + "://…"


# Tokens found in examples, defaults and guesses: refused whatever their length.
WEAK_TOKENS = frozenset({"hexnode", "changeme", "change-me", "password", "secret", "token", "admin", "test",
                         "default", "letmein", "hexnode-token", "changeme-token", "0123456789abcdef"})
MIN_TOKEN_LENGTH = 16


def weak_token(token: str) -> str | None:
    """Why a bearer token is too weak to guard the status page, or None."""
    if token.strip().lower() in WEAK_TOKENS:
        return "a well-known default"
    if len(token) < MIN_TOKEN_LENGTH:
        return f"shorter than {MIN_TOKEN_LENGTH} characters"
    if len(set(token)) < 6:
        return "too few distinct characters"
    return None


def validate(cfg: Config) -> Config:
    if not 0 < cfg.dicom.port < 65536:
        raise ConfigError(f"dicom.port: {cfg.dicom.port} is not a TCP port")
    if not cfg.dicom.ae_title or len(cfg.dicom.ae_title) > 16:
        raise ConfigError("dicom.ae_title: 1 to 16 characters")
    names = [d.name for d in cfg.destinations]
    for d in cfg.destinations:
        if not d.name or names.count(d.name) > 1:
            raise ConfigError(f"destinations: every destination needs a name of its own (got {names}): "
                              "deliveries are recorded per destination name")
        if d.kind not in ("dicom", "stow"):
            raise ConfigError(f"destinations.{d.name}.kind: 'dicom' or 'stow', got {d.kind!r}")
        if d.kind == "stow" and not d.url:
            raise ConfigError(f"destinations.{d.name}.url: required for kind = 'stow'")
        if d.kind == "stow" and not d.url.startswith(("http://", "https://")):
            raise ConfigError(f"destinations.{d.name}.url: an http:// or https:// URL is required")
        if d.kind == "stow" and d.tls and not d.url.startswith("https://"):
            raise ConfigError(f"destinations.{d.name}.url: tls = true needs an https:// URL")
        if d.kind == "stow" and d.bearer_token and not d.url.startswith("https://"):
            raise ConfigError(f"destinations.{d.name}.url: a bearer token is never sent in clear; "
                              "use an https:// URL")
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
    if cfg.http.token and weak_token(cfg.http.token):
        raise ConfigError(f"http.token: {weak_token(cfg.http.token)}; make one with `openssl rand -hex 24`")
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
    if cfg.log_format not in LOG_FORMATS:
        raise ConfigError(f"log_format: {' or '.join(LOG_FORMATS)}, got {cfg.log_format!r}")
    return cfg


LOG_FORMATS = ("text", "json")
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
            if n.bearer_token and not n.url.startswith("https://"):
                raise ConfigError(f"{where}.url: a bearer token is never sent in clear; use an https:// URL")
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


def config_file(path: str | Path | None = None, env: dict[str, str] | None = None) -> Path | None:
    """The settings file: `path` (--config), else $HEXNODE_CONFIG, else ./hexnode.toml if there is one."""
    env = dict(os.environ) if env is None else env
    if path:
        return Path(path)
    if env.get("HEXNODE_CONFIG"):
        return Path(env["HEXNODE_CONFIG"])
    return Path("hexnode.toml") if Path("hexnode.toml").is_file() else None


def load_config(path: str | Path | None = None, env: dict[str, str] | None = None) -> Config:
    """Read the settings file (if any), apply environment overrides, validate."""
    env = dict(os.environ) if env is None else env
    raw: dict[str, Any] = {}
    candidate = config_file(path, env)
    if candidate is not None:
        try:
            raw = tomllib.loads(candidate.read_text())
        except FileNotFoundError:
            raise ConfigError(f"config file {candidate} does not exist") from None
        except PermissionError:
            # a container runs as an unprivileged user with no capabilities: a 0600 file mounted
            # from a checkout made under umask 077 is unreadable to it
            raise ConfigError(f"config file {candidate} is not readable by uid {os.getuid()} "
                              "(make it readable: chmod 0644, or owned by that user)") from None
        except tomllib.TOMLDecodeError as exc:
            raise ConfigError(f"{candidate}: {exc}") from None
    raw, _ = apply_env(raw, env)
    cfg: Config = validate(_build(Config, raw, "config"))
    return cfg


def describe(cfg: Config, path: str | Path | None = None, env: dict[str, str] | None = None,
             *, database: bool = True) -> str:
    """One line: the settings file `cfg` was loaded from (with `path` and `env` as load_config had
    them), the environment variables that overrode it (names only: values may be secrets) and
    the database (its URL without a password)."""
    env = dict(os.environ) if env is None else env
    source = config_file(path, env)
    names = sorted(name for name in env if env_target(name) is not None)
    text = f"config {source.resolve() if source is not None else 'none (built-in defaults)'}"
    text += f" + {', '.join(names)}" if names else ""
    return text + (f"; database {redact_url(cfg.database_url)}" if database else "; no database")
