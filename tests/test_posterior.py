"""skymorph.posterior against an independent computation: scipy.stats pmfs and entropies, evaluated
directly per count, sample and answer, on random inputs and on the edge cases (T = 1, N = 1,
probabilities exactly 0 and 1, tiny concentrations)."""

import numpy as np
import pytest
from scipy import stats

from skymorph.errors import InputError
from skymorph.posterior import (
    asked,
    bald,
    beta_binomial_log_pmf,
    binomial_log_pmf,
    count_entropy,
    count_log_pmf,
    expected_fraction,
    fraction_quantiles,
    fraction_std,
    predictive,
    summarize,
)
from skymorph.schema import DECALS, Question, Schema

TIGHT = dict(rtol=1e-9, atol=1e-12)
FLOAT32 = dict(rtol=2e-6, atol=2e-6)


def _softmax_per_question(logits, schema):
    p = np.empty_like(logits)
    for s in schema.question_slices:
        e = np.exp(logits[..., s] - logits[..., s].max(axis=-1, keepdims=True))
        p[..., s] = e / e.sum(axis=-1, keepdims=True)
    return p


def _question_totals(alpha, schema):
    total = np.empty_like(alpha)
    for s in schema.question_slices:
        total[..., s] = alpha[..., s].sum(axis=-1, keepdims=True)
    return total


def _probabilities(rng, b, t, schema=DECALS, with_extremes=True):
    p = _softmax_per_question(rng.normal(scale=2.0, size=(b, t, schema.n_answers)), schema)
    if with_extremes:
        # Some samples certain of one answer: exactly 1 for it and 0 for the others.
        for s in schema.question_slices[:3]:
            p[0, 0, s] = 0.0
            p[0, 0, s.start] = 1.0
        p[-1, :, schema.question_slices[-1]] = 0.0
        p[-1, :, schema.question_slices[-1].stop - 1] = 1.0
    return p


def _concentrations(rng, b, t, schema=DECALS):
    alpha = np.exp(rng.uniform(np.log(1e-3), np.log(50.0), size=(b, t, schema.n_answers)))
    alpha[0, :, :5] = 1e-3  # tiny concentrations
    return alpha


def _reference(samples, schema, likelihood, n):
    """Every quantity straight from scipy.stats, (N + 1, B, T, A) pmfs evaluated per count."""
    k = np.arange(n + 1).reshape(-1, 1, 1, 1)
    if likelihood == "multinomial":
        pmf = stats.binom.pmf(k, n, samples[None])
        fraction = samples.mean(axis=1)
    else:
        total = _question_totals(samples, schema)
        pmf = stats.betabinom.pmf(k, n, samples[None], (total - samples)[None])
        fraction = (samples / total).mean(axis=1)
    pbar = pmf.mean(axis=2)
    x = (np.arange(n + 1) / n).reshape(-1, 1, 1)
    mean = (pbar * x).sum(axis=0)
    std = np.sqrt((pbar * (x - mean) ** 2).sum(axis=0))
    cdf = np.cumsum(pbar, axis=0)
    quantiles = np.empty((2,) + pbar.shape[1:])
    for i, level in enumerate((0.05, 0.95)):
        for index in np.ndindex(*pbar.shape[1:]):
            quantiles[(i,) + index] = next(j for j in range(n + 1) if cdf[(j,) + index] >= level or j == n) / n
    bald_answer = stats.entropy(pbar, axis=0) - stats.entropy(pmf, axis=0).mean(axis=1)
    asked_q = np.stack([np.prod(fraction[:, list(path)], axis=1) for path in schema.ancestry], axis=1)
    bald_q = np.stack([bald_answer[:, s].max(axis=1) for s in schema.question_slices], axis=1)
    return dict(pmf=pmf, pbar=pbar, fraction=fraction, std=std, quantiles=quantiles, bald=bald_answer,
                asked=asked_q, bald_q=bald_q, bald_total=(asked_q * bald_q).sum(axis=1))


