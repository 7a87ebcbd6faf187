"""No patient identifiers in any log: an end-to-end run (Orthanc auto-routing → hexnode receive, route, worker,
send → results back in Orthanc) with two synthetic patients, then every log line of the run is
searched for their names (whole and by component, ASCII and non-ASCII), IDs and birth dates (both
as stored and as a dashed date), and for their study, series and SOP Instance UIDs (docs/architecture.md §9: logs
name series by a UID hash)."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import pydicom
import pytest
from plumbing_helpers import models_dir

from hexnode.devtools.demo import DemoStack

pytestmark = pytest.mark.skipif(not Path("/usr/sbin/Orthanc").exists(), reason="Debian orthanc not installed")

# A second patient whose identifiers cannot occur in a log by accident.
OTHER = {"PatientName": "Qwertzuiop-Ümlaut^Åsa Xyzzy", "PatientID": "PID-77Q-90311", "PatientBirthDate": "19430817",
         "SpecificCharacterSet": "ISO_IR 192"}
# A single-component name: highdicom warns about it and quotes it (real scanners write such names).
SINGLE = {"PatientName": "SMITH", "PatientID": "ID-SMITH-4711", "PatientBirthDate": "19511224"}


def _identifiers(paths: list[Path]) -> set[str]:
    out: set[str] = set()
    for p in paths:
        ds = pydicom.dcmread(p, stop_before_pixels=True)
        name = str(ds.PatientName)
        out |= {name, *[part for part in re.split(r"[\^=]", name) if len(part) >= 4]}
        out |= {str(ds.PatientID), str(ds.PatientBirthDate)}
        bd = str(ds.PatientBirthDate)
        out.add(f"{bd[:4]}-{bd[4:6]}-{bd[6:]}")
        out |= {str(ds.StudyInstanceUID), str(ds.SeriesInstanceUID), str(ds.SOPInstanceUID)}
    return {x for x in out if x}


def _rewrite(paths: list[Path], out: Path, **changes: Any) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    res = []
    for p in paths:
        ds = pydicom.dcmread(p)
        for k, v in changes.items():
            setattr(ds, k, v)
        q = out / p.name
        ds.save_as(q, enforce_file_format=True)
        res.append(q)
    return res


def test_no_patient_identifiers_in_any_log(tmp_path: Path) -> None:
    from hexnode.synth.dicom import write_case
    from hexnode.synth.phantom import generate_case

    first = write_case(generate_case(31, 4), tmp_path / "a")
    truth_a = json.loads((tmp_path / "a" / "truth.json").read_text())
    case_b = generate_case(31, 5)
    second = _rewrite(write_case(case_b, tmp_path / "b"), tmp_path / "b2", **OTHER)
    truth_b = json.loads((tmp_path / "b" / "truth.json").read_text())
    third = _rewrite(write_case(generate_case(31, 6), tmp_path / "c"), tmp_path / "c2", **SINGLE)
    truth_c = json.loads((tmp_path / "c" / "truth.json").read_text())
    secrets = _identifiers(first) | _identifiers(second) | _identifiers(third)
    assert "SYNTH^Case0004" in secrets and OTHER["PatientID"] in secrets and "1943-08-17" in secrets
    assert {"SMITH", "ID-SMITH-4711", "19511224", "1951-12-24"} <= secrets

    # `hexnode run` on the single-component name: its stderr is what a terminal or journal shows
    run = subprocess.run([sys.executable, "-m", "hexnode.cli", "run", str(tmp_path / "c2"), "--out", str(tmp_path / "run"),
                          "--models", str(models_dir())], capture_output=True, text=True, timeout=600)
    assert run.returncode in (0, 3), run.stderr[-3000:]
    # highdicom did warn (so the check below is not vacuous), and only its category reached stderr
    assert "UserWarning from highdicom" in run.stderr and "text withheld" in run.stderr, run.stderr[-3000:]
    run_leaks = [f"hexnode run {stream}: {secret!r}" for stream, text in (("stderr", run.stderr), ("stdout", run.stdout))
                 for secret in secrets if secret in text]
    assert run_leaks == [], run_leaks

    stack = DemoStack(workdir=tmp_path / "stack", stable_seconds=1.0, orthanc_stable_age=1,
                      models_dir=str(models_dir()))
    try:
        stack.start()
        stack.send(first + second + third)
        for truth in (truth_a, truth_b, truth_c):
            stack.wait_results(truth["study_instance_uid"], 300)
    finally:
        stack.stop()

    logs = sorted((stack.workdir / "logs").glob("*.log")) + [stack.workdir / "orthanc" / "orthanc.log"]
    names = {p.name for p in logs}
    assert {"receive.log", "route.log", "worker.log", "send.log", "orthanc.log"} <= names, names
    total = 0
    leaks: list[str] = []
    for log in logs:
        text = log.read_text(errors="replace")
        total += len(text.splitlines())
        for secret in secrets:
            for line in text.splitlines():
                if secret in line:
                    leaks.append(f"{log.name}: {secret!r} in {line[:200]!r}")
    assert total > 20  # the run did log (a check on an empty log would prove nothing)
    assert leaks == [], "\n".join(leaks[:20])
