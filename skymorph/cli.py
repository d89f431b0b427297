"""The ``skymorph`` command line: argument parsing only.

Each subcommand parses its arguments and calls one public function of a package; logic lives there.
Errors a user can fix (:class:`skymorph.errors.SkymorphError`; ``OSError``: missing or unwritable
paths, unreachable schedulers or endpoints; botocore's errors: an unreachable S3 endpoint, missing
credentials) print one line and exit 2. Outputs are checked for writability before the work starts, and
an output that exists is replaced only with ``--overwrite`` (as astropy's ``Table.write``): a trained
model, the exported model a catalog was made with, or a user's own file is not lost to a typo.
"""

from __future__ import annotations

import argparse
import json
import re
import sys
import time
from contextlib import contextmanager

from skymorph.errors import SkymorphError, first_line

__all__ = ["main", "build_parser"]


def _json_object(text: str) -> dict:
    """argparse type: a JSON object (argparse turns the ValueError into a one-line usage error)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as err:
        raise argparse.ArgumentTypeError(f"not valid JSON ({err.msg}): {text!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object like '{{\"widths\": [32, 64]}}', got {text!r}")
    return value


def _storage_options(args) -> dict:
    from skymorph.storage import parse_storage_options

    return parse_storage_options(getattr(args, "storage_options", None))


def _check_writable(url: str | None, flag: str, args, *, directory: bool = False) -> None:
    """Fail now, not after the work, if a local output cannot be written or an S3 output's bucket is
    missing or unreachable (see storage.check_writable and storage.check_bucket)."""
    if url:
        from skymorph.storage import check_bucket, check_writable

        check_writable(url, flag, directory=directory)
        check_bucket(url, flag, _storage_options(args))


def _check_new(urls, flag: str, args) -> None:
    """Refuse, before the work, an output of ``urls`` (the files one flag writes) that exists, unless
    ``--overwrite`` (:func:`skymorph.storage.check_new`)."""
    from skymorph.storage import check_new

    check_new(urls, flag, getattr(args, "overwrite", False), _storage_options(args))


def _add_overwrite_option(parser: argparse.ArgumentParser, what: str) -> None:
    parser.add_argument("--overwrite", action="store_true", help=f"replace {what} (else an existing one is refused)")


def _add_storage_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--storage-options",
        metavar="JSON",
        help='s3fs options as JSON, e.g. \'{"endpoint_url": "http://127.0.0.1:9000"}\' '
        "(default: AWS environment variables / profile, AWS_ENDPOINT_URL)",
    )


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"expected a positive integer, got {value}")
    if value >= 2**63:  # DuckDB's LIMIT failed with an INT128 conversion error naming no flag
        raise argparse.ArgumentTypeError(f"expected a positive integer below 2**63, got {value}")
    return value


def _nonempty(what: str):
    """An argparse ``type`` refusing an empty value (an unset shell variable), which would otherwise read
    as the flag not given (a default taken without a word) or fail later naming no flag."""
    def check(text: str) -> str:
        if not text.strip():
            raise argparse.ArgumentTypeError(f"give {what}, not an empty string")
        return text

    return check


_path = _nonempty("a path or URL")  # files, directories, URLs
_text = _nonempty("a value")  # names and choices: --schema, --scheduler, ...


def _print_json(obj) -> None:
    print(json.dumps(obj, indent=2, default=str))


# ---- survey ------------------------------------------------------------------------------------


def _add_survey_commands(sub) -> None:
    survey = sub.add_parser("survey", help="make tile stores: a synthetic survey, or ingest real cutouts")
    survey_sub = survey.add_subparsers(dest="survey_command", metavar="{synth,ingest}", required=True)

    synth = survey_sub.add_parser("synth", help="write a synthetic survey with known truth and simulated votes")
    synth.add_argument("--out", required=True, metavar="URL", type=_path, help="output location (local path or s3://bucket/prefix)")
    # numbers are checked by synthesize(), which names the flag in a one-line error
    synth.add_argument("--tiles", type=int, default=16, help="number of sky tiles (default 16)")
    synth.add_argument("--per-tile", type=int, default=512, help="galaxies per tile (default 512)")
    synth.add_argument("--size", type=int, default=128, help="cutout size in pixels, at least 16 (default 128)")
    synth.add_argument("--seed", type=int, default=0, help="random seed: same seed, same images, labels and truth on the same kind of CPU (default 0)")
    synth.add_argument("--schema", type=_text, default="decals", help="decision tree of the simulated votes: gz2, decals or a JSON file (default decals)")
    synth.add_argument("--volunteers", type=float, default=40, help="mean volunteers per galaxy (default 40)")
    synth.add_argument("--workers", type=int, default=None, help="processes (default: the cores this process may use)")
    synth.add_argument("--healpix-order", type=int, default=5, help="HEALPix order of the tiles (default 5, ~1.8 deg)")
    synth.add_argument(
        "--footprint", type=float, nargs=4, metavar=("RA_MIN", "RA_MAX", "DEC_MIN", "DEC_MAX"),
        help="RA/Dec box in degrees (ICRS); the tiles are the --healpix-order pixels whose centres fall inside (default 120 250 -5 60)",
    )
    synth.add_argument("--overwrite", action="store_true", help="replace a survey already at --out (else refused); it is "
                       "removed before the new one is made")
    _add_storage_option(synth)
    synth.set_defaults(func=_cmd_survey_synth)
    _add_ingest_command(survey_sub)


def _cmd_survey_synth(args) -> int:
    from skymorph.survey import Footprint, synthesize

    summary = synthesize(
        args.out,
        n_tiles=args.tiles,
        per_tile=args.per_tile,
        size=args.size,
        seed=args.seed,
        schema=args.schema,
        n_volunteers=args.volunteers,
        workers=args.workers,
        storage_options=_storage_options(args),
        healpix_order=args.healpix_order,
        footprint=Footprint(*args.footprint) if args.footprint else Footprint(),
        overwrite=args.overwrite,
    )
    print(summary)
    return 0


def _add_ingest_command(survey_sub) -> None:
    """``skymorph survey ingest`` (called from _add_survey_commands)."""
    ingest = survey_sub.add_parser("ingest", help="ingest JPEG/PNG/FITS cutouts listed in a CSV into tile stores",
                                   description="Ingest JPEG/PNG/FITS cutouts listed in a CSV into tile stores. Exits 1 when some "
                                   "files could not be read: they are named on stderr and in OUT/ingest_failures.csv, and the "
                                   "survey of the others is written.")
    ingest.add_argument("--catalog", required=True, metavar="CSV", type=_path, help="CSV with file (relative to the CSV), object id, optional ra, dec, label, split")
    ingest.add_argument("--out", required=True, metavar="URL", type=_path, help="output location (local path or s3://bucket/prefix)")
    ingest.add_argument("--size", type=_positive_int, default=128, help="output cutout size in pixels (default 128)")
    ingest.add_argument("--bands", choices=("mean", "keep"), default="mean", help="mean: one grey channel; keep: all bands (default mean)")
    ingest.add_argument("--stretch", choices=("asinh", "linear"), default="asinh", help="FITS flux, and one-band 16-bit or float PNG/TIFF, to 8 bits (default asinh)")
    ingest.add_argument("--tile-size", type=_positive_int, default=1024, help="galaxies per tile store (default 1024)")
    ingest.add_argument("--chunk-size", type=_positive_int, default=256,
                        help="cutouts per stored chunk, one S3 object each (default 256; 256-1024 suits S3)")
    ingest.add_argument("--id-column", type=_text, default="object_id", help="the catalog's integer id column (default object_id)")
    ingest.add_argument("--label-question", type=_text, metavar="QUESTION", help="turn the label column into one vote for this question")
    ingest.add_argument("--label-map", type=_text, metavar="LABEL=ANSWER,...", help="label values to answers, e.g. spiral=yes,non_spiral=no (default: labels are answer names)")
    ingest.add_argument("--schema", type=_text, default="gz2", help="schema of --label-question: gz2, decals or a JSON file (default gz2)")
    ingest.add_argument("--survey", type=_text, default="ingest", help="survey name recorded in the tiles (default ingest)")
    ingest.add_argument("--pixel-scale-arcsec", type=float, help="pixel scale of the input cutouts; each tile records that of its resized pixels (default: unknown, recorded as a placeholder)")
    ingest.add_argument("--workers", type=_positive_int, help="decoding threads (default: up to 8)")
    ingest.add_argument("--overwrite", action="store_true", help="replace a survey already at --out (else refused); it is "
                        "removed once every cutout is decoded, before the new tiles are written")
    _add_storage_option(ingest)
    ingest.set_defaults(func=_cmd_survey_ingest)


def _cmd_survey_ingest(args) -> int:
    from skymorph.survey.ingest import ingest, parse_label_map

    summary = ingest(
        args.catalog, args.out, args.size, bands=args.bands, stretch=args.stretch, tile_size=args.tile_size, chunk_size=args.chunk_size,
        id_column=args.id_column, label_question=args.label_question, label_map=parse_label_map(args.label_map),
        schema=args.schema, survey=args.survey, pixel_scale_arcsec=args.pixel_scale_arcsec, workers=args.workers,
        storage_options=_storage_options(args), overwrite=args.overwrite,
    )
    print(summary)
    return 1 if summary.n_failed else 0


# ---- train, evaluate (skymorph.trainer) ----------------------------------------------------------


def _add_train_commands(sub) -> None:
    """``skymorph train`` and ``skymorph evaluate``."""
    from skymorph.model_metadata import LIKELIHOODS

    train = sub.add_parser("train", help="train a Bayesian CNN on vote counts (writes a checkpoint)")
    train.add_argument("--tiles", required=True, metavar="TILELIST", type=_path, help="tile list file (or one .zarr tile store)")
    train.add_argument("--labels", required=True, metavar="LABELS", type=_path, help="Parquet, CSV or FITS table with object_id and {question}_{answer} vote counts (or a Galaxy Zoo table of them)")
    train.add_argument("--schema", type=_text, help="gz2, decals or a JSON file (default: the one the labels record, as survey synth and "
                       "ingest write them, else decals; with --resume/--finetune: the checkpoint's)")
    train.add_argument("--arch", type=_text, help="model architecture (default w20; with --resume/--finetune: the checkpoint's)")
    train.add_argument("--arch-params", metavar="JSON", type=_json_object,
                       help='parameters of the architecture, e.g. \'{"widths": [48, 96, 192, 384]}\' for resnet_s')
    train.add_argument("--likelihood", choices=LIKELIHOODS, help="default multinomial")
    train.add_argument("--dropout", type=float, help="MC dropout rate of the head, in [0, 1) (default 0.5; 0 gives posteriors no width, and is warned about)")
    # the run's settings default to None: TrainConfig.RUN_DEFAULTS for a new run, the checkpoint's with --resume
    train.add_argument("--epochs", type=_positive_int, help="epochs of the schedule (default 10; with --resume: the checkpoint's)")
    train.add_argument("--batch-size", type=_positive_int, help="default 64; with --resume: the checkpoint's")
    train.add_argument("--lr", type=float, help="peak learning rate (default 1e-3; with --resume: the checkpoint's)")
    train.add_argument("--weight-decay", type=float, help="default 0.05; with --resume: the checkpoint's")
    train.add_argument("--warmup-epochs", type=float, help="default 1; with --resume: the checkpoint's")
    train.add_argument("--patience", type=_positive_int,
                       help="epochs without better validation loss before stopping (default 5; with --resume: the checkpoint's)")
    train.add_argument("--seed", type=int, help="default 0; with --resume or --finetune: the checkpoint's")
    train.add_argument("--val-fraction", type=float, help="validation share of the galaxies the labels do not assign (no "
                       "split column, or an empty cell; default 0.1; with --resume or --finetune: the checkpoint's)")
    train.add_argument("--crop-fraction", type=float, help="centre crop inside the model (default 1: none)")
    train.add_argument("--resize", type=int, dest="resize_px", help="resize to this many pixels inside the model")
    train.add_argument("--no-augment", dest="augment", action="store_false", default=None,
                       help="no flips, rotations, zoom, jitter (with --resume: the checkpoint's setting)")
    train.add_argument("--ema-decay", type=float, help="validate and save a moving average of the weights with this decay per step (e.g. 0.998)")
    train.add_argument("--out", required=True, metavar="CKPT", type=_path, help="best checkpoint; CKPT.metrics.json and the .last checkpoint go beside it")
    start = train.add_mutually_exclusive_group()
    start.add_argument("--resume", metavar="CKPT", type=_path, help="continue from a .last checkpoint (optimizer, step, RNG, epoch), with the run's own --out")
    start.add_argument("--finetune", metavar="CKPT", type=_path, help="start from these trained weights with a new optimizer")
    train.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    train.add_argument("--max-minutes", type=float, help="stop after this much wall time, mid-epoch (then validate and save; --resume starts the next epoch)")
    train.add_argument("--stop-after-epochs", type=_positive_int, help="end this session after N epochs of the schedule; continue with --resume")
    train.add_argument("--drop-unmatched", action="store_true", help="train without labelled galaxies that have no image (default: error)")
    _add_overwrite_option(train, "the checkpoints and metrics of an earlier run at --out (not with --resume, which continues them)")
    _add_storage_option(train)
    train.set_defaults(func=_cmd_train)

    evaluate = sub.add_parser("evaluate", help="MC-dropout posteriors of a checkpoint against observed votes")
    evaluate.add_argument("checkpoint", metavar="CKPT", type=_path, help="checkpoint written by `skymorph train` (path or s3:// URL)")
    evaluate.add_argument("--tiles", required=True, metavar="TILELIST", type=_path, help="tile list file (or one .zarr tile store) holding the galaxies' images")
    evaluate.add_argument("--labels", required=True, metavar="LABELS", type=_path, help="Parquet, CSV or FITS table with object_id and {question}_{answer} vote counts (or a Galaxy Zoo table of them)")
    evaluate.add_argument("--out", required=True, metavar="DIR", type=_path, help="metrics.json, predictions.parquet and plots go here")
    evaluate.add_argument("--split", choices=("validation", "train", "test", "all"), default="validation",
                          help="galaxies to score: the checkpoint's validation split (default), its train split, the "
                               "rows the labels' split column marks test, or all")
    evaluate.add_argument("--truth", metavar="PARQUET", type=_path, help="true fractions ({question}_{answer}_true columns), e.g. a synthetic survey's truth.parquet")
    evaluate.add_argument("--samples", type=_positive_int, default=30, help="MC dropout samples T, 1-1000 (default 30)")
    evaluate.add_argument("--seed", type=int, default=0, help="seed of the dropout masks (default 0)")
    evaluate.add_argument("--threads", type=_positive_int, help="torch threads (default: torch's choice)")
    evaluate.add_argument("--drop-unmatched", action="store_true", help="score without labelled galaxies that have no image (default: error)")
    evaluate.add_argument("--tta", action="store_true", help="average over the 8 flips and quarter turns of each image")
    _add_overwrite_option(evaluate, "the files of an earlier evaluation in --out")
    _add_storage_option(evaluate)
    evaluate.set_defaults(func=_cmd_evaluate)


def _cmd_train(args) -> int:
    from skymorph.trainer import TrainConfig, train

    config = TrainConfig(
        tiles=args.tiles, labels=args.labels, out=args.out, schema=args.schema, arch=args.arch, arch_params=args.arch_params,
        likelihood=args.likelihood, dropout=args.dropout, epochs=args.epochs, batch_size=args.batch_size,
        lr=args.lr, weight_decay=args.weight_decay, warmup_epochs=args.warmup_epochs, patience=args.patience,
        seed=args.seed, val_fraction=args.val_fraction, crop_fraction=args.crop_fraction, resize_px=args.resize_px,
        augment=args.augment, ema_decay=args.ema_decay, resume=args.resume, finetune=args.finetune, threads=args.threads,
        max_minutes=args.max_minutes, stop_after_epochs=args.stop_after_epochs, drop_unmatched=args.drop_unmatched,
        overwrite=args.overwrite, storage_options=_storage_options(args),
    )
    _check_writable(args.out, "--out", args)
    started = time.time()
    try:
        print(train(config))
    except KeyboardInterrupt:  # an epoch this run finished is saved: say how to go on from it
        from skymorph.storage import filesystem
        from skymorph.trainer.loop import last_checkpoint_path

        last = last_checkpoint_path(args.out)
        fs, path = filesystem(last, config.storage_options)
        try:
            # this run's, or the one it resumed from; not an earlier run's, which --overwrite leaves until then
            saved = bool(args.resume) or fs.modified(path).timestamp() >= started
        except (OSError, NotImplementedError):
            saved = False
        if saved and fs.exists(path):
            print(f"skymorph: the last finished epoch is saved: continue with `skymorph train --resume {last}` and the "
                  "same --tiles, --labels and --out", file=sys.stderr)
        raise
    return 0


def _cmd_evaluate(args) -> int:
    from skymorph.trainer import evaluate

    options = _storage_options(args)
    _check_writable(args.out, "--out", args, directory=True)
    report = evaluate(
        args.checkpoint, args.tiles, args.labels, args.out, samples=args.samples, seed=args.seed, split=args.split,
        truth=args.truth, threads=args.threads, drop_unmatched=args.drop_unmatched, tta=args.tta,
        overwrite=args.overwrite, storage_options=options,
    )
    print(report)
    return 0


# ---- labels (skymorph.trainer: labels match, labels ingest) -------------------------------------


def _add_labels_commands(sub) -> None:
    labels = sub.add_parser("labels", help="labels for training: give a volunteer table the tiles' ids; add the votes "
                            "volunteers gave a picked batch")
    labels_sub = labels.add_subparsers(dest="labels_command", metavar="{match,ingest}", required=True)
    match = labels_sub.add_parser("match", help="give each row of a volunteer table the object_id, tile and row of the "
                                  "nearest tile galaxy on the sky")
    match.add_argument("table", metavar="TABLE", type=_path, help="a table with ra and dec in degrees (CSV, Parquet or FITS: a Galaxy "
                       "Zoo volunteer table)")
    match.add_argument("--tiles", required=True, metavar="TILELIST", type=_path, help="tile list file (or one .zarr tile store)")
    match.add_argument("--radius", type=float, default=1.0, metavar="ARCSEC", help="largest separation of a match, in "
                       "arcseconds (default 1)")
    match.add_argument("--out", required=True, metavar="LABELS", type=_path, help="the matched rows, as labels (Parquet)")
    _add_overwrite_option(match, "an existing --out")
    _add_storage_option(match)
    match.set_defaults(func=_cmd_labels_match)
    ingest = labels_sub.add_parser("ingest", help="append a batch's votes, with where each image is, to the labels")
    ingest.add_argument("votes", metavar="VOTES", type=_path, help="the volunteers' vote counts (CSV, Parquet or FITS; skymorph's "
                        "spelling or a Galaxy Zoo table), with object_id")
    ingest.add_argument("--batch", required=True, metavar="BATCH", type=_path, help="the batch `catalog pick` wrote for them (tile, row, ra, dec)")
    ingest.add_argument("--labels", metavar="LABELS", type=_path, help="the labels so far (default: none, a first round)")
    ingest.add_argument("--schema", type=_text, help="gz2, decals or a JSON file (default: the one the labels so far record)")
    ingest.add_argument("--out", required=True, metavar="LABELS", type=_path, help="the new labels (Parquet)")
    _add_overwrite_option(ingest, "an existing --out")
    _add_storage_option(ingest)
    ingest.set_defaults(func=_cmd_labels_ingest)


def _cmd_labels_match(args) -> int:
    from skymorph.trainer.crossmatch import match_labels

    matched = match_labels(args.table, args.tiles, args.out, radius_arcsec=args.radius, overwrite=args.overwrite,
                           storage_options=_storage_options(args))
    print(matched.summary())
    return 0


def _cmd_labels_ingest(args) -> int:
    from skymorph.trainer.votes import add_votes

    added = add_votes(args.votes, args.batch, args.out, labels=args.labels, schema=args.schema, overwrite=args.overwrite,
                      storage_options=_storage_options(args))
    print(added.summary())
    return 0


# ---- export (skymorph.exporter) --------------------------------------------------------------------


def _add_export_commands(sub) -> None:
    """``skymorph export``."""
    export = sub.add_parser(
        "export",
        help="freeze T MC-dropout masks of a checkpoint into an ONNX model (or a TensorRT plan)",
        description="Writes ONNX (images uint8 (B, C, H, W) -> samples (B, T, A)) with T dropout masks drawn from "
        "--seed as constants, checked against PyTorch; --format tensorrt also builds a plan from it (NVIDIA GPU).",
    )
    export.add_argument("checkpoint", metavar="CKPT", type=_path, help="checkpoint written by `skymorph train` (path or s3:// URL)")
    export.add_argument("--out", required=True, metavar="URL", type=_path, help="output model.onnx, or model.plan for --format tensorrt")
    export.add_argument("--samples", type=_positive_int, default=30, help="T, the number of frozen dropout masks, 1-1000 (default 30)")
    export.add_argument("--seed", type=int, default=0, help="seed of the masks: same checkpoint, T and seed, same model (default 0)")
    export.add_argument("--format", choices=("onnx", "tensorrt"), default="onnx", help="onnx (default) or tensorrt")
    export.add_argument("--opset", type=_positive_int, default=18, help="ONNX opset, from 18 to the newest onnx and onnxruntime support (default 18)")
    export.add_argument("--fp16", action="store_true", help="tensorrt: build an fp16 plan")
    export.add_argument("--opt-batch", type=_positive_int, help="tensorrt: batch size tuned for (default 256)")
    export.add_argument("--max-batch", type=_positive_int, help="tensorrt: largest batch (default 1024)")
    export.add_argument("--timing-cache", metavar="FILE", type=_path, help="tensorrt: kernel timing cache, read and updated")
    export.add_argument("--onnx-out", metavar="URL", type=_path, help="tensorrt: where the ONNX model goes (default: --out with .onnx)")
    _add_overwrite_option(export, "existing models at --out and (tensorrt) at --onnx-out or its default path")
    _add_storage_option(export)
    export.set_defaults(func=_cmd_export)


def _cmd_export(args) -> int:
    from skymorph.exporter import export_checkpoint

    options = _storage_options(args)
    _check_writable(args.out, "--out", args)
    if args.format == "tensorrt":  # else export_checkpoint says these do not apply, before any S3 request
        _check_writable(args.onnx_out, "--onnx-out", args)
        _check_writable(args.timing_cache, "--timing-cache", args)  # written after the build, which takes minutes
    reports = export_checkpoint(
        args.checkpoint, args.out, args.samples, args.seed, format=args.format, opset=args.opset, fp16=args.fp16,
        onnx_out=args.onnx_out, overwrite=args.overwrite, opt_batch=args.opt_batch, max_batch=args.max_batch,
        timing_cache=args.timing_cache, storage_options=options,
    )
    for report in reports:
        if report is not None:
            print(report)
    return 0


# ---- run (skymorph.inference) ----------------------------------------------------------------------


def _add_run_commands(sub) -> None:
    """``skymorph run``."""
    run = sub.add_parser("run", help="classify a survey on Dask: tiles -> engine -> posteriors -> HATS catalog")
    run.add_argument("--tiles", required=True, metavar="TILELIST", type=_path, help="tile list (one tile store URL per line), or one .zarr tile store")
    run.add_argument("--model", required=True, metavar="MODEL", type=_path, help="exported model (.onnx, .plan) with skymorph metadata, or a .ckpt run by torch with T=30 masks from seed 0")
    run.add_argument("--out", required=True, metavar="CATALOG", type=_path, help="catalog location (local path or s3://), new, empty or a catalog to resume")
    where = run.add_mutually_exclusive_group()
    where.add_argument("--scheduler", type=_text, metavar="ADDRESS", help="Dask scheduler to use (default: DASK_SCHEDULER_ADDRESS, else a local cluster)")
    where.add_argument("--scheduler-file", metavar="FILE", type=_path, help="Dask scheduler file (as written by `dask scheduler --scheduler-file`)")
    run.add_argument("--cluster", choices=("local", "slurm"), default="local",
                     help="without a scheduler: a LocalCluster, or SLURM jobs from --cluster-config (default local)")
    run.add_argument("--cluster-config", metavar="FILE", type=_path, help="YAML for --cluster slurm (see deploy/slurm/)")
    run.add_argument("--workers", type=_positive_int, default=None, help="worker processes of the cluster skymorph starts "
                     "(default: sized to the machine; with --cluster slurm, at most this many jobs)")
    run.add_argument("--threads-per-worker", type=_positive_int, default=1,
                     help="concurrent tasks per worker of the embedded cluster (default 1)")
    run.add_argument("--batch-size", type=_positive_int, default=256, help="images per engine call (default 256)")
    run.add_argument("--max-in-flight", type=_positive_int, default=None, help="tasks submitted at once (default 2 x Dask threads)")
    run.add_argument("--worker-timeout", type=float, default=None, metavar="SECONDS",
                     help="stop (exit 2, resumable) once the scheduler has had no worker for the tasks (GPU=1 with --gpu) "
                     "this long, at the start or mid-run, and waits as long for --scheduler to answer (default: wait for "
                     "workers, a batch queue may take hours to start them; Dask's connect timeout, 30 s, for the scheduler)")
    run.add_argument("--rows-per-task", type=_positive_int, default=4096, help="split larger tiles into tasks of about this many rows (default 4096)")
    run.add_argument("--n-volunteers", type=_positive_int, default=40, help="N of the vote-count posteriors and BALD, 1-1000 (default 40)")
    run.add_argument("--catalog-order", type=int, default=5, help="HEALPix order of the catalog partitions (default 5)")
    run.add_argument("--backend", type=_text, default="auto", help="engine backend: auto, onnxruntime, tensorrt, torch (default auto)")
    run.add_argument("--gpu", action="store_true", help="tasks ask for a worker with resource GPU=1")
    run.add_argument("--allow-failures", action="store_true", help="exit 0 even if some tiles failed (they are in _skymorph/failures.parquet)")
    run.add_argument("--overwrite", action="store_true", help="replace an existing catalog at --out instead of resuming it (only a catalog: a directory holding other files is refused)")
    _add_storage_option(run)
    run.set_defaults(func=_cmd_run)


def _cmd_run(args) -> int:
    from skymorph.inference.job import RunConfig, run_survey

    config = RunConfig(
        tiles=args.tiles, model=args.model, out=args.out, scheduler=args.scheduler, scheduler_file=args.scheduler_file,
        cluster=args.cluster, cluster_config=args.cluster_config, workers=args.workers,
        threads_per_worker=args.threads_per_worker, batch_size=args.batch_size, max_in_flight=args.max_in_flight,
        worker_timeout=args.worker_timeout, rows_per_task=args.rows_per_task, n_volunteers=args.n_volunteers, catalog_order=args.catalog_order,
        allow_failures=args.allow_failures, gpu=args.gpu, backend=args.backend, overwrite=args.overwrite,
        storage_options=_storage_options(args),
    )
    report = run_survey(config)
    print(report.summary())
    if report.failures:
        advice = "" if config.allow_failures else (
            "; fix or replace those tiles and run the same command again (finished tiles are skipped), "
            "or pass --allow-failures to accept the catalog without them")
        print(f"skymorph run: {len(report.failures)} tile range(s) failed; see {report.catalog}/_skymorph/failures.parquet{advice}",
              file=sys.stderr)
        return 0 if config.allow_failures else 1
    return 0


# ---- catalog (skymorph.catalog) --------------------------------------------------------------------


def _add_catalog_commands(sub) -> None:
    """``skymorph catalog info|query|pick``."""
    catalog = sub.add_parser("catalog", help="read a morphology catalog: info, SQL/cone query, pick a volunteer batch")
    catalog_sub = catalog.add_subparsers(dest="catalog_command", metavar="{info,query,pick}", required=True)

    info = catalog_sub.add_parser("info", help="rows, partitions, columns, model, failed tiles, bald_total quantiles")
    info.add_argument("catalog", metavar="CATALOG", type=_path, help="catalog location (local path or s3://bucket/prefix)")
    info.add_argument("--json", action="store_true", help="print JSON instead of text")
    _add_storage_option(info)
    info.set_defaults(func=_cmd_catalog_info)

    query = catalog_sub.add_parser("query", help="SQL filter and/or cone search, to the terminal or a file")
    query.add_argument("catalog", metavar="CATALOG", type=_path, help="catalog location (local path or s3://bucket/prefix)")
    query.add_argument("--where", metavar="SQL", help="a read-only SQL condition (DuckDB), e.g. 'bar_bald > 0.1 AND dec > 0'; "
                       "x / 0 is NULL, ln, log or sqrt of 0 or a negative number an error (BALD columns hold zeros: guard them, "
                       "'bar_bald > 0 AND ln(bar_bald) > -3'); with --cone, a subquery over catalog sees "
                       "the cone's partitions only")
    query.add_argument("--columns", metavar="A,B", help="comma-separated columns to return (default: all)")
    query.add_argument("--order-by", metavar="SQL", help="an SQL ORDER BY list, e.g. 'bald_total DESC' (without it rows "
                       "come in no particular order)")
    query.add_argument("--limit", type=_positive_int, help="at most N rows: the first of --order-by, or else of the catalog's "
                       "own order, the same on every call (the terminal shows 20 unless given)")
    query.add_argument("--cone", nargs=3, type=float, metavar=("RA", "DEC", "RADIUS_ARCSEC"),
                       help="rows within RADIUS_ARCSEC of (RA, DEC), degrees ICRS")
    query.add_argument("--out", metavar="FILE", type=_path, help="write the rows (all of them unless --limit) to .csv, .parquet, .fits, .vot or .xml")
    _add_overwrite_option(query, "an existing --out file")
    _add_storage_option(query)
    query.set_defaults(func=_cmd_catalog_query)

    pick = catalog_sub.add_parser("pick", help="the next Galaxy Zoo batch by BALD, as a subject manifest CSV")
    pick.add_argument("catalog", metavar="CATALOG", type=_path, help="catalog location (local path or s3://bucket/prefix)")
    pick.add_argument("--n", type=_positive_int, required=True, help="batch size")
    pick.add_argument("--question", type=_text, help="rank by {question}_asked x {question}_bald, the information expected from the "
                      "volunteers asked it (default: bald_total, its sum over questions)")
    pick.add_argument("--weight-by-asked", action=argparse.BooleanOptionalAction, default=None,
                      help="with --question: weight its BALD by the share of volunteers asked it (default), or not")
    pick.add_argument("--strategy", choices=("top", "power"), default="top",
                      help="top: the n highest (default); power: sample proportional to BALD^beta (Kirsch et al. 2023)")
    pick.add_argument("--beta", type=float, help="power strategy exponent (default 1.0)")
    pick.add_argument("--seed", type=int, help="power strategy seed: same seed and catalog, same batch; the catalog of a new model "
                      "draws afresh with the same seed (default 0)")
    pick.add_argument("--exclude", metavar="IDS", type=_path, nargs="+", help="CSV, FITS, VOTable or Parquet tables with an object_id column: never "
                      "pick these (the labels' rows with votes, and batches still with the volunteers)")
    pick.add_argument("--exclude-id-column", type=_text, default="object_id", metavar="NAME",
                      help="the --exclude file's column of catalog object ids (default object_id; e.g. galaxy_id)")
    pick.add_argument("--out", required=True, metavar="FILE", type=_path, help="subject manifest (.csv; or .parquet, .fits, .vot, .xml)")
    pick.add_argument("--gallery", metavar="PNG", type=_path, help="also draw the picked galaxies and their posteriors")
    pick.add_argument("--images", metavar="DIR", type=_path, help="also write each picked galaxy's cutout to DIR/<object_id>.png, named in a first "
                      "column 'image': with both local, a manifest for 'panoptes subject-set upload-subjects --file-column 1 SET "
                      "FILE.csv' (files of the same name are replaced: the same galaxy's cutout)")
    _add_overwrite_option(pick, "existing --out and --gallery files")
    _add_storage_option(pick)
    pick.set_defaults(func=_cmd_catalog_pick)


def _cmd_catalog_info(args) -> int:
    from skymorph.catalog import info

    summary = info(args.catalog, storage_options=_storage_options(args))
    if args.json:
        _print_json(summary.to_dict())
    else:
        print(summary)
    return 0


def _cmd_catalog_query(args) -> int:
    from skymorph.catalog import Cone, query_to
    from skymorph.catalog.export import format_terminal

    if args.out:
        _check_writable(args.out, "--out", args)
        _check_new([args.out], "--out", args)
    cone = Cone(*args.cone) if args.cone else None
    columns = None if args.columns is None else [c.strip() for c in args.columns.split(",") if c.strip()]
    screenful = not (args.limit or args.out)  # on a terminal, 20 rows unless asked; one more says whether there are more
    result = query_to(args.catalog, args.out, where=args.where, columns=columns, cone=cone, order_by=args.order_by,
                      limit=21 if screenful else args.limit, storage_options=_storage_options(args))
    more = screenful and result.rows > 20
    rows = "the first 20 rows" if more else f"{result.rows} rows"
    print(f"read {len(result.plan.pixels)} of {result.plan.total_pixels} partitions; {rows}", file=sys.stderr)
    if args.out:
        print(f"wrote {result.rows} rows to {args.out} ({result.format})")
    else:
        print(format_terminal(result.table.slice(0, 20) if more else result.table, max_rows=20 if screenful else args.limit))
        if more:
            print("(first 20 rows; use --limit N or --out FILE for more)", file=sys.stderr)
    return 0


def _cmd_catalog_pick(args) -> int:
    from skymorph.catalog import pick_to
    from skymorph.catalog.gallery import MAX_GALAXIES

    _check_writable(args.out, "--out", args)
    _check_new([args.out], "--out", args)
    if args.gallery:
        _check_writable(args.gallery, "--gallery", args)
        _check_new([args.gallery], "--gallery", args)
    _check_writable(args.images, "--images", args, directory=True)
    batch = pick_to(args.catalog, args.n, args.out, gallery_png=args.gallery, question=args.question, images=args.images,
                    storage_options=_storage_options(args), strategy=args.strategy, beta=args.beta, seed=args.seed,
                    exclude=args.exclude, weight_by_asked=args.weight_by_asked, exclude_id_column=args.exclude_id_column)
    print(f"picked {batch.num_rows} galaxies ({args.strategy}) -> {args.out}")
    if batch.num_rows < args.n:  # a wrong --exclude file (every id in it) picks nothing, quietly
        print(f"skymorph: warning: picked {batch.num_rows}, not --n {args.n}: only {batch.num_rows} galaxies have a "
              f"{'positive ' if args.strategy == 'power' else ''}score{' and are not in --exclude' if args.exclude else ''}",
              file=sys.stderr)
    if args.gallery and batch.num_rows:  # an empty batch is written without one
        drawn = min(batch.num_rows, MAX_GALAXIES)
        print(f"gallery -> {args.gallery}" + (f" (the first {drawn} of {batch.num_rows})" if drawn < batch.num_rows else ""))
    if args.images and batch.num_rows:
        print(f"{batch.num_rows} subject images -> {args.images}")
    return 0 if batch.num_rows else 1  # an empty batch written, but nothing to hand out: a script must not go on


# ---- entry point -------------------------------------------------------------------------------


class _Parser(argparse.ArgumentParser):
    """argparse with its errors on one line, as skymorph's own: the usage block they came with
    pushed the reason off a small terminal (``--help`` shows the usage)."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        # argparse before Python 3.14 took "-1e2" and "-.5e1" for options: `--cone 150 -1e2 600` got "expected 3
        # arguments". Its 3.14 pattern: a value starting with "-" then a digit (or ".digit") is a number.
        self._negative_number_matcher = re.compile(r"^-\.?\d")

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")

    def parse_known_args(self, args=None, namespace=None):
        namespace, extras = super().parse_known_args(args, namespace)
        if extras and self._subparsers is None:  # a command's own: argparse left them to `skymorph`, whose help is no help
            self.error(f"unrecognized arguments: {' '.join(extras)}")
        return namespace, extras


