"""The worker with the real ONNX models, a real SQLite store and spool: results + outbox rows,
not-analysed reports for rejected or unloadable series, retries and the final failure report,
`hexnode worker --once` and `hexnode run` as processes."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import timedelta
from pathlib import Path
from typing import Any

import numpy as np
import pydicom
import pytest
from plumbing_helpers import models_dir
from pydicom.uid import generate_uid
from series_helpers import index, write_series
from sqlalchemy import select

from hexnode.config import Config
from hexnode.devtools.demo import sr_summary
from hexnode.route.service import check_once
from hexnode.store.db import Event, Job, Outbox, Result, Series, Store, open_store, utcnow
from hexnode.store.spool import Spool
from hexnode.worker import Worker

REPO = Path(__file__).resolve().parents[2]



@pytest.fixture(scope="module")
def models() -> Any:
    from hexnode.models.analyser import Models

    return Models.load(models_dir(), ["CPUExecutionProvider"])


@pytest.fixture(scope="module")
def synth_case(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[Path]]:
    from hexnode.synth.dicom import write_series as synth_series
    from hexnode.synth.phantom import generate_case

    case = generate_case(11, 2)
    return case, synth_series(case, tmp_path_factory.mktemp("synth"))


@pytest.fixture
def env(tmp_path: Path) -> tuple[Store, Spool, Config]:
    cfg = Config()
    cfg.data_dir = str(tmp_path)
    cfg.series.stable_seconds = 1.0
    cfg.series.study_settle_seconds = 1.0
    cfg.worker.max_attempts = 2
    cfg.worker.heartbeat_seconds = 0.2
    store = open_store(cfg.database_url)
    return store, Spool(cfg.spool_path).prepare(), cfg


def queue(store: Store, spool: Spool, cfg: Config, paths: list[Path]) -> None:
    t0 = utcnow() - timedelta(seconds=5)
    index(store, spool, paths, t0)
    check_once(store, cfg, spool, now=utcnow())


def rows(store: Store) -> tuple[list[Result], list[Outbox], list[Series]]:
    with store.transaction() as s:
        return (list(s.execute(select(Result).order_by(Result.id)).scalars()),
                list(s.execute(select(Outbox).order_by(Outbox.id)).scalars()),
                list(s.execute(select(Series).order_by(Series.id)).scalars()))


def test_analysed_series_results_and_outbox(env: tuple[Store, Spool, Config], models: Any,
                                            synth_case: tuple[Any, list[Path]]) -> None:
    store, spool, cfg = env
    case, paths = synth_case
    queue(store, spool, cfg, paths)
    outcome = Worker(store, spool, cfg, models, owner="w1").run_once()
    assert outcome is not None and outcome.state == "reported", outcome
    p = outcome.prediction
    results, outbox, series = rows(store)
    assert sorted(r.kind for r in results) == ["SC", "SEG", "SR"]
    assert [o.destination for o in outbox] == ["pacs"] * 3 and {o.state for o in outbox} == {"pending"}
    assert series[0].state == "reported"
    for r in results:
        ds = pydicom.dcmread(spool.path(r.path))
        assert ds.SOPInstanceUID == r.sop_instance_uid and ds.SOPClassUID == r.sop_class_uid
        assert ds.StudyInstanceUID == pydicom.dcmread(paths[0], stop_before_pixels=True).StudyInstanceUID
    sr = sr_summary(pydicom.dcmread(spool.path(next(r.path for r in results if r.kind == "SR"))))
    # the SR carries the model's numbers (no hemorrhage found → volume 0 and "no hemorrhage" wording)
    assert sr.get("volume_ml", 0.0) == pytest.approx(p.volume_ml, abs=0.05)
    if p.hemorrhage_detected:
        assert sr["probability"] == pytest.approx(p.probability, abs=1e-3)
        assert sr["risk"] == ("High" if p.high_risk else "Low")
    seg = pydicom.dcmread(spool.path(next(r.path for r in results if r.kind == "SEG")))
    assert int(seg.NumberOfFrames) == len(paths)  # every frame, in the source's geometry
    with store.transaction() as s:
        job = s.execute(select(Job)).scalar_one()
        assert job.state == "done" and {"load", "segmentation", "report", "write", "total"} <= set(job.timings or {})
    assert Worker(store, spool, cfg, models).run_once() is None  # nothing left


def test_rejected_and_unloadable_series_get_not_analysed_reports(env: tuple[Store, Spool, Config], models: Any,
                                                                 tmp_path: Path) -> None:
    store, spool, cfg = env
    bone = write_series(tmp_path / "bone", n=12, rows=32, cols=32, ConvolutionKernel="H70h")
    gap = write_series(tmp_path / "gap", n=14, rows=32, cols=32)
    queue(store, spool, cfg, bone)
    queue(store, spool, cfg, gap[:6] + gap[8:])
    worker = Worker(store, spool, cfg, models)
    outcomes = [worker.run_once(), worker.run_once()]
    assert [o.state for o in outcomes if o] == ["rejected", "rejected"]
    reasons = sorted(o.reason or "" for o in outcomes if o)
    assert reasons[0].startswith("bone or sharp kernel") and reasons[1].startswith("gap in slice positions")
    results, outbox, series = rows(store)
    assert sorted(r.kind for r in results) == ["SC", "SC", "SR", "SR"] and len(outbox) == 4
    assert [s.state for s in series] == ["rejected", "rejected"]
    sr = pydicom.dcmread(spool.path(next(r.path for r in results if r.kind == "SR")))
    text = json.dumps(sr.to_json_dict())
    assert "Not analysed: bone or sharp kernel" in text


def test_implausible_segmentation_is_reported_not_analysed_without_retry(
        env: tuple[Store, Spool, Config], models: Any, synth_case: tuple[Any, list[Path]]) -> None:
    """A mask above the plausible volume (here: a limit below this bleed's volume) stops before the
    feature stages and becomes a not-analysed report at once: retrying cannot change it."""
    store, spool, cfg = env
    case, paths = synth_case
    assert case.truth.volume_ml > 1.0
    queue(store, spool, cfg, paths)
    limit = models.max_plausible_ml
    models.max_plausible_ml = 0.5
    try:
        outcome = Worker(store, spool, cfg, models).run_once()
    finally:
        models.max_plausible_ml = limit
    assert outcome is not None and outcome.state == "rejected", outcome
    assert (outcome.reason or "").startswith("segmentation implausible:")
    results, outbox, series = rows(store)
    assert sorted(r.kind for r in results) == ["SC", "SR"] and len(outbox) == 2
    assert series[0].state == "rejected" and "more than 0 ml" in (series[0].reason or "")
    with store.transaction() as s:
        job = s.execute(select(Job)).scalar_one()
        assert job.attempts == 1
    sr = pydicom.dcmread(spool.path(next(r.path for r in results if r.kind == "SR")))
    assert "segmentation implausible" in json.dumps(sr.to_json_dict())


class FailingModels:
    """The real models whose analyse() raises, as an out-of-memory GPU would."""

    def __init__(self, real: Any) -> None:
        self.info = real.info

    def analyse(self, *a: Any, **k: Any) -> Any:
        raise MemoryError("CUDA out of memory")


def test_retry_then_final_failure_reports(env: tuple[Store, Spool, Config], models: Any, tmp_path: Path) -> None:
    store, spool, cfg = env
    queue(store, spool, cfg, write_series(tmp_path / "a", n=12, rows=32, cols=32))
    worker = Worker(store, spool, cfg, FailingModels(models))
    first = worker.run_once()
    assert first is not None and first.state == "retry"
    assert rows(store)[0] == []  # no result objects for a retry
    second = worker.run_once()
    assert second is not None and second.state == "failed" and "MemoryError" in (second.reason or "")
    results, outbox, series = rows(store)
    assert sorted(r.kind for r in results) == ["SC", "SR"] and len(outbox) == 2
    assert series[0].state == "failed" and "after 2 attempts" in (series[0].reason or "")
    with store.transaction() as s:
        states = [e.to_state for e in s.execute(select(Event).where(Event.entity == "job").order_by(Event.id)).scalars()]
    assert states == ["queued", "running", "queued", "running", "failed"]


def test_cli_worker_once_and_offline_run(tmp_path: Path, synth_case: tuple[Any, list[Path]]) -> None:
    store_dir = tmp_path / "node"
    toml = tmp_path / "hexnode.toml"
    toml.write_text(f'data_dir = "{store_dir}"\n[models]\ndir = "{models_dir()}"\nproviders = ["CPUExecutionProvider"]\n'
                    '[series]\nstable_seconds = 1.0\nstudy_settle_seconds = 1.0\n')
    cfg = Config()
    cfg.data_dir = str(store_dir)
    cfg.series.stable_seconds = 1.0
    cfg.series.study_settle_seconds = 1.0
    store = open_store(cfg.database_url)
    spool = Spool(cfg.spool_path).prepare()
    queue(store, spool, cfg, write_series(tmp_path / "one", n=1, rows=32, cols=32, study_uid=generate_uid()))
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    proc = subprocess.run([sys.executable, "-m", "hexnode.cli", "worker", "--once", "--config", str(toml)],
                          capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    results, _, series = rows(store)
    assert series[0].state == "rejected" and len(results) == 2  # 1 slice: not analysed, SR + SC
    # offline: a folder with the synthetic series and a stray non-DICOM file
    case, paths = synth_case
    (paths[0].parent / "notes.txt").write_text("not DICOM")
    out = tmp_path / "out"
    proc = subprocess.run([sys.executable, "-m", "hexnode.cli", "run", str(paths[0].parent), "--out", str(out),
                           "--models", str(models_dir())], capture_output=True, text=True, env=env, timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "1 non-DICOM files skipped" in proc.stdout
    vol = float(next(line for line in proc.stdout.splitlines() if line.startswith("volume:")).split()[1])
    assert "risk: " in proc.stdout and "probability of expansion: " in proc.stdout
    assert sorted(p.name for p in out.iterdir()) == ["SC.dcm", "SEG.dcm", "SR.dcm"]
    assert np.isfinite(vol)
    # printed with one decimal
    assert sr_summary(pydicom.dcmread(out / "SR.dcm")).get("volume_ml", 0.0) == pytest.approx(vol, abs=0.051)


class ThresholdModels:
    """The real models' identity with a transparent segmenter (50-90 HU), so the test can tell which
    slice's mask landed in which SEG frame."""

    def __init__(self, real: Any) -> None:
        self.info = real.info

    def analyse(self, hu: Any, spacing: Any, notes: Any = (), **_geometry: Any) -> Any:
        # extents / head_up feed the real models' coverage rule, which a threshold does not need
        from hexnode.models.analyser import Analysis
        from hexnode.pipeline.contracts import Prediction

        mask = ((hu >= 50) & (hu <= 90)).astype(np.uint8)
        ml = float(mask.sum()) * spacing[0] * spacing[1] * spacing[2] / 1000
        return Analysis(mask, Prediction(ml, 0.3, self.info, hemorrhage_detected=bool(mask.any()), notes=tuple(notes)))


def test_enhanced_ct_multiframe_is_analysed_with_matching_frames(models: Any, synth_case: tuple[Any, list[Path]],
                                                                 tmp_path: Path) -> None:
    """A Legacy Converted Enhanced CT (highdicom's converter stores frames top-down): each SEG frame
    holds the mask of the slice at the position of the source frame it references."""
    import highdicom as hd

    from hexnode.pipeline.load import load_volume
    from hexnode.pipeline.run import produce

    _, paths = synth_case
    enh = hd.legacy.LegacyConvertedEnhancedCTImage(
        legacy_datasets=[pydicom.dcmread(p) for p in paths], series_instance_uid=generate_uid(), series_number=9,
        sop_instance_uid=generate_uid(), instance_number=1)
    enh.save_as(tmp_path / "enh.dcm")
    out = produce([tmp_path / "enh.dcm"], ThresholdModels(models))
    assert out.analysed and [str(d.Modality) for d in out.datasets][:2] == ["SEG", "SR"]
    seg = out.datasets[0]
    src = pydicom.dcmread(tmp_path / "enh.dcm", stop_before_pixels=True)
    src_z = {i + 1: round(float(f.PlanePositionSequence[0].ImagePositionPatient[2]), 2)
             for i, f in enumerate(src.PerFrameFunctionalGroupsSequence)}
    single = load_volume(paths)  # the same slices as single-frame files: position → expected mask
    expected = {round(float(h.ImagePositionPatient[2]), 2): ((single.hu[z] >= 50) & (single.hu[z] <= 90))
                for z, h in enumerate(single.headers)}
    pixels = seg.pixel_array.reshape(-1, *single.hu.shape[1:])
    assert list(src_z.values()) != sorted(src_z.values())  # the file's frames really are not in z order
    checked = 0
    for frame, arr in zip(seg.PerFrameFunctionalGroupsSequence, pixels, strict=True):
        ref = int(frame.DerivationImageSequence[0].SourceImageSequence[0].ReferencedFrameNumber)
        want = expected[src_z[ref]]
        np.testing.assert_array_equal(arr.astype(bool), want)
        checked += int(want.any())
    assert checked > 3


@pytest.mark.parametrize("rows,cols", [(256, 256), (400, 512), (600, 520)])
def test_matrix_sizes_analysed_on_their_own_grid(models: Any, tmp_path: Path, rows: int, cols: int) -> None:
    """256², non-square and larger-than-512 matrices: analysed, SEG on the source grid (the models pad)."""
    from hexnode.pipeline.run import produce

    out = produce(write_series(tmp_path, n=10, rows=rows, cols=cols), models)
    assert out.analysed and out.shape == (10, rows, cols)
    seg = out.datasets[0]
    assert (seg.Rows, seg.Columns, int(seg.NumberOfFrames)) == (rows, cols, 10)
