"""Losses against scipy's multinomial and Dirichlet-multinomial log-pmfs on random inputs."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from scipy import stats

from skymorph.errors import InputError
from skymorph.schema import get_schema
from skymorph.trainer.losses import (
    dirichlet_multinomial_nll,
    multinomial_nll,
    question_log_softmax,
    vote_nll,
)

SCHEMA = get_schema("decals")


def _random_counts(rng, batch: int) -> np.ndarray:
    counts = np.zeros((batch, SCHEMA.n_answers), dtype=np.int64)
    for s in SCHEMA.question_slices:
        n = rng.integers(0, 30, size=batch)
        n[rng.random(batch) < 0.3] = 0  # questions nobody was asked
        for i in range(batch):
            counts[i, s] = rng.multinomial(n[i], np.full(s.stop - s.start, 1 / (s.stop - s.start)))
    return counts


def test_multinomial_matches_scipy():
    rng = np.random.default_rng(1)
    logits = torch.tensor(rng.normal(size=(16, SCHEMA.n_answers)), dtype=torch.float64)
    counts = _random_counts(rng, 16)
    got = multinomial_nll(question_log_softmax(logits, SCHEMA), torch.tensor(counts), SCHEMA).numpy()
    for i in range(16):
        for q, s in enumerate(SCHEMA.question_slices):
            n = counts[i, s].sum()
            p = torch.softmax(logits[i, s], dim=0).numpy()
            expected = 0.0 if n == 0 else -stats.multinomial.logpmf(counts[i, s], n, p)
            assert got[i, q] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_binomial_case_matches_scipy_binom():
    logits = torch.tensor([[0.3, -1.2]], dtype=torch.float64)
    schema = get_schema("gz2")
    two = schema.question_slices[schema.question_index("has_spiral_arms")]
    full = torch.zeros(1, schema.n_answers, dtype=torch.float64)
    full[0, two] = logits[0]
    counts = torch.zeros(1, schema.n_answers, dtype=torch.int64)
    counts[0, two] = torch.tensor([7, 3])
    got = multinomial_nll(question_log_softmax(full, schema), counts, schema)[0, schema.question_index("has_spiral_arms")]
    p_yes = torch.softmax(logits[0], 0)[0].item()
    assert got.item() == pytest.approx(-stats.binom.logpmf(7, 10, p_yes), rel=1e-12)


def test_dirichlet_multinomial_matches_scipy():
    rng = np.random.default_rng(2)
    alpha = torch.tensor(rng.uniform(0.2, 50, size=(16, SCHEMA.n_answers)), dtype=torch.float64)
    counts = _random_counts(rng, 16)
    got = dirichlet_multinomial_nll(alpha, torch.tensor(counts), SCHEMA).numpy()
    for i in range(16):
        for q, s in enumerate(SCHEMA.question_slices):
            n = counts[i, s].sum()
            expected = 0.0 if n == 0 else -stats.dirichlet_multinomial.logpmf(counts[i, s], alpha[i, s].numpy(), n)
            assert got[i, q] == pytest.approx(expected, rel=1e-9, abs=1e-9)


def test_unasked_question_contributes_exactly_zero_and_no_gradient():
    logits = torch.randn(3, SCHEMA.n_answers, dtype=torch.float64, requires_grad=True)
    counts = torch.zeros(3, SCHEMA.n_answers, dtype=torch.int64)
    for nll in (
        multinomial_nll(question_log_softmax(logits, SCHEMA), counts, SCHEMA),
        dirichlet_multinomial_nll(torch.nn.functional.softplus(logits) + 1, counts, SCHEMA),
    ):
        assert torch.equal(nll, torch.zeros_like(nll))
        (grad,) = torch.autograd.grad(nll.sum(), logits)
        assert torch.equal(grad, torch.zeros_like(grad))


def test_vote_nll_is_mean_over_galaxies_of_summed_questions():
    rng = np.random.default_rng(3)
    logits = torch.tensor(rng.normal(size=(5, SCHEMA.n_answers)))
    counts = torch.tensor(_random_counts(rng, 5))

    def concentrations(x):
        return torch.nn.functional.softplus(x) + 1

    per_q = multinomial_nll(question_log_softmax(logits, SCHEMA), counts, SCHEMA)
    assert vote_nll("multinomial", logits, counts, SCHEMA, concentrations).item() == pytest.approx(
        per_q.sum(1).mean().item()
    )
    per_q = dirichlet_multinomial_nll(concentrations(logits), counts, SCHEMA)
    assert vote_nll("dirichlet_multinomial", logits, counts, SCHEMA, concentrations).item() == pytest.approx(
        per_q.sum(1).mean().item()
    )
    with pytest.raises(InputError, match=r"^likelihood must be one of multinomial, dirichlet_multinomial, got 'gaussian'\.$"):
        vote_nll("gaussian", logits, counts, SCHEMA, concentrations)