def build_parser() -> argparse.ArgumentParser:
    from skymorph import __version__

    parser = _Parser(
        prog="skymorph",
        description="Galaxy morphology posteriors at survey scale (Bayesian CNN, MC dropout, BALD).",
    )
    parser.add_argument("--version", action="version", version=f"skymorph {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", required=True)
    _add_survey_commands(sub)
    _add_train_commands(sub)
    _add_labels_commands(sub)
    _add_export_commands(sub)
    _add_run_commands(sub)
    _add_catalog_commands(sub)
    return parser


class _Terminated(KeyboardInterrupt):
    """SIGTERM (scancel, a deleted pod, a reclaimed spot node) raised where the program is, so that it
    stops as on Ctrl-C: the run's lock released and its journal flushed, not left for 5 minutes."""


def _raise_terminated(signum, frame) -> None:
    raise _Terminated


@contextmanager
def _sigterm_as_interrupt():
    import signal
    import threading

    if threading.current_thread() is not threading.main_thread():  # only the main thread may set handlers
        yield
        return
    previous = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        with _sigterm_as_interrupt():
            return int(args.func(args) or 0)
    except SkymorphError as err:
        print(f"skymorph: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as err:
        terminated = isinstance(err, _Terminated)
        print(f"skymorph: {'terminated' if terminated else 'interrupted'}", file=sys.stderr)
        return 143 if terminated else 130  # 128 + the signal, as the shell reports a process it killed
    except Exception as err:
        if isinstance(err, BrokenPipeError) and _stdout_reader_left():
            return 141  # as Unix tools do on SIGPIPE (`| head`): quietly
        message = _environment_error(err, args)
        if message is None:  # a bug: its traceback, and an exit code of its own (1 is `run`'s partial catalog)
            import traceback

            traceback.print_exc()
            print(f"skymorph: internal error ({type(err).__name__}); please report it with the traceback above", file=sys.stderr)
            return 3
        print(f"skymorph: error: {message}", file=sys.stderr)
        return 2


def _stdout_reader_left() -> bool:
    """Whether stdout is a pipe whose reader has gone (poll says POLLERR); then stdout is pointed at
    /dev/null, since Python flushes it again at exit. Another broken pipe is an error to report."""
    import os
    import select

    try:
        fd = sys.stdout.fileno()
        poller = select.poll()
        poller.register(fd, select.POLLOUT)
        if not any(events & select.POLLERR for _, events in poller.poll(0)):
            return False
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, fd)
        os.close(devnull)
    except (OSError, ValueError, AttributeError):  # a stdout without a descriptor (a notebook's): not a pipe
        return False
    return True


