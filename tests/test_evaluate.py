"""evaluate: coverage against brute-force intervals, metrics against the predictions, CLI, truth table."""

from __future__ import annotations

import json

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
import torch
from scipy import stats

from skymorph import cli
from skymorph.errors import InputError
from skymorph.schema import get_schema
from skymorph.storage import write_parquet
from skymorph.testing.ring_survey import write_ring_survey
from skymorph.trainer import TrainConfig, evaluate, load_checkpoint, train
from skymorph.trainer.evaluate import coverage, predict

GZ2 = get_schema("gz2")


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _brute_force_interval(pmfs: np.ndarray, k: int, level: float) -> tuple[bool, float]:
    """Whether k is in the central interval of the predictive pmf (mean over samples), by enumerating its
    CDF, and the interval's probability, summed term by term."""
    pmf = pmfs.mean(axis=0)
    cdf = np.cumsum(pmf)
    lo = int(np.argmax(cdf >= (1 - level) / 2 - 1e-12))
    hi = int(np.argmax(cdf >= (1 + level) / 2 - 1e-12)) if cdf[-1] >= (1 + level) / 2 - 1e-12 else len(pmf) - 1
    return lo <= k <= hi, float(sum(pmf[lo : hi + 1]))


def _brute_force_within(pmfs: np.ndarray, k: int, deviation: float) -> tuple[bool, float]:
    """Whether k is within deviation x N of the predictive mode, found by scanning the pmf, and the
    probability of those counts, summed term by term."""
    pmf = pmfs.mean(axis=0)
    n = len(pmf) - 1
    mode = min(j for j in range(n + 1) if pmf[j] >= max(pmf) * (1 - 1e-12))  # the smallest count on a tie
    near = [j for j in range(n + 1) if abs(j - mode) <= deviation * n + 1e-9]
    return k in near, float(sum(pmf[j] for j in near))


@pytest.mark.parametrize("likelihood", ["multinomial", "dirichlet_multinomial"])
def test_coverage_matches_brute_force_intervals(likelihood):
    rng = np.random.default_rng(4)
    schema = get_schema("decals")
    b, t = 12, 5
    logits = rng.normal(size=(b, t, schema.n_answers))
    if likelihood == "multinomial":
        outputs = np.concatenate([np.exp(logits[..., s]) / np.exp(logits[..., s]).sum(-1, keepdims=True) for s in schema.question_slices], -1)
    else:
        outputs = 1 + 20 * rng.random((b, t, schema.n_answers))
    votes = rng.integers(0, 6, size=(b, schema.n_answers))
    votes[:3, schema.question_slices[1]] = 0  # some galaxies never asked question 1
    got = coverage(outputs, votes, schema, likelihood, levels=(0.3, 0.9), deviations=(0.0, 0.2, 0.5))
    for q, s in zip(schema.questions, schema.question_slices):
        n = votes[:, s].sum(1)
        answers = [s.start] if len(q.answers) == 2 else range(s.start, s.stop)
        for kind, width, brute_force in [("", level, _brute_force_interval) for level in (0.3, 0.9)] + \
                                        [("_within", deviation, _brute_force_within) for deviation in (0.0, 0.2, 0.5)]:
            inside, mass = [], []
            for i in np.flatnonzero(n > 0):
                for a in answers:
                    k = np.arange(n[i] + 1)
                    if likelihood == "multinomial":
                        pmfs = np.stack([stats.binom.pmf(k, n[i], outputs[i, j, a]) for j in range(t)])
                    else:
                        rest = outputs[i, :, s].sum(-1) - outputs[i, :, a]
                        pmfs = np.stack([stats.betabinom.pmf(k, n[i], outputs[i, j, a], rest[j]) for j in range(t)])
                    pair_inside, pair_mass = brute_force(pmfs, votes[i, a], width)
                    inside.append(pair_inside)
                    mass.append(pair_mass)
            assert got[q.name][f"observed{kind}"][f"{width:g}"] == pytest.approx(np.mean(inside))
            assert got[q.name][f"expected{kind}"][f"{width:g}"] == pytest.approx(np.mean(mass), rel=1e-9)


