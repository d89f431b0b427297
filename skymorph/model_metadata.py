"""Metadata carried by every exported model: the contract between exporter, engines and catalog.

An ONNX model stores it as ``metadata_props`` (string key/values, DESIGN's ``skymorph.*`` keys); a
TensorRT plan stores the same keys in its sidecar JSON. :class:`ModelMetadata` validates on
construction and round-trips through :meth:`ModelMetadata.to_props` / :meth:`ModelMetadata.from_props`.
"""

from __future__ import annotations

import json
import math
import numbers
from dataclasses import dataclass, field

import numpy as np

from skymorph.errors import InputError, ModelError, SkymorphError, did_you_mean
from skymorph.schema import Schema
from skymorph.seeds import check_seed

__all__ = ["InputSpec", "ModelMetadata", "LIKELIHOODS", "MAX_SAMPLES", "check_dropout", "check_likelihood", "check_samples"]

LIKELIHOODS = ("multinomial", "dirichlet_multinomial")
"""The count likelihoods a model's outputs parameterise (DESIGN "Posterior math"); the one definition."""

MAX_SAMPLES = 1000
"""Most MC-dropout samples T a model may draw. Walmsley et al. (2020) use 30; the Monte Carlo error of a
mean over T samples falls only as 1 / sqrt(T), while the masks (T, F), the outputs (B, T, A) of a batch
and the posterior's (N + 1, T, A) count pmfs per galaxy grow linearly: at T = 1000 these are already
about 0.5 GB per galaxy block with N = 1000 volunteers; far larger T only runs out of memory."""


def check_likelihood(likelihood, error: type[Exception] = InputError, what: str = "likelihood") -> str:
    """``likelihood`` if it is one of :data:`LIKELIHOODS`, else a one-line ``error`` (an argument's
    :class:`InputError`, a loaded model's :class:`ModelError`) naming ``what``."""
    if likelihood not in LIKELIHOODS:
        raise error(f"{what} must be one of {', '.join(LIKELIHOODS)}, got {likelihood!r}." + did_you_mean(str(likelihood), LIKELIHOODS))
    return likelihood


def check_dropout(rate, error: type[Exception] = InputError, what: str = "dropout rate") -> float:
    """``rate`` as a float in [0, 1) (the head's MC-dropout rate), else a one-line ``error`` naming ``what``."""
    if isinstance(rate, bool) or not isinstance(rate, numbers.Real) or not 0 <= rate < 1:
        raise error(f"{what} must be a number in [0, 1), got {rate!r}")
    return float(rate)


def check_samples(samples, flag: str = "--samples", error: type[Exception] = InputError) -> int:
    """``samples`` (T) as an int in [1, :data:`MAX_SAMPLES`], else a one-line ``error``."""
    if isinstance(samples, bool) or not isinstance(samples, numbers.Integral) or not 1 <= samples <= MAX_SAMPLES:
        raise error(
            f"{flag} (MC-dropout samples T) must be an integer from 1 to {MAX_SAMPLES}, got {samples!r}; "
            "30 is the usual choice"
        )
    return int(samples)


def _finite(value) -> bool:
    return isinstance(value, numbers.Real) and not isinstance(value, bool) and math.isfinite(value)


@dataclass(frozen=True)
class InputSpec:
    """What a model expects as input and how uint8 pixels become network input.

    Inside the model: ``x = (pixel * scale - mean[c]) / std[c]``; then a centred crop keeping
    ``crop_fraction`` of height and width; then a bilinear resize to ``resize`` x ``resize`` pixels
    (``None``: no resize). ``channels``, ``height``, ``width`` are those of the uint8 images fed in.
    """

    channels: int
    height: int
    width: int
    scale: float = 1.0 / 255.0
    mean: tuple[float, ...] = (0.0,)
    std: tuple[float, ...] = (1.0,)
    crop_fraction: float = 1.0
    resize: int | None = None

    def __post_init__(self) -> None:
        # a checkpoint's or model's JSON can hold anything: "x" here failed as a traceback inside the network,
        # and a NaN std gave NaN for every galaxy
        for name in ("mean", "std"):
            values = getattr(self, name)
            if isinstance(values, np.ndarray) and values.ndim == 1:
                values = values.tolist()
            if not isinstance(values, (list, tuple)) or not all(_finite(v) for v in values):
                raise ModelError(f"input spec {name} must be a list of finite numbers, got {values!r}")
            object.__setattr__(self, name, tuple(float(v) for v in values))
        if not (_finite(self.scale) and self.scale > 0):
            raise ModelError(f"input spec scale must be a finite number > 0, got {self.scale!r}")
        if not _finite(self.crop_fraction):
            raise ModelError(f"input spec crop_fraction must be a number in (0, 1], got {self.crop_fraction!r}")
        sizes = (self.channels, self.height, self.width, *(() if self.resize is None else (self.resize,)))
        if any(isinstance(n, bool) or not isinstance(n, numbers.Integral) for n in sizes) or min(sizes[:3]) < 1:
            raise ModelError(f"input spec needs whole positive channels, height, width (and resize); got {self.channels}x"
                             f"{self.height}x{self.width} (resize {self.resize!r})")
        for name, values in (("mean", self.mean), ("std", self.std)):
            if len(values) not in (1, self.channels):
                raise ModelError(f"input spec {name} has {len(values)} values for {self.channels} channel(s)")
        if any(s <= 0 for s in self.std):
            raise ModelError(f"input spec std must be positive, got {self.std}")
        if not 0 < self.crop_fraction <= 1:
            raise ModelError(f"input spec crop_fraction must be in (0, 1], got {self.crop_fraction}")
        if self.resize is not None and self.resize < 8:
            raise ModelError(f"input spec resize must be at least 8 pixels, got {self.resize}")

    @property
    def shape(self) -> tuple[int, int, int]:
        """(C, H, W) of the uint8 images the model takes."""
        return (self.channels, self.height, self.width)

    def to_dict(self) -> dict:
        return {
            "channels": self.channels,
            "height": self.height,
            "width": self.width,
            "scale": self.scale,
            "mean": list(self.mean),
            "std": list(self.std),
            "crop_fraction": self.crop_fraction,
            "resize": self.resize,
        }

    @classmethod
    def from_dict(cls, data: dict) -> InputSpec:
        try:
            return cls(**data)
        except TypeError as err:
            raise ModelError(f"input spec {data!r} is malformed: {err}") from err


