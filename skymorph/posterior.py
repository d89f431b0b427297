r"""The posterior math: T Monte Carlo samples per galaxy -> vote fractions, their spread, and BALD.

For every answer :math:`a` of question :math:`q` an engine gives :math:`T` samples: probabilities
:math:`p_{t,a}` (``multinomial``, softmaxed within :math:`q`) or Dirichlet concentrations
:math:`\alpha_{t,a} > 0` (``dirichlet_multinomial``). Asked of :math:`N` volunteers, the count
:math:`k \in \{0, \dots, N\}` who pick :math:`a` has, under sample :math:`t`, the distribution

.. math::

    P_t(k) = \binom{N}{k} p_{t,a}^k (1 - p_{t,a})^{N-k}
    \quad\text{or}\quad
    P_t(k) = \binom{N}{k} \frac{B(k + \alpha_{t,a},\, N - k + \beta_{t,a})}{B(\alpha_{t,a}, \beta_{t,a})},
    \qquad \beta_{t,a} = \alpha_{t,q} - \alpha_{t,a},

and the predictive distribution is :math:`\bar P(k) = \frac{1}{T} \sum_t P_t(k)`. :func:`summarize`
turns a batch of samples into DESIGN's catalog columns; the building blocks are public and pure.

Array convention of the building blocks on count pmfs: the count axis :math:`k` comes first, with
length :math:`N + 1`, then the sample axis :math:`t`, then anything else (galaxies, answers). Keeping
each :math:`k` one contiguous slab is what makes the pmf arithmetic fast in numpy. Samples themselves
are given as an engine returns them, samples before answers: :func:`expected_fraction` takes
(..., T, A) and averages over the second-last axis; :func:`summarize` takes (B, T, A).

References: M. Walmsley et al. 2020, MNRAS 491, 1554 (Bayesian CNN, binomial vote likelihood, BALD
for Galaxy Zoo); M. Walmsley et al. 2022, MNRAS 509, 3966 (Dirichlet-multinomial, Zoobot);
N. Houlsby et al. 2011, arXiv:1112.5745 and A. Kirsch et al. 2019, NeurIPS (BALD).
"""

from __future__ import annotations

import operator

import numpy as np
from scipy.special import gammaln

from skymorph.errors import InputError
from skymorph.model_metadata import LIKELIHOODS, check_likelihood
from skymorph.schema import Schema, get_schema

__all__ = [
    "LIKELIHOODS",
    "column_names",
    "summarize",
    "binomial_log_pmf",
    "beta_binomial_log_pmf",
    "count_log_pmf",
    "expected_fraction",
    "predictive",
    "count_entropy",
    "bald",
    "fraction_std",
    "fraction_quantiles",
    "asked",
    "check_n_volunteers",
    "MAX_VOLUNTEERS",
]

# summarize() works on blocks of galaxies whose (N+1, T, galaxies, A) pmf fills about this many bytes:
# about one core's L2 cache, which bounds memory and keeps the repeated passes over the block near the
# core, while numpy's per-call overhead stays negligible (1 to 16 MiB measured within 15% of each other
# with DECaLS, T = 30, N = 40; 2 MiB was the fastest).
_BLOCK_BYTES = 2 * 2**20

# The largest N. Every count distribution has N + 1 entries per sample and answer: summarize() holds two
# (N + 1, T, galaxies, A) float64 buffers of at least one galaxy, 2 (N + 1) T A 8 bytes, besides its
# (N + 1)-long temporaries. At N = 1000, T = 1000 (the most MC samples a model may draw) and A = 34
# (DECaLS) that is 0.54 GB per worker thread, and 16 MB at the usual T = 30; ten times that N would be
# 5.4 GB. Galaxy Zoo asks about 40 volunteers per galaxy (a few hundred at most), and N = 1000 already
# resolves a vote fraction to 0.001.
MAX_VOLUNTEERS = 1000

# 0 ln 0 = 0: clamping P at the smallest normal float before the log keeps 0 * ln(0) out of the sum
# and changes only terms with P < 2.2e-308, each worth less than 2e-305 nats.
_TINY = np.finfo(np.float64).tiny