@pytest.mark.parametrize(("levels", "deviations"), [((0.0,), (0.1,)), ((1.5,), (0.1,)), ((0.5,), (-0.1,))])
def test_coverage_refuses_levels_and_deviations_out_of_range(levels, deviations):
    outputs, votes = np.full((1, 1, GZ2.n_answers), 0.5), np.ones((1, GZ2.n_answers), dtype=np.int64)
    with pytest.raises(InputError, match=r"coverage levels must be in \(0, 1\] and deviations >= 0"):
        coverage(outputs, votes, GZ2, "multinomial", levels=levels, deviations=deviations)


def test_the_mode_of_a_tied_mixture_is_its_smaller_count():
    """Two samples at p = 0.3 and 0.7: counts 2 and 5 of 7 are equally likely. With the smaller as the
    mode, a count of 2 is within 0 of it, 5 is not, and 3 is within 1/7."""
    schema = get_schema("gz2")
    first = schema.answer_columns.index("has_spiral_arms_yes")
    outputs = np.full((3, 2, schema.n_answers), 0.5)
    outputs[:, :, first], outputs[:, :, first + 1] = [0.3, 0.7], [0.7, 0.3]
    votes = np.zeros((3, schema.n_answers), dtype=np.int64)
    votes[:, first], votes[:, first + 1] = [2, 5, 3], [5, 2, 4]
    got = coverage(outputs, votes, schema, "multinomial", levels=(0.5,), deviations=(0.0, 1 / 7))["has_spiral_arms"]
    tie = (stats.binom.pmf(2, 7, 0.3) + stats.binom.pmf(2, 7, 0.7)) / 2
    assert got["observed_within"]["0"] == pytest.approx(1 / 3) and got["expected_within"]["0"] == pytest.approx(tie, rel=1e-12)
    assert got["observed_within"]["0.142857"] == pytest.approx(2 / 3)


def test_coverage_within_a_deviation_of_hard_labels_is_the_accuracy_of_the_mode_against_its_probability():
    """One volunteer: the interval at deviation 0 is the predicted answer alone, so the observed coverage
    is how often it was the answer given and the expected coverage the mean probability of it."""
    schema = get_schema("gz2")
    yes = np.array([0.9, 0.8, 0.3, 0.6])  # has_spiral_arms_yes for four galaxies, T = 2 equal samples
    outputs = np.full((4, 2, schema.n_answers), 0.5)
    first = schema.answer_columns.index("has_spiral_arms_yes")
    outputs[:, :, first], outputs[:, :, first + 1] = yes[:, None], 1 - yes[:, None]
    votes = np.zeros((4, schema.n_answers), dtype=np.int64)
    votes[[0, 1, 2, 3], [first, first + 1, first + 1, first + 1]] = 1  # yes, no, no, no
    got = coverage(outputs, votes, schema, "multinomial", levels=(0.5,), deviations=(0.0, 1.0))["has_spiral_arms"]
    assert got["observed_within"]["0"] == 0.5  # modes yes, yes, no, yes: right for galaxies 0 and 2
    assert got["expected_within"]["0"] == pytest.approx(np.mean([0.9, 0.8, 0.7, 0.6]))
    assert got["observed_within"]["1"] == got["expected_within"]["1"] == pytest.approx(1.0)  # both answers


