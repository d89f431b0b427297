"""Synthetic survey end to end: synthesize, train briefly, evaluate against the known true vote fractions.

    .venv/bin/python benchmarks/train_synth.py [--tiles 4] [--per-tile 512] [--size 64] [--epochs 6] [--threads 1] \
        [--likelihood multinomial] [--tag _long]

Equivalent commands::

    skymorph survey synth --out WORK/synth --tiles 4 --per-tile 512 --size 64 --schema decals --workers 1
    skymorph train --tiles WORK/synth/tiles.txt --labels WORK/synth/labels.parquet --schema decals \\
        --arch resnet_s --epochs 6 --batch-size 32 --lr 2e-3 --out WORK/synth.ckpt
    skymorph evaluate WORK/synth.ckpt --tiles WORK/synth/tiles.txt --labels WORK/synth/labels.parquet \\
        --truth WORK/synth/truth.parquet --out WORK/eval

Prints per question the RMSE of the predicted fractions against the observed vote fractions and
against the true fractions the votes were drawn from, the accuracy on confidently voted galaxies, the
coverage of the 90% intervals observed and expected (their predictive mass), the same within a vote
fraction deviation of 0.2 from the predicted mode (Walmsley et al. 2020's form), and where the coverage
plot is. Writes benchmarks/results/train_synth{tag}.json and a copy of the
coverage plot, train_synth{tag}_coverage.png.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sys
import time
from pathlib import Path

from _args import RESULTS, positive_int
from _provenance import provenance, save


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--work", default="/tmp/skymorph-bench-synth")
    parser.add_argument("--tiles", type=positive_int, default=4)
    parser.add_argument("--per-tile", type=positive_int, default=512)
    parser.add_argument("--size", type=positive_int, default=64)
    parser.add_argument("--epochs", type=positive_int, default=6)
    parser.add_argument("--threads", type=positive_int, default=1)
    parser.add_argument("--likelihood", choices=("multinomial", "dirichlet_multinomial"), default="multinomial")
    parser.add_argument("--patience", type=positive_int, default=5, help="epochs without better validation loss before stopping")
    parser.add_argument("--tag", default="", help="suffix of the results files, e.g. _long")
    args = parser.parse_args()
    ran = provenance()  # before the measurements: the load it records is the machine's at the start

    from skymorph import cli

    work = Path(args.work)
    survey, ckpt, evaluation = work / "synth", work / "synth.ckpt", work / "eval"
    t0 = time.perf_counter()
    if cli.main(["survey", "synth", "--out", str(survey), "--tiles", str(args.tiles), "--per-tile", str(args.per_tile),
                 "--size", str(args.size), "--schema", "decals", "--workers", "1", "--overwrite"]) != 0:
        return 1
    t1 = time.perf_counter()
    if cli.main(["train", "--tiles", str(survey / "tiles.txt"), "--labels", str(survey / "labels.parquet"), "--schema", "decals",
                 "--arch", "resnet_s", "--likelihood", args.likelihood, "--epochs", str(args.epochs), "--batch-size", "32",
                 "--lr", "2e-3", "--patience", str(args.patience), "--threads", str(args.threads), "--out", str(ckpt), "--overwrite"]) != 0:
        return 1
    t2 = time.perf_counter()
    if cli.main(["evaluate", str(ckpt), "--tiles", str(survey / "tiles.txt"), "--labels", str(survey / "labels.parquet"),
                 "--truth", str(survey / "truth.parquet"), "--out", str(evaluation), "--threads", str(args.threads), "--overwrite"]) != 0:
        return 1
    t3 = time.perf_counter()
    metrics = json.loads((evaluation / "metrics.json").read_text())
    print(f"{'question':<20}{'n':>6}{'rmse_obs':>10}{'rmse_true':>11}{'acc_conf':>10}{'cov@0.9':>9}{'expected':>9}{'cov±0.2':>9}{'expected':>9}")
    for q, m in ((q, m) for q, m in metrics["questions"].items() if m["n"]):
        acc = "n/a" if m["accuracy_confident"] is None else f"{m['accuracy_confident']:.3f}"
        print(f"{q:<20}{m['n']:>6}{m['rmse']:>10.4f}{m['rmse_true']:>11.4f}{acc:>10}{m['coverage']['0.9']:>9.3f}{m['coverage_expected']['0.9']:>9.3f}"
              f"{m['coverage_within']['0.2']:>9.3f}{m['coverage_within_expected']['0.2']:>9.3f}")
    print(f"coverage plot: {evaluation / 'coverage.png'}")
    result = {
        "args": vars(args),
        "synth_minutes": (t1 - t0) / 60, "train_minutes": (t2 - t1) / 60, "evaluate_minutes": (t3 - t2) / 60,
        "n_validation": metrics["n_galaxies"], "questions": metrics["questions"],
        "coverage_png": f"benchmarks/results/train_synth{args.tag}_coverage.png",
        "load_average_1min_at_end": os.getloadavg()[0],
    }
    history = json.loads(Path(f"{ckpt}.metrics.json").read_text())
    result.update(epochs_run=len(history["epochs"]), best_epoch=history["best_epoch"])
    result["provenance"] = ran
    out = save(RESULTS / f"train_synth{args.tag}.json", result)
    shutil.copyfile(evaluation / "coverage.png", out.with_name(f"train_synth{args.tag}_coverage.png"))
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