# Multinomial samples are softmaxed within each question, so their sums there are 1 up to rounding: about
# 1e-6 in float32, and below 1e-3 from an fp16 TensorRT plan (its softmax runs in half precision; 7.6e-4
# at most in a numpy fp16 softmax of 2 million random questions). Sigmoid outputs or answer columns out of
# order miss by far more: independent sigmoids sum to about half the number of answers.
_SUM_TOLERANCE = 1e-2

# A probability this far above 1 is rounding and is clipped; farther is an error. A float16 softmax with a
# fast reciprocal (TensorRT may use one) can return one ulp above 1: 1 + 9.8e-4. It never returns a
# negative value, so one below 0 is a model's fault, and refused.
_ABOVE_ONE_TOLERANCE = 2e-3


# -- per-sample count distributions ------------------------------------------------------------------


def binomial_log_pmf(p, n_volunteers: int) -> np.ndarray:
    r"""Log probability that :math:`k` of :math:`N` volunteers pick an answer of probability :math:`p`.

    .. math::

        \ln P(k) = \ln\binom{N}{k} + k \ln p + (N - k) \ln(1 - p), \qquad k = 0, \dots, N

    Domain: :math:`0 \le p \le 1` (up to :data:`_ABOVE_ONE_TOLERANCE` = 2e-3 above 1 is float16 rounding, and clipped),
    integer :math:`N \ge 1`. At :math:`p = 0` or :math:`p = 1` a term
    with a zero coefficient is dropped (:math:`0 \ln 0 = 0`), so :math:`\ln P` is exactly 0 at the
    certain count and :math:`-\infty` elsewhere; never NaN.

    Parameters
    ----------
    p : array_like, any shape S
        Probabilities.
    n_volunteers : int
        :math:`N`.

    Returns
    -------
    ndarray, float64, shape (N + 1, \*S)

    References
    ----------
    Walmsley et al. 2020, MNRAS 491, 1554 (the binomial vote likelihood).
    """
    n = check_n_volunteers(n_volunteers)
    p = _check_probabilities(p, "p").astype(np.float64)
    return _binomial_log_pmf(p.reshape(-1), n).reshape((n + 1,) + p.shape)


def beta_binomial_log_pmf(a, b, n_volunteers: int) -> np.ndarray:
    r"""Log probability that :math:`k` of :math:`N` volunteers pick an answer, under a Beta(a, b) rate.

    .. math::

        \ln P(k) = \ln\binom{N}{k} + \ln\frac{\Gamma(k + a)}{\Gamma(a)}
            + \ln\frac{\Gamma(N - k + b)}{\Gamma(b)} - \ln\frac{\Gamma(N + a + b)}{\Gamma(a + b)},
        \qquad \ln\frac{\Gamma(x + m)}{\Gamma(x)} = \sum_{j=0}^{m-1} \ln(x + j)

    The gamma ratios are evaluated as the sums of logs on the right (rising factorials): exact to
    rounding for tiny and large concentrations alike, and no gamma function per :math:`k`.

    Domain: :math:`a > 0`, :math:`b > 0` (finite), integer :math:`N \ge 1`. For the marginal of a
    Dirichlet-multinomial, :math:`a = \alpha_a` and :math:`b = \alpha_q - \alpha_a`.

    Parameters
    ----------
    a, b : array_like, broadcastable to one shape S
        Beta parameters (concentrations).
    n_volunteers : int
        :math:`N`.

    Returns
    -------
    ndarray, float64, shape (N + 1, \*S)

    References
    ----------
    Walmsley et al. 2022, MNRAS 509, 3966 (the Dirichlet-multinomial vote likelihood).
    """
    n = check_n_volunteers(n_volunteers)
    a, b = np.broadcast_arrays(_check_concentrations(a, "a"), _check_concentrations(b, "b"))
    flat = [np.ravel(x).astype(np.float64) for x in (a, b)]
    return _beta_binomial_log_pmf(*flat, n).reshape((n + 1,) + a.shape)


