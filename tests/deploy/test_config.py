"""Settings: environment overrides for every key — scalars, nested tables, arrays of tables, lists,
free-form tables — typed like the TOML; an unknown name is an error naming the variable; which
file and which overrides were used is reported (hexnode/config.py)."""

from __future__ import annotations

import dataclasses
import os
import subprocess
import sys
from pathlib import Path

import pytest

from hexnode.config import (
    NOT_SETTINGS,
    Config,
    ConfigError,
    Destination,
    describe,
    env_names,
    env_target,
    load_config,
    redact_url,
)

FILE = """
data_dir = "/srv/hexnode"
[dicom]
port = 11112
allowed_calling_aes = ["CT1"]
[dicom.tls]
cert_file = "/etc/hexnode/tls/node.crt"
key_file = "/etc/hexnode/tls/node.key"
[[destinations]]
name = "pacs"
host = "10.0.0.5"
port = 104
[[destinations]]
name = "archive"
kind = "stow"
url = "https://archive.example/dicom-web"
"""


@pytest.fixture
def toml(tmp_path: Path) -> Path:
    path = tmp_path / "hexnode.toml"
    path.write_text(FILE)
    return path


def test_scalars_are_typed_like_the_toml(toml: Path) -> None:
    cfg = load_config(toml, env={"HEXNODE_DICOM_PORT": "104", "HEXNODE_DICOM_REQUIRE_CALLED_AE": "false",
                                 "HEXNODE_SERIES_STABLE_SECONDS": "2.5", "HEXNODE_LOG_LEVEL": "DEBUG",
                                 "HEXNODE_DATA_DIR": "/var/lib/hexnode", "HEXNODE_LOG_FORMAT": "json"})
    assert cfg.dicom.port == 104 and isinstance(cfg.dicom.port, int)
    assert cfg.dicom.require_called_ae is False
    assert cfg.series.stable_seconds == 2.5 and isinstance(cfg.series.stable_seconds, float)
    assert (cfg.log_level, cfg.data_dir, cfg.log_format) == ("DEBUG", "/var/lib/hexnode", "json")
    for name, value, says in (("HEXNODE_DICOM_PORT", "eleven", "expected an integer"),
                              ("HEXNODE_DICOM_PORT", "104.5", "expected an integer"),
                              ("HEXNODE_DICOM_FAST_RECEIVE", "maybe", "expected true/false"),
                              ("HEXNODE_SEND_BACKOFF_MAX_SECONDS", "soon", "expected a number"),
                              ("HEXNODE_LOG_FORMAT", "xml", "log_format: text or json")):
        with pytest.raises(ConfigError, match=says) as err:
            load_config(toml, env={name: value})
        if name != "HEXNODE_LOG_FORMAT":  # validation names the key; parsing names the variable too
            assert str(err.value).startswith(f"{name} (")


def test_nested_table_keys_and_a_whole_table_as_json(toml: Path) -> None:
    cfg = load_config(toml, env={"HEXNODE_DICOM_TLS_ENABLED": "true", "HEXNODE_DICOM_TLS_CA_FILE": "/etc/ca.pem"})
    assert cfg.dicom.tls.enabled is True and cfg.dicom.tls.ca_file == "/etc/ca.pem"
    assert cfg.dicom.tls.cert_file == "/etc/hexnode/tls/node.crt"  # the file's keys stay
    whole = load_config(toml, env={"HEXNODE_DICOM_TLS": '{"enabled": true, "require_client_cert": true}'})
    assert whole.dicom.tls.enabled and whole.dicom.tls.require_client_cert
    assert whole.dicom.tls.key_file == "/etc/hexnode/tls/node.key"  # merged, not replaced
    with pytest.raises(ConfigError, match="HEXNODE_DICOM_TLS .*expected a JSON object"):
        load_config(toml, env={"HEXNODE_DICOM_TLS": "[1]"})
    with pytest.raises(ConfigError, match="HEXNODE_DICOM_TLS .*not valid JSON"):
        load_config(toml, env={"HEXNODE_DICOM_TLS": "enabled"})


