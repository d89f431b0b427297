"""Train a Bayesian CNN on Galaxy Zoo votes: AdamW, warm-up + cosine learning rate, early stopping.

The exact command (the real GZ2 subset; see benchmarks/train_gz2.py for the whole pipeline)::

    skymorph survey ingest --catalog /work/shared/data/gz2_spirals/labels.csv --id-column galaxy_id \\
        --size 128 --bands mean --label-question has_spiral_arms --label-map spiral=yes,non_spiral=no \\
        --schema gz2 --out gz2
    skymorph train --tiles gz2/tiles.txt --labels gz2/labels.parquet --schema gz2 --arch resnet_s \\
        --crop-fraction 0.5 --epochs 100 --batch-size 32 --lr 2e-3 --threads 2 --max-minutes 19 --out gz2.ckpt
    skymorph evaluate gz2.ckpt --tiles gz2/tiles.txt --labels gz2/labels.parquet --out gz2-eval

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
import time
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field
from pathlib import PurePosixPath
from types import MappingProxyType
from typing import ClassVar

import numpy as np

from skymorph.errors import InputError, ModelError, did_you_mean
from skymorph.model_metadata import LIKELIHOODS, InputSpec
from skymorph.schema import get_schema
from skymorph.storage import atomic_write_text

__all__ = ["TrainConfig", "TrainResult", "train", "learning_rate", "last_checkpoint_path"]


@dataclass(frozen=True)
class TrainConfig:
    """Everything one training run depends on; validated on construction.

    ``tiles``: a tile list (or one ``.zarr`` tile store); ``labels``: Parquet/CSV vote counts;
    ``schema``: gz2, decals or a JSON file. ``warmup_epochs`` of linear warm-up, then a cosine decay to
    ``min_lr_ratio * lr`` at the last step of ``epochs``. ``patience``: epochs without a lower
    validation loss before stopping. ``val_fraction`` is used only when the labels have no ``split``
    column. ``crop_fraction`` and ``resize_px`` go into the model's input spec (applied inside the
    model). ``resume``: a ``.last`` checkpoint to continue; ``finetune``: a checkpoint whose weights start
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
    """

    MODEL_DEFAULTS: ClassVar[Mapping] = MappingProxyType({
        "arch": "w20", "arch_params": MappingProxyType({}), "likelihood": "multinomial", "dropout": 0.5, "crop_fraction": 1.0,
        "resize_px": None,
    })

    tiles: str
    labels: str
    out: str
    schema: str = "decals"
    arch: str | None = None
    arch_params: dict | None = None
    likelihood: str | None = None
    dropout: float | None = None
    epochs: int = 10
    batch_size: int = 64
    lr: float = 1e-3
    weight_decay: float = 0.05
    warmup_epochs: float = 1.0
    min_lr_ratio: float = 0.05
    patience: int = 5
    seed: int = 0
    val_fraction: float = 0.1
    crop_fraction: float | None = None
    resize_px: int | None = None
    augment: bool = True
    ema_decay: float | None = None
    resume: str | None = None
    finetune: str | None = None
    threads: int | None = None
    prefetch_batches: int = 2
    max_minutes: float | None = None
    stop_after_epochs: int | None = None
    drop_unmatched: bool = False
    progress: bool = True
    storage_options: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        def need(ok: bool, message: str) -> None:
            if not ok:
                raise InputError(message)

        need(self.likelihood in (None, *LIKELIHOODS), f"likelihood must be one of {LIKELIHOODS}, got {self.likelihood!r}")
        from skymorph.trainer.models import list_models

        # checked here, before any tile is read, rather than when the model is built
        need(self.arch is None or self.arch in list_models(), f"unknown architecture {self.arch!r}: use one of "
             f"{', '.join(list_models())}." + did_you_mean(str(self.arch), list_models()))
        if self.arch_params and (self.arch or not (self.resume or self.finetune)):  # else the checkpoint says
            from skymorph.trainer.models import model_parameters

            arch = self.arch or self.MODEL_DEFAULTS["arch"]
            accepted = model_parameters(arch)
            for name in self.arch_params:
                need(name in accepted, f"architecture {arch!r} takes no parameter {name!r} (it takes "
                     f"{', '.join(accepted) or 'none'})." + did_you_mean(name, accepted))
        for name in ("epochs", "batch_size", "patience", "prefetch_batches"):
            need(int(getattr(self, name)) >= 1, f"{name} must be at least 1, got {getattr(self, name)!r}")
        need(self.lr > 0, f"lr must be positive, got {self.lr}")
        need(self.weight_decay >= 0, f"weight_decay must be >= 0, got {self.weight_decay}")
        need(self.warmup_epochs >= 0, f"warmup_epochs must be >= 0, got {self.warmup_epochs}")
        need(0 <= self.min_lr_ratio <= 1, f"min_lr_ratio must be in [0, 1], got {self.min_lr_ratio}")
        need(self.dropout is None or 0 <= self.dropout < 1, f"dropout must be in [0, 1), got {self.dropout}")
        need(0 < self.val_fraction < 1, f"val_fraction must be in (0, 1), got {self.val_fraction}")
        need(self.crop_fraction is None or 0 < self.crop_fraction <= 1, f"crop_fraction must be in (0, 1], got {self.crop_fraction}")
        need(self.resize_px is None or self.resize_px >= 8, f"resize_px must be at least 8, got {self.resize_px}")
        need(self.ema_decay is None or 0 < self.ema_decay < 1, f"ema_decay must be in (0, 1), got {self.ema_decay}")
        need(self.threads is None or self.threads >= 1, f"threads must be at least 1, got {self.threads}")
        need(self.max_minutes is None or self.max_minutes > 0, f"max_minutes must be positive, got {self.max_minutes}")
        need(self.stop_after_epochs is None or self.stop_after_epochs >= 1, f"stop_after_epochs must be at least 1, got {self.stop_after_epochs}")
        need(not (self.resume and self.finetune), "give --resume or --finetune, not both")
        need(bool(self.out), "out (the checkpoint path) is required")


@dataclass(frozen=True)
class TrainResult:
    """Where the run wrote its files and how it ended (``stopped``: epochs, early_stopping, max_minutes,
    stop_after_epochs)."""

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

    def __str__(self) -> str:
        return (
            f"trained {self.epochs_run} epoch(s) on {self.n_train} galaxies in {self.minutes:.1f} min "
            f"({self.stopped}); best epoch {self.best_epoch}: validation loss {self.best_val_loss:.4f} -> {self.checkpoint}"
        )


def learning_rate(step: int, *, base_lr: float, warmup_steps: int, total_steps: int, min_ratio: float) -> float:
    """Linear warm-up then cosine decay (nanoGPT's schedule), a pure function of the step.

    ``lr = base * (step + 1) / warmup`` for ``step < warmup``; then with
    ``u = (step - warmup) / max(1, total - warmup)`` clipped to [0, 1],
    ``lr = min + (base - min) * (1 + cos(pi * u)) / 2`` with ``min = min_ratio * base``.
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    u = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    low = min_ratio * base_lr
    return low + (base_lr - low) * 0.5 * (1.0 + math.cos(math.pi * u))


def last_checkpoint_path(out: str) -> str:
    """``model.ckpt`` -> ``model.last.ckpt``: the resumable checkpoint of the latest epoch."""
    path = PurePosixPath(str(out))
    suffix = path.suffix or ".ckpt"
    return str(out)[: len(str(out)) - len(path.suffix)] + ".last" + suffix


def _epoch_seed(seed: int, epoch: int) -> int:
    return (seed * 1_000_003 + epoch) % (2**63)


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

    if training and (decay is None) != ("raw_weights" not in training):
        raise ModelError("resume with the same --ema-decay setting as the run that wrote the checkpoint")
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


def _input_spec(images: np.ndarray, crop_fraction: float, resize_px: int | None) -> InputSpec:
    """Normalise with the training images' per-channel mean and standard deviation (of pixel / 255)."""
    scaled = images.astype(np.float32) / 255.0
    mean = scaled.mean(axis=(0, 2, 3))
    std = np.maximum(scaled.std(axis=(0, 2, 3)), 1e-3)
    c, h, w = images.shape[1:]
    return InputSpec(c, h, w, mean=tuple(mean.tolist()), std=tuple(std.tolist()), crop_fraction=crop_fraction, resize=resize_px)


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
        same = json.loads(json.dumps(value)) == json.loads(json.dumps(stored[key]))  # tuples and lists alike
        if isinstance(value, float) and stored[key] is not None:
            same = math.isclose(value, stored[key], rel_tol=1e-9)
        if not same:
            flag = "--resume" if config.resume else "--finetune"
            raise ModelError(
                f"{flag} {checkpoint!r} was trained with {key}={stored[key]!r} but {key}={value!r} was given; "
                f"drop it (the checkpoint fixes the model) or train a new model without {flag}"
            )
    return stored


def _provenance(config: TrainConfig, labels, tile_urls, n_train: int, n_val: int) -> dict:
    import torch

    from skymorph import __version__

    return {
        "labels": labels.source,
        "labels_sha256": labels.sha256,
        "tiles": config.tiles,
        "n_tiles": len(tile_urls),
        "n_train": n_train,
        "n_validation": n_val,
        "seed": config.seed,
        "skymorph_version": __version__,
        "torch_version": torch.__version__,
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "finetuned_from": config.finetune,
        "config": {k: v for k, v in asdict(config).items() if k != "storage_options"},
    }


def train(config: TrainConfig) -> TrainResult:
    """Train per ``config``; see the module docstring for what is written where."""
    import torch
    from tqdm import tqdm

    from skymorph.trainer.checkpoint import CheckpointMeta, check_schema, load_checkpoint, save_checkpoint
    from skymorph.trainer.data import BatchLoader, load_images, load_labels, split_masks, tile_list
    from skymorph.trainer.losses import vote_nll
    from skymorph.trainer.models import build_model

    started = time.monotonic()
    if config.threads:
        torch.set_num_threads(config.threads)
    schema = get_schema(config.schema)
    so = config.storage_options
    labels = load_labels(config.labels, schema, so)
    tile_urls = tile_list(config.tiles, so)
    training: dict = {}
    choices = _model_choices(config)
    start_checkpoint = config.resume or config.finetune
    if start_checkpoint:  # checked before the images are read: a wrong checkpoint fails in seconds
        model, meta, training = load_checkpoint(start_checkpoint, storage_options=so)
        check_schema(meta, schema, repr(start_checkpoint))
        choices = _model_choices(config, meta, start_checkpoint)
        if config.resume and not training:
            raise ModelError(f"{config.resume!r} holds no training state; resume from {last_checkpoint_path(config.out)!r}")
    images, labels = load_images(tile_urls, labels, drop_unmatched=config.drop_unmatched, storage_options=so, progress=config.progress)
    train_mask, val_mask = split_masks(labels, config.val_fraction, config.seed)
    if not train_mask.any() or not val_mask.any():
        raise InputError(
            f"labels {config.labels!r} give {int(train_mask.sum())} training and {int(val_mask.sum())} validation "
            "galaxies; both must be non-empty (check the split column or --val-fraction)"
        )

    torch.manual_seed(config.seed)  # initial weights and dropout; a resumed run restores its saved RNG state
    if start_checkpoint:
        if tuple(meta.input.shape) != images.shape[1:]:
            raise ModelError(
                f"checkpoint {start_checkpoint!r} takes {meta.input.shape} images but the tiles hold {images.shape[1:]}"
            )
        spec = meta.input
    else:
        spec = _input_spec(images[train_mask], choices["crop_fraction"], choices["resize_px"])
        model = build_model(choices["arch"], schema, spec, choices["likelihood"], dropout=choices["dropout"], **choices["arch_params"])
    arch, arch_params, likelihood, dropout = (choices[key] for key in ("arch", "arch_params", "likelihood", "dropout"))
    if config.finetune:
        training = {}  # fine-tuning keeps the weights only: new optimizer, schedule and history

    meta = CheckpointMeta(
        schema=schema, arch=arch, arch_params=arch_params, likelihood=likelihood, dropout=dropout, input=spec,
        provenance=_provenance(config, labels, tile_urls, int(train_mask.sum()), int(val_mask.sum())),
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
    evaluated = model if ema is None else ema.module

    train_images, train_votes = images[train_mask], labels.votes[train_mask]
    val_loader = BatchLoader(images[val_mask], labels.votes[val_mask], 256, shuffle=False, augmented=False, seed=0)
    steps_per_epoch = math.ceil(len(train_images) / config.batch_size)
    total_steps = steps_per_epoch * config.epochs
    warmup_steps = round(config.warmup_epochs * steps_per_epoch)
    last_path = last_checkpoint_path(config.out)
    metrics_path = f"{config.out}.metrics.json"
    stopped = "epochs"

    for epoch in range(start_epoch, config.epochs):
        epoch_start = time.monotonic()
        loader = BatchLoader(
            train_images, train_votes, config.batch_size, shuffle=True, augmented=config.augment,
            seed=_epoch_seed(config.seed, epoch), prefetch=config.prefetch_batches,
        )
        model.train()
        running, seen = 0.0, 0
        bar = tqdm(loader, desc=f"epoch {epoch + 1}/{config.epochs}", unit="batch", disable=not config.progress, leave=False)
        for images_b, votes_b in bar:
            lr = learning_rate(step, base_lr=config.lr, warmup_steps=warmup_steps, total_steps=total_steps, min_ratio=config.min_lr_ratio)
            for group in optimizer.param_groups:
                group["lr"] = lr
            loss = vote_nll(likelihood, model.head(model.features(images_b)), votes_b, schema, model.output)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            if ema is not None:
                ema.update_parameters(model)
            step += 1
            running += loss.item() * len(images_b)
            seen += len(images_b)
            bar.set_postfix(loss=f"{running / seen:.4f}", lr=f"{lr:.2e}")
            if config.max_minutes and time.monotonic() - started > 60 * config.max_minutes:
                stopped = "max_minutes"
                break
        bar.close()
        val_loss, val_accuracy = _validate(evaluated, val_loader, schema, likelihood)
        metrics.append({
            "epoch": epoch + 1, "step": step, "train_loss": running / max(seen, 1), "val_loss": val_loss,
            "val_accuracy": val_accuracy, "lr": lr, "seconds": time.monotonic() - epoch_start,
        })
        improved = val_loss < best_val_loss
        if improved:
            best_val_loss, best_epoch, bad_epochs = val_loss, epoch + 1, 0
            save_checkpoint(config.out, evaluated, meta.with_metrics(metrics), storage_options=so)
        else:
            bad_epochs += 1
        save_checkpoint(last_path, evaluated, meta.with_metrics(metrics), storage_options=so, training={
            "epoch": epoch + 1, "step": step, "optimizer": optimizer.state_dict(), "torch_rng": torch.get_rng_state(),
            "best_val_loss": best_val_loss, "best_epoch": best_epoch, "bad_epochs": bad_epochs,
            "metrics_json": json.dumps(metrics),
            **({} if ema is None else {"raw_weights": model.state_dict(), "ema_n_averaged": int(ema.n_averaged)}),
        })
        atomic_write_text(metrics_path, json.dumps({"best_epoch": best_epoch, "epochs": metrics}, indent=1), so)
        if config.progress:
            accuracy = " ".join(f"{q}={a:.3f}" for q, a in val_accuracy.items())
            tqdm.write(f"epoch {epoch + 1}: train {metrics[-1]['train_loss']:.4f} val {val_loss:.4f} {accuracy}{' *' if improved else ''}")
        if stopped == "max_minutes":
            break
        if config.stop_after_epochs and epoch + 1 - start_epoch >= config.stop_after_epochs and epoch + 1 < config.epochs:
            stopped = "stop_after_epochs"
            break
        if bad_epochs >= config.patience:
            stopped = "early_stopping"
            break

    return TrainResult(
        checkpoint=config.out, last_checkpoint=last_path, metrics_path=metrics_path, epochs_run=len(metrics),
        best_epoch=best_epoch, best_val_loss=best_val_loss, stopped=stopped, minutes=(time.monotonic() - started) / 60,
        n_train=int(train_mask.sum()), n_validation=int(val_mask.sum()), metrics=tuple(metrics),
    )