def count_log_pmf(samples, schema: Schema | str, likelihood: str = "multinomial", n_volunteers: int = 40) -> np.ndarray:
    r"""Per answer and per sample, the log pmf of the number of :math:`N` volunteers choosing it.

    ``multinomial``: :func:`binomial_log_pmf` with :math:`p = p_{t,a}`. ``dirichlet_multinomial``:
    :func:`beta_binomial_log_pmf` with :math:`a = \alpha_{t,a}` and
    :math:`b = \alpha_{t,q} - \alpha_{t,a} = \sum_{a' \in q,\, a' \neq a} \alpha_{t,a'}` (summed
    directly, so no cancellation when one answer dominates).

    Parameters
    ----------
    samples : array_like, shape (..., A)
        Probabilities in [0, 1] summing to 1 within each question (within 0.01) or concentrations > 0,
        A = ``schema.n_answers``. Give them as
        (T, ..., A) to get the (N + 1, T, ..., A) layout that :func:`predictive` and :func:`bald` take.
    schema : Schema or str
    likelihood : {"multinomial", "dirichlet_multinomial"}
    n_volunteers : int

    Returns
    -------
    ndarray, float64, shape (N + 1, ..., A)
    """
    schema = get_schema(schema)
    likelihood = check_likelihood(likelihood)
    n = check_n_volunteers(n_volunteers)
    values = _check_samples(samples, schema, likelihood, min_ndim=1).astype(np.float64, copy=False)
    return _count_log_pmf(values, schema, likelihood, n)


def expected_fraction(samples, schema: Schema | str, likelihood: str = "multinomial") -> np.ndarray:
    r"""The predicted vote fraction of every answer: the mean over samples of its expected share.

    .. math::

        f_a = \frac{1}{T} \sum_t p_{t,a}
        \quad\text{or}\quad
        f_a = \frac{1}{T} \sum_t \frac{\alpha_{t,a}}{\alpha_{t,q}}

    which is also :math:`\mathbb{E}[k / N]` under the predictive :math:`\bar P`.

    Parameters
    ----------
    samples : array_like, shape (..., T, A)
    schema : Schema or str
    likelihood : {"multinomial", "dirichlet_multinomial"}

    Returns
    -------
    ndarray, float64, shape (..., A)
    """
    schema = get_schema(schema)
    likelihood = check_likelihood(likelihood)
    values = _check_samples(samples, schema, likelihood, min_ndim=2).astype(np.float64, copy=False)
    return _expected_fraction(values, schema, likelihood)


# -- predictive, entropy, BALD ----------------------------------------------------------------------


def predictive(log_pmf) -> np.ndarray:
    r"""The predictive count distribution: the mean over samples of the per-sample pmfs.

    .. math::

        \bar P(k) = \frac{1}{T} \sum_{t=1}^{T} P_t(k)

    Parameters
    ----------
    log_pmf : array_like, shape (N + 1, T, ...)
        :math:`\ln P_t(k)`, count axis first, sample axis second.

    Returns
    -------
    ndarray, float64, shape (N + 1, ...)
    """
    log_pmf = _check_pmf_array(log_pmf, "log_pmf", min_ndim=2)
    return np.exp(log_pmf).mean(axis=1)


def count_entropy(pmf) -> np.ndarray:
    r"""Shannon entropy, in nats, of count distributions along the first axis.

    .. math::

        H[P] = -\sum_{k=0}^{N} P(k) \ln P(k), \qquad 0 \ln 0 = 0

    Parameters
    ----------
    pmf : array_like, shape (N + 1, ...)
        Probabilities, count axis first.

    Returns
    -------
    ndarray, float64, shape (...)
    """
    return _entropy(_check_pmf_array(pmf, "pmf", min_ndim=1))


