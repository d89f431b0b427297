"""Model registry, preprocessing, MC-dropout head and output activations (skymorph.trainer.models)."""

from __future__ import annotations

import re

import numpy as np
import pytest
import torch
from torch import nn

from skymorph.errors import InputError, ModelError
from skymorph.exporter._frozen import freeze
from skymorph.model_metadata import InputSpec
from skymorph.schema import get_schema
from skymorph.trainer.models import (
    MCDropoutHead,
    MorphologyNet,
    Preprocess,
    build_model,
    count_flops,
    list_models,
    register_model,
)

pytestmark = pytest.mark.usefixtures("torch_one_thread")

SCHEMA = get_schema("decals")
SPEC = InputSpec(1, 32, 32)


def _images(n=3, spec=SPEC, seed=0):
    return torch.from_numpy(np.random.default_rng(seed).integers(0, 256, (n, *spec.shape), dtype=np.uint8))


def _segment_softmax(logits: np.ndarray) -> np.ndarray:
    out = np.empty_like(logits, dtype=np.float64)
    for s in SCHEMA.question_slices:
        z = logits[..., s].astype(np.float64)
        e = np.exp(z - z.max(axis=-1, keepdims=True))
        out[..., s] = e / e.sum(axis=-1, keepdims=True)
    return out


def test_registry_lists_both_architectures():
    assert {"w20", "resnet_s"} <= set(list_models())


def test_unknown_architecture_names_the_valid_ones():
    with pytest.raises(ModelError, match=r"w21.*w20.*Did you mean 'w20'"):
        build_model("w21", SCHEMA, SPEC)


def test_unknown_likelihood_and_parameters_are_refused():
    with pytest.raises(ModelError, match=r"^likelihood must be one of multinomial, dirichlet_multinomial, got 'gaussian'\.$"):
        build_model("w20", SCHEMA, SPEC, likelihood="gaussian")
    with pytest.raises(ModelError, match="does not take parameters"):
        build_model("w20", SCHEMA, SPEC, depth=3)


def test_registering_a_name_twice_is_refused():
    with pytest.raises(ValueError, match="already registered"):
        register_model("w20")(lambda c, s: None)


@pytest.mark.parametrize("arch", ["w20", "resnet_s"])
def test_multinomial_outputs_are_softmax_within_each_question(arch):
    net = build_model(arch, SCHEMA, SPEC, "multinomial").eval()
    assert [name for name, _ in net.named_children()] == ["preprocess", "trunk", "head"]
    x = _images()
    with torch.no_grad():
        logits = net.head(net.features(x)).numpy()
        probs = net(x).numpy()
    assert probs.shape == (3, SCHEMA.n_answers)
    np.testing.assert_allclose(probs, _segment_softmax(logits), rtol=1e-5, atol=1e-6)
    for s in SCHEMA.question_slices:
        np.testing.assert_allclose(probs[:, s].sum(axis=1), 1.0, atol=1e-5)