@pytest.mark.parametrize("volunteers", [1, 10, 40])
def test_a_calibrated_posterior_covers_as_often_as_it_expects_not_as_often_as_the_nominal_level(volunteers):
    """Counts are discrete: a calibrated posterior's 10% interval held 28% of the counts at N = 40 and 80%
    at N = 1, and the plot compared that with 0.1. Observed against expected, it is on the diagonal."""
    rng = np.random.default_rng(volunteers)
    schema = get_schema("gz2")
    p = rng.uniform(0.05, 0.95, size=4000)
    outputs = np.full((len(p), 3, schema.n_answers), 0.5)
    outputs[:, :, 0], outputs[:, :, 1], outputs[:, :, 2] = (1 - p[:, None]) / 2, (1 - p[:, None]) / 2, p[:, None]  # smooth_or_featured
    votes = np.zeros((len(p), schema.n_answers), dtype=np.int64)
    votes[:, :3] = np.stack([rng.multinomial(volunteers, [(1 - x) / 2, (1 - x) / 2, x]) for x in p])
    got = coverage(outputs, votes, schema, "multinomial")["smooth_or_featured"]
    for level in ("0.1", "0.5", "0.9"):
        assert got["observed"][level] == pytest.approx(got["expected"][level], abs=0.02)  # sampling error of 12,000 pairs
    for deviation in ("0", "0.1", "0.3"):
        assert got["observed_within"][deviation] == pytest.approx(got["expected_within"][deviation], abs=0.02)
    assert got["observed"]["0.1"] > 0.2  # far from the nominal 0.1 at every N here


@pytest.fixture(scope="module")
def trained(tmp_path_factory, torch_one_thread_module):
    tmp = tmp_path_factory.mktemp("eval")
    tiles, labels = write_ring_survey(str(tmp))
    result = train(TrainConfig(tiles=tiles, labels=labels, out=str(tmp / "m.ckpt"), schema="gz2", epochs=1, batch_size=8, progress=False))
    return tmp, tiles, labels, result.checkpoint


def test_evaluate_metrics_agree_with_its_predictions(trained):
    tmp, tiles, labels, ckpt = trained
    truth = pq.read_table(labels).to_pandas()[["object_id"]]
    rng = np.random.default_rng(0)
    for s, q in zip(GZ2.question_slices, GZ2.questions):
        p = rng.dirichlet(np.ones(len(q.answers)), size=len(truth))
        for j, a in enumerate(q.answers):
            truth[f"{q.name}_{a}_true"] = p[:, j]
    write_parquet(pa.Table.from_pandas(truth, preserve_index=False), str(tmp / "truth.parquet"))
    report = evaluate(ckpt, tiles, labels, str(tmp / "out"), samples=7, truth=str(tmp / "truth.parquet"), progress=False)

    table = pq.read_table(labels).to_pandas()
    val = table[table["split"] == "validation"].set_index("object_id")
    predictions = pq.read_table(tmp / "out" / "predictions.parquet").to_pandas().set_index("object_id")
    assert report.n_galaxies == len(val) == len(predictions)
    observed = val["has_spiral_arms_yes"] / (val["has_spiral_arms_yes"] + val["has_spiral_arms_no"])
    predicted = predictions.loc[val.index, "has_spiral_arms_yes_fraction"]
    m = report.metrics["questions"]["has_spiral_arms"]
    assert m["rmse"] == pytest.approx(float(np.sqrt(np.mean((predicted - observed) ** 2))), rel=1e-5)
    confident = (observed > 0.8) | (observed < 0.2)
    assert m["n_confident"] == confident.sum()
    assert m["accuracy_confident"] == pytest.approx(float(np.mean((predicted[confident] > 0.5) == (observed[confident] > 0.5))))
    true = truth.set_index("object_id").loc[val.index, "has_spiral_arms_yes_true"]
    assert m["rmse_true"] == pytest.approx(float(np.sqrt(np.mean((predicted - true) ** 2))), rel=1e-5)
    assert set(m["coverage"]) == set(m["coverage_expected"]) == {"0.1", "0.2", "0.3", "0.4", "0.5", "0.6", "0.7", "0.8", "0.9", "0.95"}
    assert all(m["coverage_expected"][c] >= float(c) - 1e-9 for c in m["coverage_expected"])  # a discrete interval holds at least c
    assert set(m["coverage_within"]) == set(m["coverage_within_expected"]) == {"0", "0.05", "0.1", "0.2", "0.3", "0.5"}
    assert all(np.diff(list(m["coverage_within_expected"].values())) >= 0)  # wider intervals hold more
    assert m["n_true"] == len(val) and m["min_votes_confident"] == 9  # the ring survey's galaxies have 9 votes each
    assert report.metrics["questions"]["bar"]["n"] == 0 and str(report).endswith("no votes for " + ", ".join(
        q for q in GZ2.question_names if q != "has_spiral_arms"))
    for name in ("coverage.png", "predicted_vs_observed.png"):
        assert (tmp / "out" / name).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    truth.loc[:, [c for c in truth.columns if c.startswith("has_spiral_arms")]] = np.nan  # no true fraction: null, not NaN
    write_parquet(pa.Table.from_pandas(truth, preserve_index=False), str(tmp / "truth.parquet"))
    evaluate(ckpt, tiles, labels, str(tmp / "out"), samples=7, truth=str(tmp / "truth.parquet"), progress=False, overwrite=True)
    strict = json.loads((tmp / "out" / "metrics.json").read_text(), parse_constant=lambda name: pytest.fail(f"{name} in metrics.json"))
    assert (strict["questions"]["has_spiral_arms"]["rmse_true"], strict["questions"]["has_spiral_arms"]["n_true"]) == (None, 0)


