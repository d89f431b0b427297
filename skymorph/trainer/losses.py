r"""Negative log-likelihoods of Galaxy Zoo vote counts, summed over the questions of a decision tree.

For one galaxy and one question q with answers a = 1..K_q, volunteers gave counts k_a, N = sum_a k_a.

**Multinomial** (Walmsley et al. 2020, MNRAS 491, 1554; binomial for K_q = 2), with the model's
answer probabilities p_a (softmax within q):

.. math::

    -\ln \mathrm{Mult}(k \mid N, p) = -\ln\Gamma(N+1) + \sum_a \ln\Gamma(k_a+1) - \sum_a k_a \ln p_a

**Dirichlet-multinomial** (Zoobot, Walmsley et al. 2022), with concentrations alpha_a > 0 and
alpha_0 = sum_a alpha_a:

.. math::

    -\ln \mathrm{DirMult}(k \mid N, \alpha) = -\ln\Gamma(\alpha_0) - \ln\Gamma(N+1) + \ln\Gamma(N+\alpha_0)
        - \sum_a \left[\ln\Gamma(k_a+\alpha_a) - \ln\Gamma(\alpha_a) - \ln\Gamma(k_a+1)\right]

A question nobody answered (N = 0, e.g. a question the decision tree never asked of that galaxy)
contributes exactly 0, normalising terms included. The loss of a galaxy is the sum over questions;
a batch loss is the mean over galaxies. Everything is computed in log space (``lgamma``,
``log_softmax``), so no probability underflows to ``log 0``.
"""

from __future__ import annotations

import torch

from skymorph.model_metadata import check_likelihood
from skymorph.schema import Schema

__all__ = [
    "question_log_softmax",
    "multinomial_nll",
    "dirichlet_multinomial_nll",
    "vote_nll",
]


def question_log_softmax(logits: torch.Tensor, schema: Schema) -> torch.Tensor:
    """``ln p``: log-softmax of ``logits`` (..., A) within each question of ``schema``."""
    return torch.cat([torch.log_softmax(logits[..., s], dim=-1) for s in schema.question_slices], dim=-1)


def _per_question(values: torch.Tensor, schema: Schema) -> torch.Tensor:
    """Sum (..., A) over the answers of each question -> (..., Q)."""
    return torch.stack([values[..., s].sum(dim=-1) for s in schema.question_slices], dim=-1)


def multinomial_nll(log_probs: torch.Tensor, counts: torch.Tensor, schema: Schema) -> torch.Tensor:
    """Per galaxy and question, ``-ln Mult(k | N, p)``: (B, A) log-probabilities, (B, A) counts -> (B, Q)."""
    counts = counts.to(log_probs.dtype)
    n = _per_question(counts, schema)
    nll = -torch.lgamma(n + 1) + _per_question(torch.lgamma(counts + 1) - counts * log_probs, schema)
    return torch.where(n > 0, nll, torch.zeros_like(nll))


def dirichlet_multinomial_nll(concentrations: torch.Tensor, counts: torch.Tensor, schema: Schema) -> torch.Tensor:
    """Per galaxy and question, ``-ln DirMult(k | N, alpha)``: (B, A) alpha > 0, (B, A) counts -> (B, Q)."""
    counts = counts.to(concentrations.dtype)
    n = _per_question(counts, schema)
    alpha0 = _per_question(concentrations, schema)
    per_answer = torch.lgamma(counts + concentrations) - torch.lgamma(concentrations) - torch.lgamma(counts + 1)
    nll = -torch.lgamma(alpha0) - torch.lgamma(n + 1) + torch.lgamma(n + alpha0) - _per_question(per_answer, schema)
    return torch.where(n > 0, nll, torch.zeros_like(nll))


def vote_nll(likelihood: str, logits: torch.Tensor, counts: torch.Tensor, schema: Schema, output) -> torch.Tensor:
    """Mean over galaxies of the summed per-question NLL of ``counts`` (B, A) given head ``logits`` (B, A).

    ``output`` is the model's logits -> concentrations map (``MorphologyNet.output``), used for the
    Dirichlet-multinomial; the multinomial takes ``ln p`` straight from the logits (the same softmax
    within each question, without the round trip through probabilities).
    """
    if check_likelihood(likelihood) == "multinomial":
        nll = multinomial_nll(question_log_softmax(logits, schema), counts, schema)
    else:
        nll = dirichlet_multinomial_nll(output(logits), counts, schema)
    return nll.sum(dim=-1).mean()