CASES = [  # (likelihood, galaxies, samples T, volunteers N)
    ("multinomial", 4, 6, 40),
    ("multinomial", 3, 1, 40),
    ("multinomial", 3, 5, 1),
    ("dirichlet_multinomial", 4, 6, 40),
    ("dirichlet_multinomial", 3, 1, 7),
    ("dirichlet_multinomial", 3, 5, 1),
]


@pytest.mark.parametrize("likelihood,b,t,n", CASES)
def test_building_blocks_match_scipy(likelihood, b, t, n):
    rng = np.random.default_rng(b * 100 + t * 10 + n)
    draw = _probabilities if likelihood == "multinomial" else _concentrations
    samples = draw(rng, b, t)
    ref = _reference(samples, DECALS, likelihood, n)

    log_pmf = count_log_pmf(samples, DECALS, likelihood, n)  # (N+1, B, T, A)
    assert log_pmf.shape == (n + 1, b, t, DECALS.n_answers) and not np.isnan(log_pmf).any()
    np.testing.assert_allclose(np.exp(log_pmf), ref["pmf"], **TIGHT)

    by_sample = log_pmf.transpose(0, 2, 1, 3)  # the building blocks want the sample axis second
    pbar = predictive(by_sample)
    np.testing.assert_allclose(pbar, ref["pbar"], **TIGHT)
    np.testing.assert_allclose(bald(by_sample), ref["bald"], **TIGHT)
    np.testing.assert_allclose(expected_fraction(samples, DECALS, likelihood), ref["fraction"], **TIGHT)
    np.testing.assert_allclose(fraction_std(pbar), ref["std"], **TIGHT)
    np.testing.assert_array_equal(fraction_quantiles(pbar, (0.05, 0.95)), ref["quantiles"])
    np.testing.assert_allclose(asked(ref["fraction"], DECALS), ref["asked"], **TIGHT)
    if t == 1:
        assert (bald(by_sample) == 0).all()


@pytest.mark.parametrize("likelihood,b,t,n", CASES)
def test_summarize_matches_scipy(likelihood, b, t, n):
    rng = np.random.default_rng(7 + b * 100 + t * 10 + n)
    draw = _probabilities if likelihood == "multinomial" else _concentrations
    samples = draw(rng, b, t)
    ref = _reference(samples, DECALS, likelihood, n)
    out = summarize(samples.astype(np.float32), DECALS, likelihood, n_volunteers=n)
    # The engine's float32 samples are what summarize sees; compare against them exactly.
    ref32 = _reference(samples.astype(np.float32).astype(np.float64), DECALS, likelihood, n)

    expected_names = [f"{c}_{s}" for c in DECALS.answer_columns
                      for s in ("fraction", "fraction_std", "fraction_q05", "fraction_q95")]
    expected_names += [f"{q}_{s}" for q in DECALS.question_names for s in ("asked", "bald")] + ["bald_total"]
    assert list(out) == expected_names
    assert all(v.dtype == np.float32 and v.shape == (b,) for v in out.values())

    for i, column in enumerate(DECALS.answer_columns):
        np.testing.assert_allclose(out[f"{column}_fraction"], ref["fraction"][:, i], **FLOAT32)
        np.testing.assert_allclose(out[f"{column}_fraction_std"], ref["std"][:, i], **FLOAT32)
        np.testing.assert_array_equal(out[f"{column}_fraction_q05"], ref32["quantiles"][0, :, i].astype(np.float32))
        np.testing.assert_array_equal(out[f"{column}_fraction_q95"], ref32["quantiles"][1, :, i].astype(np.float32))
    for j, question in enumerate(DECALS.question_names):
        np.testing.assert_allclose(out[f"{question}_asked"], ref["asked"][:, j], **FLOAT32)
        np.testing.assert_allclose(out[f"{question}_bald"], ref["bald_q"][:, j], **FLOAT32)
    np.testing.assert_allclose(out["bald_total"], ref["bald_total"], **FLOAT32)
    if t == 1:
        assert all((out[f"{q}_bald"] == 0).all() for q in DECALS.question_names)
        assert (out["bald_total"] == 0).all()