def test_arrays_of_tables_by_index_and_as_json(toml: Path) -> None:
    cfg = load_config(toml, env={"HEXNODE_DESTINATIONS_0_HOST": "pacs.hospital.example",
                                 "HEXNODE_DESTINATIONS_1_BEARER_TOKEN": "t0ken",
                                 "HEXNODE_DESTINATIONS_2_NAME": "backup", "HEXNODE_DESTINATIONS_2_PORT": "11113",
                                 "HEXNODE_DESTINATIONS_2_TLS": "yes"})
    pacs, archive, backup = cfg.destinations
    assert (pacs.name, pacs.host, pacs.port) == ("pacs", "pacs.hospital.example", 104)
    assert (archive.kind, archive.bearer_token) == ("stow", "t0ken")
    # index = the count adds one, from the defaults plus what is set
    assert backup == dataclasses.replace(Destination(), name="backup", port=11113, tls=True)
    with pytest.raises(ConfigError, match="HEXNODE_DESTINATIONS_4_HOST: there are 2 destinations; the next index, 2"):
        load_config(toml, env={"HEXNODE_DESTINATIONS_4_HOST": "x"})
    # the whole array as JSON replaces the file's; keys by index then apply on top of it
    whole = load_config(toml, env={
        "HEXNODE_DESTINATIONS": '[{"name": "pacs", "ae_title": "PACS", "host": "10.1.1.1", "port": 104, '
                                '"for_calling_aes": ["CT1"]}]',
        "HEXNODE_DESTINATIONS_0_TLS": "true"})
    assert [(d.name, d.ae_title, d.host, d.for_calling_aes, d.tls) for d in whole.destinations] == [
        ("pacs", "PACS", "10.1.1.1", ["CT1"], True)]
    one = load_config(toml, env={"HEXNODE_DESTINATIONS_1": '{"url": "https://other.example/dicom-web"}'})
    assert one.destinations[1].url == "https://other.example/dicom-web" and one.destinations[1].name == "archive"
    with pytest.raises(ConfigError, match=r"HEXNODE_DESTINATIONS \(destinations\): expected a JSON array of objects"):
        load_config(toml, env={"HEXNODE_DESTINATIONS": '{"name": "pacs"}'})
    with pytest.raises(ConfigError, match="destinations.*not_a_key.*unknown setting"):
        load_config(toml, env={"HEXNODE_DESTINATIONS": '[{"not_a_key": 1}]'})
    with pytest.raises(ConfigError, match="every destination needs a name of its own"):
        load_config(toml, env={"HEXNODE_DESTINATIONS_1_NAME": "pacs"})


def test_without_a_file_the_default_destination_is_overridden() -> None:
    cfg = load_config(env={"HEXNODE_DESTINATIONS_0_HOST": "pacs.example", "HEXNODE_DESTINATIONS_0_AE_TITLE": "PACS"})
    assert [(d.name, d.ae_title, d.host, d.port) for d in cfg.destinations] == [("pacs", "PACS", "pacs.example", 4242)]


def test_notifications_array_from_the_environment_alone() -> None:
    env = {"HEXNODE_NOTIFICATIONS_0_NAME": "stroke-teams", "HEXNODE_NOTIFICATIONS_0_URL": "https://hooks.example/x",
           "HEXNODE_NOTIFICATIONS_0_FORMAT": "teams", "HEXNODE_NOTIFICATIONS_0_TRIGGERS": "high_risk,not_analysed",
           "HEXNODE_NOTIFICATIONS_1": '{"name": "ris", "kind": "hl7", "host": "engine", "port": 2575}'}
    cfg = load_config(env=env)
    teams, ris = cfg.notifications
    assert (teams.name, teams.kind, teams.format, teams.triggers) == ("stroke-teams", "webhook", "teams",
                                                                      ["high_risk", "not_analysed"])
    assert (ris.kind, ris.host, ris.port) == ("hl7", "engine", 2575)


