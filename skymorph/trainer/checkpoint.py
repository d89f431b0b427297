"""Checkpoints: a model's weights and everything needed to rebuild, trace and resume it, in one file.

The file is a ``torch.save`` of a dict holding only tensors, numbers, strings and plain containers, so
``torch.load(path, weights_only=True)`` reads it without running pickled code::

    {"format": "skymorph-checkpoint", "format_version": 1,
     "metadata": "<JSON of CheckpointMeta>",      # schema, arch, likelihood, input spec, provenance, metrics
     "model": state_dict,
     "training": {"epoch", "step", "optimizer", "torch_rng", "best_val_loss", "best_epoch", "bad_epochs",
                  "metrics_json", "raw_weights", "ema_n_averaged"}}  # optional; the last two with EMA only

``training`` is present in the checkpoints the loop writes for ``--resume``; the best checkpoint, the
one exported and evaluated, carries none. There is no scheduler state: the learning rate is a pure
function of ``step`` (:func:`skymorph.trainer.loop.learning_rate`). Writes are atomic (local rename or
one S3 PUT).
"""

from __future__ import annotations

import io
import json
import pickle
import warnings
import zipfile
import zlib
from dataclasses import dataclass, field, replace
from pathlib import PurePosixPath

from skymorph.errors import ModelError, SchemaError, first_line
from skymorph.model_metadata import InputSpec, check_dropout, check_likelihood
from skymorph.schema import Schema, get_schema
from skymorph.storage import atomic_write_bytes, read_bytes

__all__ = ["CheckpointMeta", "save_checkpoint", "load_checkpoint", "read_checkpoint", "FORMAT"]

FORMAT = "skymorph-checkpoint"
FORMAT_VERSION = 1


