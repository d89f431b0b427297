"""Bayesian CNNs for galaxy morphology: a registry of trunks, one network class, MC-dropout heads.

Every model is a :class:`MorphologyNet` with exactly three children:

``preprocess``
    uint8 images (B, C, H, W) -> normalised float, per :class:`~skymorph.model_metadata.InputSpec`
    (scale, mean/std, centre crop, bilinear resize). It is part of the network so that it is exported
    into the ONNX graph: training and inference can never disagree on normalisation.
``trunk``
    normalised images -> features (B, F). It holds no dropout (enforced on construction), so an
    exported model runs it once per galaxy however many MC samples T are drawn.
``head``
    an :class:`MCDropoutHead`: dropout with rate p, then a linear layer F -> A (A answers of the schema).

:meth:`MorphologyNet.output` turns logits into probabilities (softmax within each question) for the
``multinomial`` likelihood, or into Dirichlet concentrations for ``dirichlet_multinomial``.

Architectures are registered with :func:`register_model` and built with :func:`build_model`::

    net = build_model("w20", get_schema("decals"), InputSpec(1, 128, 128), "multinomial")
"""

from __future__ import annotations

import numbers
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from skymorph.errors import ModelError, did_you_mean
from skymorph.model_metadata import InputSpec, check_dropout, check_likelihood, check_samples
from skymorph.schema import Schema
from skymorph.seeds import torch_seed

__all__ = [
    "register_model",
    "build_model",
    "list_models",
    "check_arch_params",
    "MorphologyNet",
    "MCDropoutHead",
    "Preprocess",
    "count_flops",
    "DIRICHLET_MIN",
    "DIRICHLET_MAX",
]

DIRICHLET_MIN = 1.0
"""Smallest Dirichlet concentration a ``dirichlet_multinomial`` model outputs (Zoobot's choice)."""
DIRICHLET_MAX = 100.0
"""Largest Dirichlet concentration a ``dirichlet_multinomial`` model outputs (Zoobot's choice)."""

# ---- registry ------------------------------------------------------------------------------------


_REGISTRY: dict[str, Callable[..., nn.Module]] = {}
_PARAM_CHECKS: dict[str, Callable[..., object]] = {}


def register_model(name: str, check: Callable[..., object] | None = None) -> Callable:
    """Register a trunk factory under ``name``.

    The factory is called as ``factory(in_channels, image_size, **arch_params)`` with ``image_size`` the
    (height, width) after the input spec's crop and resize, and returns an ``nn.Module`` mapping
    (B, in_channels, height, width) float to (B, F) features, with an int attribute ``num_features`` = F.
    ``check(**arch_params)``, if given, raises a one-line :class:`ModelError` for parameter values the
    factory cannot build, without building anything (see :func:`check_arch_params`).
    """

    def decorate(factory: Callable[..., nn.Module]) -> Callable[..., nn.Module]:
        if name in _REGISTRY:
            raise ValueError(f"model architecture {name!r} is already registered")
        _REGISTRY[name] = factory
        if check is not None:
            _PARAM_CHECKS[name] = check
        return factory

    return decorate


def list_models() -> list[str]:
    """Names of the registered architectures, sorted."""
    return sorted(_REGISTRY)


def model_parameters(arch: str) -> tuple[str, ...]:
    """The names of the parameters architecture ``arch`` takes (its ``arch_params``)."""
    import inspect

    if arch not in _REGISTRY:
        raise ModelError(f"unknown model architecture {arch!r}; choose one of {', '.join(list_models())}." + did_you_mean(arch, _REGISTRY))
    names = list(inspect.signature(_REGISTRY[arch]).parameters)
    return tuple(names[2:])  # after in_channels and image_size


def check_arch_params(arch: str, arch_params: dict) -> None:
    """One-line :class:`ModelError` if architecture ``arch`` takes no parameter of ``arch_params`` or cannot be
    built with its values; cheap (nothing is built), so a run checks them before reading any image."""
    accepted = model_parameters(arch)
    for name in arch_params:
        if name not in accepted:
            raise ModelError(
                f"architecture {arch!r} takes no parameter {name!r} (it takes {', '.join(accepted) or 'none'})."
                + did_you_mean(name, accepted)
            )
    if arch in _PARAM_CHECKS:
        _PARAM_CHECKS[arch](**arch_params)


