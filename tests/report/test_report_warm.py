"""The worker's start-up build (hexnode.report.warm): real SEG/SR/SC of a made-up series without a
patient, and it leaves loaded what the first report of a process would otherwise load."""

from __future__ import annotations

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

