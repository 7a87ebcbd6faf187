"""`hexnode run` on a folder holding several studies or patients: one answer per study, each under its
own patient (real models, dciodvfy on every object written)."""

from __future__ import annotations

import argparse
from pathlib import Path

import pydicom
import pytest
from node_helpers import dciodvfy_errors
from plumbing_helpers import models_dir
from pydicom.uid import generate_uid
from series_helpers import write_series

from hexnode.pipeline.offline import run_offline


def _run(folder: Path, out: Path, capsys: pytest.CaptureFixture[str]) -> tuple[int, str]:
    code = run_offline(argparse.Namespace(series_dir=str(folder), out=str(out), models=str(models_dir()), config=None))
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def _objects(folder: Path) -> dict[str, pydicom.Dataset]:
    out = {}
    for p in sorted(folder.glob("*.dcm")):
        assert dciodvfy_errors(p) == [], (p, dciodvfy_errors(p))
        out[p.stem] = pydicom.dcmread(p)
    return out


def test_a_study_and_a_stray_slice_of_another_patient_get_one_answer_each(
        tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "export"
    study, stray_study = generate_uid(), generate_uid()
    write_series(folder / "a", n=12, study_uid=study)  # patient SER-0001
    write_series(folder / "zz", n=1, study_uid=stray_study, PatientID="STRAY-77", PatientName="Stray^Slice")
    code, text = _run(folder, tmp_path / "out", capsys)
    assert code == 3, text  # one study analysed, the stray one not
    assert "studies: 2 in" in text and "(2 patients, 0 non-DICOM files skipped): one answer per study" in text
    main = _objects(tmp_path / "out" / "study-01")
    assert sorted(main) == ["SC", "SEG", "SR"]
    assert {str(ds.PatientID) for ds in main.values()} == {"SER-0001"}
    assert {str(ds.StudyInstanceUID) for ds in main.values()} == {study}
    stray = _objects(tmp_path / "out" / "study-02")
    assert sorted(stray) == ["SC", "SR"]
    assert {str(ds.PatientID) for ds in stray.values()} == {"STRAY-77"}
    assert {str(ds.StudyInstanceUID) for ds in stray.values()} == {stray_study}
    assert "not analysed: 1 slices, outside 10-2000" in text
    assert "STRAY-77" not in text and "Stray" not in text and "SER-0001" not in text  # no identifiers printed


def test_one_study_uid_over_two_patients_is_not_analysed(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    folder = tmp_path / "export"
    study = generate_uid()
    write_series(folder / "a", n=12, study_uid=study)
    write_series(folder / "b", n=12, study_uid=study, PatientID="OTHER-1")
    code, text = _run(folder, tmp_path / "out", capsys)
    assert code == 3, text
    assert "not analysed: the study holds images of 2 different patients\n" in text
    assert sorted(_objects(tmp_path / "out")) == ["SC", "SR"]
