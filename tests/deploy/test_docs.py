"""The documentation names only what exists: every `hexnode COMMAND` (with its sub-action and
options), every `[section] key`, every TOML example's keys and every `HEXNODE_*` variable in
README.md and docs/*.md are checked against the command-line parser and the settings schema;
nothing points at a file outside the repository; the version is the same everywhere."""

from __future__ import annotations

import argparse
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from hexnode import __version__
from hexnode.cli import build_parser
from hexnode.config import Config, ConfigError, env_target

REPO = Path(__file__).resolve().parents[2]
DOCS = [REPO / "README.md", *sorted((REPO / "docs").glob("*.md"))]

SPAN = re.compile(r"`([^`\n]+)`")
FENCE = re.compile(r"^```(\w*)\n(.*?)^```", re.S | re.M)
SEPARATORS = re.compile(r"&&|\|\||;|\||\$\(|\(|^\s*\$\s")
# what may stand before the program in a command line: environment assignments, sudo, a container
LEAD = re.compile(r"^(?:\s*[A-Z_][A-Z0-9_]*=\S*)*\s*(?:sudo(?:\s+-u\s+\S+)?\s+)?"
                  r"(?:docker(?:-compose|\s+compose)\s+exec\s+(?:-T\s+)?\S+\s+)?")
SECTION_KEY = re.compile(r"^\[\[?([a-z_][a-z0-9_.]*)\]\]?(?:\s+([A-Za-z_][A-Za-z0-9_]*))?")
ENV = re.compile(r"\bHEXNODE_[A-Z0-9_]*[A-Z0-9]\b(?!: no such setting)")


GENERATED = re.compile(r"<!-- BEGIN GENERATED.*?<!-- END GENERATED[^>]*-->", re.S)


def _spans(text: str) -> list[str]:
    """Inline code spans, outside fenced blocks and outside generated tables (the tables of
    docs/conformance.md are the code's own output, kept current by tests/report/test_conformance.py)."""
    return [m.group(1) for m in SPAN.finditer(FENCE.sub("", GENERATED.sub("", text)))]


def _code(text: str) -> list[str]:
    """Inline code spans and the lines of fenced blocks that are not TOML."""
    out = _spans(text)
    for m in FENCE.finditer(text):
        if m.group(1) != "toml":
            out += m.group(2).splitlines()
    return out


def _invocations(code: str) -> list[list[str]]:
    """The words after `hexnode` for each command line in `code` that runs hexnode."""
    out = []
    for part in SEPARATORS.split(code):
        lead = LEAD.match(part)
        words = part[lead.end() if lead else 0:].split()
        if words and words[0].rsplit("/", 1)[-1] == "hexnode":
            out.append(words[1:])
    return out


def _subparsers() -> dict[str, argparse.ArgumentParser]:
    parser = build_parser()
    action = next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))
    return dict(action.choices)


def _options(p: argparse.ArgumentParser) -> set[str]:
    return {o for a in p._actions for o in a.option_strings}


def _choices(p: argparse.ArgumentParser) -> set[str] | None:
    positional = [a for a in p._actions if not a.option_strings and a.dest not in ("help",)]
    return set(positional[0].choices) if positional and positional[0].choices else None


def command_problems(text: str) -> list[str]:
    subs = _subparsers()
    top = _options(build_parser())
    problems = []
    for code in _code(text):
        for words in _invocations(code):
            words = [w.strip("[](),.:'\"") for w in words if w.strip("[](),.:'\"")]
            if not words or not re.fullmatch(r"--?[a-z][a-z-]*|[a-z][a-z-]*", words[0]):
                continue  # `hexnode COMMAND`, `hexnode ...`: a placeholder
            name, rest = words[0], words[1:]
            if name.startswith("-"):
                if name not in top:
                    problems.append(f"`hexnode {name}`: no such option")
                continue
            if name not in subs:
                problems.append(f"`hexnode {name}`: no such command")
                continue
            p = subs[name]
            choices = _choices(p)
            if choices and rest and re.fullmatch(r"[a-z]+", rest[0]) and rest[0] not in choices:
                problems.append(f"`hexnode {name} {rest[0]}`: not one of {sorted(choices)}")
            for w in rest:
                opt = w.split("=")[0]
                if re.fullmatch(r"--[a-z][a-z-]*", opt) and opt not in _options(p):
                    problems.append(f"`hexnode {name} ... {opt}`: no such option")
    return problems


def _table(path: str) -> type | None:
    """The settings dataclass of `[a.b]` (or of an array of tables), None if there is none."""
    from hexnode.config import _array_item, _default, _settings

    cls: type = Config
    for part in path.split("."):
        if part not in _settings(cls):
            return None
        default = _default(cls, part)
        item = _array_item(cls, part)
        if item is not None:
            cls = item
        elif hasattr(default, "__dataclass_fields__"):
            cls = type(default)
        elif isinstance(default, dict):
            return dict
        else:
            return None
    return cls


def key_problems(text: str) -> list[str]:
    from hexnode.config import _settings

    problems = []
    for code in _spans(text):
        for m in SECTION_KEY.finditer(code):
            section, key = m.group(1), m.group(2)
            if key and key[0].isupper():
                continue  # `[hexnode] High risk …`: a mail subject, not a setting
            if section in ("series.selection.require", "series.selection.exclude"):
                continue  # rule tables: hexnode/series/rules.py (checked below through Selector)
            cls = _table(section)
            if cls is None:
                problems.append(f"`[{section}]`: no such table")
            elif key and cls is not dict and key not in _settings(cls) and not _is_value_word(code, m.end()):
                problems.append(f"`[{section}] {key}`: no such key")
    for m in FENCE.finditer(text):
        if m.group(1) == "toml":
            problems += _toml_problems(m.group(2))
    return problems