def test_predict_uses_the_heads_seeded_masks(trained):
    _, _, _, ckpt = trained
    model, meta, _ = load_checkpoint(ckpt)
    images = np.random.default_rng(0).integers(0, 255, (3, *meta.input.shape), dtype=np.uint8)
    got = predict(model, images, samples=4, seed=11)
    masks = model.head.draw_masks(4, 11)
    with torch.no_grad():
        features = model.features(torch.from_numpy(images))
        expected = torch.stack([model.output(model.head.linear(features * masks[t])) for t in range(4)], dim=1)
    assert got.shape == (3, 4, GZ2.n_answers)
    np.testing.assert_allclose(got, expected.numpy(), rtol=1e-5, atol=1e-6)
    assert np.array_equal(got, predict(model, images, samples=4, seed=11))


def test_cli_evaluate_and_its_errors(trained, capsys):
    tmp, tiles, labels, ckpt = trained
    assert cli.main(["evaluate", ckpt, "--tiles", tiles, "--labels", labels, "--out", str(tmp / "cli"), "--samples", "3", "--split", "all", "--tta"]) == 0
    metrics = json.loads((tmp / "cli" / "metrics.json").read_text())
    assert metrics["n_galaxies"] == 48 and metrics["tta"] is True
    (tmp / "junk.ckpt").write_bytes(b"junk")
    assert cli.main(["evaluate", str(tmp / "junk.ckpt"), "--tiles", tiles, "--labels", labels, "--out", str(tmp / "x")]) == 2
    err = capsys.readouterr().err
    assert "skymorph: error:" in err and "is not a checkpoint" in err and "Traceback" not in err


def test_tta_averages_the_plain_outputs_of_the_eight_flips_and_quarter_turns(trained):
    _, _, _, ckpt = trained
    model, meta, _ = load_checkpoint(ckpt)
    images = np.random.default_rng(1).integers(0, 255, (3, *meta.input.shape), dtype=np.uint8)
    turned = [np.rot90(images, k, axes=(2, 3)) for k in range(4)]
    variants = turned + [t[..., ::-1] for t in turned]
    expected = np.mean([predict(model, np.ascontiguousarray(v), samples=5, seed=3) for v in variants], axis=0)
    got = predict(model, images, samples=5, seed=3, tta=True)
    assert got.shape == (3, 5, GZ2.n_answers)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, predict(model, images, samples=5, seed=3), atol=1e-4)


def test_tta_leaves_a_symmetric_image_unchanged_and_needs_square_images(trained):
    _, _, _, ckpt = trained
    model, meta, _ = load_checkpoint(ckpt)
    size = meta.input.shape[-1]
    y, x = np.mgrid[:size, :size] - (size - 1) / 2
    disc = np.broadcast_to((255 * np.exp(-(x**2 + y**2) / 40)).astype(np.uint8), (2, *meta.input.shape)).copy()
    np.testing.assert_allclose(predict(model, disc, samples=4, tta=True), predict(model, disc, samples=4), rtol=1e-5, atol=1e-6)
    with pytest.raises(InputError, match="square"):
        predict(model, disc[..., :-1], samples=4, tta=True)