def bald(log_pmf) -> np.ndarray:
    r"""BALD: the mutual information between the volunteers' count and the model's sample.

    .. math::

        \mathrm{BALD} = H[\bar P] - \frac{1}{T} \sum_{t=1}^{T} H[P_t] \;\ge 0

    For a two-answer question this is exactly the mutual information of Walmsley et al. 2020 (with
    the binomial :math:`P_t`). Both entropies go through the same arithmetic, so with a
    single sample (:math:`T = 1`) the result is exactly 0, and so is that of :math:`T` identical
    samples (a model trained without dropout): a difference within rounding of 0, at most
    :math:`(64 + 4T)\,\epsilon \max(H[\bar P], 1)` with :math:`\epsilon = 2.2 \times 10^{-16}`
    (4e-14 nats at :math:`T = 30`), is returned as 0, as is a negative one (mutual information
    cannot be negative).

    Parameters
    ----------
    log_pmf : array_like, shape (N + 1, T, ...)
        :math:`\ln P_t(k)`, count axis first, sample axis second.

    Returns
    -------
    ndarray, float64, shape (...)

    References
    ----------
    Houlsby et al. 2011, arXiv:1112.5745; Walmsley et al. 2020, MNRAS 491, 1554;
    Kirsch et al. 2019, NeurIPS (BatchBALD).
    """
    pmf = np.exp(_check_pmf_array(log_pmf, "log_pmf", min_ndim=2))
    return _bald(pmf, pmf.mean(axis=1))


# -- summaries of the predictive ------------------------------------------------------------------


def fraction_std(pbar) -> np.ndarray:
    r"""Standard deviation of the vote fraction :math:`x = k / N` under the predictive :math:`\bar P`.

    .. math::

        \mu = \sum_{k=0}^{N} \bar P(k) \frac{k}{N}, \qquad
        \sigma = \Big(\sum_{k=0}^{N} \bar P(k) \big(\tfrac{k}{N} - \mu\big)^2\Big)^{1/2}

    (two passes, so a tiny :math:`\sigma` keeps its relative precision).

    Parameters
    ----------
    pbar : array_like, shape (N + 1, ...)

    Returns
    -------
    ndarray, float64, shape (...)
    """
    return _fraction_std(_check_pmf_array(pbar, "pbar", min_ndim=1))


def fraction_quantiles(pbar, levels=(0.05, 0.95)) -> np.ndarray:
    r"""Quantiles of the vote fraction :math:`k / N` under the predictive :math:`\bar P`.

    The quantile at level :math:`\ell` is the smallest :math:`k / N` whose cumulative probability
    reaches :math:`\ell`:

    .. math::

        Q(\ell) = \frac{1}{N} \min\{k : F(k) \ge \ell\}, \qquad F(k) = \sum_{j=0}^{k} \bar P(j),

    with :math:`F(N) = 1` by definition (a total that rounds to just below 1 cannot push the quantile
    past :math:`N / N`). Domain: :math:`0 < \ell \le 1`.

    Parameters
    ----------
    pbar : array_like, shape (N + 1, ...)
    levels : sequence of float

    Returns
    -------
    ndarray, float64, shape (len(levels), ...)
    """
    pbar = _check_pmf_array(pbar, "pbar", min_ndim=1)
    levels = np.asarray(levels, dtype=np.float64).reshape(-1)
    if not np.all((levels > 0) & (levels <= 1)):
        raise InputError(f"quantile levels must lie in (0, 1], got {levels.tolist()}")
    return _fraction_quantiles(pbar, levels)


def asked(fractions, schema: Schema | str) -> np.ndarray:
    r"""The share of volunteers who would be asked each question: the product of the predicted
    fractions of the answers that lead to it.

    .. math::

        \mathrm{asked}_q = \prod_{a \in \mathrm{ancestry}(q)} f_a \qquad (= 1 \text{ at a root})

    Parameters
    ----------
    fractions : array_like, shape (..., A)
        Predicted fractions (:func:`expected_fraction`).
    schema : Schema or str

    Returns
    -------
    ndarray, float64, shape (..., Q)
    """
    schema = get_schema(schema)
    fractions = np.asarray(fractions, dtype=np.float64)
    if fractions.ndim < 1 or fractions.shape[-1] != schema.n_answers:
        raise InputError(
            f"fractions have shape {fractions.shape}; expected (..., {schema.n_answers}) for schema {schema.name!r}"
        )
    return _asked(fractions, schema)


