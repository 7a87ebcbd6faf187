"""Every import points down (docs/architecture.md §2): one process per stage, and the stages share only the
store (database + spool). Read from the source with `ast`, lazy imports inside functions included,
so a stage that starts importing another — even behind a try/except — fails here."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parent.parent / "hexnode"

STAGES = ("hexnode.receive", "hexnode.route", "hexnode.pipeline", "hexnode.worker", "hexnode.send", "hexnode.web",
          "hexnode.node")
# (the modules of this package ...) may never import (these)
RULES: dict[str, tuple[str, ...]] = {
    "hexnode.receive": ("hexnode.route", "hexnode.pipeline", "hexnode.models", "hexnode.worker", "hexnode.send",
                        "hexnode.web", "hexnode.node", "hexnode.train"),
    "hexnode.route": ("hexnode.receive", "hexnode.worker", "hexnode.send", "hexnode.models", "hexnode.web",
                      "hexnode.node", "hexnode.train"),
    "hexnode.store": STAGES,
    "hexnode.models": ("hexnode.train", "torch", *STAGES[:2], *STAGES[3:]),
    "hexnode.web": ("hexnode.receive", "hexnode.route", "hexnode.pipeline", "hexnode.models", "hexnode.worker",
                    "hexnode.send", "hexnode.node"),
    "hexnode.send": ("hexnode.receive", "hexnode.route", "hexnode.pipeline", "hexnode.models", "hexnode.worker",
                     "hexnode.web", "hexnode.node"),
    "hexnode.runtime": ("hexnode",),  # below everything: only the standard library
    "hexnode.node": STAGES[:-1],  # the supervisor starts stages as commands; it imports none of them
}


def module_name(path: Path) -> str:
    rel = path.relative_to(PACKAGE.parent).with_suffix("")
    parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
    return ".".join(parts)


def imports(source: str, module: str, is_package: bool = False) -> set[str]:
    """Every module `module` imports, at any depth of the file (relative imports resolved)."""
    out: set[str] = set()
    base = module.split(".") if is_package else module.split(".")[:-1]
    for node in ast.walk(ast.parse(source)):
        if isinstance(node, ast.Import):
            out |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                anchor = base[: len(base) - (node.level - 1)]
                target = ".".join([*anchor, *([node.module] if node.module else [])])
            else:
                target = node.module or ""
            out.add(target)
            # `from hexnode import route` imports hexnode.route
            out |= {f"{target}.{alias.name}" for alias in node.names}
    return out


def within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def violations(module: str, imported: set[str]) -> list[str]:
    out = []
    for owner, banned in RULES.items():
        if not within(module, owner):
            continue
        for name in sorted(imported):
            hit = next((b for b in banned if within(name, b) and not within(name, owner)), None)
            if hit is not None:
                out.append(f"{module} imports {name} ({owner} must not import {hit})")
    return out


def all_modules() -> dict[str, set[str]]:
    return {module_name(p): imports(p.read_text(), module_name(p), p.name == "__init__.py")
            for p in sorted(PACKAGE.rglob("*.py"))}


def test_every_import_points_down() -> None:
    found = [v for module, imported in all_modules().items() for v in violations(module, imported)]
    assert found == [], "\n".join(found)


def test_only_train_imports_torch_and_nothing_at_run_time_imports_devtools() -> None:
    mods = all_modules()
    torch = [m for m, imp in mods.items() if any(within(i, "torch") for i in imp) and not within(m, "hexnode.train")]
    assert torch == []
    # the demo's helpers (Orthanc starter, ports) are reached only through `hexnode demo`
    dev = [m for m, imp in mods.items() if any(within(i, "hexnode.devtools") for i in imp)
           and not within(m, "hexnode.devtools") and m != "hexnode.cli"]
    assert dev == []


def test_the_walker_sees_what_it_must() -> None:
    """The rules above can fail: the walker finds real imports, lazy ones and relative ones."""
    mods = all_modules()
    assert "hexnode.store.db" in mods["hexnode.receive.indexer"]
    assert "hexnode.route.service" in mods["hexnode.cli"]  # a lazy import inside a function
    src = "def f():\n    try:\n        from hexnode.route import stable\n    except ImportError:\n        pass\n"
    assert violations("hexnode.receive.indexer", imports(src, "hexnode.receive.indexer")) != []
    rel = imports("from ..send import scu\nfrom . import gate\n", "hexnode.receive.scp")
    assert {"hexnode.send.scu", "hexnode.receive.gate"} <= rel
    assert violations("hexnode.receive.scp", rel) != []
    assert violations("hexnode.models.segment", imports("import torch\n", "hexnode.models.segment")) != []
    assert violations("hexnode.store.outcomes", {"hexnode.route.followup"}) != []
    assert violations("hexnode.route.decide", {"hexnode.store.db", "hexnode.pipeline.load"}) == []


@pytest.mark.parametrize("stage", ["receive", "route", "worker", "send", "web", "node", "serve"])
def test_each_stage_is_a_command(stage: str) -> None:
    from hexnode.cli import build_parser

    args = build_parser().parse_args([stage, "--config", "x.toml"])
    assert args.config == "x.toml" and callable(args.handler)


def test_docs_layout_names_every_module() -> None:
    """docs/layout.md is the tree as it is: a module added without a line there fails here."""
    doc = (PACKAGE.parent / "docs" / "layout.md").read_text()
    tree = doc[doc.index("```"):doc.rindex("```")]
    words = set(tree.replace("/", " / ").split())
    missing = []
    for path in sorted(PACKAGE.rglob("*.py")):
        if path.name == "__init__.py" or "migrations" in path.parts:
            continue
        if path.name not in words:
            missing.append(str(path.relative_to(PACKAGE)))
    for pkg in sorted(p for p in PACKAGE.iterdir() if (p / "__init__.py").is_file()):
        if f"{pkg.name}/" not in tree:
            missing.append(f"{pkg.name}/")
    assert not missing, f"docs/layout.md does not name: {missing}"