def test_truth_rows_are_aligned_by_object_id_whatever_their_order(tmp_path):
    from skymorph.trainer.evaluate import _read_truth

    columns = {f"{c}_true": np.arange(5, dtype=np.float64) + 10 * k for k, c in enumerate(GZ2.answer_columns)}
    ids = np.array([50, 10, 40, 20, 30], dtype=np.int64)  # shuffled, with one galaxy not asked for (40)
    write_parquet(pa.table({"object_id": ids, **columns}), str(tmp_path / "truth.parquet"))
    got = _read_truth(str(tmp_path / "truth.parquet"), _galaxies([20, 50, 30, 10]), GZ2, None)
    assert got[:, 0].tolist() == [3.0, 0.0, 4.0, 1.0] and got[:, 1].tolist() == [13.0, 10.0, 14.0, 11.0]
    with pytest.raises(InputError, match="has no row for object_id 60"):
        _read_truth(str(tmp_path / "truth.parquet"), _galaxies([20, 60, 70]), GZ2, None)


def _galaxies(ids, tile=None, row=None):
    """What _read_truth reads of the labels: their ids, and where they say each image is."""
    from types import SimpleNamespace

    return SimpleNamespace(object_id=np.array(ids, dtype=np.int64), tile=None if tile is None else np.array(tile, dtype=object),
                           row=None if row is None else np.array(row, dtype=np.int64))


def test_another_survey_s_truth_is_refused_where_it_puts_a_galaxy_elsewhere(tmp_path):
    """Synthetic surveys all number their galaxies from 0: evaluate --truth of another survey scored the
    model against other galaxies' true fractions, exit 0."""
    from skymorph.trainer.evaluate import _read_truth

    columns = {f"{c}_true": np.full(3, 0.5) for c in GZ2.answer_columns}
    write_parquet(pa.table({"object_id": np.arange(3), "tile": ["hpx5_06879"] * 3, "row": np.arange(3), **columns}),
                  str(tmp_path / "truth.parquet"))
    assert _read_truth(str(tmp_path / "truth.parquet"), _galaxies([0, 2], ["hpx5_06879"] * 2, [0, 2]), GZ2, None).shape == (2, len(GZ2.answer_columns))
    assert _read_truth(str(tmp_path / "truth.parquet"), _galaxies([0, 2], [None, None], [-1, -1]), GZ2, None).shape == (2, len(GZ2.answer_columns))
    write_parquet(pa.table({"object_id": np.arange(3), "tile": ["hpx5_06879"] * 3, "row": pa.array([0, 1, None], pa.int64()),
                            **columns}), str(tmp_path / "rowless.parquet"))  # a truth row without a row number: not compared
    assert _read_truth(str(tmp_path / "rowless.parquet"), _galaxies([2], ["hpx5_06879"], [5]), GZ2, None).shape[0] == 1
    with pytest.raises(InputError, match=r"^truth table .* puts object_id 2 at tile 'hpx5_06879', row 2, where the labels have "
                                         r"tile 'hpx5_07814', row 2 \(0 more like it\): it is another survey's truth"):
        _read_truth(str(tmp_path / "truth.parquet"), _galaxies([0, 2], ["hpx5_06879", "hpx5_07814"], [0, 2]), GZ2, None)


def test_bad_seed_samples_and_volunteers_are_refused_before_reading(tmp_path):
    missing = str(tmp_path / "none.ckpt")
    for kwargs, message in (
        ({"seed": 10**23}, "--seed must be a non-negative integer below 2**64, got 100000000000000000000000"),
        ({"samples": 10**8}, "--samples (MC-dropout samples T) must be an integer from 1 to 1000, got 100000000"),
        ({"n_volunteers": 10**8}, "n_volunteers (--n-volunteers) must be at most 1000, got 100000000"),
    ):
        with pytest.raises(InputError) as info:
            evaluate(missing, "tiles.txt", "labels.csv", str(tmp_path / "out"), progress=False, **kwargs)
        assert message in str(info.value) and "\n" not in str(info.value), str(info.value)
    assert list(tmp_path.iterdir()) == []


