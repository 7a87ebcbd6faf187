"""The node learns at a site it has never seen: a shifted scanner, the site's corrected cases,
fine-tuning, comparison, activation (docs/operations.md, "Learning at the site").

1. Writes a site data set in the export layout (`hexnode train --site` reads it) under
   bench/output/site/site/: cases of the generator drawn with a seed no training used (7301) and a
   scanner profile the models never saw (`--profile`, default sharp-7mm), every `--normal-every`-th
   a head without blood; the generator's truth masks stand in for the radiologist's corrections.
   Cases are added until `--train` of them fall on the training side of the held-out rule (a
   quarter by key hash), so the held-out share comes on top.
2. A node's data folder (SQLite) with the bundled models active, then the commands a site runs:
   `hexnode train --site DIR` (U-Net from the active model's weights), `hexnode models compare`
   (the active model before, the candidate after, on the held-out cases and on the synthetic
   benchmark), `hexnode models activate`.
3. Prints before/after: IoU, Dice, volume error and false blood on normal heads, on the site's
   held-out cases and on the synthetic benchmark, each with its 95 % bootstrap CI, and the time
   each step took.

`--through-dicom`: the same loop as a site lives it. A real node (`hexnode node`: receive, route,
worker, send on the shipped deploy/hexnode.toml; dcmtk's storescp as the PACS) analyses each case
sent with dcmtk's storescu (seed 7311, fresh: not the 7301 the crop shares were tuned on); the
generator's truth goes back to hexnode's SCP as each case's corrected SEG (highdicom, as a viewer
writes it, storescu); once route stored them all, `hexnode dataset export`, `hexnode train --site
--init-from ACTIVE`, `hexnode models compare` and `hexnode models activate` run as the CLI. Besides
the before/after table it prints the active model as the node measured it on every case (the
Dice of hexnode's SEG against the reader's correction, from the corrections table), the
corrections stored and kept aside, and each phase's time. Once the candidate is active, the
held-out scans go in again as new studies: the running node must analyse them on the candidate,
and their corrections measure it through DICOM as they measured the model before.

Usage: nice -n 10 python bench/site.py [--through-dicom] [--train 40] [--steps N | --seconds S] [--synth 8] [--device cpu]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

REPO = Path(__file__).resolve().parent.parent
SITE_SEED = 7301  # no training run or benchmark of this repository draws from it
# fresh for the loop through DICOM: 7301 chose site fine-tuning's crop shares, so its figures are not held out
DICOM_SEED = 7311


def write_site(root: Path, n_train: int, profile: str, normal_every: int) -> tuple[int, int]:
    from hexnode.synth.phantom import generate_case
    from hexnode.synth.site import case_key, write_case, write_labels
    from hexnode.train.siteset import is_held_out

    shutil.rmtree(root, ignore_errors=True)
    root.mkdir(parents=True)
    rows, trained, held, i = [], 0, 0, 0
    while trained < n_train:
        cid = case_key(SITE_SEED, i, profile)
        c = generate_case(SITE_SEED, i, profile=profile, normal=normal_every > 0 and i % normal_every == normal_every - 1)
        write_case(root, cid, c)
        rows.append((cid, c))
        held += is_held_out(cid)
        trained += not is_held_out(cid)
        i += 1
    write_labels(root, rows)
    return trained, held


def hexnode(*args: str, config: Path) -> tuple[subprocess.CompletedProcess[str], float]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("HEXNODE_")}
    t = time.monotonic()
    proc = subprocess.run([sys.executable, "-m", "hexnode.cli", *args, "--config", str(config)],
                          capture_output=True, text=True, env=env)
    if proc.returncode not in (0, 3):
        sys.exit(f"hexnode {' '.join(args)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}")
    return proc, time.monotonic() - t


def print_comparison(result: dict[str, Any]) -> None:
    """`hexnode models compare --json`'s figures: active -> candidate, the paired difference and its CI."""
    print("\nbefore -> after (the active model -> the candidate), 95 % bootstrap CIs")
    for part in ("site", "synthetic"):
        for name in ("iou", "dice", "volume_error_ml", "false_blood_ml"):
            f = result[part].get(name)
            if f:
                a, c, d = f["active"], f["candidate"], f["difference"]
                ci = "" if d["lo"] is None else f" [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                print(f"  {part:9s} {name:16s} n={f['n']:2d}  {a['value']:.3f} -> {c['value']:.3f}  ({d['value']:+.3f}{ci})")