def build_model(
    arch: str,
    schema: Schema,
    input_spec: InputSpec,
    likelihood: str = "multinomial",
    dropout: float = 0.5,
    **arch_params,
) -> MorphologyNet:
    """Build a freshly initialised :class:`MorphologyNet` of architecture ``arch`` for ``schema``."""
    if arch not in _REGISTRY:
        raise ModelError(
            f"unknown model architecture {arch!r}; choose one of {', '.join(list_models())}." + did_you_mean(arch, _REGISTRY)
        )
    check_likelihood(likelihood, ModelError)
    preprocess = Preprocess(input_spec)
    try:
        trunk = _REGISTRY[arch](input_spec.channels, preprocess.output_size, **arch_params)
    except TypeError as err:
        raise ModelError(f"architecture {arch!r} does not take parameters {sorted(arch_params)}: {err}") from err
    head = MCDropoutHead(trunk.num_features, schema.n_answers, dropout)
    net = MorphologyNet(preprocess, trunk, head, schema, likelihood)
    net.arch = arch
    net.arch_params = dict(arch_params)
    return net


# ---- the network ---------------------------------------------------------------------------------


class Preprocess(nn.Module):
    """uint8 (B, C, H, W) -> float32 network input, exactly as the :class:`InputSpec` says.

    ``x = (pixel * scale - mean[c]) / std[c]``, folded into one multiply-add ``x = pixel * a[c] + b[c]``
    with ``a = scale / std`` and ``b = -mean / std``; then a centred crop keeping ``crop_fraction`` of the
    height and width (rounded to whole pixels); then a bilinear resize (half-pixel centres, no
    antialiasing: ONNX ``Resize`` reproduces it exactly) to ``resize`` x ``resize``.
    """

    def __init__(self, spec: InputSpec) -> None:
        super().__init__()
        self.spec = spec
        std = torch.tensor(spec.std, dtype=torch.float32)
        mean = torch.tensor(spec.mean, dtype=torch.float32)
        # Non-persistent: derived from the spec, so checkpoints hold learned weights only.
        self.register_buffer("gain", (spec.scale / std).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("offset", (-mean / std).view(1, -1, 1, 1), persistent=False)
        crop_h = max(1, round(spec.height * spec.crop_fraction))
        crop_w = max(1, round(spec.width * spec.crop_fraction))
        self.top = (spec.height - crop_h) // 2
        self.left = (spec.width - crop_w) // 2
        self.crop = (crop_h, crop_w)
        self.output_size = (spec.resize, spec.resize) if spec.resize else self.crop

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        # The gain's dtype, not float32: a model converted with .half() runs (and exports) in fp16.
        x = images.to(self.gain.dtype) * self.gain + self.offset
        if self.crop != (self.spec.height, self.spec.width):
            x = x[:, :, self.top : self.top + self.crop[0], self.left : self.left + self.crop[1]]
        if self.output_size != self.crop:
            x = F.interpolate(x, size=self.output_size, mode="bilinear", align_corners=False, antialias=False)
        return x


class MCDropoutHead(nn.Module):
    """Dropout with rate ``p``, then ``linear``: F features -> A logits.

    ``forward(features)`` applies ordinary dropout (active in train mode only) and returns (B, A).
    ``forward(features, mask)`` with a mask (T, F) or (T, 1, F) of entries 0 or 1/(1-p) returns the
    (B, T, A) logits of the T masked heads: ``logits[b, t] = linear(features[b] * mask[t])``.
    """

    def __init__(self, in_features: int, out_features: int, dropout: float = 0.5) -> None:
        super().__init__()
        self.dropout = check_dropout(dropout, ModelError)
        self.linear = nn.Linear(in_features, out_features)

    @property
    def in_features(self) -> int:
        return self.linear.in_features

    def forward(self, features: torch.Tensor, mask: torch.Tensor | None = None) -> torch.Tensor:
        if mask is None:
            return self.linear(F.dropout(features, self.dropout, training=self.training))
        mask = mask.reshape(mask.shape[0], self.in_features)
        return self.linear(features.unsqueeze(1) * mask)

    def draw_masks(self, samples: int, seed: int) -> torch.Tensor:
        """T = ``samples`` dropout masks (T, F), float32, reproducible from ``seed``.

        Each entry is ``Bernoulli(1 - p) / (1 - p)``, drawn with a CPU ``torch.Generator`` seeded with
        :func:`~skymorph.seeds.torch_seed` of ``seed`` (the same masks on every machine), so that
        ``E[mask] = 1`` as in inverted dropout.
        """
        samples = check_samples(samples)
        generator = torch.Generator(device="cpu").manual_seed(torch_seed(seed))
        keep = 1.0 - self.dropout
        bits = torch.bernoulli(torch.full((samples, self.in_features), keep), generator=generator)
        return bits / keep


def check_trunk(trunk: nn.Module) -> None:
    """:class:`ModelError` if ``trunk`` holds a dropout module: MC dropout belongs in the head only."""
    dropouts = [name for name, m in trunk.named_modules() if isinstance(m, nn.modules.dropout._DropoutNd)]
    if dropouts:
        raise ModelError(
            f"the trunk holds dropout ({', '.join(dropouts)}); MC dropout belongs in the head only, "
            "so that the exported model runs the trunk once for all T samples"
        )


class MorphologyNet(nn.Module):
    """``preprocess`` -> ``trunk`` -> ``head`` -> :meth:`output`; see the module docstring."""

    def __init__(self, preprocess: Preprocess, trunk: nn.Module, head: MCDropoutHead, schema: Schema, likelihood: str) -> None:
        super().__init__()
        check_trunk(trunk)
        check_likelihood(likelihood, ModelError)
        if head.linear.out_features != schema.n_answers:
            raise ModelError(f"head has {head.linear.out_features} outputs but schema {schema.name!r} has {schema.n_answers} answers")
        self.preprocess = preprocess
        self.trunk = trunk
        self.head = head
        self.schema = schema
        self.likelihood = likelihood
        self.arch = ""
        self.arch_params: dict = {}
        self._slices = [(s.start, s.stop) for s in schema.question_slices]

    @property
    def input_spec(self) -> InputSpec:
        return self.preprocess.spec

    @property
    def dropout(self) -> float:
        return self.head.dropout

    @property
    def num_features(self) -> int:
        return self.head.in_features

    def features(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) -> trunk features (B, F)."""
        return self.trunk(self.preprocess(images))

    def output(self, logits: torch.Tensor) -> torch.Tensor:
        """Logits (..., A) -> probabilities or concentrations (..., A).

        ``multinomial``: ``p_a = exp(z_a) / sum_{a' in q(a)} exp(z_a')``, a softmax within each question
        (the max of each question is subtracted first, so no question underflows to 0/0).
        ``dirichlet_multinomial``: ``alpha_a = 1 + 99 * sigmoid(z_a)``, in [1, 100] as in Zoobot
        (Walmsley et al. 2022): alpha >= 1 keeps every Dirichlet unimodal (no mass piled on the simplex
        edges, where the likelihood's gradient blows up), and the cap at 100 bounds the confidence a
        single sample may claim, leaving uncertainty to the spread over MC samples.
        """
        if self.likelihood == "dirichlet_multinomial":
            return DIRICHLET_MIN + (DIRICHLET_MAX - DIRICHLET_MIN) * torch.sigmoid(logits)
        # ~10 questions: one softmax each is cheap, and exports to plain ONNX Softmax nodes.
        return torch.cat([torch.softmax(logits[..., a:b], dim=-1) for a, b in self._slices], dim=-1)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) -> (B, A) outputs; dropout is active in train mode only."""
        return self.output(self.head(self.features(images)))

    def sample(self, images: torch.Tensor, masks: torch.Tensor) -> torch.Tensor:
        """uint8 images (B, C, H, W) and dropout masks (T, F) -> (B, T, A): the trunk runs once."""
        return self.output(self.head(self.features(images), masks))


# ---- FLOPs ---------------------------------------------------------------------------------------


def count_flops(module: nn.Module, input_spec: InputSpec, preprocessed: bool = True) -> int:
    """Floating-point operations of one forward pass of ``module`` on one image (a multiply-add is 2).

    Counted by :class:`torch.utils.flop_counter.FlopCounterMode` (convolutions and matrix products;
    elementwise ops, pooling and normalisation are not counted). With ``preprocessed=True`` the input is
    a float image of the size after crop/resize (for a trunk); otherwise a uint8 image per the spec.
    """
    from torch.utils.flop_counter import FlopCounterMode

    if preprocessed:
        size = Preprocess(input_spec).output_size
        x = torch.zeros(1, input_spec.channels, *size)
    else:
        x = torch.zeros(1, *input_spec.shape, dtype=torch.uint8)
    was_training = module.training
    module.eval()
    try:
        with torch.no_grad(), FlopCounterMode(display=False) as counter:
            module(x)
    finally:
        module.train(was_training)
    return int(counter.get_total_flops())


# ---- architectures -------------------------------------------------------------------------------


def _sizes(arch: str, name: str, values, largest: int) -> tuple[int, ...]:
    """``values`` (one int or a sequence) as a tuple of ints in [1, ``largest``], else a one-line ModelError.
    The bound only catches typos and garbage (a width of 10**6 would ask for terabytes), not big models."""
    many = isinstance(values, (list, tuple))
    items = tuple(values) if many else (values,)
    for value in items:
        if isinstance(value, bool) or not isinstance(value, numbers.Integral) or not 1 <= value <= largest:
            what = f"every one of {name}" if many else name
            raise ModelError(f"{arch} needs {what} to be an integer from 1 to {largest}, got {value!r} in {name}={values!r}")
    return tuple(int(v) for v in items)


def _check_w20(dense: int = 128) -> int:
    return _sizes("w20", "dense", dense, 8192)[0]


class _W20Trunk(nn.Module):
    def __init__(self, in_channels: int, image_size: tuple[int, int], dense: int = 128) -> None:
        super().__init__()
        dense = _check_w20(dense)

        def conv(cin: int, cout: int) -> list[nn.Module]:
            return [nn.Conv2d(cin, cout, 3, padding=1), nn.ReLU(inplace=True)]

        self.conv = nn.Sequential(
            *conv(in_channels, 32), *conv(32, 32), nn.MaxPool2d(2),
            *conv(32, 64), *conv(64, 64), nn.MaxPool2d(2),
            *conv(64, 128), nn.MaxPool2d(2),
            *conv(128, 128), nn.MaxPool2d(2),
        )
        height, width = (s // 16 for s in image_size)
        if min(height, width) < 1:
            raise ModelError(f"w20 needs images of at least 16x16 pixels after crop/resize, got {image_size}")
        self.dense = nn.Sequential(nn.Flatten(), nn.Linear(128 * height * width, dense), nn.ReLU(inplace=True))
        self.num_features = dense

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dense(self.conv(x))


@register_model("w20", check=_check_w20)
def w20(in_channels: int, image_size: tuple[int, int], dense: int = 128) -> nn.Module:
    """Walmsley et al. 2020 (MNRAS 491, 1554): conv32, conv32, pool, conv64, conv64, pool, conv128, pool,
    conv128, pool, dense128 (3x3 'same' convolutions, ReLU, 2x2 max pooling); about 1 GFLOP at 128 px."""
    return _W20Trunk(in_channels, image_size, dense)


class _BasicBlock(nn.Module):
    """ResNet basic block (He et al. 2016): two 3x3 conv-BN, identity or 1x1 projection shortcut."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.body = nn.Sequential(
            nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False),
            nn.BatchNorm2d(cout),
            nn.ReLU(inplace=True),
            nn.Conv2d(cout, cout, 3, padding=1, bias=False),
            nn.BatchNorm2d(cout),
        )
        self.shortcut = (
            nn.Identity()
            if stride == 1 and cin == cout
            else nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.relu(self.body(x) + self.shortcut(x))


def _check_resnet_s(
    widths: tuple[int, ...] = (32, 64, 128, 256), depths: tuple[int, ...] = (1, 1, 1, 1)
) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """``(widths, depths)`` as int tuples: the same number (at least one) of each, widths 1..4096 channels,
    depths 1..64 blocks; else a one-line ModelError."""
    if not isinstance(widths, (list, tuple)) or not isinstance(depths, (list, tuple)) or len(widths) != len(depths) or not widths:
        raise ModelError(
            f"resnet_s needs as many widths as depths, one of each per stage, got widths={widths!r}, depths={depths!r}; "
            'give e.g. {"widths": [32, 64], "depths": [1, 1]}'
        )
    return _sizes("resnet_s", "widths", widths, 4096), _sizes("resnet_s", "depths", depths, 64)


class _ResNetTrunk(nn.Module):
    def __init__(self, in_channels: int, widths: tuple[int, ...], depths: tuple[int, ...]) -> None:
        super().__init__()
        widths, depths = _check_resnet_s(widths, depths)
        layers: list[nn.Module] = [
            nn.Conv2d(in_channels, widths[0], 3, stride=2, padding=1, bias=False),
            nn.BatchNorm2d(widths[0]),
            nn.ReLU(inplace=True),
        ]
        cin = widths[0]
        for stage, (width, depth) in enumerate(zip(widths, depths)):
            for block in range(depth):
                stride = 2 if stage > 0 and block == 0 else 1
                layers.append(_BasicBlock(cin, width, stride))
                cin = width
        layers += [nn.AdaptiveAvgPool2d(1), nn.Flatten()]
        self.body = nn.Sequential(*layers)
        self.num_features = cin

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)


@register_model("resnet_s", check=_check_resnet_s)
def resnet_s(
    in_channels: int,
    image_size: tuple[int, int],
    widths: tuple[int, ...] = (32, 64, 128, 256),
    depths: tuple[int, ...] = (1, 1, 1, 1),
) -> nn.Module:
    """A small ResNet: 3x3 stride-2 stem, basic-block stages (stride 2 between stages), global average
    pooling; F = widths[-1] = 256 features, about 0.5 GFLOP at 128 px, any input size."""
    return _ResNetTrunk(in_channels, widths, depths)