def test_a_split_without_votes_is_refused_and_a_failure_leaves_no_output(trained, monkeypatch):
    tmp, tiles, labels, ckpt = trained
    table = pq.read_table(labels).to_pandas()
    table.loc[table["split"] == "validation", ["has_spiral_arms_yes", "has_spiral_arms_no"]] = 0
    unvoted = str(tmp / "unvoted.csv")
    table.to_csv(unvoted, index=False)
    with pytest.raises(InputError, match=r"have no validation galaxies with votes, so there is nothing to compare with"):
        evaluate(ckpt, tiles, unvoted, str(tmp / "unvoted"), samples=3, progress=False)
    assert not (tmp / "unvoted").exists()

    import importlib

    module = importlib.import_module("skymorph.trainer.evaluate")

    def broken(*args, **kwargs):
        raise InputError("plotting failed")

    monkeypatch.setattr(module, "_plots", broken)
    with pytest.raises(InputError, match="plotting failed"):
        evaluate(ckpt, tiles, labels, str(tmp / "half"), samples=3, progress=False)
    assert not (tmp / "half").exists()  # no metrics.json or predictions without their plots


def test_plots_leave_out_questions_nobody_answered():
    import io

    from PIL import Image

    from skymorph.trainer.evaluate import _plots

    def panels(png: bytes) -> tuple[int, int]:  # the scatter is 3.2 in square per question at 110 dpi
        width, height = Image.open(io.BytesIO(png)).size
        return round(width / 352), round(height / 352)

    votes = np.zeros((4, GZ2.n_answers), dtype=np.int64)
    fractions = np.full((4, GZ2.n_answers), 0.5)
    bar = votes + np.eye(GZ2.n_answers, dtype=np.int64)[GZ2.answer_index("bar", "yes")]
    for v, expected in ((votes, (1, 1)), (bar, (1, 1)), (votes + 1, (4, -(-len(GZ2.questions) // 4)))):
        coverage_png, scatter_png = _plots(fractions, v, GZ2, {})
        assert coverage_png[:4] == b"\x89PNG" and panels(scatter_png) == expected


def test_plots_leave_a_notebooks_matplotlib_backend_alone():
    """They switched the process to Agg, so a notebook calling evaluate() lost its inline plots."""
    import subprocess
    import sys

    code = ("import matplotlib; matplotlib.use('svg'); import numpy as np; "
            "from skymorph.schema import get_schema; from skymorph.trainer.evaluate import _plots; s = get_schema('gz2'); "
            "_plots(np.full((2, s.n_answers), 0.5), np.ones((2, s.n_answers), dtype=np.int64), s, {}); "
            "import matplotlib.pyplot as plt; print(plt.get_backend())")
    assert subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout.strip() == "svg"


def test_labels_without_a_split_are_evaluated_on_the_galaxies_the_model_was_validated_on(tmp_path, capsys):
    """The hashed split, with the checkpoint's seed and --val-fraction: with seed 0 in its place, a model
    trained with --seed 5 was evaluated partly on galaxies it was trained on."""
    import hashlib

    tiles, labels = write_ring_survey(str(tmp_path))
    unsplit = str(tmp_path / "unsplit.parquet")
    write_parquet(pq.read_table(labels).drop(["split"]), unsplit)
    result = train(TrainConfig(tiles=tiles, labels=unsplit, out=str(tmp_path / "m.ckpt"), schema="gz2", epochs=1, batch_size=8,
                               seed=5, val_fraction=0.3, threads=1, progress=False))
    evaluate(result.checkpoint, tiles, unsplit, str(tmp_path / "out"), samples=2, progress=False)
    evaluated = set(pq.read_table(tmp_path / "out" / "predictions.parquet").column("object_id").to_pylist())
    ids = pq.read_table(unsplit).column("object_id").to_pylist()
    u = {i: int.from_bytes(hashlib.sha256(f"5:{i}".encode()).digest()[:8], "big") / 2.0**64 for i in ids}
    assert evaluated == {i for i in ids if u[i] < 0.3}
    assert len(evaluated) == load_checkpoint(result.checkpoint)[1].provenance["n_validation"]
    # the same labels with a split column: the checkpoint's hash split is still the one it was trained with
    write_parquet(pq.read_table(labels).drop(["split"]).append_column("split", pa.array(["validation"] * len(ids))),
                  str(tmp_path / "resplit.parquet"))
    evaluate(result.checkpoint, tiles, str(tmp_path / "resplit.parquet"), str(tmp_path / "out2"), samples=2, progress=False)
    assert set(pq.read_table(tmp_path / "out2" / "predictions.parquet").column("object_id").to_pylist()) == evaluated
    assert "was trained on the seed's hash split, not a split column" in capsys.readouterr().err


def test_split_test_scores_the_rows_the_split_column_marks_test(trained, tmp_path):
    """Rows marked test could be scored only mixed with the training galaxies, through --split all."""
    tmp, tiles, labels, ckpt = trained
    table = pq.read_table(labels)
    ids = table.column("object_id").to_pylist()
    marked = pa.array(["test" if i % 8 == 3 else s for i, s in zip(ids, table.column("split").to_pylist())])
    with_test = str(tmp_path / "with-test.parquet")
    write_parquet(table.drop(["split"]).append_column("split", marked), with_test)
    evaluate(ckpt, tiles, with_test, str(tmp_path / "test"), samples=2, split="test", progress=False)
    scored = pq.read_table(tmp_path / "test" / "predictions.parquet").column("object_id").to_pylist()
    assert sorted(scored) == sorted(i for i in ids if i % 8 == 3) and scored
    with pytest.raises(InputError, match=r"labels .* have no test galaxies with votes, so there is nothing to compare with"):
        evaluate(ckpt, tiles, labels, str(tmp_path / "none"), samples=2, split="test", progress=False)
    unsplit = str(tmp_path / "unsplit.parquet")
    write_parquet(table.drop(["split"]), unsplit)
    with pytest.raises(InputError, match=r"have no split column, so no test galaxies; give labels whose split column marks them"):
        evaluate(ckpt, tiles, unsplit, str(tmp_path / "no-column"), samples=2, split="test", progress=False)
    hashed = train(TrainConfig(tiles=tiles, labels=unsplit, out=str(tmp_path / "hashed.ckpt"), schema="gz2", epochs=1,
                               batch_size=8, threads=1, progress=False))
    with pytest.raises(InputError, match=r"was trained on the seed's hash split, which holds no galaxy out as test, so a "
                                         r"test row may be one it trained on; score --split validation"):
        evaluate(hashed.checkpoint, tiles, with_test, str(tmp_path / "hashed"), samples=2, split="test", progress=False)
    assert not any((tmp_path / name).exists() for name in ("none", "no-column", "hashed"))


def test_a_model_trained_on_a_split_column_is_not_evaluated_on_labels_without_it(trained):
    """Without the column, the hash split was used: 23 of 29 "validation" galaxies of a review's run had been
    trained on, and nothing said so."""
    tmp, tiles, labels, ckpt = trained
    assert load_checkpoint(ckpt)[1].provenance["split"] == "column"
    unsplit = str(tmp / "unsplit-eval.parquet")
    write_parquet(pq.read_table(labels).drop(["split"]), unsplit)
    with pytest.raises(InputError, match=r"was trained with its labels' split column and labels .*unsplit-eval.parquet' have "
                                         r"none, so its validation galaxies are unknown; give labels with that split column, or --split all"):
        evaluate(ckpt, tiles, unsplit, str(tmp / "no"), samples=2, progress=False)
    assert not (tmp / "no").exists()
    evaluate(ckpt, tiles, unsplit, str(tmp / "all"), samples=2, split="all", progress=False)
