"""`hexnode run SERIES_DIR [SERIES_DIR ...] --out OUT_DIR`: the node's pipeline on folders, without
database or network.

For debugging and for site IT: the same selection, volume loading, models and result objects as
the worker. Files that are not DICOM (truth.json, DICOMDIR leftovers, notes) are ignored. When the
folder holds several series, the study-level rule picks one and the output says which. A folder
holding several studies (of one patient or several) gets one answer per study, each in
OUT/study-NN/ and addressed to its own patient, as the node answers per study; a study UID over
images of several patients is not analysed.
Several folders: each is analysed into OUT/NN-<name>/, then scans of one patient are linked in time
order by the node's follow-up rule (hexnode/series/followup.py) and each follow-up gets its report
and one line `growth: +12.3 ml (+45 %) over 24.0 h; expansion: yes` (offline_followup.py).
Exit status: 0 analysed, 3 not analysed (the SR/SC saying why are written anyway), 2 nothing usable.
"""

from __future__ import annotations

import argparse
import logging
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from hexnode.config import load_config
from hexnode.pipeline.run import Produced, encode, kind_of, produce
from hexnode.runtime import setup_logging
from hexnode.series.header import VolumeError, read_header
from hexnode.series.info import SeriesInfo
from hexnode.series.select import Selector

log = logging.getLogger(__name__)


@dataclass
class Study:
    """The series of one study found in a folder (Series Instance UID -> files)."""

    uid: str
    series: dict[str, list[Path]] = field(default_factory=dict)
    patients: set[str] = field(default_factory=set)  # Patient IDs seen (compared, never printed)

    @property
    def files(self) -> int:
        return sum(len(p) for p in self.series.values())


def group_studies(folder: Path) -> tuple[list[Study], int]:
    """DICOM files under `folder` by study, then series; and how many files were skipped.

    Largest study first. A file without a Study Instance UID joins a study of its own ("")."""
    studies: dict[str, Study] = {}
    skipped = 0
    for path in sorted(p for p in folder.rglob("*") if p.is_file()):
        try:
            ds = read_header(path)
        except VolumeError:
            skipped += 1
            continue
        series_uid = str(ds.get("SeriesInstanceUID", "") or "")
        if not series_uid:  # a file cut inside its header: it must not become a series of its own
            skipped += 1
            continue
        study_uid = str(ds.get("StudyInstanceUID", "") or "")
        study = studies.setdefault(study_uid, Study(study_uid))
        study.series.setdefault(series_uid, []).append(path)
        study.patients.add(str(ds.get("PatientID", "") or ""))
    return sorted(studies.values(), key=lambda st: (-st.files, st.uid)), skipped


def group_series(folder: Path) -> tuple[dict[str, list[Path]], int]:
    """DICOM files under `folder` by Series Instance UID (all studies); and how many were skipped."""
    studies, skipped = group_studies(folder)
    return {uid: paths for st in studies for uid, paths in st.series.items()}, skipped


def run_offline(args: argparse.Namespace) -> int:
    setup_logging(logging.WARNING, "%(levelname)s %(name)s: %(message)s")
    folders = [Path(f) for f in (args.series_dir if isinstance(args.series_dir, list) else [args.series_dir])]
    out = Path(args.out)
    for folder in folders:
        if not folder.is_dir():
            print(f"hexnode run: {folder} is not a folder", file=sys.stderr)
            return 2
    cfg = load_config(getattr(args, "config", None)) if getattr(args, "config", None) else None
    from hexnode.models.analyser import Models

    models_dir = Path(args.models) if getattr(args, "models", None) else (cfg.models_path if cfg else None)
    if models_dir is None:
        from hexnode.config import Config

        models_dir = Config().models_path
    models = Models.load(models_dir, cfg.models.providers if cfg else None)
    if len(folders) == 1:
        rc, done = _analyse_folder(folders[0], out, cfg, models)
        if len(done) > 1:  # several studies in one folder: a patient's scans are linked as the node does
            _link(done, cfg, models)
        return rc
    # several folders: each in out/<folder name>/, then a patient's later scans linked to the baseline
    done = []
    rc = 0
    for i, folder in enumerate(folders):
        sub = out / f"{i + 1:02d}-{folder.name}"
        print(f"== {folder} -> {sub}")
        code, results = _analyse_folder(folder, sub, cfg, models)
        rc = max(rc, code)
        done.extend(results)
    _link(done, cfg, models)
    return rc


