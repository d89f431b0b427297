"""A trained network with T frozen dropout masks: the fixed ensemble that every engine runs.

``FrozenMaskNet(images) = output(head.linear(trunk(preprocess(images))[:, None, :] * masks[None]))``,
shape (B, T, A): the trunk runs once per galaxy, the T masked heads share its features. The masks are
drawn by :meth:`MCDropoutHead.draw_masks` from ``seed``, so ``(weights, T, seed)`` fixes every output.
"""

from __future__ import annotations

import hashlib
import json

import numpy as np
import torch
from torch import nn

from skymorph import __version__
from skymorph.model_metadata import ModelMetadata
from skymorph.trainer.models import MorphologyNet, check_trunk

__all__ = ["FrozenMaskNet", "freeze", "freeze_checkpoint", "weights_sha256", "masks_sha256", "checkpoint_extra"]


class FrozenMaskNet(nn.Module):
    """``net`` with its dropout replaced by the fixed ``masks`` (T, F); forward gives (B, T, A)."""

    def __init__(self, net: MorphologyNet, masks: torch.Tensor) -> None:
        super().__init__()
        self.net = net
        self.register_buffer("masks", masks.to(torch.float32))

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.net.sample(images, self.masks.to(self.net.head.linear.weight.dtype))


def weights_sha256(net: nn.Module) -> str:
    """sha256 over the state dict in key order: for each tensor, ``key``, ``dtype``, ``shape`` and its
    C-order little-endian bytes (so a renamed, reshaped or retyped tensor changes the digest too)."""
    digest = hashlib.sha256()
    state = net.state_dict()
    for key in sorted(state):
        array = state[key].detach().cpu().numpy()
        digest.update(f"{key}|{array.dtype}|{array.shape}|".encode())
        digest.update(np.ascontiguousarray(array, dtype=array.dtype.newbyteorder("<")).tobytes())
    return digest.hexdigest()


def masks_sha256(masks: torch.Tensor) -> str:
    """sha256 of the (T, F) masks as C-order little-endian float32 bytes."""
    return hashlib.sha256(np.ascontiguousarray(masks.detach().cpu().numpy(), dtype="<f4").tobytes()).hexdigest()


def checkpoint_extra(checkpoint_bytes: bytes, provenance: dict) -> dict[str, str]:
    """Extra ``skymorph.*`` metadata naming the checkpoint: its sha256 and training provenance (JSON),
    as strings so that they round-trip through ``metadata_props`` unchanged."""
    return {
        "checkpoint_sha256": hashlib.sha256(checkpoint_bytes).hexdigest(),
        "provenance": json.dumps(provenance, sort_keys=True, separators=(",", ":"), default=str),
    }


def freeze(net: MorphologyNet, samples: int, seed: int, extra: dict | None = None) -> tuple[FrozenMaskNet, ModelMetadata]:
    """``net`` with ``samples`` masks drawn from ``seed``, in eval mode, and the metadata describing it.

    ``net`` is put in eval mode (batch norm then uses its running statistics); its weights are shared,
    not copied. A trunk given dropout since the network was built is refused here too.
    """
    check_trunk(net.trunk)
    masks = net.head.draw_masks(samples, seed)
    frozen = FrozenMaskNet(net, masks).eval()
    metadata = ModelMetadata(
        schema=net.schema,
        likelihood=net.likelihood,
        samples=samples,
        seed=seed,
        dropout=net.dropout,
        masks_sha256=masks_sha256(masks),
        weights_sha256=weights_sha256(net),
        input=net.input_spec,
        arch=net.arch,
        version=__version__,
        extra=dict(extra or {}),
    )
    return frozen, metadata


def freeze_checkpoint(url: str, data: bytes, samples: int, seed: int) -> tuple[FrozenMaskNet, ModelMetadata]:
    """:func:`freeze` of the checkpoint whose bytes are ``data`` (read from ``url``, named in errors), with
    :func:`checkpoint_extra` in its metadata: the ``torch`` engine's model, without inference importing
    the trainer."""
    from skymorph.trainer.checkpoint import load_checkpoint

    net, meta, _ = load_checkpoint(url, data=data)
    return freeze(net, samples, seed, checkpoint_extra(data, meta.provenance))