def test_lists_comma_separated_or_json(toml: Path) -> None:
    assert load_config(toml, env={"HEXNODE_DICOM_ALLOWED_CALLING_AES": "CT1, CT2,PACS"}).dicom.allowed_calling_aes == [
        "CT1", "CT2", "PACS"]
    assert load_config(toml, env={"HEXNODE_DICOM_ALLOWED_CALLING_AES": '["A,B", "C"]'}).dicom.allowed_calling_aes == [
        "A,B", "C"]
    assert load_config(toml, env={"HEXNODE_DICOM_ALLOWED_CALLING_AES": ""}).dicom.allowed_calling_aes == []
    assert load_config(env={"HEXNODE_MODELS_PROVIDERS": "CPUExecutionProvider"}).models.providers == [
        "CPUExecutionProvider"]


def test_free_form_selection_table_keys_are_json_typed() -> None:
    from hexnode.series.select import Selector

    env = {"HEXNODE_SERIES_SELECTION_DISABLE": '["head"]', "HEXNODE_SERIES_SELECTION_TARGET_THICKNESS_MM": "2.5",
           "HEXNODE_SERIES_SELECTION_SOFT_KERNEL_REGEX": "(?i)soft|H3\\d",
           "HEXNODE_SERIES_SELECTION_EXCLUDE": '[{"name": "research", "reason": "research protocol", '
                                               '"attr": "ProtocolName", "regex": "(?i)research"}]'}
    sel = load_config(env=env).series.selection
    assert sel["disable"] == ["head"] and sel["target_thickness_mm"] == 2.5
    assert sel["soft_kernel_regex"] == "(?i)soft|H3\\d"  # not JSON: kept as text
    selector = Selector.from_config(sel)  # what route builds at start: the rules are valid
    assert selector.target_thickness_mm == 2.5 and "research" in {r.name for r in selector.exclude}
    assert "head" not in {r.name for r in selector.require}
    whole = load_config(env={"HEXNODE_SERIES_SELECTION": '{"builtin": false}'}).series.selection
    assert whole == {"builtin": False}


def test_unknown_names_are_errors_naming_the_variable() -> None:
    for name, says in (("HEXNODE_DICOM_TLS_ENABLD", "dicom.tls has: ca_file, cert_file, enabled"),
                       ("HEXNODE_DICOMPORT", "top level has: data_dir"),
                       ("HEXNODE_DESTINATIONS_0_HOSTNAME", r"destinations\[0\] has: ae_title"),
                       ("HEXNODE_DESTINATIONS_X_HOST", "top level has"),
                       ("HEXNODE_SPOOL", "expected a JSON object")):
        with pytest.raises(ConfigError, match=says) as err:
            load_config(env={name: "1"})
        assert str(err.value).startswith(name)
    # other tools' variables with the prefix are left alone
    assert load_config(env={n: "x" for n in NOT_SETTINGS if n != "HEXNODE_CONFIG"} | {"HEXNODE_TEST_PG_URL": "x"}) == Config()


def test_every_setting_has_exactly_one_variable() -> None:
    """The schema as other modules extend it (a field with a default, a nested dataclass, a
    list of dataclasses) gets its variables with nothing else to do — and no two keys may ever
    read as the same name (e.g. a key `tls_ca` beside a table `tls` with a key `ca`)."""
    names = env_names()
    assert len(names) == len(set(names)) > 90
    for name in names:
        target = env_target(name)
        assert target is not None, name
        assert name.removeprefix("HEXNODE_").lower().replace("_0_", "_") == "_".join(
            str(p) for p in target.path if not isinstance(p, int)), name
    assert "HEXNODE_DICOM_TLS_REQUIRE_CLIENT_CERT" in names and "HEXNODE_NOTIFICATIONS_0_SMTP_PORT" in names


