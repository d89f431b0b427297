r"""Evaluate a checkpoint on labelled galaxies: MC-dropout posteriors against the observed votes.

For each galaxy the trunk runs once and T dropout masks (``head.draw_masks(T, seed)``, the same masks
an exported model freezes) give T outputs; :func:`skymorph.posterior.summarize` turns them into
fractions and intervals. Per question, over the galaxies with votes for it (N_q > 0):

- ``rmse``: root mean square of (predicted fraction - observed fraction k_a / N_q) over galaxies and
  answers; with a truth table (``{q}_{a}_true`` columns), ``rmse_true`` against the true fractions.
- ``accuracy_confident``: how often the top predicted answer is the top observed answer, over
  galaxies whose top observed fraction exceeds 0.8 (for two answers: observed fraction > 0.8 or < 0.2).
- ``coverage`` (Walmsley et al. 2020, section 5.2): for each nominal level c, the share of
  (galaxy, answer) pairs whose observed count k lies in the central c-interval [lo, hi] of the
  posterior predictive of the count given the galaxy's own N_q volunteers,

  .. math::

      \bar P(K \le k) = \frac{1}{T} \sum_t F(k; N_q, \theta_t), \qquad
      \mathrm{lo} = \min\{k : \bar P(K \le k) \ge \tfrac{1-c}{2}\}, \quad
      \mathrm{hi} = \min\{k : \bar P(K \le k) \ge \tfrac{1+c}{2}\},

  with F the binomial CDF (multinomial likelihood, theta_t = p_t,a) or the beta-binomial CDF
  (Dirichlet, theta_t = (alpha_t,a, alpha_t,q - alpha_t,a)); and ``coverage_expected``, the mean over
  the same pairs of the interval's own predictive mass :math:`\bar P(\mathrm{lo} \le K \le \mathrm{hi})`:
  how often the model expects to be right. A count is discrete, so an interval holds more than c,
  far more for few volunteers (in the tests, a calibrated model's 10% intervals held a quarter of the
  counts at N = 40 and three quarters at N = 1): calibration is observed against expected, which agree
  for a calibrated model, not observed against c.
- ``coverage_within`` (Walmsley et al.'s own form; their abstract: "coverage errors of 11.8%
  within a vote fraction deviation of 0.2"): for each maximum deviation d of the vote fraction, the
  share of pairs whose observed count lies within d N_q of the predictive mode m,

  .. math::

      |k - m| \le \lfloor d N_q \rfloor, \qquad m = \operatorname{argmax}_j \bar P(K = j)

  (the smallest such j on a tie, within rounding); and ``coverage_within_expected``, the mean predictive
  mass of the same intervals. At d = 0 the interval is the mode alone: for a two-answer question and one
  volunteer (hard labels), whether the more likely answer was the one given, against its probability.

Writes ``OUT/metrics.json``, ``OUT/predictions.parquet``, ``OUT/coverage.png`` and
``OUT/predicted_vs_observed.png``.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass, replace

import numpy as np

from skymorph.cores import check_parallelism
from skymorph.errors import InputError
from skymorph.storage import atomic_write_bytes, atomic_write_text, check_new, join, read_parquet, write_parquet
from skymorph.tables import index_in, locations
from skymorph.trainer.labels import labels_schema, split_kind

__all__ = ["evaluate", "predict", "dihedral", "coverage", "EvaluationReport", "COVERAGE_LEVELS", "COVERAGE_DEVIATIONS", "OUTPUT_FILES"]

COVERAGE_LEVELS = (0.1, 0.2, 0.3, 0.4, 0.5, 0.6, 0.7, 0.8, 0.9, 0.95)
COVERAGE_DEVIATIONS = (0.0, 0.05, 0.1, 0.2, 0.3, 0.5)
CONFIDENT = 0.8
OUTPUT_FILES = ("predictions.parquet", "coverage.png", "predicted_vs_observed.png", "metrics.json")
"""What :func:`evaluate` writes in ``out``, in that order (``metrics.json``, which says what the others are, last)."""


@dataclass(frozen=True)
class EvaluationReport:
    """Where the evaluation wrote its files and its metrics (``metrics["questions"][q]``)."""

    out: str
    n_galaxies: int
    metrics: dict
    metrics_path: str
    coverage_png: str
    scatter_png: str

    def __str__(self) -> str:
        lines = [f"evaluated {self.n_galaxies} galaxies -> {self.metrics_path}"]
        if self.metrics.get("tta"):
            lines[0] += " (with test-time augmentation: an exported model gives the plain predictions)"
        unasked = [q for q, m in self.metrics["questions"].items() if not m["n"]]
        for q, m in self.metrics["questions"].items():
            if not m["n"]:
                continue
            true = f" rmse_true={_shown(m['rmse_true'])}" if "rmse_true" in m else ""
            lines.append(f"  {q}: n={m['n']} rmse={m['rmse']:.4f}{true} accuracy_confident={_shown(m['accuracy_confident'])} "
                         f"(n={m['n_confident']})")
        if unasked:
            lines.append(f"  no votes for {', '.join(unasked)}")
        return "\n".join(lines)


def _shown(value: float | None) -> str:
    return "n/a" if value is None else f"{value:.4f}"


def dihedral(images, k: int):
    """The k-th (0..7) of the 8 symmetries of the square on the last two axes of a torch tensor:
    ``rot90`` by ``k % 4`` quarter turns, then for k >= 4 a left-right flip."""
    import torch

    turned = torch.rot90(images, k % 4, dims=(-2, -1))
    return torch.flip(turned, dims=(-1,)) if k >= 4 else turned


def predict(
    model, images: np.ndarray, samples: int = 30, seed: int = 0, batch_size: int = 256, progress: bool = False, tta: bool = False
) -> np.ndarray:
    """(B, T, A) float32 MC-dropout outputs (probabilities or concentrations) of ``model`` on uint8 images.

    ``tta``: test-time augmentation over the 8 flips and quarter turns of the square (galaxies have no
    preferred orientation): ``out[b, t] = (1/8) sum_k f_t(D_k x_b)`` with the same dropout mask t for
    every transform D_k, so sample t stays one draw of the head and the T samples still spread as MC
    dropout does. Needs square images.
    """
    import torch

    from skymorph.progress import progress_bar

    if tta and images.shape[-1] != images.shape[-2]:
        raise InputError(f"test-time augmentation needs square images, got {images.shape[-2]} x {images.shape[-1]} px")
    model.eval()
    masks = model.head.draw_masks(samples, seed)
    transforms = range(8) if tta else range(1)
    out = []
    with torch.no_grad():
        for start in progress_bar(range(0, len(images), batch_size), desc="predicting", unit="batch", disable=not progress, leave=False):
            batch = torch.from_numpy(images[start : start + batch_size])
            out.append(sum(model.sample(dihedral(batch, k), masks) for k in transforms).numpy() / len(transforms))
    return np.concatenate(out).astype(np.float32)


_PMF_CELLS = 1 << 22
"""Most (count x galaxy x sample) predictive probabilities held at once by :func:`coverage`."""


def _intervals(k: np.ndarray, n: np.ndarray, theta, likelihood: str, levels, deviations) -> tuple[np.ndarray, np.ndarray]:
    """``(inside, mass)``, each (levels + deviations, B): whether each count k lies in its interval, and the
    predictive mass of that interval, from the predictive pmf over k = 0..N (the mean over T of the
    per-sample pmfs; N may differ between galaxies). The first rows are the central intervals at each
    level, the others the intervals of half-width floor(d N) around the mode at each deviation d.
    ``theta``: p (B, T), or the pair (alpha_a, alpha_q - alpha_a)."""
    from scipy import stats

    rows_out = len(levels) + len(deviations)
    inside, mass = np.zeros((rows_out, len(k)), dtype=bool), np.zeros((rows_out, len(k)))
    samples = (theta if likelihood == "multinomial" else theta[0]).shape[1]
    for volunteers in np.unique(n):
        rows = np.flatnonzero(n == volunteers)
        for part in np.array_split(rows, -(-len(rows) * (volunteers + 1) * samples // _PMF_CELLS)):
            counts = np.arange(volunteers + 1)[:, None, None]
            if likelihood == "multinomial":
                pmf = stats.binom.pmf(counts, volunteers, np.clip(theta[part], 0.0, 1.0)[None])
            else:
                pmf = stats.betabinom.pmf(counts, volunteers, theta[0][part][None], theta[1][part][None])
            pmf = pmf.mean(axis=2)  # (N + 1, galaxies)
            cdf = np.cumsum(pmf, axis=0)
            cdf[-1] = 1.0  # a total that rounds below 1 cannot push an interval's end past N
            # the smallest count of the largest mass: argmax alone breaks a tie by rounding (2 and 5 tie at
            # N = 7 for p = 0.3 or 0.7, and argmax gave 5)
            mode = np.argmax(pmf >= pmf.max(axis=0) * (1 - 1e-12), axis=0)
            bounds = [(np.argmax(cdf >= (1 - c) / 2 - 1e-12, axis=0), np.argmax(cdf >= (1 + c) / 2 - 1e-12, axis=0)) for c in levels]
            for d in deviations:
                half = int(np.floor(d * volunteers + 1e-9))  # d N can land a hair below a whole count
                bounds.append((np.maximum(mode - half, 0), np.minimum(mode + half, volunteers)))
            columns = np.arange(len(part))
            for i, (lo, hi) in enumerate(bounds):
                inside[i, part] = (lo <= k[part]) & (k[part] <= hi)
                mass[i, part] = cdf[hi, columns] - np.where(lo > 0, cdf[np.maximum(lo - 1, 0), columns], 0.0)
    return inside, mass


def coverage(outputs: np.ndarray, votes: np.ndarray, schema, likelihood: str, levels=COVERAGE_LEVELS,
             deviations=COVERAGE_DEVIATIONS) -> dict[str, dict[str, dict[str, float]]]:
    """Per question (galaxies with N_q > 0): at each nominal level, the ``observed`` coverage and the
    coverage the posterior ``expected``; at each maximum deviation of the vote fraction, the same as
    ``observed_within`` and ``expected_within``. See the module docstring."""
    if not all(0 < c <= 1 for c in levels) or not all(d >= 0 for d in deviations):
        raise InputError(f"coverage levels must be in (0, 1] and deviations >= 0, got levels {tuple(levels)} and deviations "
                         f"{tuple(deviations)}")
    level_keys, deviation_keys = [f"{c:g}" for c in levels], [f"{d:g}" for d in deviations]
    result = {}
    for q, s in zip(schema.questions, schema.question_slices):
        n = votes[:, s].sum(axis=1)
        asked = n > 0
        if not asked.any():
            continue
        # Two answers carry one degree of freedom: count the first only, not the same event twice.
        answers = range(s.start, s.start + 1) if len(q.answers) == 2 else range(s.start, s.stop)
        question_alpha = outputs[asked, :, s].sum(axis=2) if likelihood != "multinomial" else None  # once per question
        inside, mass = [], []
        for a in answers:
            if likelihood == "multinomial":
                theta = outputs[asked, :, a].astype(np.float64)
            else:
                alpha = outputs[asked, :, a].astype(np.float64)
                theta = (alpha, question_alpha - alpha)
            pair_inside, pair_mass = _intervals(votes[asked, a], n[asked], theta, likelihood, levels, deviations)
            inside.append(pair_inside)
            mass.append(pair_mass)
        inside, mass = np.concatenate(inside, axis=1).mean(axis=1), np.concatenate(mass, axis=1).mean(axis=1)
        result[q.name] = {"observed": dict(zip(level_keys, inside[: len(levels)].tolist())),
                          "expected": dict(zip(level_keys, mass[: len(levels)].tolist())),
                          "observed_within": dict(zip(deviation_keys, inside[len(levels) :].tolist())),
                          "expected_within": dict(zip(deviation_keys, mass[len(levels) :].tolist()))}
    return result


def _question_metrics(fractions: np.ndarray, votes: np.ndarray, schema, truth: np.ndarray | None) -> dict:
    """Every question's metrics; one nobody answered has ``n`` 0 and no values (null, never NaN, which is
    not JSON). ``min_votes_confident``: the fewest votes behind a confident galaxy (1 for hard labels,
    where every galaxy is confident and the accuracy is against single votes)."""
    metrics = {}
    for q, s in zip(schema.questions, schema.question_slices):
        n = votes[:, s].sum(axis=1)
        asked = n > 0
        observed = votes[asked, s] / n[asked, None]
        predicted = fractions[asked, s]
        confident = observed.max(axis=1) > CONFIDENT
        m = {
            "n": int(asked.sum()),
            "rmse": float(np.sqrt(np.mean((predicted - observed) ** 2))) if asked.any() else None,
            "n_confident": int(confident.sum()),
            "min_votes_confident": int(n[asked][confident].min()) if confident.any() else None,
            "accuracy_confident": float(np.mean(predicted[confident].argmax(1) == observed[confident].argmax(1))) if confident.any() else None,
        }
        if truth is not None:
            finite = np.isfinite(truth[asked, s]).all(axis=1)
            m["n_true"] = int(finite.sum())  # galaxies with a true fraction for every answer: rmse_true's
            m["rmse_true"] = float(np.sqrt(np.mean((predicted[finite] - truth[asked, s][finite]) ** 2))) if finite.any() else None
        metrics[q.name] = m
    return metrics


def _read_truth(url: str, labels, schema, storage_options) -> np.ndarray:
    """(B, A) true fractions from ``{q}_{a}_true`` columns, aligned to the ``labels``' galaxies. Where both
    say where each galaxy's image is (``tile`` and ``row``), they must agree: synthetic surveys all number
    their galaxies from 0, and another survey's truth scored against other galaxies without a word."""
    table = read_parquet(url, storage_options)
    columns = [f"{c}_true" for c in schema.answer_columns]
    missing = [c for c in columns + ["object_id"] if c not in table.column_names]
    if missing:
        more = f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""
        raise InputError(f"truth table {url!r} lacks {missing[0]!r}{more} for schema {schema.name!r}")
    rows = index_in(table.column("object_id").to_numpy(), labels.object_id)
    if (rows < 0).any():
        raise InputError(f"truth table {url!r} has no row for object_id {int(labels.object_id[np.argmax(rows < 0)])}")
    true_tile, true_row = locations(table)
    if true_tile is not None and labels.tile is not None:
        said = (labels.tile != None) & (true_tile[rows] != None)  # noqa: E711 -- rows that name a tile on both sides
        rowed = (labels.row >= 0) & (true_row[rows] >= 0)  # rows that give a row on both sides
        apart = np.flatnonzero(said & ((labels.tile != true_tile[rows]) | (rowed & (labels.row != true_row[rows]))))
        if len(apart):
            i = int(apart[0])
            raise InputError(
                f"truth table {url!r} puts object_id {int(labels.object_id[i])} at tile {true_tile[rows[i]]!r}, row "
                f"{int(true_row[rows[i]])}, where the labels have tile {labels.tile[i]!r}, row {int(labels.row[i])} "
                f"({len(apart) - 1} more like it): it is another survey's truth; give the survey's own truth.parquet")
    values = np.stack([table.column(c).to_numpy() for c in columns], axis=1).astype(np.float64)
    return values[rows]