# -- the catalog columns ----------------------------------------------------------------------------


def column_names(schema: Schema | str) -> list[str]:
    """The names of :func:`summarize`'s columns, in its order (whatever the likelihood or N)."""
    schema = get_schema(schema)
    names = [f"{c}_fraction{s}" for c in schema.answer_columns for s in ("", "_std", "_q05", "_q95")]
    names += [f"{q}_{kind}" for q in schema.question_names for kind in ("asked", "bald")]
    return names + ["bald_total"]


def summarize(samples, schema: Schema | str, likelihood: str = "multinomial", n_volunteers: int = 40) -> dict[str, np.ndarray]:
    r"""DESIGN's catalog columns for a batch of galaxies.

    Columns, in order: for each answer (schema order) ``{q}_{a}_fraction`` (:func:`expected_fraction`),
    ``{q}_{a}_fraction_std`` (:func:`fraction_std`), ``{q}_{a}_fraction_q05`` and
    ``{q}_{a}_fraction_q95`` (:func:`fraction_quantiles` at 0.05 and 0.95); then for each question
    ``{q}_asked`` (:func:`asked`) and ``{q}_bald`` (the largest :func:`bald` of its answers); then

    .. math::

        \mathrm{bald\_total} = \sum_q \mathrm{asked}_q \, \mathrm{bald}_q .

    Galaxies are processed in blocks, so memory does not grow with B; everything is float64 inside.

    Parameters
    ----------
    samples : array_like, shape (B, T, A)
        Probabilities softmaxed within each question (``multinomial``: each question's sum must be 1
        within 0.01) or Dirichlet concentrations > 0 (``dirichlet_multinomial``); A = ``schema.n_answers``.
    schema : Schema or str
    likelihood : {"multinomial", "dirichlet_multinomial"}
    n_volunteers : int
        :math:`N`, the number of volunteers the counts refer to (Galaxy Zoo asks about 40).

    Returns
    -------
    dict of str to ndarray
        float32 arrays of length B.
    """
    schema = get_schema(schema)
    likelihood = check_likelihood(likelihood)
    n = check_n_volunteers(n_volunteers)
    values = _check_samples(samples, schema, likelihood, min_ndim=3, max_ndim=3)
    n_galaxies, n_samples, n_answers = values.shape

    fraction = np.empty((n_galaxies, n_answers))
    spread = np.empty((3, n_galaxies, n_answers))  # std, q05, q95
    bald_answer = np.empty((n_galaxies, n_answers))
    block = max(1, _BLOCK_BYTES // ((n + 1) * n_samples * n_answers * 8))
    # Two pmf-sized buffers reused by every block: fresh multi-megabyte arrays would cost a page fault
    # per 4 KiB on first touch, which measured slower than all the arithmetic.
    buffers = np.empty((2, (n + 1) * n_samples * min(block, n_galaxies) * n_answers))
    for start in range(0, n_galaxies, block):
        stop = min(start + block, n_galaxies)
        # (T, galaxies, A): the sample axis before the galaxies, so the mean over t adds whole slabs.
        chunk = np.ascontiguousarray(values[start:stop].transpose(1, 0, 2), dtype=np.float64)
        pmf, scratch = (buffer[: (n + 1) * chunk.size].reshape((n + 1,) + chunk.shape) for buffer in buffers)
        _count_log_pmf(chunk, schema, likelihood, n, out=pmf, scratch=scratch)
        np.exp(pmf, out=pmf)
        pbar = pmf.mean(axis=1)
        fraction[start:stop] = _expected_fraction(chunk.transpose(1, 0, 2), schema, likelihood)
        bald_answer[start:stop] = _bald(pmf, pbar, scratch=scratch)
        spread[0, start:stop] = _fraction_std(pbar)
        spread[1:, start:stop] = _fraction_quantiles(pbar, np.array([0.05, 0.95]))

    asked_q = _asked(fraction, schema)
    bald_q = np.stack([bald_answer[:, s].max(axis=1) for s in schema.question_slices], axis=1)

    values = [column for i in range(n_answers) for column in (fraction[:, i], *spread[:, :, i])]  # in column_names' order
    values += [column for j in range(len(schema.questions)) for column in (asked_q[:, j], bald_q[:, j])]
    values.append((asked_q * bald_q).sum(axis=1))
    return {name: column.astype(np.float32) for name, column in zip(column_names(schema), values, strict=True)}


# -- implementation (inputs already checked) ---------------------------------------------------------


def _log_binomial_coefficients(n: int) -> np.ndarray:
    k = np.arange(n + 1)
    return gammaln(n + 1) - gammaln(k + 1) - gammaln(n - k + 1)


def _binomial_log_pmf(p: np.ndarray, n: int, out: np.ndarray | None = None, scratch: np.ndarray | None = None) -> np.ndarray:
    """Into ``out`` (N+1, *p.shape); ``scratch``, of the same shape, is overwritten."""
    out = np.empty((n + 1,) + p.shape) if out is None else out
    with np.errstate(divide="ignore"):  # ln 0 = -inf is the right answer at p = 0 or 1
        log_p = np.log(p)
        log_q = np.log1p(-p)
    # k = 0 and k = N have one term only: writing them apart keeps 0 * (-inf) out.
    np.multiply(log_q, n, out=out[0])
    np.multiply(log_p, n, out=out[n])
    if n > 1:
        k = np.arange(1, n, dtype=np.float64).reshape((-1,) + (1,) * p.ndim)
        middle = out[1:n]
        other = np.empty_like(middle) if scratch is None else scratch[1:n]
        np.multiply(k, log_p, out=middle)
        np.multiply(n - k, log_q, out=other)
        middle += other
        middle += _log_binomial_coefficients(n)[1:n].reshape(k.shape)
    return out


def _beta_binomial_log_pmf(
    a: np.ndarray, b: np.ndarray, n: int, out: np.ndarray | None = None, scratch: np.ndarray | None = None
) -> np.ndarray:
    """Into ``out`` (N+1, *a.shape); ``scratch``, of the same shape, is overwritten."""
    out = np.empty((n + 1,) + a.shape) if out is None else out
    logs = np.empty((n,) + a.shape) if scratch is None else scratch[:n]  # reused for the three rising factorials
    j = np.arange(n, dtype=np.float64).reshape((-1,) + (1,) * a.ndim)
    np.add(a + b, j, out=logs)
    np.log(logs, out=logs)
    np.sum(logs, axis=0, out=out[0])
    np.negative(out[0], out=out[0])  # -ln[Gamma(N + a + b) / Gamma(a + b)], carried to every k below
    # Running sums one (...)-shaped slab at a time: numpy's cumsum along a leading axis is several times
    # slower than these vectorised adds.
    np.add(a, j, out=logs)
    np.log(logs, out=logs)
    for k in range(1, n + 1):  # out[k] += ln[Gamma(k + a) / Gamma(a)]
        np.add(out[k - 1], logs[k - 1], out=out[k])
    np.add(b, j, out=logs)
    np.log(logs, out=logs)
    rising_b = np.zeros(a.shape)
    for m in range(1, n + 1):  # out[N - m] += ln[Gamma(m + b) / Gamma(b)]
        rising_b += logs[m - 1]
        out[n - m] += rising_b
    out += _log_binomial_coefficients(n).reshape((-1,) + (1,) * a.ndim)
    return out


def _question_matrices(schema: Schema) -> tuple[np.ndarray, np.ndarray]:
    """(A, A) 0/1 matrices: ``same[i, j]`` when answers i and j share a question; ``others`` = same
    minus the diagonal. ``alpha @ same`` is alpha_q per answer; ``alpha @ others`` is alpha_q - alpha_a
    summed without cancellation."""
    question = schema.answer_question
    same = (question[:, None] == question[None, :]).astype(np.float64)
    return same, same - np.eye(schema.n_answers)


def _count_log_pmf(
    values: np.ndarray, schema: Schema, likelihood: str, n: int, out: np.ndarray | None = None,
    scratch: np.ndarray | None = None,
) -> np.ndarray:
    if likelihood == "multinomial":
        return _binomial_log_pmf(values, n, out, scratch)
    _, others = _question_matrices(schema)
    return _beta_binomial_log_pmf(values, values @ others, n, out, scratch)


def _expected_fraction(values: np.ndarray, schema: Schema, likelihood: str) -> np.ndarray:
    if likelihood == "multinomial":
        return values.mean(axis=-2)
    same, _ = _question_matrices(schema)
    return (values / (values @ same)).mean(axis=-2)


def _entropy(pmf: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """H along axis 0; ``scratch``, shaped like ``pmf``, is overwritten."""
    terms = np.maximum(pmf, _TINY, out=scratch)
    np.log(terms, out=terms)
    terms *= pmf
    return -terms.sum(axis=0)


def _bald(pmf: np.ndarray, pbar: np.ndarray, scratch: np.ndarray | None = None) -> np.ndarray:
    """``pmf`` (N+1, T, ...), ``pbar`` its mean over T; ``scratch``, shaped like ``pmf``, is overwritten."""
    h_bar = _entropy(pbar)
    mutual = h_bar - _entropy(pmf, scratch).mean(axis=0)
    # T identical samples (a model trained with dropout 0) must score exactly 0, or pick ranks galaxies by
    # rounding noise and never warns that every galaxy scores 0. The mean over T rounds pbar by up to ~T eps
    # relative (measured: |H[pbar] - mean H[P_t]| <= 0.17 T eps max(H, 1) for T, N up to 1000), so
    # differences within (64 + 4 T) eps max(H[pbar], 1) of 0, negatives included, are 0; NaN stays NaN.
    # All of these are (...)-shaped, 1 / ((N + 1) T) of the pmf.
    bound = np.maximum(h_bar, 1.0)
    bound *= (64 + 4 * pmf.shape[1]) * np.finfo(np.float64).eps
    return np.where(mutual <= bound, 0.0, mutual)


def _fraction_std(pbar: np.ndarray) -> np.ndarray:
    n = pbar.shape[0] - 1
    x = (np.arange(n + 1) / n).reshape((-1,) + (1,) * (pbar.ndim - 1))
    mean = (pbar * x).sum(axis=0)
    return np.sqrt((pbar * (x - mean) ** 2).sum(axis=0))


def _fraction_quantiles(pbar: np.ndarray, levels: np.ndarray) -> np.ndarray:
    n = pbar.shape[0] - 1
    cdf = np.cumsum(pbar, axis=0)
    # F is non-decreasing, so the number of k with F(k) < level is the first k with F(k) >= level.
    below = (cdf[None, :n] < levels.reshape((-1,) + (1,) * pbar.ndim)).sum(axis=1)
    return below / n


def _asked(fractions: np.ndarray, schema: Schema) -> np.ndarray:
    return np.stack([fractions[..., list(path)].prod(axis=-1) for path in schema.ancestry], axis=-1)


# -- input checks -----------------------------------------------------------------------------------


def check_n_volunteers(n_volunteers) -> int:
    """``n_volunteers`` (N) as an int in [1, :data:`MAX_VOLUNTEERS`], else a one-line :class:`InputError`;
    for callers that check their arguments before any work (every function here checks it too)."""
    if isinstance(n_volunteers, bool):
        raise InputError(f"n_volunteers must be an integer >= 1, got {n_volunteers!r}")
    try:
        n = operator.index(n_volunteers)
    except TypeError:
        raise InputError(f"n_volunteers must be an integer >= 1, got {n_volunteers!r}") from None
    if n < 1:
        raise InputError(f"n_volunteers must be an integer >= 1, got {n}")
    if n > MAX_VOLUNTEERS:
        raise InputError(
            f"n_volunteers (--n-volunteers) must be at most {MAX_VOLUNTEERS}, got {n}: the count distributions take "
            f"(N + 1) x T x answers floats per galaxy; Galaxy Zoo asks about 40 volunteers"
        )
    return n


def _as_float_array(values, name: str) -> np.ndarray:
    """``values`` as a float array; float32 stays float32 (callers convert block by block)."""
    array = np.asarray(values)
    if not (np.issubdtype(array.dtype, np.floating) or np.issubdtype(array.dtype, np.integer)):
        raise InputError(f"{name} must be a numeric array, got dtype {array.dtype}")
    if not np.issubdtype(array.dtype, np.floating):
        array = array.astype(np.float64)
    if not np.isfinite(array).all():
        raise InputError(f"{name} contain NaN or infinite values; check the model outputs")
    return array


def _check_probabilities(p, name: str) -> np.ndarray:
    """``p`` as probabilities: clipped to 1 within :data:`_ABOVE_ONE_TOLERANCE`, a one-line error beyond or below 0."""
    p = _as_float_array(p, name)
    if p.size and (p.min() < 0 or p.max() > 1):
        if p.min() < 0 or p.max() > 1 + _ABOVE_ONE_TOLERANCE:
            raise InputError(
                f"{name} must be probabilities in [0, 1], got values in [{p.min():.6g}, {p.max():.6g}]; "
                "concentrations need likelihood='dirichlet_multinomial'"
            )
        p = np.minimum(p, 1)
    return p


def _check_concentrations(alpha, name: str) -> np.ndarray:
    alpha = _as_float_array(alpha, name)
    if alpha.size and alpha.min() <= 0:
        raise InputError(f"{name} must be Dirichlet concentrations > 0, got a minimum of {alpha.min():.6g}")
    return alpha


def _check_samples(samples, schema: Schema, likelihood: str, min_ndim: int, max_ndim: int | None = None) -> np.ndarray:
    values = _as_float_array(samples, "samples")
    expected = "(galaxies, samples, answers)" if max_ndim == 3 else "(..., answers)"
    if values.ndim < min_ndim or (max_ndim is not None and values.ndim > max_ndim) or values.shape[-1] != schema.n_answers:
        raise InputError(
            f"samples have shape {values.shape}; expected {expected} with {schema.n_answers} answers "
            f"for schema {schema.name!r}"
        )
    if max_ndim == 3 and values.shape[1] < 1:
        raise InputError("samples have no Monte Carlo samples (T = 0); give at least one per galaxy")
    if likelihood == "multinomial":
        return _check_question_sums(_check_probabilities(values, "samples"), schema)
    return _check_concentrations(values, "samples")


def _check_question_sums(p: np.ndarray, schema: Schema) -> np.ndarray:
    """``p`` if, within every question, the probabilities of its answers sum to 1 within
    :data:`_SUM_TOLERANCE`, else a one-line :class:`InputError` naming the question and the worst sum."""
    # One (A, Q) 0/1 matmul in the samples' own dtype: about 2 ms for 4096 DECaLS galaxies x 30 samples,
    # well under 1% of summarize().
    membership = np.eye(len(schema.questions), dtype=p.dtype)[schema.answer_question]
    sums = p @ membership
    error = np.abs(sums - 1)
    if error.size and error.max() > _SUM_TOLERANCE:
        worst = np.unravel_index(np.argmax(error), error.shape)
        total = float(sums[worst])
        raise InputError(
            f"samples of question {schema.question_names[worst[-1]]!r} sum to {total:.6g} over its answers (at samples"
            f"{list(map(int, worst[:-1]))}), not 1 within {_SUM_TOLERANCE:g}: multinomial samples must be probabilities "
            f"softmaxed within each question, answers in the order of schema {schema.name!r}; sigmoid outputs or answer "
            "columns in another order give this, and concentrations need likelihood='dirichlet_multinomial'"
        )
    return p


def _check_pmf_array(values, name: str, min_ndim: int) -> np.ndarray:
    array = np.asarray(values, dtype=np.float64)
    if array.ndim < min_ndim or array.shape[0] < 2:
        raise InputError(
            f"{name} has shape {array.shape}; expected the count axis (N + 1 >= 2 values) first"
            + (" and the sample axis second" if min_ndim == 2 else "")
        )
    return array
