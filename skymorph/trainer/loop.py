"""Train a Bayesian CNN on Galaxy Zoo votes: AdamW, warm-up + cosine learning rate, early stopping.

The exact command (the real GZ2 subset; see benchmarks/train_gz2.py for the whole pipeline)::

    skymorph survey ingest --catalog gz2_spirals/labels.csv --id-column galaxy_id \\
        --size 128 --label-question has_spiral_arms --label-map spiral=yes,non_spiral=no \\
        --schema gz2 --out gz2
    skymorph train --tiles gz2/tiles.txt --labels gz2/labels.parquet --schema gz2 --arch resnet_s \\
        --crop-fraction 0.5 --epochs 100 --batch-size 32 --lr 2e-3 --patience 100 --threads 2 \\
        --max-minutes 19 --out gz2.ckpt
    skymorph evaluate gz2.ckpt --tiles gz2/tiles.txt --labels gz2/labels.parquet --out gz2-eval --tta

Each epoch trains on the ``train`` galaxies (augmented, shuffled), then computes the validation loss
(mean over galaxies of the per-question NLL summed over questions) without dropout. The checkpoint at
``out`` is the best epoch so far by validation loss; ``<out stem>.last<suffix>`` is the latest epoch
with optimizer, step, RNG state and early-stopping counters, which is all ``--resume`` needs; the
metrics of every epoch go to ``<out>.metrics.json``. Same seed, same data, same thread count: the
same weights, bit for bit, on CPU.
"""

from __future__ import annotations

import datetime as _dt
import json
import math
import sys
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from skymorph.cores import check_parallelism
from skymorph.errors import InputError, ModelError, did_you_mean
from skymorph.model_metadata import InputSpec, check_dropout, check_likelihood
from skymorph.schema import Schema, get_schema
from skymorph.seeds import check_seed, torch_seed
from skymorph.storage import atomic_write_text, check_new, check_writable, same_location
from skymorph.trainer.labels import labels_schema, split_kind

__all__ = ["TrainConfig", "TrainResult", "train", "learning_rate", "last_checkpoint_path", "MAX_RESIZE_PX"]