def _plots(fractions, votes, schema, cover: dict) -> tuple[bytes, bytes]:
    """The PNG bytes of the coverage plot and of the predicted-vs-observed scatter (one panel per question
    with votes; questions nobody answered are left out)."""
    import io

    from matplotlib.figure import Figure  # not pyplot: a notebook's backend is left as it was

    fig = Figure(figsize=(10, 5))
    by_level, by_deviation = fig.subplots(1, 2)
    by_level.plot([0, 1], [0, 1], color="grey", lw=1, ls="--", label="calibrated")
    for q, c in cover.items():  # one point per interval level, its expected against its observed coverage
        by_level.plot(list(c["expected"].values()), list(c["observed"].values()), marker="o", label=q)
    by_level.set(xlabel="expected coverage (the intervals' predictive mass)", ylabel="observed coverage", xlim=(0, 1.02),
                 ylim=(0, 1.02), title="Central intervals, 10-95%")
    by_level.legend(fontsize=7)
    for q, c in cover.items():  # Walmsley et al. 2020's form: observed (solid) and expected (dashed) by deviation
        line, = by_deviation.plot([float(d) for d in c["observed_within"]], list(c["observed_within"].values()), marker="o", label=q)
        by_deviation.plot([float(d) for d in c["expected_within"]], list(c["expected_within"].values()), ls="--", color=line.get_color())
    by_deviation.set(xlabel="maximum deviation of the vote fraction from the predicted mode", ylabel="share within it",
                     ylim=(0, 1.02), title="Observed (solid) and expected (dashed)")
    fig.suptitle("Posterior predictive coverage")
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110, bbox_inches="tight")
    coverage_png = buffer.getvalue()

    asked_questions = [(q, s) for q, s in zip(schema.questions, schema.question_slices) if (votes[:, s].sum(1) > 0).any()]
    cols = max(1, min(4, len(asked_questions)))  # one empty panel if no question has votes
    rows = max(1, -(-len(asked_questions) // cols))
    fig = Figure(figsize=(3.2 * cols, 3.2 * rows))
    axes = fig.subplots(rows, cols, squeeze=False)
    for ax in axes.flat:
        ax.set_visible(False)
    for ax, (q, s) in zip(axes.flat, asked_questions):
        n = votes[:, s].sum(1)
        asked = n > 0
        ax.set_visible(True)
        ax.scatter(votes[asked, s.start] / n[asked], fractions[asked, s.start], s=4, alpha=0.4)
        ax.plot([0, 1], [0, 1], color="grey", lw=1, ls="--")
        ax.set(title=f"{q.name}_{q.answers[0]}", xlabel="observed fraction", ylabel="predicted fraction", xlim=(-0.02, 1.02), ylim=(-0.02, 1.02))
    fig.tight_layout()
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", dpi=110)
    return coverage_png, buffer.getvalue()


def _split_as_trained(table, meta, checkpoint: str, split: str):
    """``table`` split as the checkpoint's training was: labels without the split column it was trained
    with are an error (the hash split would score galaxies it trained on), and a split column beside a
    hash-split checkpoint is set aside, with a warning. Checkpoints that do not record it take the labels'
    column where there is one."""
    trained_with = meta.provenance.get("split")
    if trained_with == "column" and split_kind(table) == "hash":
        raise InputError(
            f"checkpoint {checkpoint!r} was trained with its labels' split column and labels {table.source!r} have none, "
            f"so its {split} galaxies are unknown; give labels with that split column, or --split all"
        )
    if trained_with == "hash" and split_kind(table) == "column":
        print(f"skymorph: warning: checkpoint {checkpoint!r} was trained on the seed's hash split, not a split column: "
              f"its {split} galaxies are taken from that, and the split column of {table.source!r} is not used", file=sys.stderr)
        return replace(table, split=None)
    return table


def _test_rows(table, meta, checkpoint: str):
    """The rows of ``table`` whose split column says ``test``: galaxies a checkpoint trained on a split
    column never saw. One trained on the hash split may have trained on any of them, so it is refused."""
    from skymorph.tables import TEST

    if meta.provenance.get("split") == "hash":
        raise InputError(f"checkpoint {checkpoint!r} was trained on the seed's hash split, which holds no galaxy out as test, "
                         "so a test row may be one it trained on; score --split validation")
    if split_kind(table) == "hash":
        raise InputError(f"labels {table.source!r} have no split column, so no test galaxies; give labels whose split "
                         "column marks them")
    return table.subset(np.flatnonzero(table.split == TEST))


def evaluate(
    checkpoint: str,
    tiles: str,
    labels: str,
    out: str,
    *,
    samples: int = 30,
    seed: int = 0,
    split: str = "validation",
    truth: str | None = None,
    n_volunteers: int = 40,
    batch_size: int = 256,
    threads: int | None = None,
    drop_unmatched: bool = False,
    tta: bool = False,
    overwrite: bool = False,
    progress: bool = True,
    storage_options=None,
) -> EvaluationReport:
    """Evaluate ``checkpoint`` on the ``split`` galaxies (``validation``, ``train``, ``test`` or ``all``) of
    ``labels``.

    The validation galaxies are those training held out: the labels' ``split`` column, or else the same
    object-id hash split with the ``val_fraction`` and ``seed`` recorded in the checkpoint: whichever
    training used (see :func:`_split_as_trained`). The test galaxies are the rows the split column marks
    ``test``, which training on that column never used (:func:`_test_rows`). ``tta``:
    average each prediction over the 8 flips and quarter turns (see :func:`predict`). Files of an
    earlier evaluation in ``out`` are refused unless ``overwrite``.
    """
    import pyarrow as pa
    import torch

    from skymorph.model_metadata import check_samples
    from skymorph.posterior import check_n_volunteers, summarize
    from skymorph.seeds import check_seed
    from skymorph.tiles import read_tiles
    from skymorph.trainer.checkpoint import check_schema, load_checkpoint
    from skymorph.trainer.data import load_images
    from skymorph.trainer.labels import load_labels, split_masks
    from skymorph.trainer.loop import TrainConfig

    if split not in ("validation", "train", "test", "all"):
        raise InputError(f"split must be validation, train, test or all, got {split!r}")
    check_samples(samples)
    check_seed(seed)
    check_n_volunteers(n_volunteers)
    if batch_size < 1:
        raise InputError(f"batch_size must be at least 1, got {batch_size}")
    check_new([join(out, name) for name in OUTPUT_FILES], "--out", overwrite, storage_options)
    if threads is not None:
        torch.set_num_threads(check_parallelism(threads, "threads", "--threads", "torch threads", at_least=64))
    model, meta, _ = load_checkpoint(checkpoint, storage_options=storage_options)
    recorded = labels_schema(labels, storage_options)
    if recorded is not None:  # votes of one tree read as another's where their columns coincide
        check_schema(meta, recorded, f"checkpoint {checkpoint!r}", f"labels {labels!r} record votes of {recorded.name!r}: "
                     "evaluate a model of that tree on them")
    schema = meta.schema
    table = load_labels(labels, schema, storage_options, schema_from=f"checkpoint {checkpoint!r}")
    if split == "test":
        table = _test_rows(table, meta, checkpoint)
    elif split != "all":
        table = _split_as_trained(table, meta, checkpoint, split)
        config = meta.provenance.get("config", {})
        defaults = TrainConfig.RUN_DEFAULTS
        train_mask, val_mask = split_masks(table, float(config.get("val_fraction", defaults["val_fraction"])),
                                           int(config.get("seed", defaults["seed"])))
        table = table.subset(np.flatnonzero(val_mask if split == "validation" else train_mask))
    if split != "all" and not len(table):
        raise InputError(f"labels {labels!r} have no {split} galaxies with votes, so there is nothing to compare with")
    images, table = load_images(read_tiles(tiles, storage_options), table, drop_unmatched=drop_unmatched, storage_options=storage_options, progress=progress)
    if images.shape[1:] != tuple(meta.input.shape):
        raise InputError(f"checkpoint {checkpoint!r} takes {meta.input.shape} images but tiles {tiles!r} hold {images.shape[1:]}; "
                         "give the tiles it was trained on (or ingested at its size)")
    true = _read_truth(truth, table, schema, storage_options) if truth else None  # before the slow part

    outputs = predict(model, images, samples, seed, batch_size, progress, tta=tta)
    summary = summarize(outputs, schema, likelihood=meta.likelihood, n_volunteers=n_volunteers)
    fractions = np.stack([summary[f"{c}_fraction"] for c in schema.answer_columns], axis=1).astype(np.float64)
    cover = coverage(outputs, table.votes, schema, meta.likelihood)
    questions = _question_metrics(fractions, table.votes, schema, true)
    for q, c in cover.items():
        questions[q].update(coverage=c["observed"], coverage_expected=c["expected"],
                            coverage_within=c["observed_within"], coverage_within_expected=c["expected_within"])
    metrics = {
        "checkpoint": str(checkpoint), "labels": str(labels), "split": split, "n_galaxies": len(table),
        "samples": samples, "seed": seed, "tta": tta, "likelihood": meta.likelihood, "schema": schema.name, "questions": questions,
    }
    # everything is computed before the first file is written, and metrics.json, which says what the
    # others are, goes last: a failure leaves no half-written --out that looks complete
    coverage_bytes, scatter_bytes = _plots(fractions, table.votes, schema, cover)
    predictions = pa.table({"object_id": table.object_id, **summary})
    predictions_path, coverage_png, scatter_png, metrics_path = (join(out, name) for name in OUTPUT_FILES)
    write_parquet(predictions, predictions_path, storage_options)
    atomic_write_bytes(coverage_png, coverage_bytes, storage_options)
    atomic_write_bytes(scatter_png, scatter_bytes, storage_options)
    atomic_write_text(metrics_path, json.dumps(metrics, indent=1), storage_options)
    return EvaluationReport(str(out), len(table), metrics, metrics_path, coverage_png, scatter_png)
