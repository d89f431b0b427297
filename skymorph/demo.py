"""``make demo``: the whole pipeline on a small synthetic survey, in ./demo-output, in 1-2 minutes.

Steps: start a local S3 endpoint (moto on 127.0.0.1), synthesize a survey into ``s3://skymorph-demo``,
train a small Bayesian CNN for about a minute, evaluate it against the survey's truth, export it to
ONNX with T=30 frozen dropout masks, run the survey job on a local Dask cluster into a HATS catalog,
then ask the catalog what it holds, query it and pick the next Galaxy Zoo batch by BALD. Run with ``python -m skymorph.demo [OUT_DIR]``.
"""

from __future__ import annotations

import os
import shlex
import sys
import time
from dataclasses import dataclass


@dataclass(frozen=True)
class DemoConfig:
    """Sizes chosen so the demo finishes in 1-2 minutes on a 2-core laptop."""

    out_dir: str = "demo-output"
    bucket: str = "skymorph-demo"
    n_tiles: int = 8
    per_tile: int = 256
    size_px: int = 64
    schema: str = "decals"
    # resnet_s: on this survey it reaches a validation loss of about 62 in 8 epochs (56-65 s on 2 cores,
    # 2026-11-30), where w20, without batch normalisation, was still at 79.6 after 8 epochs and took
    # 1.5x as long (2026-11-22).
    arch: str = "resnet_s"
    epochs: int = 8
    max_train_minutes: float = 4.0
    samples: int = 30
    seed: int = 0


def _step(number: int, text: str) -> float:
    print(f"\n[{number}/7] {text}", flush=True)
    return time.perf_counter()


def _done(started: float, where: str = "") -> None:
    print(f"      done in {time.perf_counter() - started:.1f} s{'; ' + where if where else ''}", flush=True)


def run_demo(config: DemoConfig = DemoConfig()) -> int:
    from skymorph.testing import LocalS3

    out_dir = os.path.abspath(config.out_dir)
    os.makedirs(out_dir, exist_ok=True)
    begun = time.perf_counter()
    with LocalS3() as s3:
        t = _step(1, "starting a local S3 endpoint (moto on 127.0.0.1)")
        s3.apply_env()
        survey = f"{s3.create_bucket(config.bucket)}/survey"
        _done(t, f"endpoint {s3.endpoint_url}")

        from skymorph.survey import synthesize

        t = _step(2, f"synthesizing {config.n_tiles} tiles x {config.per_tile} galaxies at {config.size_px} px into {survey}")
        print(synthesize(survey, n_tiles=config.n_tiles, per_tile=config.per_tile, size=config.size_px,
                         seed=config.seed, schema=config.schema), flush=True)
        _done(t, f"tiles in {survey}/tiles, votes in {survey}/labels.parquet")

        checkpoint = os.path.join(out_dir, "model.ckpt")
        t = _step(3, f"training {config.arch} for up to {config.epochs} epochs / {config.max_train_minutes} min")
        from skymorph.trainer import TrainConfig, train

        result = train(TrainConfig(tiles=f"{survey}/tiles.txt", labels=f"{survey}/labels.parquet", out=checkpoint,
                                   schema=config.schema, arch=config.arch, epochs=config.epochs,
                                   max_minutes=config.max_train_minutes, seed=config.seed, overwrite=True))
        _done(t, f"checkpoint {result.checkpoint} (best validation loss {result.best_val_loss:.3f})")

        t = _step(4, "evaluating on the held-out galaxies against the survey's true vote fractions")
        from skymorph.trainer import evaluate

        evaluation = evaluate(result.checkpoint, f"{survey}/tiles.txt", f"{survey}/labels.parquet",
                              os.path.join(out_dir, "evaluation"), truth=f"{survey}/truth.parquet", overwrite=True,
                              progress=False)
        print(evaluation, flush=True)
        _done(t, f"plots {evaluation.coverage_png}, {evaluation.scatter_png}")

        model = os.path.join(out_dir, "model.onnx")
        t = _step(5, f"exporting to ONNX with T={config.samples} frozen dropout masks")
        from skymorph.exporter import export_onnx

        report = export_onnx(result.checkpoint, model, samples=config.samples, seed=config.seed, overwrite=True)
        _done(t, f"{model} (max |ONNX - torch| = {report.max_abs_diff:.1e})")

        from skymorph.inference.job import RunConfig, run_survey

        catalog = os.path.join(out_dir, "catalog")
        t = _step(6, "running the survey job on a local Dask cluster")
        run = run_survey(RunConfig(tiles=f"{survey}/tiles.txt", model=model, out=catalog, overwrite=True))
        print(f"      {run.summary()}", flush=True)
        if not run.ok:
            print(f"demo: the survey job failed on {len(run.failures)} tile range(s): {run.failures[0]}", file=sys.stderr)
            return 1
        _done(t, f"catalog {catalog} (HATS layout; open with lsdb.open_catalog or duckdb)")

        t = _step(7, "catalog info, a query and the next volunteer batch by BALD")
        _catalog_tools(catalog, out_dir)
        _done(t)
    print(f"\ndemo finished in {time.perf_counter() - begun:.0f} s; outputs in {out_dir}", flush=True)
    return 0


def _catalog_tools(catalog: str, out_dir: str) -> None:
    from skymorph.cli import main

    batch, images = os.path.join(out_dir, "batch.csv"), os.path.join(out_dir, "batch-images")
    for argv in (["catalog", "info", catalog],
                 ["catalog", "query", catalog, "--columns", "object_id,ra,dec,bald_total", "--where", "bald_total > 0",
                  "--limit", "5"],
                 ["catalog", "pick", catalog, "--n", "50", "--out", batch, "--images", images, "--overwrite"]):
        command = shlex.join(["skymorph", *argv])  # quoted as a shell needs it, so it can be pasted
        print(f"      $ {command}", flush=True)
        if main(argv) != 0:
            raise SystemExit(f"demo: `{command}` failed")
    print(f"      next Galaxy Zoo batch: {batch}, with its cutouts in {images} (a Zooniverse subject manifest)", flush=True)


def main(argv: list[str]) -> int:
    """``python -m skymorph.demo [OUT_DIR]``: the demo, with one line for bad input or an interrupt, as
    the command line gives."""
    from skymorph.errors import SkymorphError

    try:
        return run_demo(DemoConfig(out_dir=argv[0]) if argv else DemoConfig())
    except SkymorphError as err:
        print(f"demo: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("demo: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