def _parsed(props: dict, key: str, kind: type):
    """``props["skymorph.<key>"]`` as ``kind``: its text exactly as the exporter writes it (``int`` took
    " 3_0 " for 30), else a one-line :class:`ModelError` naming the key."""
    text = props[f"skymorph.{key}"]
    try:
        if not isinstance(text, str) or text != text.strip() or "_" in text:
            raise ValueError
        return kind(text)
    except ValueError:
        raise ModelError(f"malformed skymorph.{key} {text!r}") from None  # from_props names the source and the fix


@dataclass(frozen=True)
class ModelMetadata:
    """Schema, likelihood, T, seed, dropout rate, digests and input spec of an exported model."""

    schema: Schema
    likelihood: str
    samples: int
    seed: int
    dropout: float
    masks_sha256: str
    weights_sha256: str
    input: InputSpec
    arch: str = ""
    version: str = ""
    extra: dict = field(default_factory=dict)

    def __post_init__(self) -> None:
        check_likelihood(self.likelihood, ModelError)
        check_samples(self.samples, "the model's samples", ModelError)
        check_seed(self.seed, "the model's seed", ModelError)
        check_dropout(self.dropout, ModelError)
        for key, value in self.extra.items():  # metadata_props hold text: anything else would read back otherwise
            if not isinstance(key, str) or not isinstance(value, str):
                raise ModelError(f"extra metadata {key!r}: {value!r} must be text (JSON-encode other values)")

    def to_props(self) -> dict[str, str]:
        """DESIGN's ``skymorph.*`` string key/values (ONNX ``metadata_props``, plan sidecar)."""
        props = {
            "skymorph.schema": self.schema.to_json(),
            "skymorph.likelihood": self.likelihood,
            "skymorph.samples": str(self.samples),
            "skymorph.seed": str(self.seed),
            "skymorph.dropout": repr(float(self.dropout)),
            "skymorph.masks_sha256": self.masks_sha256,
            "skymorph.weights_sha256": self.weights_sha256,
            "skymorph.input": json.dumps(self.input.to_dict(), separators=(",", ":")),
            "skymorph.arch": self.arch,
            "skymorph.version": self.version,
        }
        for key, value in self.extra.items():
            if f"skymorph.{key}" in props:  # it would replace the model's own value
                raise ModelError(f"extra metadata key {key!r} is one of the model's own; give it another name")
            props[f"skymorph.{key}"] = value
        return props

    @property
    def training_pixels(self) -> list[dict]:
        """The bands, stretch and pixel scale of the tiles the model was trained on
        (:attr:`skymorph.tiles.Tile.pixels`, from the checkpoint's provenance); empty where not recorded."""
        try:
            pixels = json.loads(self.extra.get("provenance", "{}")).get("pixels")
        except (ValueError, AttributeError):
            return []
        return [p for p in pixels if isinstance(p, dict)] if isinstance(pixels, list) else []

    @classmethod
    def from_props(cls, props: dict[str, str], source: str = "model") -> ModelMetadata:
        """Parse ``skymorph.*`` keys; a one-line :class:`ModelError` naming ``source`` if any is missing."""
        required = (
            "schema", "likelihood", "samples", "seed", "dropout", "masks_sha256", "weights_sha256", "input",
        )
        missing = [key for key in required if f"skymorph.{key}" not in props]
        if missing:
            raise ModelError(
                f"{source} has no skymorph metadata ({', '.join('skymorph.' + k for k in missing)} missing); "
                "export it with `skymorph export`"
            )
        try:
            known = set(required) | {"arch", "version"}
            ours = {k.removeprefix("skymorph."): v for k, v in props.items() if k.startswith("skymorph.")}
            extra = {k: v for k, v in ours.items() if k not in known}
            return cls(
                schema=Schema.from_json(props["skymorph.schema"], source=f"{source} skymorph.schema"),
                likelihood=props["skymorph.likelihood"],
                samples=_parsed(props, "samples", int),
                seed=_parsed(props, "seed", int),
                dropout=_parsed(props, "dropout", float),
                masks_sha256=props["skymorph.masks_sha256"],
                weights_sha256=props["skymorph.weights_sha256"],
                input=InputSpec.from_dict(json.loads(props["skymorph.input"])),
                arch=props.get("skymorph.arch", ""),
                version=props.get("skymorph.version", ""),
                extra=extra,
            )
        except ModelError as err:  # a value the exporter never writes
            raise ModelError(f"{source} has invalid skymorph metadata: {err}; re-export it with `skymorph export`") from None
        except (ValueError, TypeError) as err:
            if isinstance(err, SkymorphError):  # the schema's own error names the source
                raise
            raise ModelError(f"{source} has malformed skymorph metadata: {err}") from err