@dataclass(frozen=True)
class CheckpointMeta:
    """What a checkpoint is: the model's decision tree, architecture, likelihood, input and history.

    ``provenance`` holds where it came from (labels URL and sha256, tile list, seed, skymorph and torch
    versions, UTC time, ``finetuned_from``); ``metrics`` one dict per finished epoch.
    """

    schema: Schema
    arch: str
    likelihood: str
    dropout: float
    input: InputSpec
    arch_params: dict = field(default_factory=dict)
    provenance: dict = field(default_factory=dict)
    metrics: tuple[dict, ...] = ()

    def __post_init__(self) -> None:
        object.__setattr__(self, "metrics", tuple(self.metrics))
        check_likelihood(self.likelihood, ModelError, "checkpoint likelihood")
        check_dropout(self.dropout, ModelError, "checkpoint dropout rate")
        if not self.arch:
            raise ModelError("checkpoint metadata needs an architecture name")

    def with_metrics(self, metrics) -> CheckpointMeta:
        return replace(self, metrics=tuple(metrics))

    def to_dict(self) -> dict:
        return {
            "schema": self.schema.to_dict(),
            "arch": self.arch,
            "arch_params": self.arch_params,
            "likelihood": self.likelihood,
            "dropout": self.dropout,
            "input": self.input.to_dict(),
            "provenance": self.provenance,
            "metrics": list(self.metrics),
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"), default=_json_value)

    @classmethod
    def from_json(cls, text: str, source: str = "checkpoint") -> CheckpointMeta:
        try:
            data = json.loads(text)
            return cls(
                schema=Schema.from_dict(data["schema"], source=f"{source} schema"),
                arch=data["arch"],
                arch_params=dict(data.get("arch_params") or {}),
                likelihood=data["likelihood"],
                dropout=float(data["dropout"]),
                input=InputSpec.from_dict(data["input"]),
                provenance=dict(data.get("provenance") or {}),
                metrics=tuple(data.get("metrics") or ()),
            )
        except (json.JSONDecodeError, KeyError, TypeError, ValueError) as err:
            if isinstance(err, ModelError | SchemaError):
                raise
            raise ModelError(f"{source} has malformed metadata ({type(err).__name__}: {err}); retrain or re-save it") from err


def _json_value(value):
    """A numpy number or array as the JSON number or list it holds (``str`` made ``np.int64(32)`` the string
    ``"32"``, and the checkpoint unloadable); anything else JSON lacks (a path) as its text."""
    import numpy as np

    if isinstance(value, np.generic | np.ndarray):
        return value.tolist()
    return str(value)


def save_checkpoint(path: str, model, meta: CheckpointMeta, *, training: dict | None = None, storage_options=None) -> None:
    """Write ``model``'s weights, ``meta`` and (for resuming) ``training`` state atomically to ``path``.

    ``training`` holds tensors, numbers, strings and state dicts only (epoch, step, optimizer state, the
    torch RNG state, early-stopping counters, metrics as JSON; with EMA the raw weights), so the file
    stays loadable with ``weights_only=True``.
    """
    import torch

    payload = {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "metadata": meta.to_json(),
        "model": {k: v.detach().cpu() for k, v in model.state_dict().items()},
    }
    if training is not None:
        payload["training"] = training
    buffer = io.BytesIO()
    torch.save(payload, buffer)
    atomic_write_bytes(str(path), buffer.getvalue(), storage_options)


def _check_crc(path: str, data: bytes) -> None:
    """A one-line :class:`ModelError` if a record of the zip archive ``torch.save`` writes fails its CRC-32:
    ``torch.load`` does not check them, and a byte flipped in storage loaded wrong weights without a word.
    An archive too damaged to list, or the legacy format (no zip), is left to ``torch.load``'s own checks."""
    if not data.startswith(b"PK\x03\x04"):
        return
    try:
        damaged = zipfile.ZipFile(io.BytesIO(data)).testzip()
    except (zipfile.BadZipFile, zlib.error, EOFError, NotImplementedError, ValueError, OSError):
        return
    if damaged is not None:
        raise ModelError(f"{path!r} is damaged: its {damaged.rsplit('/', 1)[-1]!r} record fails its CRC-32 check; give an "
                         "undamaged copy of the checkpoint")


def read_checkpoint(path: str, storage_options=None, *, data: bytes | None = None) -> tuple[CheckpointMeta, dict]:
    """``(meta, payload)`` of the checkpoint at ``path`` without building the model.

    ``data``: the file's bytes when the caller has already read them (``path`` then only names it in
    errors), so that what is loaded is exactly what the caller hashed. One-line :class:`ModelError` if
    the file is not a torch file, is truncated, or is not a skymorph checkpoint.
    """
    import torch

    if data is None:
        data = read_bytes(str(path), storage_options)
    _check_crc(path, data)
    try:
        with warnings.catch_warnings():  # a foreign pickle's protocol: torch warns, then fails or not; we say which
            warnings.simplefilter("ignore", UserWarning)
            payload = torch.load(io.BytesIO(data), map_location="cpu", weights_only=True)
    except Exception as err:  # torch.load raises many types on foreign or truncated bytes (struct.error, ...)
        exported = {".onnx": "an ONNX model", ".plan": "a TensorRT plan", ".engine": "a TensorRT plan"}.get(
            PurePosixPath(str(path)).suffix.lower())
        if exported:
            raise ModelError(f"{path!r} is {exported} (what `skymorph export` writes), not a checkpoint; give the .ckpt "
                             "written by `skymorph train`") from err
        if not data.startswith(b"PK\x03\x04"):  # torch.save writes a zip archive; torch's own message is about pickles
            kind = {b"PAR1": " (it is Parquet)", b"\x89PNG": " (it is a PNG image)"}.get(data[:4], "")
            raise ModelError(f"{path!r} is not a checkpoint{kind}; give the .ckpt written by `skymorph train`") from err
        if isinstance(err, pickle.UnpicklingError) and "Weights only load failed" in str(err):
            raise ModelError(f"{path!r} is a torch file of pickled Python objects (a whole model saved with torch.save, "
                             "say), which is not loaded: it could run any code; give the .ckpt written by `skymorph "
                             "train`") from err
        raise ModelError(
            f"{path!r} is not a readable checkpoint (corrupt or not a torch file: {first_line(err, 120)}); "
            "give a file written by `skymorph train`"
        ) from err
    if not isinstance(payload, dict) or payload.get("format") != FORMAT:
        raise ModelError(f"{path!r} is a torch file but not a skymorph checkpoint; give a file written by `skymorph train`")
    if payload.get("format_version") != FORMAT_VERSION:
        raise ModelError(
            f"{path!r} has checkpoint format version {payload.get('format_version')}, this skymorph reads {FORMAT_VERSION}"
        )
    if not isinstance(payload.get("metadata"), str):
        raise ModelError(f"{path!r} is a skymorph checkpoint without its metadata (damaged or hand-made); re-save it with `skymorph train`")
    return CheckpointMeta.from_json(payload["metadata"], source=repr(path)), payload


def check_schema(meta: CheckpointMeta, expect_schema, source: str, advice: str = "") -> None:
    """One-line :class:`SchemaError` if ``meta``'s decision tree is not ``expect_schema``'s; ``advice``
    replaces the default "use a checkpoint trained on ..." where the caller knows a better fix."""
    expected = get_schema(expect_schema)
    if not meta.schema.same_tree(expected):
        raise SchemaError(
            f"{source} was trained on schema {meta.schema.name!r} ({meta.schema.n_answers} answers), "
            f"not {expected.name!r} ({expected.n_answers} answers); {advice or f'use a checkpoint trained on {expected.name!r}'}"
        )


def load_checkpoint(path: str, expect_schema=None, storage_options=None, *, data: bytes | None = None):
    """``(model, meta, training)``: the rebuilt model (eval mode, CPU), its :class:`CheckpointMeta`, and
    the resume state (``{}`` if the checkpoint has none). ``expect_schema`` (name, path or Schema) makes
    a checkpoint of another decision tree a one-line :class:`SchemaError`; ``data``: the file's bytes,
    if already read (see :func:`read_checkpoint`)."""
    from skymorph.trainer.models import build_model

    meta, payload = read_checkpoint(path, storage_options, data=data)
    if expect_schema is not None:
        check_schema(meta, expect_schema, repr(path))
    model = build_model(meta.arch, meta.schema, meta.input, meta.likelihood, dropout=meta.dropout, **meta.arch_params)
    if not isinstance(payload.get("model"), dict) or not isinstance(payload.get("training") or {}, dict):
        raise ModelError(f"{path!r} is a skymorph checkpoint without its weights or with damaged training state (hand-made or "
                         "damaged); give a file written by `skymorph train`")
    try:
        model.load_state_dict(payload["model"])
    except (RuntimeError, KeyError) as err:
        # torch's first line only says "Error(s) in loading state_dict for ...:"; the mismatches follow it
        details = [line.strip() for line in str(err).splitlines()[1:] if line.strip()] or [first_line(err)]
        more = f"; and {len(details) - 1} more" if len(details) > 1 else ""
        raise ModelError(f"{path!r}: weights do not fit architecture {meta.arch!r} ({details[0][:300].rstrip('.')}{more})") from err
    model.eval()
    return model, meta, payload.get("training") or {}