def _is_value_word(code: str, end: int) -> bool:
    """`[dicom] port` names a key; `[http] enabled` too — but in `[http] is ...` prose the word
    after the table is not a key. Only spans that read like a key are checked: followed by
    nothing, `=`, `,` or `)`."""
    rest = code[end:].lstrip()
    return bool(rest) and not rest.startswith(("=", ",", ")", "(", "/", "|"))


def _toml_problems(block: str) -> list[str]:
    text = "\n".join(line for line in block.splitlines() if "…" not in line and "..." not in line)
    try:
        raw = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        return [f"TOML example does not parse: {exc}"]
    problems = []

    def walk(cls: type, table: dict[str, object], where: str) -> None:
        from hexnode.config import _array_item, _default, _settings

        for key, value in table.items():
            if cls is dict:
                continue
            if key not in _settings(cls):
                problems.append(f"TOML example: {where}{key}: no such key")
                continue
            item = _array_item(cls, key)
            default = _default(cls, key)
            if item is not None and isinstance(value, list):
                for v in value:
                    if isinstance(v, dict):
                        walk(item, v, f"{where}{key}[].")
            elif isinstance(value, dict):
                walk(type(default) if hasattr(default, "__dataclass_fields__") else dict, value, f"{where}{key}.")

    walk(Config, raw, "")
    return problems


def env_problems(text: str) -> list[str]:
    problems = []
    for name in sorted(set(ENV.findall(text))):
        try:
            env_target(name)
        except ConfigError as exc:
            problems.append(str(exc).split(" (")[0])
    return problems


@pytest.mark.parametrize("doc", DOCS, ids=lambda p: p.name)
def test_every_command_key_and_variable_named_in_the_docs_exists(doc: Path) -> None:
    text = doc.read_text()
    problems = command_problems(text) + key_problems(text) + env_problems(text)
    assert not problems, f"{doc.relative_to(REPO)}:\n" + "\n".join(sorted(set(problems)))


def test_the_checks_can_fail() -> None:
    assert command_problems("`hexnode statsu`") == ["`hexnode statsu`: no such command"]
    assert command_problems("run `hexnode db downgrade` now") == [
        "`hexnode db downgrade`: not one of ['current', 'history', 'upgrade']"]
    assert command_problems("```bash\nhexnode status --jsn\n```\n") == ["`hexnode status ... --jsn`: no such option"]
    assert command_problems("`hexnode status --json`, `hexnode --version`, `hexnode series ID --events 0`") == []
    assert key_problems("`[dicom] min_free_disk_gb`") == ["`[dicom] min_free_disk_gb`: no such key"]
    assert key_problems("`[dicomm]`") == ["`[dicomm]`: no such table"]
    assert key_problems("```toml\n[[destinations]]\nname = \"x\"\nhots = \"y\"\n```\n") == [
        "TOML example: destinations[].hots: no such key"]
    assert env_problems("set HEXNODE_DICOM_TLS_ENABLD=1") == ["HEXNODE_DICOM_TLS_ENABLD: no such setting"]
    assert env_problems("HEXNODE_DESTINATIONS_0_HOST and HEXNODE_BASE_IMAGE") == []
    # and they see the docs' mentions: commands, `[section] key`s, variables, TOML examples
    ops = (REPO / "docs" / "operations.md").read_text()
    assert len([w for c in _code(ops) for w in _invocations(c)]) > 40
    assert len([m for c in _spans(ops) for m in SECTION_KEY.finditer(c)]) > 30
    assert len(set(ENV.findall(ops))) > 20 and ops.count("```toml") >= 5


def test_nothing_points_outside_the_repository() -> None:
    files = subprocess.run(["git", "ls-files"], cwd=REPO, capture_output=True, text=True, check=True).stdout.split()
    # the first design document lives outside the repository; the needles are assembled so that
    # this file names no such path either, and is checked like every other
    design = "DE" + "SIGN"
    needles = (f"{design}.md", f"{design} §", f"shared/{design}", f"{design}:")
    bad = []
    for name in files:
        path = REPO / name
        if path.suffix not in (".py", ".md", ".toml", ".yml", ".yaml", ".sh", ".service", ".txt") or not path.is_file():
            continue
        text = path.read_text(errors="replace")
        bad += [f"{name}: {needle}" for needle in needles if needle in text]
    assert not bad, bad


def test_one_version_everywhere() -> None:
    pyproject = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
    assert __version__ == pyproject
    assert re.fullmatch(r"\d+\.\d+\.\d+", pyproject)
    changelog = (REPO / "CHANGELOG.md").read_text()
    first = re.search(r"^## \[(\d+\.\d+\.\d+)\] - (\d{4}-\d\d-\d\d)$", changelog, re.M)
    assert first and first.group(1) == pyproject, "CHANGELOG.md: the newest entry must be this version, dated"
    conformance = (REPO / "docs" / "conformance.md").read_text()
    assert f"hexnode {pyproject}:" in conformance
    out = subprocess.run([str(REPO / ".venv" / "bin" / "hexnode"), "--version"], capture_output=True, text=True,
                         cwd="/", timeout=60, env={"PATH": "/usr/bin:/bin"})
    assert out.returncode == 0 and out.stdout.splitlines()[0] == f"hexnode {pyproject}"
    manifest = __import__("json").loads((REPO / "models" / "manifest.json").read_text())
    assert f"models: {manifest['name']} {manifest['version']}" in out.stdout