def test_the_config_line_names_file_overrides_and_database_without_password(toml: Path) -> None:
    env = {"HEXNODE_DATABASE_URL": "postgresql+psycopg://hexnode:pw-secret@db:5432/hexnode",
           "HEXNODE_FOLLOWUP_SECRET": "a-site-secret-of-some-length", "HEXNODE_TEST_PG_URL": "not a setting"}
    line = describe(load_config(toml, env=env), toml, env)
    assert line == (f"config {toml} + HEXNODE_DATABASE_URL, HEXNODE_FOLLOWUP_SECRET; "
                    "database postgresql+psycopg://hexnode@db:5432/hexnode")
    assert "pw-secret" not in line and "a-site-secret" not in line
    assert describe(load_config(env={}), env={}).startswith("config none (built-in defaults); database sqlite:////")
    assert redact_url("postgresql://u@h/db?password=x&sslmode=require") == "postgresql://u@h/db?sslmode=require"
    assert redact_url("sqlite:////var/lib/hexnode/hexnode.sqlite") == "sqlite:////var/lib/hexnode/hexnode.sqlite"


def test_a_compose_style_environment_configures_tls_and_the_pacs_end_to_end(tmp_path: Path) -> None:
    """The issue's case: a container's .env turns on DICOM TLS and points at the PACS, and the
    command reports it (hexnode echo reads the destinations; the config line names the overrides)."""
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    env |= {"HEXNODE_DATA_DIR": str(tmp_path), "HEXNODE_DICOM_TLS_ENABLED": "true",
            "HEXNODE_DICOM_TLS_CERT_FILE": "/nonexistent.crt", "HEXNODE_DICOM_TLS_KEY_FILE": "/nonexistent.key",
            "HEXNODE_DESTINATIONS_0_HOST": "127.0.0.1", "HEXNODE_DESTINATIONS_0_PORT": "9",
            "HEXNODE_DESTINATIONS_0_TIMEOUT_SECONDS": "2"}
    r = subprocess.run([sys.executable, "-m", "hexnode.cli", "echo"], env=env, cwd=tmp_path, capture_output=True,
                       text=True, timeout=60)
    assert "HEXNODE_DICOM_TLS_ENABLED" in r.stderr and "HEXNODE_DESTINATIONS_0_PORT" in r.stderr
    assert r.stdout.startswith("echo pacs (dicom ORTHANC@127.0.0.1:9): FAILED"), r.stdout + r.stderr
    bad = subprocess.run([sys.executable, "-m", "hexnode.cli", "status"], env=env | {"HEXNODE_DICOM_TLS_ENABLD": "1"},
                         cwd=tmp_path, capture_output=True, text=True, timeout=60)
    assert bad.returncode == 2
    assert bad.stderr.startswith("hexnode: configuration error: HEXNODE_DICOM_TLS_ENABLD: no such setting")


def test_an_unreadable_settings_file_is_one_clear_line(tmp_path: Path) -> None:
    """What a capability-less container user meets with a 0600 file mounted from a umask-077
    checkout: a configuration error naming the file and the uid, not a traceback. Here the file
    belongs to another uid and the command runs without capabilities (an empty bounding set), so
    this uid cannot read it, while the checkout stays readable whatever its umask."""
    cfg = tmp_path / "hexnode.toml"
    cfg.write_text('[dicom]\nae_title = "HEXNODE"\n')
    cfg.chmod(0o600)
    os.chown(cfg, 65534, 65534)
    done = subprocess.run(["setpriv", "--bounding-set=-all", "--inh-caps=-all",
                           str(Path(sys.executable).parent / "hexnode"), "status", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 2, done.stderr
    assert f"config file {cfg} is not readable by uid {os.getuid()}" in done.stderr
    assert "Traceback" not in done.stderr
