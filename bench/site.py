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

Usage: nice -n 10 python bench/site.py [--train 40] [--steps N | --seconds S] [--synth 8] [--device cpu]
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

REPO = Path(__file__).resolve().parent.parent
SITE_SEED = 7301  # no training run or benchmark of this repository draws from it


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


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--train", type=int, default=40, help="site cases to train on (the held-out share on top)")
    ap.add_argument("--profile", default="sharp-7mm")
    ap.add_argument("--normal-every", type=int, default=5, help="every N-th case a head without blood (0: none)")
    ap.add_argument("--steps", type=int, default=0, help="U-Net steps (default: hexnode train --site's time budget)")
    ap.add_argument("--seconds", type=float, default=0, help="U-Net time budget in seconds (default: train --site's)")
    ap.add_argument("--synth", type=int, default=8, help="synthetic benchmark cases")
    ap.add_argument("--device", default="auto")
    ap.add_argument("--out", default=str(REPO / "bench" / "output" / "site"))
    ap.add_argument("--reuse", action="store_true", help="keep an existing site data set of the same size")
    args = ap.parse_args()

    out = Path(args.out)
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

    print("\nbefore -> after (the active bundled model -> the candidate), 95 % bootstrap CIs")
    for part in ("site", "synthetic"):
        for name in ("iou", "dice", "volume_error_ml", "false_blood_ml"):
            f = result[part].get(name)
            if f:
                a, c, d = f["active"], f["candidate"], f["difference"]
                ci = "" if d["lo"] is None else f" [{d['lo']:+.3f}, {d['hi']:+.3f}]"
                print(f"  {part:9s} {name:16s} n={f['n']:2d}  {a['value']:.3f} -> {c['value']:.3f}  ({d['value']:+.3f}{ci})")
    print(f"\nseconds: site data {t_site:.0f}, train --site {t_train:.0f}, compare {t_compare:.0f}, "
          f"activate {t_activate:.0f}; total {time.monotonic() - t0:.0f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
