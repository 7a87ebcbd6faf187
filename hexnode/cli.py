"""The `hexnode` command: one subcommand per process or tool.

Each subcommand's implementation lives in the module that owns the work; this file only parses
arguments and imports that module lazily, so `hexnode synth` never pays for onnxruntime,
SQLAlchemy or pynetdicom.

Every command that reads the settings says first which settings file and which database it uses
(the URL without its password): a stage as its first log line, a tool as one line on stderr
(`hexnode status: config /etc/hexnode/hexnode.toml; database sqlite:////var/lib/hexnode/hexnode.sqlite`).
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Callable, Sequence

from hexnode import __version__

# The long-running processes: they say which config and database as a log line (journal, JSON).
STAGES = frozenset({"receive", "route", "worker", "send", "web", "node", "serve"})
# Commands that read the settings but use no database.
NO_DATABASE = frozenset({"run", "echo"})


def _config_arg(p: argparse.ArgumentParser) -> None:
    p.add_argument("--config", help="settings file (default: $HEXNODE_CONFIG or ./hexnode.toml)")


def _cmd_synth(args: argparse.Namespace) -> int:
    from hexnode.synth.cli import run_synth

    return run_synth(args)


def _cmd_train(args: argparse.Namespace) -> int:
    from hexnode.train.cli import run_train  # torch lives only in the `train` extra

    return run_train(args)


def _cmd_evaluate(args: argparse.Namespace) -> int:
    from hexnode.train.evaluate import run_evaluate

    return run_evaluate(args)


def _cmd_receive(args: argparse.Namespace) -> int:
    from hexnode.receive.scp import run_receive

    return run_receive(args)


def _cmd_route(args: argparse.Namespace) -> int:
    from hexnode.route.service import run_route

    return run_route(args)


def _cmd_web(args: argparse.Namespace) -> int:
    from hexnode.web.server import run_web

    return run_web(args)


def _cmd_node(args: argparse.Namespace) -> int:
    from hexnode.node import run_node

    return run_node(args)


def _cmd_serve(args: argparse.Namespace) -> int:
    from hexnode.node import run_serve

    return run_serve(args)


def _cmd_worker(args: argparse.Namespace) -> int:
    from hexnode.worker import run_worker

    return run_worker(args)


def _cmd_send(args: argparse.Namespace) -> int:
    from hexnode.send.sender import run_send

    return run_send(args)


def _cmd_run(args: argparse.Namespace) -> int:
    from hexnode.pipeline.offline import run_offline

    return run_offline(args)


def _cmd_status(args: argparse.Namespace) -> int:
    from hexnode.admin.status import run_status

    return run_status(args)


def _cmd_resend(args: argparse.Namespace) -> int:
    from hexnode.send.sender import run_resend

    return run_resend(args)


def _cmd_purge(args: argparse.Namespace) -> int:
    from hexnode.admin.purge import run_purge

    return run_purge(args)


def _cmd_health(args: argparse.Namespace) -> int:
    from hexnode.health import run_health

    return run_health(args)


def _cmd_metrics(args: argparse.Namespace) -> int:
    from hexnode.web.metrics import run_metrics

    return run_metrics(args)


def _cmd_conformance(args: argparse.Namespace) -> int:
    from hexnode.admin.conformance import run_conformance

    return run_conformance(args)


def _cmd_outcomes(args: argparse.Namespace) -> int:
    from hexnode.admin.outcomes import run_outcomes

    return run_outcomes(args)


def _cmd_dataset(args: argparse.Namespace) -> int:
    from hexnode.labels.export import run_dataset

    return run_dataset(args)


def _cmd_recalibrate(args: argparse.Namespace) -> int:
    from hexnode.train.recalibrate import run_recalibrate  # numpy only: no torch

    return run_recalibrate(args)


def _cmd_models(args: argparse.Namespace) -> int:
    if args.action == "compare":
        from hexnode.train.compare import run_compare  # the models on the site's held-out cases: no torch

        return run_compare(args)
    from hexnode.admin.models import run_models

    return run_models(args)


def _cmd_db(args: argparse.Namespace) -> int:
    from hexnode.admin.db import run_db  # Alembic is imported only here and by open_store

    return run_db(args)


def _cmd_echo(args: argparse.Namespace) -> int:
    from hexnode.echo import run_echo

    return run_echo(args)


def _cmd_series(args: argparse.Namespace) -> int:
    from hexnode.lookup import run_series

    return run_series(args)


def _cmd_demo(args: argparse.Namespace) -> int:
    from hexnode.devtools.demo import run_demo

    return run_demo(args)


# Commands that write the spool, the SQLite database or results: what they create is the
# hexnode user's alone (0700 folders, 0600 files), whatever the umask they were started with.
PRIVATE_DATA_COMMANDS = frozenset({"node", "serve", "receive", "route", "worker", "send", "web", "purge", "resend",
                                   "db", "recalibrate", "models", "status", "outcomes", "health",
                                   "dataset"})


def private_files() -> None:
    import os

    os.umask(0o077)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hexnode",
        description="DICOM inference node for hematoma expansion risk (synthetic-trained, not for clinical use)",
    )
    parser.add_argument("--version", action=_Version, nargs=0,
                        help="the package version and the model version the workers use (settings from "
                             "$HEXNODE_CONFIG or ./hexnode.toml) and exit")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    def add(name: str, handler: Callable[[argparse.Namespace], int], help_: str) -> argparse.ArgumentParser:
        p = sub.add_parser(name, help=help_, description=help_)
        p.set_defaults(handler=handler)
        return p

    p = add("synth", _cmd_synth, "write synthetic head NCCT series with ground truth beside them")
    p.add_argument("--n", type=int, default=1, help="number of series")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", help="output folder (one case-NNNN folder per series)")
    p.add_argument("--thin", action="store_true", help="0.625-1.25 mm slices (200-300 slices)")
    p.add_argument("--hard", action="store_true", help="failure cases: < 3 ml, motion, streaks")
    p.add_argument("--bayes-auc", action="store_true", help="print prevalence and Bayes-optimal AUC, no images")
    p.add_argument("--draws", type=int, default=20000, help="draws for --bayes-auc")
    p.add_argument("--transfer-syntax", default="explicit", help="explicit | implicit")
    p.add_argument("--tilt", type=float, default=0.0, help="gantry tilt in degrees (15-25 is routine)")
    p.add_argument("--normal", action="store_true", help="heads without any blood (false-positive checks)")
    p.add_argument("--mixed", metavar="RUNS",
                   help="mixed slice thickness in one series, runs bottom up, e.g. 4x14,7x14 (GE head protocol)")
    p.add_argument("--run-overlap", type=float, default=0.0, metavar="MM",
                   help="with --mixed: each run's first slice reaches MM back into the run below, as GE writes "
                        "its 4 + 7 mm protocol (4.42: a 1.08 mm step at the change)")
    p.add_argument("--scanner-profile", metavar="NAME",
                   help="another scanner's look (sharp-7mm: edge-enhancing kernel, fine noise, skull-base beam "
                        "hardening, brain 8 HU high, 7 mm slices); the same heads, bleeds and masks")
    p.add_argument("--vendor", choices=["ge", "siemens", "philips", "canon", "uih"],
                   help="write the manufacturer, kernel, description and protocol names that vendor uses")
    p.add_argument("--no-body-part", action="store_true",
                   help="leave Body Part Examined, the descriptions and the protocol name out (anonymisers and "
                        "older scanners do): the headers say nothing about the body part")
    p.add_argument("--no-frame-of-reference", action="store_true",
                   help="leave the Frame of Reference UID out (some exports do)")
    p.add_argument("--followup", action="store_true",
                   help="also write case-NNNN/followup/: the same patient hours later, the bleed grown to the "
                        "truth's followup_volume_ml")
    p.add_argument("--lookalike", metavar="KIND",
                   help="instead of heads: qa-phantom | contrast | chest | abdomen (not a non-contrast head, "
                        "hexnode refuses them) or sinus-clot | calcified-falx (plain heads like them)")

    p = add("train", _cmd_train, "train the models (needs the `train` extra)")
    p.add_argument("--data", help="site data folder (DICOM or NIfTI cases + labels.csv)")
    p.add_argument("--synth", type=int, default=0, metavar="N", help="generate N synthetic cases instead")
    p.add_argument("--normal", type=int, default=0, metavar="N",
                   help="with --synth: N more heads without blood, for the U-Net only (negatives: skull base, "
                        "calcifications)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--out", default="models", help="where the model files go")
    p.add_argument("--quick", action="store_true", help="tiny models, few cases (tests)")
    p.add_argument("--workdir", help="scratch folder (default: a temporary one)")
    p.add_argument("--seg-seconds", type=float, default=0, help="U-Net training time budget (default 900; quick 40; --site 360)")
    p.add_argument("--cnn-seconds", type=float, default=0, help="HE CNN training time budget (default 150; quick 8)")
    p.add_argument("--workers", type=int, default=2, help="processes for data generation and feature extraction")
    p.add_argument("--refit", metavar="WORKDIR", help="refit only the fusion stage from WORKDIR/features.pkl")
    p.add_argument("--restage", metavar="MODELS",
                   help="keep MODELS' U-Net and CNN; run the fusion, val and test cases of --synth N --seed S "
                        "through the node's own inference (cached in --workdir), then refit the marker score, "
                        "LightGBM and the calibration into --out (which must hold copies of MODELS' files)")
    p.add_argument("--test-synth", type=int, default=0, metavar="N",
                   help="with --restage: the test figures on N cases of --test-seed (never trained on) instead of "
                        "the training run's test split")
    p.add_argument("--test-seed", type=int, default=0, metavar="S")
    p.add_argument("--extra-synth", type=int, default=0, metavar="N",
                   help="with --restage: N more fusion and val cases of --extra-seed (a seed the networks never "
                        "saw), for the booster and the calibration")
    p.add_argument("--extra-seed", type=int, default=0, metavar="S")
    p.add_argument("--resume", metavar="WORKDIR",
                   help="continue a stopped run from its checkpoints and feature cache (its own arguments)")
    p.add_argument("--init-from", metavar="DIR",
                   help="start the networks from a campaign's last weights (DIR/seg.pt, cnn.pt, campaign.json; "
                        "e.g. models/campaign) and add this run to its history; or from a model set's seg.onnx "
                        "(e.g. models: the U-Net continues, BatchNorm statistics frozen; the CNN starts afresh); "
                        "with --site: a model version or folder (default: the active version)")
    p.add_argument("--site", metavar="DIR",
                   help="fine-tune the active model's U-Net on a site's corrected cases (the --data layout; a quarter "
                        "held out by key) into a candidate version under <data_dir>/models/ (not active)")
    p.add_argument("--seg-steps", type=int, default=0, metavar="N", help="with --site: exactly N U-Net steps (default: --seg-seconds, 360 with --site)")
    p.add_argument("--device", default="auto", help="with --site: torch device, e.g. cpu, cuda (default: cuda if any)")
    _config_arg(p)

    p = add("evaluate", _cmd_evaluate, "evaluate the committed models on fresh data")
    p.add_argument("--synth", type=int, default=0, metavar="N")
    p.add_argument("--seed", type=int, default=12345)
    p.add_argument("--hard", action="store_true")
    p.add_argument("--data", help="site data folder")
    p.add_argument("--models", help="models folder (default: the repository's models/)")
    p.add_argument("--json", action="store_true", help="last line: one JSON object of the figures")
    p.add_argument("--plots", help="write ROC / reliability / contour PNGs here")
    p.add_argument("--cases", metavar="CSV", help="write one row per case (IoU, volumes, scores) here")
    p.add_argument("--workers", type=int, default=2, help="processes (each runs the whole pipeline)")

    p = add("node", _cmd_node, "a one-machine site: receive, route, worker(s), send and web (if [http] enabled) "
                               "as supervised child processes")
    _config_arg(p)
    p.add_argument("--workers", type=int, metavar="N", help="worker processes (default: [worker] processes, 1)")

    p = add("receive", _cmd_receive, "the C-STORE SCP: receive, spool and index (stores, never decides)")
    _config_arg(p)

    p = add("route", _cmd_route, "series completion, selection and the study's decision; queues the jobs")
    _config_arg(p)

    p = add("web", _cmd_web, "the status page, /status, /outcomes and /metrics over HTTP ([http])")
    _config_arg(p)

    p = add("serve", _cmd_serve, "the old name: receive + route (+ web if [http] enabled) under one supervisor; "
                                 "worker and send run on their own")
    _config_arg(p)

    p = add("worker", _cmd_worker, "run a worker: claim jobs, run the models, build the result objects")
    _config_arg(p)
    p.add_argument("--once", action="store_true", help="exit when the queue is empty")

    p = add("send", _cmd_send, "deliver the outbox to the destinations")
    _config_arg(p)
    p.add_argument("--once", action="store_true", help="exit when nothing is due")

    p = add("run", _cmd_run, "offline: analyse folders of DICOM files, write SEG/SR/SC to --out; several folders "
                             "of one patient: later scans are linked to the baseline as the node does")
    p.add_argument("series_dir", nargs="+")
    p.add_argument("--out", required=True)
    p.add_argument("--models", help="models folder (default: the repository's models/)")
    _config_arg(p)  # optional: selection rules and providers from a hexnode.toml

    p = add("status", _cmd_status, "jobs by state, last errors, queue depth, stage times")
    _config_arg(p)
    p.add_argument("--json", action="store_true")

    p = add("series", _cmd_series, "one series by the hash in the logs and status, its Series or Study Instance "
                                   "UID, or an accession number: state, decisions, jobs, objects, deliveries, events "
                                   "(no patient values)")
    _config_arg(p)
    p.add_argument("id", metavar="ID", help="series hash (10 hex digits), study hash, UID or accession number")
    p.add_argument("--json", action="store_true")
    p.add_argument("--instances", action="store_true", help="also list every received instance")
    p.add_argument("--events", type=int, default=30, metavar="N", help="the last N events (default 30; 0: all)")

    p = add("echo", _cmd_echo, "test a [[destinations]] entry: C-ECHO (TLS as configured), or for a STOW-RS "
                               "destination a QIDO-RS query on its DICOMweb root with its bearer token")
    _config_arg(p)
    p.add_argument("destination", nargs="?", metavar="DEST",
                   help="a destination's name (default: every destination)")

    p = add("outcomes", _cmd_outcomes, "the site's outcome pairs: AUC, calibration, sensitivity ... per model version")
    _config_arg(p)
    p.add_argument("--json", action="store_true")
    p.add_argument("--png", metavar="FILE", help="also write the reliability diagram here")
    p.add_argument("--version", help="the reliability diagram of this model version only")

    p = add("dataset", _cmd_dataset, "export the site's labelled cases (reference masks readers sent back as "
                                     "DICOM SEG, follow-up outcomes) in the layout `hexnode train --data` reads")
    _config_arg(p)
    p.add_argument("action", choices=["export"])
    p.add_argument("dir", metavar="DIR", help="where the data set goes (labels.csv, <case>/image.nii.gz, mask.nii.gz)")

    p = add("recalibrate", _cmd_recalibrate,
            "refit calibration and threshold on the site's outcomes; writes a new model version")
    _config_arg(p)

    p = add("models", _cmd_models, "list model versions; compare a candidate with the active one; activate one "
                                   "for the workers; roll back to an earlier one")
    _config_arg(p)
    p.add_argument("action", choices=["list", "compare", "activate", "rollback"])
    p.add_argument("version", nargs="?", help="compare, activate: the version; rollback: an earlier active version "
                                              "(default: the one before the active one)")
    p.add_argument("--force", action="store_true",
                   help="activate: a site candidate that was not compared, or was worse (written in the audit trail)")
    p.add_argument("--site", metavar="DIR", help="compare: the site data set (default: the one the candidate names)")
    p.add_argument("--synth", type=int, metavar="N", help="compare: synthetic benchmark cases (default 8)")
    p.add_argument("--json", action="store_true", help="compare: last line, the whole comparison as JSON")

    p = add("resend", _cmd_resend, "queue failed deliveries (and notifications) again")
    _config_arg(p)
    p.add_argument("--all-failed", action="store_true", help="every failed delivery and notification")
    p.add_argument("--notification", action="append", type=int, metavar="ID", help="a failed notification (repeatable)")
    p.add_argument("ids", nargs="*", type=int, help="outbox ids")

    p = add("purge", _cmd_purge, "delete delivered series older than the retention period")
    _config_arg(p)
    p.add_argument("--days", type=float, help="override spool.retention_days")
    p.add_argument("--dry-run", action="store_true")

    p = add("db", _cmd_db, "the database schema: current revision (exit 1 when an upgrade is pending), "
                           "upgrade to this version's head, history of revisions")
    _config_arg(p)
    p.add_argument("action", choices=["current", "upgrade", "history"])

    p = add("health", _cmd_health, "exit 0 when STAGE is healthy here: its heartbeat is fresh (receive: and "
                                   "answers a C-ECHO; web: GET /healthz) — for health checks and probes")
    _config_arg(p)
    from hexnode.health import add_arguments as health_arguments  # argparse only

    health_arguments(p)

    p = add("metrics", _cmd_metrics, "print the table of /metrics (--write: into docs/operations.md)")
    from hexnode.web.metrics import add_arguments as metrics_arguments

    metrics_arguments(p)

    p = add("conformance", _cmd_conformance,
            "print the generated tables of the DICOM Conformance Statement (docs/conformance.md)")
    from hexnode.admin.conformance import add_arguments  # argparse only: importing it costs nothing

    add_arguments(p)

    p = add("demo", _cmd_demo, "Orthanc + hexnode on loopback, a synthetic series in, SEG/SR/SC back")
    p.add_argument("--once", action="store_true", help="exit after the first result")
    p.add_argument("--workdir", default="var/demo")
    p.add_argument("--viewer-port", type=int, default=0, help="OHIF's loopback port (default: a free one)")
    return parser


class _Version(argparse.Action):
    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: object,
                 option_string: str | None = None) -> None:
        from hexnode.about import version_text

        print(version_text())
        parser.exit()


def announce(args: argparse.Namespace) -> None:
    """Say which settings file and which database this command uses (see the module docstring)."""
    from hexnode.config import describe, load_config

    if args.command == "run" and not getattr(args, "config", None):
        print("hexnode run: config none (offline: built-in selection rules); no database", file=sys.stderr)
        return
    cfg = load_config(getattr(args, "config", None))
    where = describe(cfg, getattr(args, "config", None), database=args.command not in NO_DATABASE)
    if args.command in STAGES:
        from hexnode.runtime import setup_logging

        setup_logging(cfg.log_level, log_format=cfg.log_format, stage=args.command)
        logging.getLogger("hexnode").info("hexnode %s %s: %s", __version__, args.command, where)
    else:
        print(f"hexnode {args.command}: {where}", file=sys.stderr)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "handler", None):
        parser.print_help()
        return 2
    # before any command imports a DICOM library: no warning may print a patient's name
    from hexnode.runtime import route_warnings

    route_warnings()
    site_training = args.command == "train" and bool(getattr(args, "site", None))
    if args.command in PRIVATE_DATA_COMMANDS or site_training:
        private_files()
    from hexnode.config import ConfigError, DatabaseMissing

    try:
        # training reads a node's settings only for --site (its versions and database)
        if hasattr(args, "config") and (args.command != "train" or site_training):
            announce(args)
        return int(args.handler(args) or 0)
    except ConfigError as exc:  # a bad or incomplete settings file: one clear line, no traceback
        print(f"hexnode: configuration error: {exc}", file=sys.stderr)
        return 2
    except DatabaseMissing as exc:  # a read-only command pointed at the wrong place: never a new database
        print(f"hexnode {args.command}: {exc}.\n{where_to_look()}", file=sys.stderr)
        return 2


def where_to_look() -> str:
    return ("  It was looked for where the settings point: --config FILE, else $HEXNODE_CONFIG, else ./hexnode.toml "
            "in the current folder, else the built-in defaults (data_dir \"var\" under the current folder).\n"
            "  Point at the node's own settings (e.g. --config /etc/hexnode/hexnode.toml) or database "
            "(HEXNODE_DATABASE_URL=...); a new node's database is made by its first start or `hexnode db upgrade`.")


if __name__ == "__main__":
    sys.exit(main())