MAX_RESIZE_PX = 1024
"""Largest ``resize_px``: the network input's activations grow with its square."""
DEFAULT_SCHEMA = "decals"
"""The decision tree of a new model when none is given (``--resume``/``--finetune`` take the checkpoint's)."""


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; validated on construction.

    ``tiles``: a tile list (or one ``.zarr`` tile store); ``labels``: Parquet, CSV or FITS vote counts;
    ``schema``: gz2, decals or a JSON file (None: for a new model the tree the labels say they are of
    (:func:`~skymorph.trainer.labels.labels_schema`), else :data:`DEFAULT_SCHEMA`; the checkpoint's
    decision tree for ``resume`` and ``finetune``, where a given one must be the same tree).
    ``warmup_epochs`` of linear warm-up, then a cosine decay to ``min_lr_ratio * lr`` at the last step
    of ``epochs``. ``patience``: epochs without a lower validation loss before stopping.
    ``val_fraction``: the validation share of the galaxies the labels do not assign (no ``split``
    column, or an empty cell). ``crop_fraction`` and ``resize_px`` go into the model's input spec
    (applied inside the model). ``resume``: a ``.last`` checkpoint to continue; ``finetune``: a checkpoint whose weights start
    a new run (new optimizer and schedule). ``threads``: torch intra-op threads (None: torch's default).
    ``max_minutes``: stop after the batch that crosses this wall time, then validate and save (a
    ``--resume`` from there starts the next epoch). ``stop_after_epochs``: end this session after that
    many epochs of the ``epochs``-long schedule, to be continued with ``--resume`` (e.g. within a batch
    system's wall-time limit); the resumed run is identical to an uninterrupted one. ``ema_decay``: keep
    an exponential moving average of the weights and batch-norm statistics, updated after every step,
    ``w_ema <- d * w_ema + (1 - d) * w`` (starting from the first step's weights); it is what is
    validated and saved (a horizon of about 1 / (1 - d) steps: smoother than the last step's weights).

    The model's own choices, ``arch``, ``arch_params``, ``likelihood``, ``dropout``, ``crop_fraction`` and
    ``resize_px``, are None unless given: a new model then gets :attr:`MODEL_DEFAULTS`, while ``resume``
    and ``finetune`` take them from the checkpoint and refuse any given value that differs from it.
    Likewise the run's settings, ``epochs``, ``batch_size``, ``lr``, ``weight_decay``, ``warmup_epochs``,
    ``min_lr_ratio``, ``seed``, ``val_fraction`` and ``augment``, are None unless given: a new run gets
    :attr:`RUN_DEFAULTS`, while ``resume`` takes those the checkpoint recorded and refuses any given value
    that differs, and labels of other content (another seed or validation fraction would move validation
    galaxies into training). ``finetune`` is a new run that keeps the checkpoint's ``seed`` and
    ``val_fraction`` unless given, so the galaxies its weights were validated on stay in validation (a
    given value that differs is warned about). ``patience``, ``max_minutes``, ``stop_after_epochs`` and
    ``threads`` may change on resume; ``patience`` not given is :attr:`DEFAULT_PATIENCE`, or on resume
    the run's. A run that is not a ``resume`` refuses an ``out`` (or its ``.last`` checkpoint or metrics)
    that exists unless ``overwrite``: it may be a trained model.
    """

    MODEL_DEFAULTS: ClassVar[Mapping] = MappingProxyType({
        "arch": "w20", "arch_params": MappingProxyType({}), "likelihood": "multinomial", "dropout": 0.5, "crop_fraction": 1.0,
        "resize_px": None,
    })
    RUN_DEFAULTS: ClassVar[Mapping] = MappingProxyType({
        "epochs": 10, "batch_size": 64, "lr": 1e-3, "weight_decay": 0.05, "warmup_epochs": 1.0, "min_lr_ratio": 0.05,
        "seed": 0, "val_fraction": 0.1, "augment": True,
    })
    DEFAULT_PATIENCE: ClassVar[int] = 5

    tiles: str
    labels: str
    out: str
    schema: str | None = None
    arch: str | None = None
    arch_params: dict | None = None
    likelihood: str | None = None
    dropout: float | None = None
    epochs: int | None = None
    batch_size: int | None = None
    lr: float | None = None
    weight_decay: float | None = None
    warmup_epochs: float | None = None
    min_lr_ratio: float | None = None
    patience: int | None = None
    seed: int | None = None
    val_fraction: float | None = None
    crop_fraction: float | None = None
    resize_px: int | None = None
    augment: bool | None = None
    ema_decay: float | None = None
    resume: str | None = None
    finetune: str | None = None
    threads: int | None = None
    prefetch_batches: int = 2
    max_minutes: float | None = None
    stop_after_epochs: int | None = None
    drop_unmatched: bool = False
    overwrite: bool = False
    progress: bool = True
    storage_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(message)

        if self.likelihood is not None:
            check_likelihood(self.likelihood)
        from skymorph.trainer.models import list_models

        # checked here, before any tile is read, rather than when the model is built
        need(self.arch is None or self.arch in list_models(), f"unknown architecture {self.arch!r}: use one of "
             f"{', '.join(list_models())}." + did_you_mean(str(self.arch), list_models()))
        if self.arch_params and (self.arch or not (self.resume or self.finetune)):  # else the checkpoint says
            from skymorph.trainer.models import check_arch_params

            check_arch_params(self.arch or self.MODEL_DEFAULTS["arch"], self.arch_params)
        for name in ("epochs", "batch_size", "patience", "prefetch_batches"):
            value = getattr(self, name)
            need(value is None or int(value) >= 1, f"{name} must be at least 1, got {value!r}")
        # finite too: inf passes a range check and fails only after the images are read
        need(self.lr is None or (math.isfinite(self.lr) and self.lr > 0), f"lr must be a finite number > 0, got {self.lr}")
        need(self.weight_decay is None or (math.isfinite(self.weight_decay) and self.weight_decay >= 0),
             f"weight_decay must be a finite number >= 0, got {self.weight_decay}")
        need(self.warmup_epochs is None or (math.isfinite(self.warmup_epochs) and self.warmup_epochs >= 0),
             f"warmup_epochs must be a finite number >= 0, got {self.warmup_epochs}")
        need(self.min_lr_ratio is None or 0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        if self.dropout is not None:
            check_dropout(self.dropout, what="dropout")
        need(self.val_fraction is None or 0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        need(self.crop_fraction is None or 0 < self.crop_fraction <= 1, f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        need(self.resize_px is None or self.resize_px >= 8, f"resize_px must be at least 8, got {self.resize_px}")
        # the first activations of a batch of 64 at 1024 px with 32 channels are already 8.6 GB; galaxy
        # cutouts are a few hundred pixels (Zoobot trains at 224 to 300)
        need(self.resize_px is None or self.resize_px <= MAX_RESIZE_PX,
             f"resize_px (--resize) must be at most {MAX_RESIZE_PX} pixels, got {self.resize_px}; galaxy models train at 64 to 300")
        if self.seed is not None:
            check_seed(self.seed)
        need(self.ema_decay is None or 0 < self.ema_decay < 1, f"ema_decay must be in (0, 1), got {self.ema_decay}")
        if self.threads is not None:
            check_parallelism(self.threads, "threads", "--threads", "torch threads", at_least=64)
        need(self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be positive, got {self.max_minutes}")
        need(self.stop_after_epochs is None or self.stop_after_epochs >= 1, f"stop_after_epochs must be at least 1, got {self.stop_after_epochs}")
        need(not (self.resume and self.finetune), "give --resume or --finetune, not both")
        need(bool(self.out), "out (the checkpoint path) is required")
        # the run's best checkpoint so far lives at its own --out: resumed elsewhere, the new --out would
        # be written only if a later epoch did better, and the run would report a file that is not there
        best = _best_of(self.resume) if self.resume else None
        need(best is None or same_location(self.resume, last_checkpoint_path(self.out)),
             f"--resume {self.resume!r} continues the run whose --out is {best!r}; give that --out (not {self.out!r}), "
             "or start a new run from its weights with --finetune")


@dataclass(frozen=True)
class TrainResult:
    """Where the run wrote its files and how it ended (``stopped``: epochs, early_stopping, max_minutes,
    stop_after_epochs). ``epochs_run`` counts the run's epochs, ``resumed_at`` those done before this
    session (``--resume``); ``minutes`` is this session's."""

    checkpoint: str
    last_checkpoint: str
    metrics_path: str
    epochs_run: int
    best_epoch: int
    best_val_loss: float
    stopped: str
    minutes: float
    n_train: int
    n_validation: int
    metrics: tuple[dict, ...]
    resumed_at: int = 0

    def __str__(self) -> str:
        done = self.epochs_run - self.resumed_at
        span = f"epoch {self.epochs_run}" if done == 1 else f"epochs {self.resumed_at + 1}-{self.epochs_run}"
        which = f" ({span} of the run)" if self.resumed_at and done else ""
        head = (f"trained {done} epoch(s){which} on {self.n_train} galaxies in {self.minutes:.1f} min" if done or not self.resumed_at
                else f"nothing left to train after the run's {self.epochs_run} epoch(s) on {self.n_train} galaxies")
        unfinished = f"; continue with --resume {self.last_checkpoint}" if self.stopped in ("max_minutes", "stop_after_epochs") else ""
        return (
            f"{head} "
            f"({_WHY_STOPPED.get(self.stopped, self.stopped)}); best epoch {self.best_epoch}: validation loss "
            f"{self.best_val_loss:.4f} on {self.n_validation} galaxies -> {self.checkpoint}{unfinished}"
        )


_WHY_STOPPED = {"epochs": "all --epochs done", "early_stopping": "stopped early: --patience epochs without a better validation loss",
                "max_minutes": "stopped at --max-minutes", "stop_after_epochs": "paused by --stop-after-epochs"}
"""TrainResult.stopped as the summary says it."""


def learning_rate(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up then cosine decay (nanoGPT's schedule), a pure function of the step (0-based).

    ``lr = base * (step + 1) / warmup`` for ``step < warmup``; then with
    ``u = (step - warmup) / (total - 1 - warmup)`` clipped to [0, 1] (1 if ``total - 1 <= warmup``),
    ``lr = min + (base - min) * (1 + cos(pi * u)) / 2`` with ``min = min_ratio * base``: ``base`` at the
    first step after warm-up and ``min`` at the last step, ``total - 1``, whenever ``warmup < total``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    decay_steps = total_steps - 1 - warmup_steps
    u = 1.0 if decay_steps <= 0 else min(1.0, (step - warmup_steps) / decay_steps)
    low = min_ratio * base_lr
    return low + (base_lr - low) * 0.5 * (1.0 + math.cos(math.pi * u))


def _best_of(last: str) -> str | None:
    """``model.last.ckpt`` -> ``model.ckpt`` (the inverse of :func:`last_checkpoint_path`); None for a
    path that is not a ``.last`` checkpoint."""
    suffix = PurePosixPath(str(last)).suffix
    stem = str(last)[: len(str(last)) - len(suffix)]
    return stem[: -len(".last")] + suffix if stem.endswith(".last") else None


def last_checkpoint_path(out: str) -> str:
    """``model.ckpt`` -> ``model.last.ckpt``: the resumable checkpoint of the latest epoch."""
    path = PurePosixPath(str(out))
    suffix = path.suffix or ".ckpt"
    return str(out)[: len(str(out)) - len(path.suffix)] + ".last" + suffix


def _epoch_seed(seed: int, epoch: int) -> int:
    """The batch loader's seed for ``epoch``: ``(torch_seed(seed) * 1_000_003 + epoch) mod 2**32``, the bits
    a torch generator keeps (:func:`~skymorph.seeds.torch_seed`). The multiplier is odd, so within an
    epoch each of the 2**32 torch seeds gets its own shuffle; seeds below 2**32 keep the shuffles they had
    (torch cut the earlier modulus of 2**64 to these 32 bits, so seeds s and s + 2**32 shared them)."""
    return (torch_seed(seed) * 1_000_003 + epoch) % 2**32


def _optimizer(model, config: TrainConfig):
    """AdamW; weight decay on weight matrices and kernels only, not on biases and norm scales (nanoGPT)."""
    import torch

    params = [p for p in model.parameters() if p.requires_grad]
    groups = [
        {"params": [p for p in params if p.dim() >= 2], "weight_decay": config.weight_decay},
        {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
    ]
    return torch.optim.AdamW(groups, lr=config.lr)


def _ema(model, decay: float | None, training: dict):
    """An ``AveragedModel`` holding the moving average (None without ``decay``). On resume the saved
    checkpoint's weights are the average and ``training["raw_weights"]`` the trained ones."""
    from torch.optim.swa_utils import AveragedModel, get_ema_multi_avg_fn

    if decay is None:
        return None
    ema = AveragedModel(model, multi_avg_fn=get_ema_multi_avg_fn(decay), use_buffers=True)
    if training:
        ema.module.load_state_dict(model.state_dict())
        ema.n_averaged.fill_(int(training["ema_n_averaged"]))
        model.load_state_dict(training["raw_weights"])
    return ema


def _validate(model, loader, schema, likelihood):
    """Mean validation NLL per galaxy and, per question with votes, the accuracy of the top answer."""
    import torch

    from skymorph.trainer.losses import vote_nll

    model.eval()
    total, n = 0.0, 0
    correct = np.zeros(len(schema.questions))
    counted = np.zeros(len(schema.questions))
    with torch.no_grad():
        for images, votes in loader:
            logits = model.head(model.features(images))
            total += vote_nll(likelihood, logits, votes, schema, model.output).item() * len(images)
            n += len(images)
            for q, s in enumerate(schema.question_slices):
                asked = votes[:, s].sum(1) > 0
                counted[q] += asked.sum().item()
                correct[q] += (logits[asked, s].argmax(1) == votes[asked, s].argmax(1)).sum().item()
    accuracy = {schema.questions[q].name: float(correct[q] / counted[q]) for q in range(len(schema.questions)) if counted[q]}
    return total / max(n, 1), accuracy


def _input_spec(images: np.ndarray, rows: np.ndarray, crop_fraction: float, resize_px: int | None, *, chunk_values: int = 1 << 22) -> InputSpec:
    """Normalise with the per-channel mean and standard deviation (of pixel / 255, at least 1e-3) of
    ``images[rows]``, the training images.

    About ``chunk_values`` pixel values are read at a time, so no copy of the training set is made (in
    float32, 100,000 RGB images of 128 x 128 take 20 GB). Per chunk and channel the sums of x and x^2
    are taken in float64, where they are exact (integers below 2^53), and added up as Python ints:
    ``mean = S1 / (255 n)`` and ``var = (n S2 - S1^2) / (255 n)^2`` are exact up to the final division.
    """
    n_channels, height, width = images.shape[1:]
    per_chunk = max(1, chunk_values // (n_channels * height * width))
    sums, squares = [0] * n_channels, [0] * n_channels
    for start in range(0, len(rows), per_chunk):
        x = images[rows[start : start + per_chunk]].astype(np.float64)
        for c, (s1, s2) in enumerate(zip(np.einsum("nchw->c", x), np.einsum("nchw,nchw->c", x, x))):
            sums[c] += int(s1)
            squares[c] += int(s2)
    n = len(rows) * height * width
    mean = tuple(s1 / (255 * n) for s1 in sums)
    std = tuple(max(math.sqrt((n * s2 - s1 * s1) / (255 * n) ** 2), 1e-3) for s1, s2 in zip(sums, squares))
    return InputSpec(n_channels, height, width, mean=mean, std=std, crop_fraction=crop_fraction, resize=resize_px)


def _same(value, stored) -> bool:
    """Whether a given setting equals the checkpoint's: tuples and lists alike, floats to 1e-9."""
    if isinstance(value, float) and stored is not None:
        return math.isclose(value, stored, rel_tol=1e-9)
    return json.loads(json.dumps(value)) == json.loads(json.dumps(stored))


def _model_choices(config: TrainConfig, meta=None, checkpoint: str = "") -> dict:
    """The model's choices (the keys of ``TrainConfig.MODEL_DEFAULTS``): the given ones over the defaults for
    a new model; the checkpoint's for --resume/--finetune, where a given value that differs is an error
    (the weights fix the architecture, and a silently ignored flag would train something else than asked)."""
    given = {key: getattr(config, key) for key in TrainConfig.MODEL_DEFAULTS if getattr(config, key) is not None}
    if meta is None:
        choices = {**TrainConfig.MODEL_DEFAULTS, **given}
        return {**choices, "arch_params": dict(choices["arch_params"])}
    stored = {
        "arch": meta.arch, "arch_params": meta.arch_params, "likelihood": meta.likelihood, "dropout": meta.dropout,
        "crop_fraction": meta.input.crop_fraction, "resize_px": meta.input.resize,
    }
    for key, value in given.items():
        if not _same(value, stored[key]):
            flag = "--resume" if config.resume else "--finetune"
            raise ModelError(
                f"{flag} {checkpoint!r} was trained with {key}={stored[key]!r} but {key}={value!r} was given; "
                f"drop it (the checkpoint fixes the model) or train a new model without {flag}"
            )
    return stored


def _keep_split(config: TrainConfig, meta, labels) -> TrainConfig:
    """``config`` with the ``seed`` and ``val_fraction`` of the --finetune checkpoint where none is given:
    the split hashes object ids with them, so the new run validates on the galaxies the weights were
    validated on (plus its share of new ones) and never trains on them. Labels that split otherwise than
    the checkpoint's (a split column, or none, where it had the other) are warned about, for the same
    reason."""
    trained, now = meta.provenance.get("split"), split_kind(labels)
    if trained and trained != now:
        then, used = (("its labels' split column", f"{config.labels!r} has none, so the seed's hash split is used")
                      if trained == "column" else
                      ("the seed's hash split", f"{config.labels!r} has a split column, which is used"))
        print(f"skymorph: warning: --finetune {config.finetune!r} was validated on {then} and {used}: some of its "
              "validation galaxies may be trained on, and validation losses flatter it; give labels split as it was",
              file=sys.stderr)
    recorded = meta.provenance.get("config") or {}
    kept = {}
    for key in ("seed", "val_fraction"):
        stored, given = recorded.get(key), getattr(config, key)
        if stored is None:
            continue
        if given is None:
            kept[key] = stored
        elif not _same(given, stored):
            print(f"skymorph: warning: --finetune {config.finetune!r} was validated with {key}={stored!r}; with "
                  f"{key}={given!r} some of its validation galaxies are trained on, and validation losses flatter it",
                  file=sys.stderr)
    return replace(config, **kept)


def _run_settings(config: TrainConfig, meta=None, labels=None) -> TrainConfig:
    """``config`` with its run settings (the keys of ``TrainConfig.RUN_DEFAULTS``) filled in: the given ones
    over the defaults for a new run (also --finetune); for --resume (``meta`` given) the ones the checkpoint
    recorded, and its ``ema_decay``, where a given value that differs, or ``labels`` of other content, is an error: the run
    continued must be the one interrupted (another seed or --val-fraction would draw another validation
    set and train on galaxies that were validated on)."""
    given = {key: getattr(config, key) for key in TrainConfig.RUN_DEFAULTS if getattr(config, key) is not None}
    recorded = {} if meta is None else meta.provenance.get("config") or {}
    if config.patience is None:  # may change on resume, but a run not told otherwise keeps its own
        config = replace(config, patience=recorded.get("patience") or TrainConfig.DEFAULT_PATIENCE)
    if meta is None:
        return replace(config, **{**TrainConfig.RUN_DEFAULTS, **given})
    stored = {key: recorded[key] for key in TrainConfig.RUN_DEFAULTS if recorded.get(key) is not None}
    stored["ema_decay"] = recorded.get("ema_decay")  # None is a setting too (no moving average), kept as the others
    if config.ema_decay is not None:
        given["ema_decay"] = config.ema_decay
    for key, value in given.items():
        if key in stored and not _same(value, stored[key]):
            raise ModelError(
                f"--resume {config.resume!r} was trained with {key}={stored[key]!r} but {key}={value!r} was given; "
                "drop it (a resumed run keeps its settings) or start a new run with --finetune"
            )
    sha256 = meta.provenance.get("labels_sha256")
    if sha256 and sha256 != labels.sha256:
        raise InputError(
            f"--resume {config.resume!r} was trained on labels with sha256 {sha256[:12]}, but {config.labels!r} has "
            f"{labels.sha256[:12]}; resume with the run's labels, or start a new run on these with --finetune"
        )
    return replace(config, **{**TrainConfig.RUN_DEFAULTS, **stored, **given})


def _provenance(config: TrainConfig, labels, tile_urls, n_train: int, n_val: int, storage_options=None) -> dict:
    import torch

    from skymorph import __version__
    from skymorph.tiles import sampled_pixels

    return {
        "labels": labels.source,
        "labels_sha256": labels.sha256,
        "tiles": config.tiles,
        "n_tiles": len(tile_urls),
        "pixels": sampled_pixels(tile_urls, storage_options),  # what `run` compares its tiles with
        "n_train": n_train,
        "n_validation": n_val,
        "split": split_kind(labels),  # where validation came from: evaluate and --finetune compare it
        "seed": config.seed,
        "skymorph_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "finetuned_from": config.finetune,
        "config": {k: v for k, v in asdict(config).items() if k != "storage_options"},
    }


def _warn_if_another_tree_fits(labels, schema) -> None:
    """Warn when labels that name no tree (a CSV, or Parquet written by pandas) were read as the default
    tree while their votes fit another built-in one as well: gz2 votes on ``has_spiral_arms`` alone read
    as decals without a word."""
    from skymorph.schema import BUILTIN_SCHEMAS

    voted = {schema.answer_columns[i] for i in np.flatnonzero(labels.votes.any(axis=0))}
    also = [other.name for other in BUILTIN_SCHEMAS.values() if other.name != schema.name and voted <= set(other.answer_columns)]
    if also:
        print(f"skymorph: warning: labels {labels.source!r} name no decision tree, and their votes fit {', '.join(also)} "
              f"as well as {schema.name!r}, the default, which this model is trained on; give --schema to choose",
              file=sys.stderr)


def _no_training_state(checkpoint: str, storage_options) -> str:
    """Why ``checkpoint`` cannot be resumed: it is a best-epoch checkpoint; which file to give instead."""
    from skymorph.storage import exists

    path = PurePosixPath(str(checkpoint))
    if path.stem.endswith(".last"):
        return f"--resume {checkpoint!r} holds no training state (optimizer, step); give the .last checkpoint of a `skymorph train` run"
    last = last_checkpoint_path(checkpoint)
    try:
        beside = exists(last, storage_options)
    except Exception:  # only the hint depends on it
        beside = False
    hint = f"the one beside it is {last!r}" if beside else f"it is named like {last!r}"
    return (
        f"--resume {checkpoint!r} is a best-epoch checkpoint without training state (optimizer, step); --resume needs "
        f"the .last checkpoint of the run ({hint}), or start a new run from these weights with --finetune"
    )


def _diverged(config: TrainConfig, phase: str, value: float, epoch: int, step: int, lr: float, best_epoch: int,
              last_path: str, start_epoch: int) -> str:
    """The one-line message for a non-finite loss: where it happened, what was (not) written, what to do."""
    where = f"the {phase} loss became {value} in epoch {epoch + 1}"
    if phase == "training" and step == 0:  # before any update: the starting weights are fine, the votes are not
        return (
            f"{where}, on the first batch before any update; check the vote counts in {config.labels!r} "
            f"(nothing was written to {config.out!r})"
        )
    if epoch == start_epoch:
        written = f"nothing was written to {config.out!r}"
    else:  # epochs start_epoch + 1 .. epoch finished in this run before it diverged
        written = f"{last_path!r} holds epoch {epoch}" + (f" and {config.out!r} epoch {best_epoch}" if best_epoch > start_epoch else "")
        written += ", from before it"
    again = "with --finetune from a checkpoint" if config.resume else "again"  # a resumed run keeps its --lr
    return (
        f"training diverged: {where} (step {step}, learning rate {lr:.2e}); {written}. "
        f"Train {again} with a lower --lr than {config.lr:g} (the default is {TrainConfig.RUN_DEFAULTS['lr']:g})"
    )


@dataclass
class _Run:
    """A run ready to train (:func:`_prepare`): its settled ``config`` (tree, split and run settings filled in),
    the images and votes with the rows of each side of the split, the model with its optimizer and EMA,
    the checkpoint metadata to save with it, and where a resumed run stands."""

    config: TrainConfig
    schema: Schema
    likelihood: str
    images: np.ndarray
    votes: np.ndarray
    train_rows: np.ndarray
    val_rows: np.ndarray
    model: object
    ema: object
    optimizer: object
    meta: object
    metrics: list[dict]
    start_epoch: int
    step: int
    best_val_loss: float
    best_epoch: int
    bad_epochs: int


def _prepare(config: TrainConfig) -> _Run:
    """The run ``config`` asks for, ready to train: checks first (the checkpoint before the images are
    read, so that a wrong one fails in seconds), then the labels, the images and their split, and the
    model, new or from the checkpoint, with its optimizer, EMA and the state a resumed run left."""
    import torch

    from skymorph.tiles import read_tiles
    from skymorph.trainer.checkpoint import CheckpointMeta, check_schema, load_checkpoint
    from skymorph.trainer.data import load_images
    from skymorph.trainer.labels import load_labels, split_masks
    from skymorph.trainer.models import build_model

    storage_options = config.storage_options
    if not config.resume:  # a resumed run continues its own files
        outputs = [config.out, last_checkpoint_path(config.out), f"{config.out}.metrics.json"]
        for output in outputs:  # the longer names beside --out too, before an epoch is spent
            check_writable(output, "--out")
        check_new(outputs, "--out", config.overwrite, storage_options)
    if config.threads:
        torch.set_num_threads(config.threads)
    training: dict = {}
    choices = _model_choices(config)
    start_checkpoint = config.resume or config.finetune
    start_meta = None
    # the tree the labels say their votes are of, if they say: what a checkpoint is checked against, or
    # what a new model without --schema is trained on (with --schema, nothing asks, and the file is not read)
    recorded = labels_schema(config.labels, storage_options) if start_checkpoint or config.schema is None else None
    if start_checkpoint:  # checked before the images are read: a wrong checkpoint fails in seconds
        model, start_meta, training = load_checkpoint(start_checkpoint, storage_options=storage_options)
        flag = "--resume" if config.resume else "--finetune"
        if config.schema is not None:
            check_schema(start_meta, config.schema, f"{flag} {start_checkpoint!r}",
                         f"drop --schema ({flag} takes the checkpoint's), or train a new model for {config.schema!r}")
        if recorded is not None:  # votes of one tree read as another's where their columns coincide
            check_schema(start_meta, recorded, f"{flag} {start_checkpoint!r}", f"labels {config.labels!r} record votes of "
                         f"{recorded.name!r}: give labels of its tree, or train a new model for these")
        schema = start_meta.schema
        choices = _model_choices(config, start_meta, start_checkpoint)
        if config.resume and not training:
            raise ModelError(_no_training_state(config.resume, storage_options))
    else:
        schema = get_schema(config.schema or recorded or DEFAULT_SCHEMA)
    if choices["dropout"] == 0:
        print("skymorph: warning: dropout 0: every MC-dropout sample of this model will agree, so its posteriors have no "
              "width and every BALD score is 0; give --dropout in (0, 1), e.g. 0.5, for a Bayesian model", file=sys.stderr)
    labels = load_labels(config.labels, schema, storage_options,
                         schema_from=f"{flag} {start_checkpoint!r}" if start_checkpoint else None)
    if not (start_checkpoint or config.schema or recorded):
        _warn_if_another_tree_fits(labels, schema)
    config = replace(config, schema=config.schema or schema.name)  # the provenance records the tree used
    tile_urls = read_tiles(config.tiles, storage_options)
    if config.finetune:
        config = _keep_split(config, start_meta, labels)
    config = _run_settings(config, start_meta if config.resume else None, labels)
    if config.resume and int(training.get("epoch", 0)) >= config.epochs:
        # Nothing to train and nothing to write: the best weights are in the run's own --out, which the
        # .last checkpoint does not hold, so "succeeding" would name an --out that was never written.
        best = (start_meta.provenance.get("config") or {}).get("out")
        where = f" (best epoch {int(training.get('best_epoch', 0))}, saved at {best!r})" if best else ""
        raise InputError(
            f"--resume {config.resume!r}: all {config.epochs} epoch(s) of its schedule are done{where}, nothing to resume; "
            f"to train further, start a new run from its weights with --finetune {best or config.resume} --epochs N"
        )
    images, labels = load_images(tile_urls, labels, drop_unmatched=config.drop_unmatched, storage_options=storage_options, progress=config.progress)
    train_mask, val_mask = split_masks(labels, config.val_fraction, config.seed)
    # row indices into images: the loaders and the input statistics read through them, so the training
    # set is never copied (it can be most of the memory the run needs)
    train_rows, val_rows = np.flatnonzero(train_mask), np.flatnonzero(val_mask)
    n_train, n_val = len(train_rows), len(val_rows)
    if not n_train or not n_val:
        raise InputError(
            f"labels {config.labels!r} give {n_train} training and {n_val} validation "
            "galaxies; both must be non-empty (check the split column or --val-fraction)"
        )
    for side, rows in (("training", train_rows), ("validation", val_rows)):
        if not labels.votes[rows].any():  # a loss of exactly 0 whatever the weights: nothing to learn or compare
            raise InputError(
                f"labels {config.labels!r}: the {len(rows)} {side} galaxies have no votes at all; "
                "give labels with vote counts on both sides of the split"
            )
    if config.resume:
        sizes = (start_meta.provenance.get("n_train"), start_meta.provenance.get("n_validation"))
        if None not in sizes and sizes != (n_train, n_val):
            raise InputError(
                f"--resume {config.resume!r} was trained on {sizes[0]} training and {sizes[1]} validation galaxies, "
                f"but these tiles and labels give {n_train} and {n_val}; resume with the run's --tiles and --drop-unmatched"
            )

    torch.manual_seed(torch_seed(config.seed))  # initial weights and dropout; a resumed run restores its saved RNG state
    if start_checkpoint:
        if tuple(start_meta.input.shape) != images.shape[1:]:
            raise ModelError(
                f"checkpoint {start_checkpoint!r} takes {start_meta.input.shape} images but the tiles hold {images.shape[1:]}; "
                "give the tiles it was trained on (or ingested at its size), or train a new model for these"
            )
        spec = start_meta.input
    else:
        spec = _input_spec(images, train_rows, choices["crop_fraction"], choices["resize_px"])
        model = build_model(choices["arch"], schema, spec, choices["likelihood"], dropout=choices["dropout"], **choices["arch_params"])
    arch, arch_params, likelihood, dropout = (choices[key] for key in ("arch", "arch_params", "likelihood", "dropout"))
    if min(config.batch_size, n_train) < 2 and any(isinstance(m, torch.nn.modules.batchnorm._BatchNorm) for m in model.modules()):
        # batch normalisation of one galaxy: a ValueError from torch where the maps are 1 x 1, noise elsewhere
        raise InputError(f"{arch} normalises each training batch, which needs 2 galaxies at least; got a batch size of "
                         f"{config.batch_size} and {n_train} training galaxies: give --batch-size 2 or more (32 is usual)")
    if config.finetune:
        training = {}  # fine-tuning keeps the weights only: new optimizer, schedule and history

    provenance = _provenance(config, labels, tile_urls, n_train, n_val, storage_options)
    if config.resume:  # the same run, continued: it keeps its start time and origin
        provenance.update({key: start_meta.provenance[key] for key in ("created", "finetuned_from") if key in start_meta.provenance})
    meta = CheckpointMeta(
        schema=schema, arch=arch, arch_params=arch_params, likelihood=likelihood, dropout=dropout, input=spec,
        provenance=provenance,
    )
    optimizer = _optimizer(model, config)
    metrics: list[dict] = json.loads(training["metrics_json"]) if training else []
    start_epoch = int(training.get("epoch", 0))
    step = int(training.get("step", 0))
    best_val_loss = float(training.get("best_val_loss", math.inf))
    best_epoch = int(training.get("best_epoch", 0))
    bad_epochs = int(training.get("bad_epochs", 0))
    if training:
        optimizer.load_state_dict(training["optimizer"])
        torch.set_rng_state(training["torch_rng"])
    ema = _ema(model, config.ema_decay, training)
    return _Run(config=config, schema=schema, likelihood=likelihood, images=images, votes=labels.votes, train_rows=train_rows,
                val_rows=val_rows, model=model, ema=ema, optimizer=optimizer, meta=meta, metrics=metrics, start_epoch=start_epoch,
                step=step, best_val_loss=best_val_loss, best_epoch=best_epoch, bad_epochs=bad_epochs)


def train(config: TrainConfig) -> TrainResult:
    """Train per ``config``; see the module docstring for what is written where."""
    import torch
    from tqdm import tqdm

    from skymorph.progress import progress_bar
    from skymorph.trainer.checkpoint import save_checkpoint
    from skymorph.trainer.data import BatchLoader, batch_starts
    from skymorph.trainer.losses import vote_nll

    started = time.monotonic()
    run = _prepare(config)
    config, schema, likelihood, model, ema, optimizer, meta = (run.config, run.schema, run.likelihood, run.model, run.ema,
                                                               run.optimizer, run.meta)
    evaluated = model if ema is None else ema.module
    images, votes, train_rows, val_rows = run.images, run.votes, run.train_rows, run.val_rows
    n_train, n_val = len(train_rows), len(val_rows)
    metrics, start_epoch, step = run.metrics, run.start_epoch, run.step
    best_val_loss, best_epoch, bad_epochs = run.best_val_loss, run.best_epoch, run.bad_epochs
    storage_options = config.storage_options

    val_loader = BatchLoader(images, votes, 256, rows=val_rows, shuffle=False, augmented=False, seed=0)
    steps_per_epoch = len(batch_starts(n_train, config.batch_size))
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    last_path = last_checkpoint_path(config.out)
    metrics_path = f"{config.out}.metrics.json"
    # a resumed run that had stopped early (and is given no larger --patience) has nothing left to train
    stopped = "early_stopping" if bad_epochs >= config.patience else "epochs"

    for epoch in range(start_epoch, config.epochs if stopped == "epochs" else start_epoch):
        epoch_start = time.monotonic()
        loader = BatchLoader(
            images, votes, config.batch_size, rows=train_rows, shuffle=True, augmented=config.augment,
            seed=_epoch_seed(config.seed, epoch), prefetch=config.prefetch_batches,
        )
        model.train()
        running, seen = 0.0, 0
        bar = progress_bar(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not config.progress, leave=False)
        for images_b, votes_b in bar:
            lr = learning_rate(step, base_lr=config.lr, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = vote_nll(likelihood, model.head(model.features(images_b)), votes_b, schema, model.output)
            value = loss.item()
            if not math.isfinite(value):  # checked before the update, so no non-finite weight is ever saved
                raise InputError(_diverged(config, "training", value, epoch, step, lr, best_epoch, last_path, start_epoch))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            running += value * len(images_b)
            seen += len(images_b)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{lr:.2e}", refresh=False)  # shown at the bar's own pace
            if config.max_minutes and time.monotonic() - started > 60 * config.max_minutes:
                stopped = "max_minutes"
                break
        bar.close()
        val_loss, val_accuracy = _validate(evaluated, val_loader, schema, likelihood)
        if not math.isfinite(val_loss):  # the last update made the weights non-finite
            raise InputError(_diverged(config, "validation", val_loss, epoch, step, lr, best_epoch, last_path, start_epoch))
        metrics.append({
            "epoch": epoch + 1, "step": step, "train_loss": running / max(seen, 1), "val_loss": val_loss,
            "val_accuracy": val_accuracy, "lr": lr, "seconds": time.monotonic() - epoch_start,
        })
        improved = val_loss < best_val_loss
        if improved:
            best_val_loss, best_epoch, bad_epochs = val_loss, epoch + 1, 0
            save_checkpoint(config.out, evaluated, meta.with_metrics(metrics), storage_options=storage_options)
        else:
            bad_epochs += 1
        save_checkpoint(last_path, evaluated, meta.with_metrics(metrics), storage_options=storage_options, training={
            "epoch": epoch + 1, "step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "best_val_loss": best_val_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
            "metrics_json": json.dumps(metrics),
            **({} if ema is None else {"raw_weights": model.state_dict(), "ema_n_averaged": int(ema.n_averaged)}),
        })
        atomic_write_text(metrics_path, json.dumps({"best_epoch": best_epoch, "epochs": metrics}, indent=1), storage_options)
        if config.progress:
            accuracy = " ".join(f"{q}={a:.3f}" for q, a in val_accuracy.items())
            tqdm.write(f"epoch {epoch + 1}: train loss {metrics[-1]['train_loss']:.4f} val loss {val_loss:.4f} val accuracy "
                       f"{accuracy}{' * (best)' if improved else ''}")
        if bad_epochs >= config.patience:  # first: a pause here would make its resumed run train on
            stopped = "early_stopping"
            break
        if stopped == "max_minutes":
            break
        if config.stop_after_epochs and epoch + 1 - start_epoch >= config.stop_after_epochs and epoch + 1 < config.epochs:
            stopped = "stop_after_epochs"
            break

    return TrainResult(
        checkpoint=config.out, last_checkpoint=last_path, metrics_path=metrics_path, epochs_run=len(metrics),
        best_epoch=best_epoch, best_val_loss=best_val_loss, stopped=stopped, minutes=(time.monotonic() - started) / 60,
        n_train=n_train, n_validation=n_val, metrics=tuple(metrics), resumed_at=start_epoch,
    )