def _environment_error(err: Exception, args) -> str | None:
    """One line for an error of the environment rather than of skymorph: botocore's (an unreachable S3
    endpoint, no credentials; not ``OSError``s, and some timeouts are both), then ``OSError`` (missing or
    unwritable paths, unreachable schedulers). ``None``: a bug, left to raise with its traceback."""
    from skymorph.storage import is_s3, remote_error_message

    try:
        options = _storage_options(args)
    except SkymorphError:
        options = None
    message = remote_error_message(err, options)
    if message is None and isinstance(err, OSError):
        import errno

        message = first_line(err, limit=500)
        given = _text_arguments(args)
        s3_urls = [value for _, value in given if is_s3(value)]
        # s3fs's errors ("Forbidden") name no object: skymorph.storage gives them the URL it was at; else
        # the S3 URLs given stand in
        refused = str(err.filename) if is_s3(err.filename or "") else None
        urls = [refused] if refused else s3_urls if err.filename is None else []
        reason = err.strerror if refused else message
        if urls and isinstance(err, PermissionError):
            message = (f"S3 denied access ({reason}) to {', '.join(urls)}; check the credentials (AWS_ACCESS_KEY_ID "
                       "and AWS_SECRET_ACCESS_KEY, or AWS_PROFILE), and leave \"anon\" out of --storage-options for a private bucket")
        elif isinstance(err, FileNotFoundError) and err.filename is None and (named := _named_in(message, given)):
            message = f"{_argument_name(named, args)} {message}"  # the message quotes a value given: name its argument
        elif urls and isinstance(err, FileNotFoundError) and (not refused or refused not in message):
            message = f"{message} ({', '.join(urls)})"
        elif urls and getattr(err.__cause__, "response", None):  # s3fs turned S3's answer into an errno: EBUSY for 503, SlowDown
            busy = err.errno == errno.EBUSY
            message = (f"S3 answered {reason} to a request for {', '.join(urls)}"
                       + ("; the endpoint is busy or down for the moment: run the same command again later" if busy else ""))
        if err.errno == errno.ENOSPC:  # with no file named, "[Errno 28] No space left on device" said nothing of what to do
            where = f" writing {str(err.filename)!r}" if err.filename else ""
            message = (f"no space left on the device{where}; free some and run the same command again (`skymorph run` "
                       "resumes where it stopped; the others start again)")
        if isinstance(err, IsADirectoryError) and err.filename is not None:  # name the argument that gave it
            import os

            named = [(name, value) for name, value in given
                     if os.path.abspath(os.path.expanduser(value)) == os.path.abspath(str(err.filename))]
            if named:
                name, value = named[0]
                message = f"{_argument_name(name, args)} {value!r} is a directory; give a file"
    return message