def test_extremes_are_exact():
    log_pmf = binomial_log_pmf([0.0, 1.0], 5)
    np.testing.assert_array_equal(np.exp(log_pmf[:, 0]), [1, 0, 0, 0, 0, 0])
    np.testing.assert_array_equal(np.exp(log_pmf[:, 1]), [0, 0, 0, 0, 0, 1])
    certain = np.tile(log_pmf[:, :, None], (1, 1, 3)).transpose(0, 2, 1)  # T = 3 identical certain samples
    np.testing.assert_array_equal(bald(certain), [0.0, 0.0])
    np.testing.assert_array_equal(count_entropy(np.exp(log_pmf)), [0.0, 0.0])
    # N = 1 with tiny concentrations: P(1) = a / (a + b).
    np.testing.assert_allclose(np.exp(beta_binomial_log_pmf(1e-3, 3e-3, 1)), [0.75, 0.25], **TIGHT)


def test_beta_binomial_stays_exact_at_large_concentrations():
    """Rising factorials as sums of logs keep 1e-12 where lgamma differences (scipy's betaln) lose
    digits; the reference is evaluated with 40-digit arithmetic."""
    mp = pytest.importorskip("mpmath")
    mp.mp.dps = 40
    n = 40
    for a, b in ((3e5, 2e-3), (1e6, 7e5), (1e-3, 4e5)):
        exact = [mp.binomial(n, k) * mp.beta(k + mp.mpf(a), n - k + mp.mpf(b)) / mp.beta(mp.mpf(a), mp.mpf(b))
                 for k in range(n + 1)]
        np.testing.assert_allclose(np.exp(beta_binomial_log_pmf(a, b, n)), np.array(exact, dtype=float),
                                   rtol=1e-9, atol=1e-13)


