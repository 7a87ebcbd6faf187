"""The worker's start-up build (hexnode.report.warm): real SEG/SR/SC of a made-up series without a
patient, and it leaves loaded what the first report of a process would otherwise load."""

from __future__ import annotations

import subprocess
import sys

from report_helpers import MODEL

from hexnode.pipeline.run import encode
from hexnode.report.warm import warm_up


def test_warm_up_builds_the_three_objects_without_a_patient() -> None:
    datasets = warm_up(MODEL)
    assert [str(ds.Modality) for ds in datasets] == ["SEG", "SR", "OT"]
    for ds in datasets:
        assert str(ds.get("PatientName", "")) == "" and str(ds.get("PatientID", "")) == ""
        assert len(encode(ds)) > 0
    assert int(datasets[0].NumberOfFrames) == 4


def test_warm_up_loads_highdicoms_tables_once_per_process() -> None:
    # a fresh process: what the worker's first job would otherwise load is loaded by warm_up
    code = (
        "from highdicom import _standard_utils as s\n"
        "from hexnode.pipeline.contracts import ModelInfo\n"
        "from hexnode.report.warm import warm_up\n"
        "f = s.get_iod_module_map\n"
        "before = f.cache_info().currsize\n"
        "warm_up(ModelInfo('hexnode-he', '0.3.1-test', 0.35))\n"
        "print(before, f.cache_info().currsize)\n"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.split()
    assert out == ["0", "1"]