def through_dicom(args: argparse.Namespace) -> int:
    from hexnode.devtools.siteloop import SiteCase, SiteNode, as_new_scan, corrected_seg, write_site_case

    out = Path(args.out or str(REPO / "bench" / "output" / "site-dicom"))
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    seconds: dict[str, float] = {}
    t0 = time.monotonic()
    cases: list[SiteCase] = []
    trained = 0
    while trained < args.train:
        i = len(cases)
        c = write_site_case(out / "scans", DICOM_SEED, i, args.profile,
                            normal=args.normal_every > 0 and i % args.normal_every == args.normal_every - 1)
        cases.append(c)
        trained += not c.held_out
    seconds["generate + write DICOM"] = time.monotonic() - t0
    held = [c for c in cases if c.held_out]
    print(f"site: {len(cases)} cases ({trained} training side + {len(held)} held out, "
          f"{sum(c.normal for c in cases)} without blood), profile {args.profile}, seed {DICOM_SEED}, "
          f"{sum(len(c.paths) for c in cases)} slices ({seconds['generate + write DICOM']:.0f} s)", flush=True)

    t = time.monotonic()
    node = SiteNode(out / "node").start()
    seconds["node start"] = time.monotonic() - t
    try:
        t = time.monotonic()
        for c in cases:  # one association per series, as a scanner sends them
            node.storescu(c.paths)
        seconds["series in (storescu)"] = time.monotonic() - t
        states = node.wait_delivered([c.series_uid for c in cases], timeout=120 + 90 * len(cases))
        seconds["series in -> SEG/SR/SC delivered"] = time.monotonic() - t
        delivered = [c for c in cases if states[c.series_uid][0] == "delivered"]
        for c in cases:
            if c not in delivered:
                print(f"  series {c.case_id}: {states[c.series_uid][0]} {states[c.series_uid][1]}")
        active = node.seg_model_version(delivered[0].series_uid)
        print(f"analysed by the node: {len(delivered)} of {len(cases)} delivered to the PACS, model {active} "
              f"({seconds['series in -> SEG/SR/SC delivered']:.0f} s)", flush=True)

        t = time.monotonic()
        segs = [corrected_seg(c, out / "corrections" / f"{c.case_id}.dcm") for c in cases]
        seconds["corrected SEGs built (highdicom)"] = time.monotonic() - t
        errors = dciodvfy_errors(segs[0][0])
        if errors:
            sys.exit(f"dciodvfy: {segs[0][0]}: {errors[:5]}")
        t = time.monotonic()
        node.send_corrections([p for p, _ in segs])  # one association, as a PACS forwards them
        taken = node.wait_taken([uid for _, uid in segs], timeout=60 + 10 * len(segs))
        seconds["corrections in -> stored"] = time.monotonic() - t
        by_case = {c.case_id: taken[uid] for c, (_, uid) in zip(cases, segs, strict=True)}
        kept = {k: v for k, v in by_case.items() if v.state != "stored"}
        status, _ = node.cli("status")
        line = next((x.strip() for x in status.stdout.splitlines() if x.strip().startswith("corrections")), "")
        print(f"hexnode status: {line}", flush=True)
        for k, v in kept.items():
            print(f"  correction of {k}: {v.state}: {v.reason}")
        print(measured_on_site("all cases", cases, by_case))
        print(measured_on_site("held out", held, by_case), flush=True)

        site = out / "export"
        proc, seconds["dataset export"] = _ok(node.cli("dataset", "export", str(site)))
        print(next((x for x in proc.stderr.splitlines() if x.startswith("wrote ")), proc.stderr.strip()), flush=True)
        steps = ["--seg-steps", str(args.steps)] if args.steps else []
        steps += ["--seg-seconds", str(args.seconds)] if args.seconds else []
        proc, seconds["train --site"] = _ok(node.cli("train", "--site", str(site), "--init-from", active,
                                                     "--device", args.device, *steps))
        print(proc.stdout.strip(), flush=True)
        candidate = proc.stdout.split("candidate ", 1)[1].split(" ", 1)[0]
        proc, seconds["models compare"] = _ok(node.cli("models", "compare", candidate, "--synth", str(args.synth),
                                                       "--json"))
        lines = proc.stdout.strip().splitlines()
        print("\n".join(lines[:-1]), flush=True)
        result = json.loads(lines[-1])
        proc, seconds["models activate"] = _ok(node.cli("models", "activate", candidate))
        accepted = proc.returncode == 0
        print(proc.stdout.strip() if accepted else "activation refused: " + proc.stderr.strip().splitlines()[-1])
        if accepted != (not result["worse"]):
            sys.exit(f"the gate's decision ({'accepted' if accepted else 'refused'}) contradicts compare.json")
        if accepted:  # the held-out scans again, as new ones: the node now analyses them on the candidate
            t = time.monotonic()
            again = [as_new_scan(c, out / "again" / c.case_id) for c in held]
            for c in again:
                node.storescu(c.paths)
            node.wait_delivered([c.series_uid for c in again], timeout=120 + 90 * len(again))
            made_by = {node.seg_model_version(c.series_uid) for c in again}
            print(f"after activation the node's SEGs are made by {', '.join(sorted(made_by))}", flush=True)
            if made_by != {candidate}:
                sys.exit(f"the node still runs {made_by} after activating {candidate}")
            segs_again = [corrected_seg(c, out / "corrections-again" / f"{c.case_id}.dcm") for c in again]
            node.send_corrections([p for p, _ in segs_again])
            taken = node.wait_taken([uid for _, uid in segs_again], timeout=60 + 10 * len(segs_again))
            seconds["held out again, analysed + corrected"] = time.monotonic() - t
            after = {c.case_id: taken[uid] for c, (_, uid) in zip(again, segs_again, strict=True)}
            print(measured_on_site("held out, after activation", again, after), flush=True)
    finally:
        node.stop()

    print_comparison(result)
    print(f"\ncorrections sent {len(segs)}: stored {len(by_case) - len(kept)}, kept aside "
          f"{sum(v.state == 'aside' for v in kept.values())}, own {sum(v.state == 'own' for v in kept.values())}")
    print("\nseconds per phase:")
    for name, s in seconds.items():
        print(f"  {name:36s} {s:7.0f}")
    print(f"  {'total':36s} {time.monotonic() - t0:7.0f}")
    return 0


