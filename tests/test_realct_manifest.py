"""bench/realct.toml is well-formed: every real-scan case names its repository, commit, paths and
licence, and says what hexnode should say in the grammar bench/realct.py judges by. No scan is read
(CI has none); the bench itself runs where the repositories are."""

from __future__ import annotations

import importlib.util
import re
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]


def _bench():  # type: ignore[no-untyped-def]
    spec = importlib.util.spec_from_file_location("realct_bench", REPO / "bench" / "realct.py")
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules["realct_bench"] = module  # dataclasses resolve their module by name
    spec.loader.exec_module(module)
    return module


bench = _bench()
CASES = bench.load_manifest()


def test_manifest_has_cases_with_unique_ids() -> None:
    ids = [c.id for c in CASES]
    assert len(ids) >= 10
    assert len(ids) == len(set(ids)), [i for i in ids if ids.count(i) > 1]
    assert all(re.fullmatch(r"[a-z0-9][a-z0-9-]*", i) for i in ids), ids


@pytest.mark.parametrize("case", CASES, ids=lambda c: c.id)
def test_case_is_complete(case) -> None:  # type: ignore[no-untyped-def]
    assert re.fullmatch(r"[A-Za-z0-9][\w.-]*/[\w.-]+", case.repository), case.repository
    assert re.fullmatch(r"[0-9a-f]{40}", case.commit), case.commit
    assert case.paths and all(p and not p.startswith("/") and ".." not in p.split("/") for p in case.paths)
    assert len(case.licence) >= 10 and len(case.what) >= 20 and case.vendor
    exp = bench.Expected.parse(case.expected)  # raises on anything outside the grammar
    if not exp.analysed:
        assert exp.reasons, "a refusal must name what it should say"
    assert set(case.derive) <= bench.DERIVE_KEYS
    if "add_from" in case.derive:
        assert case.derive["add_from"] in {c.id for c in CASES} - {case.id}
    if case.mask:
        assert case.mask.get("paths") and case.mask.get("format")


def test_manifest_covers_what_the_issue_lists() -> None:
    """Refusals expected and analyses expected both present, and more than one vendor."""
    parsed = [bench.Expected.parse(c.expected) for c in CASES]
    assert any(e.analysed for e in parsed) and any(not e.analysed for e in parsed)
    vendors = {c.vendor.split()[0].upper() for c in CASES}
    assert len(vendors) >= 3, vendors


@pytest.mark.parametrize(
    ("text", "analysed", "hemorrhage", "ml_range", "reasons"),
    [
        ("analysed", True, None, None, ()),
        ("analysed, no hemorrhage", True, False, None, ()),
        ("analysed, hemorrhage", True, True, None, ()),
        ("analysed, hemorrhage 20-45 ml", True, True, (20.0, 45.0), ()),
        ("not analysed: phantom | no brain", False, None, None, ("phantom", "no brain")),
    ],
)
def test_expected_grammar(text, analysed, hemorrhage, ml_range, reasons) -> None:  # type: ignore[no-untyped-def]
    exp = bench.Expected.parse(text)
    assert (exp.analysed, exp.hemorrhage, exp.ml_range, exp.reasons) == (analysed, hemorrhage, ml_range, reasons)


@pytest.mark.parametrize("text", ["analysed, bleed", "not analysed", "not analysed: ", "analysed, hemorrhage 20 ml"])
def test_expected_grammar_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        bench.Expected.parse(text)


def test_judge_says_no_when_hexnode_said_otherwise() -> None:
    """The `ok` column: a refusal for the wrong reason is not a pass, a crash never is."""
    def judged(expected: str, outcome: str, ml: float | None = None) -> str:
        row = bench.Row("x", expected, outcome=outcome, volume_ml=ml)
        bench.judge(bench.Expected.parse(expected), row)
        return str(row.ok)

    assert judged("not analysed: phantom", "not analysed: dose report / screen capture") == "reason?"
    assert judged("not analysed: phantom", "analysed, hemorrhage", 7.8) == "NO"
    assert judged("not analysed: phantom", "not analysed: no brain tissue: phantom or not a patient") == "yes"
    assert judged("analysed, no hemorrhage", "error (rc 1): ValueError") == "NO"
    assert judged("analysed, hemorrhage 20-45 ml", "analysed, hemorrhage", 48.1) == "NO"
    assert judged("analysed, hemorrhage 20-45 ml", "analysed, hemorrhage", 34.0) == "yes"


def test_parse_output_reads_hexnode_run() -> None:
    row = bench.Row("x", "analysed")
    bench.parse_output("series: 1\nvolume: 0.0 ml (no hemorrhage detected)\nprobability of expansion: 0.010 "
                       "(threshold 0.286)\nrisk: Low\n", 0, "", row)
    assert (row.outcome, row.volume_ml, row.probability, row.risk) == ("analysed, no hemorrhage", 0.0, 0.01, "Low")
    row = bench.Row("x", "analysed")
    bench.parse_output("", 1, "Traceback ...\nValueError: bad\n", row)
    assert row.outcome == "error (rc 1): ValueError: bad"