def test_two_answer_bald_is_walmsleys_mutual_information():
    """Walmsley et al. 2020 eq. 5 as the mutual information I(k; t) = mean_t KL(P_t || Pbar), a
    different formula from H[Pbar] - mean_t H[P_t], from scipy pmfs."""
    rng = np.random.default_rng(3)
    samples = _probabilities(rng, 5, 12, with_extremes=False)
    n = 40
    out = summarize(samples, DECALS)
    for question in ("disk_edge_on", "has_spiral_arms"):
        yes, no = DECALS.answer_index(question, "yes"), DECALS.answer_index(question, "no")
        rho = samples[:, :, yes]  # (B, T)
        pmf = stats.binom.pmf(np.arange(n + 1)[:, None, None], n, rho[None])  # (K, B, T)
        pbar = pmf.mean(axis=2, keepdims=True)
        mutual_information = stats.entropy(pmf, pbar, axis=0).mean(axis=1)
        np.testing.assert_allclose(out[f"{question}_bald"], mutual_information, **FLOAT32)
        log_pmf = count_log_pmf(samples, DECALS, "multinomial", n).transpose(0, 2, 1, 3)
        per_answer = bald(log_pmf)
        np.testing.assert_allclose(per_answer[:, yes], mutual_information, rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(per_answer[:, yes], per_answer[:, no], rtol=1e-9, atol=1e-12)


def test_identical_samples_have_exactly_zero_bald():
    """A model trained with dropout 0 gives T identical samples. H[Pbar] - mean H[P_t] was then +-1e-15 of
    rounding (the mean over T rounds Pbar): positive for about half the galaxies, so pick never warned that
    every galaxy scores 0 and ranked them by float noise; negative ones are clipped too. Samples that differ
    keep the unclipped difference of entropies."""
    rng = np.random.default_rng(17)
    for likelihood, draw in (("multinomial", lambda *shape: _probabilities(rng, *shape, with_extremes=False)),
                             ("dirichlet_multinomial", lambda *shape: _concentrations(rng, *shape))):
        base = draw(40, 1)
        # (T, N, galaxies): the rounding grows with T, up to MAX_SAMPLES = 1000
        for t, n, b in ((3, 40, 40), (7, 1, 40), (30, 40, 40), (30, 1000, 2), (1000, 40, 2)):
            same = np.repeat(base[:b], t, axis=1)
            out = summarize(same, DECALS, likelihood, n_volunteers=n)
            for name in [c for c in out if c.endswith("_bald")] + ["bald_total"]:
                assert (out[name] == 0).all(), (likelihood, t, n, name, out[name].max())
            if t * n <= 1200:  # bald() too, where its unblocked (N+1, T, ...) arrays are small
                log_pmf = count_log_pmf(same[:2], DECALS, likelihood, n).transpose(0, 2, 1, 3)
                np.testing.assert_array_equal(bald(log_pmf), 0.0)
        # Samples that differ: still H[Pbar] - mean H[P_t] (through the public entropy, without any clip).
        samples = draw(6, 30)
        samples[1] = samples[1, :1]  # one galaxy's samples all alike among galaxies whose samples differ
        log_pmf = count_log_pmf(samples, DECALS, likelihood, 40).transpose(0, 2, 1, 3)
        pmf = np.exp(log_pmf)
        difference = count_entropy(pmf.mean(axis=1)) - count_entropy(pmf).mean(axis=0)
        got = bald(log_pmf)
        assert (got[2:] > 1e-6).all() and (got[1] == 0).all()
        kept = got != 0
        np.testing.assert_array_equal(got[kept], difference[kept])  # only differences within rounding of 0 change
        np.testing.assert_allclose(got, difference, rtol=0, atol=1e-12)


def test_asked_and_bald_total_on_a_hand_checked_tree():
    tree = Schema("tiny", (
        Question("shape", ("round", "disk")),
        Question("bar", ("yes", "no"), ("shape", "disk")),
        Question("arms", ("one", "two", "many"), ("bar", "yes")),
    ))
    samples = np.array([[[0.4, 0.6, 0.5, 0.5, 0.2, 0.3, 0.5],
                         [0.2, 0.8, 0.3, 0.7, 0.6, 0.2, 0.2]]])  # one galaxy, T = 2
    np.testing.assert_allclose(asked(expected_fraction(samples, tree), tree), [[1.0, 0.7, 0.7 * 0.4]], rtol=1e-15)
    out = summarize(samples, tree)
    assert out["shape_asked"][0] == 1.0
    np.testing.assert_allclose([out["bar_asked"][0], out["arms_asked"][0]], [0.7, 0.28], rtol=1e-7)
    expected_total = out["shape_bald"][0] + 0.7 * out["bar_bald"][0] + 0.28 * out["arms_bald"][0]
    np.testing.assert_allclose(out["bald_total"][0], expected_total, rtol=1e-6)
    assert out["bald_total"][0] > 0


def test_quantile_definition_smallest_count_reaching_the_level():
    # F = [0.25, 0.5, 0.75, 1.0] (exact binary fractions): the level 0.5 is reached exactly at k = 1.
    pbar = np.full((4, 1), 0.25)
    np.testing.assert_array_equal(fraction_quantiles(pbar, (0.25, 0.5, 0.50001, 1.0))[:, 0], [0, 1 / 3, 2 / 3, 1])
    # N = 1 and p = 0.04: F(0) = 0.96 >= 0.95 already, so both quantiles are 0.
    np.testing.assert_array_equal(fraction_quantiles(np.exp(binomial_log_pmf([0.04], 1)))[:, 0], [0.0, 0.0])
    # A total that rounds to just below 1 still puts the top quantile at N / N.
    np.testing.assert_array_equal(fraction_quantiles(np.array([[0.5], [0.5 - 1e-16]]), (1.0,)), [[1.0]])


def test_entropy_matches_scipy_with_zeros():
    rng = np.random.default_rng(5)
    pmf = rng.dirichlet(np.ones(9), size=6).T
    pmf[[0, 4], 2] = 0.0
    pmf[:, 2] /= pmf[:, 2].sum()
    np.testing.assert_allclose(count_entropy(pmf), stats.entropy(pmf, axis=0), **TIGHT)


def test_blocks_do_not_change_the_result():
    rng = np.random.default_rng(11)
    samples = _concentrations(rng, 130, 5)  # more galaxies than one block holds at T = 5
    whole = summarize(samples, DECALS, "dirichlet_multinomial")
    parts = [summarize(samples[s], DECALS, "dirichlet_multinomial") for s in (slice(0, 41), slice(41, 130))]
    for name, column in whole.items():
        np.testing.assert_array_equal(column, np.concatenate([p[name] for p in parts]))
    assert all(v.shape == (0,) for v in summarize(samples[:0], DECALS, "dirichlet_multinomial").values())


@pytest.mark.parametrize("call,message", [
    (lambda p: summarize(p[..., :-1], DECALS), "34 answers"),
    (lambda p: summarize(p[0], DECALS), "(galaxies, samples, answers)"),
    (lambda p: summarize(p[:, :0], DECALS), "T = 0"),
    (lambda p: summarize(p * 2, DECALS), "probabilities in [0, 1]"),
    (lambda p: summarize(-p, DECALS), "probabilities in [0, 1]"),
    (lambda p: summarize(np.where(p > 0.5, np.nan, p), DECALS), "NaN"),
    (lambda p: summarize(p - 0.5, DECALS, "dirichlet_multinomial"), "concentrations > 0"),
    (lambda p: summarize(p * 0, DECALS, "dirichlet_multinomial"), "concentrations > 0"),
    (lambda p: summarize(p, DECALS, n_volunteers=0), "integer >= 1"),
    (lambda p: summarize(p, DECALS, n_volunteers=2.5), "integer >= 1"),
    (lambda p: summarize(p, DECALS, n_volunteers=True), "integer >= 1"),
    # 10**8 volunteers would ask for a 50 GiB buffer: refused before any allocation
    (lambda p: summarize(p, DECALS, n_volunteers=10**8), "n_volunteers (--n-volunteers) must be at most 1000, got 100000000"),
    (lambda p: binomial_log_pmf([0.5], 1001), "must be at most 1000"),
    (lambda p: summarize(p, DECALS, "dirichlet"), "Did you mean 'dirichlet_multinomial'"),
    (lambda p: summarize(p.astype(str), DECALS), "numeric array"),
    (lambda p: binomial_log_pmf([1.5], 40), "probabilities in [0, 1]"),
    (lambda p: beta_binomial_log_pmf([1.0], [0.0], 40), "concentrations > 0"),
    (lambda p: beta_binomial_log_pmf([1.0], [1.0], -3), "integer >= 1"),
    (lambda p: fraction_quantiles(np.full((3, 1), 1 / 3), (0.0, 0.5)), "(0, 1]"),
    (lambda p: predictive(np.zeros(5)), "sample axis second"),
])
def test_bad_inputs_raise_one_line_input_errors(call, message):
    samples = _probabilities(np.random.default_rng(0), 2, 3, with_extremes=False)
    with pytest.raises(InputError) as info:
        call(samples)
    assert message in str(info.value) and "\n" not in str(info.value)


def test_multinomial_samples_must_sum_to_one_within_each_question():
    # 0.9 for every answer (sigmoid-like) used to summarize to fractions of 0.9; the worst question is the
    # one with the most answers, spiral_arm_count: 6 x 0.9.
    with pytest.raises(InputError) as info:
        summarize(np.full((1, 4, 34), 0.9), "decals")
    message = str(info.value)
    assert "question 'spiral_arm_count' sum to 5.4 over its answers (at samples[0, 0])" in message
    assert "sigmoid outputs or answer columns in another order" in message and "\n" not in message
    p = _probabilities(np.random.default_rng(5), 3, 5, with_extremes=False).astype(np.float32)
    bad = p.copy()
    bad[2, 4, DECALS.question_slices[3]] *= 0.5
    with pytest.raises(InputError, match=rf"question '{DECALS.question_names[3]}' sum to 0.5 .*at samples\[2, 4\]"):
        summarize(bad, DECALS)
    for call in (lambda x: count_log_pmf(x, DECALS), lambda x: expected_fraction(x, DECALS)):
        with pytest.raises(InputError, match="answers in the order of schema 'decals'"):
            call(np.roll(p, 1, axis=-1))  # answer columns shifted by one
    # Rounding well beyond float32's (an fp16 softmax is off by < 1e-3) passes, the samples taken as given.
    scaled = summarize(p * np.float32(0.996), DECALS)["bar_strong_fraction"]
    np.testing.assert_allclose(scaled, 0.996 * summarize(p, DECALS)["bar_strong_fraction"], rtol=1e-6)
    # Concentrations are not normalised: only their sign is checked.
    assert summarize(np.full((1, 4, 34), 0.9), "decals", "dirichlet_multinomial")["bar_strong_fraction"][0] > 0


def test_question_sums_are_refused_just_outside_the_tolerance_and_accepted_inside():
    """The 0.01 tolerance on a question's sum, at its edge: the test above refuses a sum of 0.5 and accepts
    0.996, so a tolerance loosened to 0.05 went unnoticed."""
    p = _probabilities(np.random.default_rng(1), 2, 3, with_extremes=False)
    s = DECALS.question_slices[2]
    for factor in (1.0125, 0.9875):
        bad = p.copy()
        bad[1, 2, s] *= factor
        with pytest.raises(InputError, match=rf"question '{DECALS.question_names[2]}' sum to {factor:g} .*at samples\[1, 2\]\), not 1 within 0\.01:"):
            summarize(bad, DECALS)
    for factor in (0.991, 1.009):
        good = p.copy()
        good[1, 2, s] *= factor
        column = f"{DECALS.answer_columns[s.start]}_fraction"  # the samples taken as given
        np.testing.assert_allclose(summarize(good, DECALS)[column], good[:, :, s.start].mean(axis=1), rtol=1e-6)


def test_the_most_volunteers_allowed_still_summarize():
    from skymorph.posterior import MAX_VOLUNTEERS

    samples = _probabilities(np.random.default_rng(0), 2, 3, with_extremes=False)
    out = summarize(samples, DECALS, n_volunteers=MAX_VOLUNTEERS)
    assert all(np.isfinite(v).all() and v.shape == (2,) for v in out.values())


def test_probabilities_one_fp16_ulp_out_of_range_are_clipped_not_refused():
    """An fp16 softmax with a fast reciprocal (TensorRT) can return 1 + 9.8e-4 for a certain answer: every
    tile failed at the posterior stage; clipped, the summary is that of the exact samples."""
    samples = _probabilities(np.random.default_rng(0), 3, 4)  # sample [0, 0] is certain of the first answers
    rounded = samples.copy()
    for s in DECALS.question_slices[:3]:
        rounded[0, 0, s.start] = 1 + float(np.spacing(np.float16(1)))
    got, exact = summarize(rounded, DECALS), summarize(samples, DECALS)
    for name, column in exact.items():
        np.testing.assert_allclose(got[name], column, rtol=1e-12, atol=1e-12, err_msg=name)
    np.testing.assert_array_equal(binomial_log_pmf([1 + 1e-3], 4), binomial_log_pmf([1.0], 4))
    with pytest.raises(InputError, match=r"probabilities in \[0, 1\], got values in \[1.003, 1.003\]"):
        binomial_log_pmf([1.003], 4)
    with pytest.raises(InputError, match=r"probabilities in \[0, 1\], got values in \[-1e-05, -1e-05\]"):
        binomial_log_pmf([-1e-5], 4)  # a softmax is never negative: a model's fault, not rounding