def measured_on_site(name: str, cases: list[Any], by_case: dict[str, Any]) -> str:
    """The model as the node measured it at the site: the Dice of hexnode's own SEG against each
    reader's correction, and the volumes, from the corrections table."""
    import numpy as np

    blood = [by_case[c.case_id] for c in cases if not c.normal and by_case[c.case_id].state == "stored"]
    normal = [by_case[c.case_id] for c in cases if c.normal and by_case[c.case_id].state == "stored"]
    dice = np.array([t.dice for t in blood], float)
    iou = dice / (2.0 - dice)
    err = np.array([abs(t.hexnode_ml - t.reference_ml) for t in blood], float)
    fb = np.array([t.hexnode_ml for t in normal], float)
    return (f"  the node at the site, {name}: {len(blood)} with blood: IoU mean {iou.mean():.3f}, Dice mean "
            f"{dice.mean():.3f} (median {np.median(dice):.3f}), volume error {err.mean():.2f} ml; {len(normal)} "
            f"without: false blood {fb.mean() if len(fb) else float('nan'):.2f} ml")


def _ok(ran: tuple[subprocess.CompletedProcess[str], float]) -> tuple[subprocess.CompletedProcess[str], float]:
    proc, _ = ran
    if proc.returncode not in (0, 3):
        sys.exit(f"hexnode {' '.join(proc.args[3:5])} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                 f"{proc.stderr[-3000:]}")
    return ran


def dciodvfy_errors(path: Path) -> list[str]:
    proc = subprocess.run(["/usr/bin/dciodvfy", str(path)], capture_output=True, text=True)
    return [x for x in (proc.stdout + proc.stderr).splitlines() if x.startswith("Error")]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=40, help="site cases to train on (the held-out share on top)")
    ap.add_argument("--profile", default="sharp-7mm")
    ap.add_argument("--normal-every", type=int, default=5, help="every N-th case a head without blood (0: none)")
    ap.add_argument("--steps", type=int, default=0, help="U-Net steps (default: hexnode train --site's time budget)")
    ap.add_argument("--seconds", type=float, default=0, help="U-Net time budget in seconds (default: train --site's)")
    ap.add_argument("--synth", type=int, default=8, help="synthetic benchmark cases")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default="", help="default bench/output/site (site-dicom with --through-dicom)")
    ap.add_argument("--reuse", action="store_true", help="keep an existing site data set of the same size")
    ap.add_argument("--through-dicom", action="store_true",
                    help="the whole loop through a real node: series and corrected SEGs over DICOM, then the CLI")
    args = ap.parse_args()
    if args.through_dicom:
        return through_dicom(args)

    out = Path(args.out or str(REPO / "bench" / "output" / "site"))
    site, data = out / "site", out / "data"
    t0 = time.monotonic()
    stamp = out / "site.json"
    wanted = {"train": args.train, "profile": args.profile, "normal_every": args.normal_every, "seed": SITE_SEED}
    if args.reuse and stamp.is_file() and json.loads(stamp.read_text()).get("wanted") == wanted:
        counts = json.loads(stamp.read_text())["counts"]
    else:
        counts = write_site(site, args.train, args.profile, args.normal_every)
        stamp.write_text(json.dumps({"wanted": wanted, "counts": counts}) + "\n")
    t_site = time.monotonic() - t0
    print(f"site data set: {counts[0]} training + {counts[1]} held-out cases, profile {args.profile}, seed {SITE_SEED} "
          f"({t_site:.0f} s)", flush=True)

    shutil.rmtree(data, ignore_errors=True)
    config = out / "hexnode.toml"
    config.write_text(f'data_dir = "{data}"\n')
    hexnode("db", "upgrade", config=config)
    steps = ["--seg-steps", str(args.steps)] if args.steps else []
    steps += ["--seg-seconds", str(args.seconds)] if args.seconds else []
    proc, t_train = hexnode("train", "--site", str(site), "--device", args.device, *steps, config=config)
    print(proc.stdout.strip(), flush=True)
    candidate = proc.stdout.split("candidate ", 1)[1].split(" ", 1)[0]
    proc, t_compare = hexnode("models", "compare", candidate, "--synth", str(args.synth), "--json", config=config)
    lines = proc.stdout.strip().splitlines()
    print("\n".join(lines[:-1]), flush=True)
    result = json.loads(lines[-1])
    proc, t_activate = hexnode("models", "activate", candidate, config=config)
    print(proc.stdout.strip() if proc.returncode == 0 else "activation refused: " + proc.stderr.strip().splitlines()[-1])

    print_comparison(result)
    print(f"\nseconds: site data {t_site:.0f}, train --site {t_train:.0f}, compare {t_compare:.0f}, "
          f"activate {t_activate:.0f}; total {time.monotonic() - t0:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