@pytest.mark.parametrize("arch", ["w20", "resnet_s"])
def test_dirichlet_outputs_are_bounded_concentrations(arch):
    net = build_model(arch, SCHEMA, SPEC, "dirichlet_multinomial").eval()
    x = _images()
    with torch.no_grad():
        logits = net.head(net.features(x)).double().numpy()
        alpha = net(x).numpy()
    np.testing.assert_allclose(alpha, 1 + 99 / (1 + np.exp(-logits)), rtol=1e-5)
    assert alpha.min() >= 1 and alpha.max() <= 100
    limits = torch.tensor([[-1e4, 0.0, 1e4] * (SCHEMA.n_answers // 3) + [0.0] * (SCHEMA.n_answers % 3)])
    ends = net.output(limits)[0, :3].tolist()  # the bounds themselves, and the middle of the range
    assert ends == [1.0, 50.5, 100.0]


def test_softmax_survives_questions_on_very_different_scales():
    net = build_model("w20", SCHEMA, SPEC)
    logits = torch.zeros(1, SCHEMA.n_answers)
    logits[0, SCHEMA.question_slices[0]] = torch.tensor([1000.0, 999.0, 0.0])
    logits[0, SCHEMA.question_slices[1]] = torch.tensor([-1000.0, -1001.0])
    probs = net.output(logits).numpy()
    assert np.isfinite(probs).all()
    np.testing.assert_allclose(probs[0, SCHEMA.question_slices[1]], [1 / (1 + np.exp(-1)), 1 / (1 + np.exp(1))], rtol=1e-6)


def test_masked_head_equals_one_head_per_mask():
    head = MCDropoutHead(16, 5, dropout=0.25)
    masks = head.draw_masks(4, seed=3)
    features = torch.randn(3, 16)
    out = head(features, masks)
    assert out.shape == (3, 4, 5)
    for t in range(4):
        torch.testing.assert_close(out[:, t], head.linear(features * masks[t]))
    torch.testing.assert_close(head(features, masks.unsqueeze(1)), out)


def test_masks_are_inverted_dropout_and_reproducible():
    head = MCDropoutHead(4096, 2, dropout=0.5)
    masks = head.draw_masks(30, seed=0)
    assert masks.shape == (30, 4096)
    assert set(np.unique(masks.numpy())) == {0.0, 2.0}
    assert abs(masks.mean().item() - 1.0) < 0.02
    assert torch.equal(masks, head.draw_masks(30, seed=0))
    assert not torch.equal(masks, head.draw_masks(30, seed=1))


def test_masks_refuse_seeds_and_sample_counts_no_generator_or_memory_takes():
    head = MCDropoutHead(8, 2)
    for samples, seed, message in (
        (4, 10**23, "--seed must be a non-negative integer below 2**64, got 100000000000000000000000"),
        (4, -1, "--seed must be a non-negative integer below 2**64, got -1"),
        (10**8, 0, "--samples (MC-dropout samples T) must be an integer from 1 to 1000, got 100000000"),
        (0, 0, "from 1 to 1000, got 0"),
    ):
        with pytest.raises(InputError) as info:
            head.draw_masks(samples, seed)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert head.draw_masks(1000, 2**64 - 1).shape == (1000, 8)


def test_masks_of_seeds_2_to_the_32_apart_differ_and_smaller_seeds_keep_theirs():
    """torch's generator keeps 32 bits of its seed: 0, 2**32, 2**63 and 5 * 2**32 drew one set of masks,
    recorded under four seeds. Seeds below 2**32 draw what they drew before, so exported models reproduce."""
    head = MCDropoutHead(8, 2)
    masks = [head.draw_masks(16, seed) for seed in (0, 2**32, 2**63, 5 * 2**32)]
    assert all(not torch.equal(masks[i], masks[j]) for i in range(4) for j in range(i))
    for seed in (5, 2**32 - 1):
        before = torch.bernoulli(torch.full((16, 8), 0.5), generator=torch.Generator().manual_seed(seed)) / 0.5
        assert torch.equal(head.draw_masks(16, seed), before)


@pytest.mark.parametrize("params,message", [
    ({"widths": [-1, 0, 2, 3]}, "resnet_s needs every one of widths to be an integer from 1 to 4096, got -1 in widths=[-1, 0, 2, 3]"),
    ({"widths": [8, 2.5], "depths": [1, 1]}, "got 2.5 in widths"),
    ({"widths": [8, 10**6], "depths": [1, 1]}, "got 1000000 in widths"),
    ({"widths": [8, 16], "depths": [1, -2]}, "every one of depths to be an integer from 1 to 64, got -2"),
    ({"widths": 8, "depths": [1]}, "as many widths as depths"),
    ({"widths": [], "depths": []}, "as many widths as depths"),
])
def test_resnet_widths_and_depths_are_checked_before_anything_is_built(params, message):
    from skymorph.trainer.models import check_arch_params

    for call in (lambda: build_model("resnet_s", SCHEMA, SPEC, **params), lambda: check_arch_params("resnet_s", params)):
        with pytest.raises(ModelError) as info:
            call()
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)


def test_dropout_acts_only_in_train_mode():
    net = build_model("w20", SCHEMA, SPEC).eval()
    x = _images()
    with torch.no_grad():
        assert torch.equal(net(x), net(x))
        net.train()
        assert not torch.equal(net(x), net(x))


def test_dropout_in_the_trunk_is_refused():
    good = build_model("w20", SCHEMA, SPEC)
    bad_trunk = nn.Sequential(good.trunk, nn.Dropout(0.2))
    with pytest.raises(ModelError, match="trunk holds dropout"):
        MorphologyNet(good.preprocess, bad_trunk, good.head, SCHEMA, "multinomial")
    good.trunk = bad_trunk  # after construction: the exporter refuses it
    with pytest.raises(ModelError, match=r"the trunk holds dropout \(1\); MC dropout belongs in the head only"):
        freeze(good, samples=4, seed=0)


def test_preprocess_normalises_and_crops_like_numpy():
    spec = InputSpec(2, 20, 20, scale=1 / 255, mean=(0.1, 0.2), std=(0.5, 0.25), crop_fraction=0.5)
    x = _images(2, spec)
    out = Preprocess(spec)(x).numpy()
    expected = (x.numpy() / 255 - np.array([0.1, 0.2])[:, None, None]) / np.array([0.5, 0.25])[:, None, None]
    np.testing.assert_allclose(out, expected[:, :, 5:15, 5:15], rtol=1e-5, atol=1e-6)


def test_preprocess_halving_resize_averages_two_by_two_blocks():
    # Bilinear with half-pixel centres at exactly half size samples each 2x2 block's centre.
    spec = InputSpec(1, 32, 32, scale=1.0, resize=16)
    x = _images(2, spec)
    out = Preprocess(spec)(x).numpy()
    blocks = x.numpy().astype(np.float64).reshape(2, 1, 16, 2, 16, 2).mean(axis=(3, 5))
    np.testing.assert_allclose(out, blocks, rtol=1e-6)


def test_model_accepts_resized_input():
    spec = InputSpec(3, 64, 64, crop_fraction=0.75, resize=32)
    net = build_model("resnet_s", SCHEMA, spec).eval()
    assert net(_images(2, spec)).shape == (2, SCHEMA.n_answers)


def test_flops_of_w20_match_the_layer_formula():
    def conv(size, cin, cout):
        return 2 * size * size * cin * cout * 9

    size = 32
    expected = (
        conv(size, 1, 32) + conv(size, 32, 32) + conv(size // 2, 32, 64) + conv(size // 2, 64, 64)
        + conv(size // 4, 64, 128) + conv(size // 8, 128, 128) + 2 * 128 * (size // 16) ** 2 * 128
    )
    net = build_model("w20", SCHEMA, SPEC)
    assert count_flops(net.trunk, SPEC) == expected


def test_resnet_s_is_under_one_gflop_at_128_pixels():
    spec = InputSpec(1, 128, 128)
    assert count_flops(build_model("resnet_s", SCHEMA, spec).trunk, spec) < 1e9


def test_model_metadata_refuses_what_the_rest_of_skymorph_refuses():
    """The exporter-engine contract took T = 10**6 or 2.5, a negative seed and 1.5 channels, which every
    other entry point refuses."""
    from dataclasses import replace

    from skymorph.model_metadata import ModelMetadata

    good = ModelMetadata(schema=get_schema("gz2"), likelihood="multinomial", samples=30, seed=0, dropout=0.5,
                         masks_sha256="0" * 64, weights_sha256="0" * 64, input=SPEC)
    assert ModelMetadata.from_props(good.to_props()) == good
    # each value as the exporter writes it, and the key named: int() took " 3_0 " for 30, 30.7 for 30, True for 1
    for key, value in [("samples", "abc"), ("seed", " 3_0 "), ("samples", 30.7), ("seed", True), ("dropout", "x")]:
        with pytest.raises(ModelError, match=rf"^'m.onnx' has invalid skymorph metadata: malformed skymorph.{key} {re.escape(repr(value))}; "
                                             "re-export it with `skymorph export`$"):
            ModelMetadata.from_props({**good.to_props(), f"skymorph.{key}": value}, source="'m.onnx'")
    with pytest.raises(ModelError, match="^extra metadata key 'schema' is one of the model's own; give it another name$"):
        replace(good, extra={"schema": "x"}).to_props()
    with pytest.raises(ModelError, match=r"^extra metadata 'run': 3 must be text \(JSON-encode other values\)$"):
        replace(good, extra={"run": 3})  # was written as '3' and read back as text: not the metadata exported
    for change, message in [
        (dict(samples=10**6), r"samples \(MC-dropout samples T\) must be an integer from 1 to 1000, got 1000000"),
        (dict(samples=2.5), "got 2.5"),
        (dict(seed=-5), r"^the model's seed must be a non-negative integer below 2\*\*64, got -5$"),
        (dict(dropout=1.0), r"^dropout rate must be a number in \[0, 1\), got 1.0$"),
        (dict(likelihood="gauss"), r"^likelihood must be one of multinomial, dirichlet_multinomial, got 'gauss'\.$"),
        (dict(likelihood="multinomal"), r"got 'multinomal'\. Did you mean 'multinomial'\?$"),
    ]:
        with pytest.raises(ModelError, match=message):
            replace(good, **change)
    with pytest.raises(ModelError, match=r"whole positive channels, height, width \(and resize\); got 1.5x32x32"):
        InputSpec(1.5, 32, 32)
    with pytest.raises(ModelError, match=r"\(resize 16.0\)"):
        InputSpec(1, 32, 32, resize=16.0)
    # a checkpoint's JSON can hold anything: "x" failed as a traceback inside the network, NaN gave NaN outputs
    for change, message in [
        (dict(scale="x"), r"^input spec scale must be a finite number > 0, got 'x'$"), (dict(scale=0.0), "got 0.0$"),
        (dict(std=[float("nan")]), r"^input spec std must be a list of finite numbers, got \[nan\]$"),
        (dict(mean="1"), r"^input spec mean must be a list of finite numbers, got '1'$"),
        (dict(crop_fraction=True), r"^input spec crop_fraction must be a number in \(0, 1\], got True$"),
    ]:
        with pytest.raises(ModelError, match=message):
            InputSpec(1, 32, 32, **change)
    assert InputSpec(3, 32, 32, mean=np.array([0.1, 0.2, 0.3]), std=np.ones(3)).mean == (0.1, 0.2, 0.3)  # numpy's, as before
