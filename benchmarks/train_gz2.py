"""Real data end to end: ingest 2,000 GZ2 JPEGs, train on the train split on CPU, evaluate on validation.

    .venv/bin/python benchmarks/train_gz2.py [--data /work/shared/data/gz2_spirals] [--threads 2]

Pipeline (the same three commands a user runs)::

    skymorph survey ingest --catalog DATA/labels.csv --id-column galaxy_id --size 128 --bands mean \\
        --label-question has_spiral_arms --label-map spiral=yes,non_spiral=no --schema gz2 --out WORK/gz2
    skymorph train --tiles WORK/gz2/tiles.txt --labels WORK/gz2/labels.parquet --schema gz2 --arch resnet_s \\
        --crop-fraction 0.5 --epochs 100 --batch-size 32 --lr 2e-3 --patience 100 --threads 2 --max-minutes 19 \\
        --out WORK/gz2.ckpt
    skymorph evaluate WORK/gz2.ckpt --tiles WORK/gz2/tiles.txt --labels WORK/gz2/labels.parquet --out WORK/eval --tta

Why these choices on 2 CPU cores: the cost of a step scales with the pixels the network sees, so it
sees 64 x 64 (``--resize 48``: 48 x 48, 0.56x the compute). The Kaggle GZ2 cutouts put the galaxy in
the central half of the 424 px frame, so the tiles keep 128 px and the model crops the central 50%
(inside the graph, so an exported model does the same): the galaxy at twice the resolution of a plain
64 px resize of the whole frame, for the same compute. Grey (the mean of R, G, B): measured here it
did at least as well as RGB (0.865 vs 0.857 at 60 epochs, results/train_gz2_grey.json and
train_gz2_rgb_60ep.json), since spiral arms are a shape, not a colour. Accuracy: a galaxy is called spiral when its
predicted has_spiral_arms_yes fraction (mean over T = 30 MC-dropout samples) exceeds 0.5; ``--tta``
averages each prediction over the 8 flips and quarter turns. The result also gives the accuracy of the
last epoch's weights, which no choice on validation touched (the default checkpoint is the epoch of
lowest validation loss).

What did not help (validation accuracy, best checkpoint; results/train_gz2_*.json): 96 px at the same
field (``--size 192``, 60 epochs, 12.9 min) 0.860 (0.865 with TTA); 96 px of a wider field
(``--crop-fraction 0.75``, EMA 0.998, 60 epochs, 9.7 min) 0.842 (0.848 with TTA); EMA of the weights
(``--ema-decay 0.998``) at 64 px, 60 epochs, 7.1 min: 0.855 (0.858 with TTA), below 0.865 without.
TTA moves accuracy by -0.002 to +0.006 (within the +-0.014 standard error of 600 galaxies); it is on
because it is cheap and a symmetry of the labels, not because it was measured to matter. Averaging the
fractions of this run's and the EMA run's last epochs (16.4 min of training together): 0.863.
The defaults here: 0.865 (0.867 for the last epoch), 6.4 min, below the 0.90 target. Every configuration so far lands at 0.84-0.87: the errors
are mostly the labels' rule (``spiral`` also needed "odd: yes", so plain spirals sit among the
non-spirals; results/train_gz2_random_errors.jpg, top row: random false positives, bottom: random false
negatives), not resolution or training length.
Writes benchmarks/results/train_gz2.json (``--tag`` for other files).
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gz2_spirals"))
    parser.add_argument("--work", default="/tmp/skymorph-bench-gz2")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--tag", default="", help="suffix of the results file, e.g. _64px")
    parser.add_argument("--epochs", type=int, default=100)
    parser.add_argument("--resize", type=int, default=0, help="network input size after the centre crop (0: no resize, 64 px)")
    parser.add_argument("--max-minutes", type=float, default=19.0)
    parser.add_argument("--bands", choices=("keep", "mean"), default="mean", help="keep RGB or average to grey")
    parser.add_argument("--size", type=int, default=128, help="ingest size of the tiles (px)")
    parser.add_argument("--crop-fraction", type=float, default=0.5, help="centre crop inside the model")
    parser.add_argument("--ema-decay", type=float, default=0.0, help="moving average of the weights per step (0: none)")
    parser.add_argument("--tta", action=argparse.BooleanOptionalAction, default=True, help="evaluate with the 8 flips and quarter turns")
    args = parser.parse_args()

    import os

    import numpy as np
    import pyarrow.parquet as pq

    from skymorph import cli

    work = Path(args.work)
    gz2, ckpt, evaluation = work / "gz2", work / "gz2.ckpt", work / "eval"
    timings = {}
    t = time.perf_counter()
    if cli.main(["survey", "ingest", "--catalog", f"{args.data}/labels.csv", "--id-column", "galaxy_id", "--size", str(args.size),
                 "--bands", args.bands, "--label-question", "has_spiral_arms", "--label-map", "spiral=yes,non_spiral=no",
                 "--schema", "gz2", "--out", str(gz2)]) != 0:
        return 1
    timings["ingest_minutes"] = (time.perf_counter() - t) / 60
    load_before = os.getloadavg()
    t = time.perf_counter()
    train_args = ["--arch", "resnet_s", "--crop-fraction", str(args.crop_fraction), *(["--resize", str(args.resize)] if args.resize else []),
                  *(["--ema-decay", str(args.ema_decay)] if args.ema_decay else []), "--epochs", str(args.epochs), "--batch-size", "32",
                  "--lr", "2e-3", "--patience", str(args.epochs), "--threads", str(args.threads), "--max-minutes", str(args.max_minutes)]
    if cli.main(["train", "--tiles", str(gz2 / "tiles.txt"), "--labels", str(gz2 / "labels.parquet"), "--schema", "gz2",
                 *train_args, "--out", str(ckpt)]) != 0:
        return 1
    timings["train_minutes"] = (time.perf_counter() - t) / 60
    load_after = os.getloadavg()

    def accuracy_of(checkpoint: Path, out: Path) -> tuple[float, int]:
        if cli.main(["evaluate", str(checkpoint), "--tiles", str(gz2 / "tiles.txt"), "--labels", str(gz2 / "labels.parquet"),
                     "--out", str(out), "--threads", str(args.threads), *(["--tta"] if args.tta else [])]) != 0:
            raise SystemExit(1)
        predictions = pq.read_table(out / "predictions.parquet").to_pandas()
        labels = pq.read_table(gz2 / "labels.parquet").to_pandas().set_index("object_id").loc[predictions["object_id"]]
        spiral = predictions["has_spiral_arms_yes_fraction"].to_numpy() > 0.5
        return float(np.mean(spiral == (labels["label"].to_numpy() == "spiral"))), len(predictions)

    t = time.perf_counter()
    accuracy, n_validation = accuracy_of(ckpt, evaluation)
    timings["evaluate_minutes"] = (time.perf_counter() - t) / 60
    # The last epoch's weights involve no choice made on validation (the best checkpoint is picked by validation loss).
    accuracy_last, _ = accuracy_of(work / "gz2.last.ckpt", work / "eval_last")
    history = json.loads(Path(f"{ckpt}.metrics.json").read_text())
    metrics = json.loads((evaluation / "metrics.json").read_text())
    result = {
        "validation_accuracy": accuracy,
        "validation_accuracy_last_epoch": accuracy_last,
        "n_validation": n_validation,
        "train_minutes": timings["train_minutes"],
        "ingest_minutes": timings["ingest_minutes"],
        "evaluate_minutes": timings["evaluate_minutes"],
        "epochs_run": len(history["epochs"]),
        "best_epoch": history["best_epoch"],
        "image_size_stored": args.size,
        "network_input": f"{args.resize or round(args.size * args.crop_fraction)} px {'RGB' if args.bands == 'keep' else 'grey'}: centre "
                         f"{args.crop_fraction:.0%} crop of the {args.size} px tile{f' resized to {args.resize} px' if args.resize else ''}, inside the model",
        "ema_decay": args.ema_decay or None,
        "tta": args.tta,
        "load_average_1_5_15_min_before_training": list(load_before),
        "load_average_1_5_15_min_after_training": list(load_after),
        "arch": "resnet_s",
        "train_args": train_args,
        "threads": args.threads,
        "has_spiral_arms_rmse": metrics["questions"]["has_spiral_arms"]["rmse"],
        "epochs": history["epochs"],
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus; see load_average_* for other work",
    }
    out = ROOT / "benchmarks" / "results" / f"train_gz2{args.tag}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=1))
    print(f"{'validation accuracy':<22}{accuracy:.4f}  (n={n_validation}; last epoch {accuracy_last:.4f})")
    print(f"{'training minutes':<22}{timings['train_minutes']:.1f}  ({len(history['epochs'])} epochs, best {history['best_epoch']}, {args.threads} threads)")
    print(f"{'ingest / evaluate min':<22}{timings['ingest_minutes']:.1f} / {timings['evaluate_minutes']:.1f}")
    print(f"-> {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