def _link(done: list[tuple[Path, Path, Produced, list[Path]]], cfg: Any, models: Any) -> None:
    from hexnode.pipeline.offline_followup import link_offline

    link_offline(done, cfg, models)


def _analyse_folder(folder: Path, out: Path, cfg: Any, models: Any) -> tuple[int, list[tuple[Path, Path, Produced, list[Path]]]]:
    """One answer per study in `folder`: in `out` itself for one study, else in out/study-NN/ each
    (its report under its own patient, as the node answers per study). Exit status: 0 every study
    analysed, 3 one or more not analysed, 2 no DICOM files."""
    studies, skipped = group_studies(folder)
    if not studies:
        print(f"hexnode run: no DICOM files in {folder} ({skipped} other files)", file=sys.stderr)
        return 2, []
    if len(studies) == 1:
        rc, result = _analyse(folder, studies[0], out, cfg, models, skipped)
        return rc, [(folder, out, *result)] if result is not None else []
    patients = len({p for st in studies for p in st.patients})
    print(f"studies: {len(studies)} in {folder} ({patients} patient{'s' if patients != 1 else ''}, "
          f"{skipped} non-DICOM files skipped): one answer per study")
    rc, done = 0, []
    for i, study in enumerate(studies):
        sub = out / f"study-{i + 1:02d}"
        print(f"== study {i + 1} of {len(studies)}: {len(study.series)} series, {study.files} files -> {sub}")
        code, result = _analyse(folder, study, sub, cfg, models, None)
        rc = max(rc, code)
        if result is not None:
            done.append((sub, sub, *result))
    return rc, done


def _analyse(folder: Path, study: Study, out: Path, cfg: Any, models: Any,
             skipped: int | None) -> tuple[int, tuple[Produced, list[Path]] | None]:
    groups = study.series
    selector = Selector.from_config(cfg.series.selection if cfg else {})
    infos = [SeriesInfo(uid, read_header(paths[len(paths) // 2]), len(paths)) for uid, paths in groups.items()]
    choice = selector.choose(infos)
    if len(study.patients) > 1:
        # one study UID over images of several patients: no report could be addressed truthfully
        uid, rejected, note = max(groups, key=lambda u: len(groups[u])), (
            f"the study holds images of {len(study.patients)} different patients"), None
    elif choice.chosen is not None:
        uid, rejected, note = choice.chosen.series_uid, None, choice.note
    else:
        # nothing analysable: report on the study's largest series, with its reason
        uid = max(groups, key=lambda u: (len(groups[u]), u))
        rejected, note = choice.rejected.get(uid, choice.note), None
    produced = produce(groups[uid], models, selection_note=note, rejected=rejected)
    out.mkdir(parents=True, exist_ok=True)
    written = []
    for ds in produced.datasets:
        path = out / f"{kind_of(ds)}.dcm"
        path.write_bytes(encode(ds))
        written.append(path)
    if skipped is not None:
        print(f"series: {len(groups)} in {folder} ({skipped} non-DICOM files skipped)")
    else:
        print(f"series: {len(groups)} in this study")
    if len(groups) > 1:
        print(f"selection: {choice.note}")
    for line in produced.notes:
        print(f"note: {line}")
    if produced.prediction is None:
        print(f"not analysed: {produced.reason}")
    else:
        p = produced.prediction
        limit = f", none of {p.model.min_lesion_ml:g} ml or more" if p.model.min_lesion_ml > 0 else ""
        print(f"volume: {p.volume_ml:.1f} ml" + ("" if p.hemorrhage_detected else f" (no hemorrhage detected{limit})"))
        print(f"probability of expansion: {p.probability:.3f} (threshold {p.threshold:.3f})")
        print(f"risk: {p.risk}")
        print(f"model: {p.model.name} {p.model.version}" + (" (synthetic-trained, not for clinical use)"
                                                            if p.model.synthetic_trained else ""))
    print("timings: " + ", ".join(f"{k} {v:.2f} s" for k, v in produced.timings.items()))
    for path in written:
        print(f"wrote {path}")
    return (0 if produced.analysed else 3), (produced, groups[uid])