def _named_in(message: str, given: list[tuple[str, str]]) -> str | None:
    """The ``dest`` of the argument whose value (or, for a local path, its absolute path) ``message``
    quotes; None if it quotes none. A missing local file was else followed by every S3 URL given."""
    import os

    from skymorph.storage import is_s3

    for name, value in given:
        local = not is_s3(value)
        if repr(value) in message or local and repr(os.path.abspath(os.path.expanduser(value))) in message:
            return name
    return None


def _text_arguments(args) -> list[tuple[str, str]]:
    """``(dest, value)`` of each text argument given, an item of a list (``--exclude A B``) each, the
    subcommand's name left out (a directory named ``train`` was taken for it)."""
    return [(name, item) for name, value in vars(args).items() if name != "command" and not name.endswith("_command")
            for item in (value if isinstance(value, list) else [value]) if isinstance(item, str)]


def _argument_name(dest: str, args=None) -> str:
    """How the user wrote the argument stored as ``dest``: a positional by name, an option as its flag
    (``catalog`` is the positional of the ``catalog`` commands, an option of ``survey ingest``)."""
    positional = ("checkpoint", "table", "votes") + (("catalog",) if getattr(args, "command", "catalog") == "catalog" else ())
    return dest if dest in positional else f"--{dest.replace('_', '-')}"


if __name__ == "__main__":
    sys.exit(main())
