"""The synthetic survey: outputs, determinism, HEALPix tiles, votes down the tree, truth, image model."""

from __future__ import annotations

import json
import os
import re

import numpy as np
import pytest

from skymorph import storage
from skymorph.cli import main
from skymorph.errors import CatalogError, InputError, SchemaError
from skymorph.schema import get_schema
from skymorph.survey import Footprint, SynthSummary, synthesize
from skymorph.survey._galaxy import GalaxyParams, moffat_kernel, render, sersic2d
from skymorph.survey._output import WRITER_LOCK, writing_survey
from skymorph.survey._votes import simulate_votes, true_vote_fractions
from skymorph.tiles import open_tile, read_tile_list

SMALL = dict(n_tiles=3, per_tile=40, size=48, seed=3, progress=False)


@pytest.fixture(scope="module")
def survey(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("survey"))
    summary = synthesize(out, workers=1, **SMALL)
    return out, summary


def _table(url):
    return storage.read_parquet(url).to_pandas()


def test_outputs_exist_and_open(survey):
    out, summary = survey
    assert isinstance(summary, SynthSummary)
    assert (summary.n_tiles, summary.n_galaxies, summary.workers) == (3, 120, 1)
    assert summary.bytes_written > 0 and "120 galaxies" in str(summary) and out in str(summary)
    schema = get_schema("decals")
    tiles = read_tile_list(storage.join(out, "tiles.txt"))
    assert len(tiles) == 3
    labels, truth = _table(storage.join(out, "labels.parquet")), _table(storage.join(out, "truth.parquet"))
    assert list(labels.columns) == ["object_id", "tile", "row", *schema.answer_columns, "total_votes"]
    assert all(labels[c].dtype == np.int32 for c in [*schema.answer_columns, "total_votes"])
    assert labels["object_id"].is_unique and len(labels) == len(truth) == 120
    metadata = storage.read_parquet(storage.join(out, "labels.parquet")).schema.metadata
    assert metadata[b"skymorph.seed"] == b"3" and get_schema("decals").to_json().encode() == metadata[b"skymorph.schema"]
    assert {f"{c}_true" for c in schema.answer_columns} <= set(truth.columns)
    assert {"bulge_fraction", "axis_ratio", "bar_strength", "arm_count", "arm_pitch_deg", "size_arcsec", "snr"} <= set(truth.columns)
    for url in tiles:
        tile = open_tile(url)
        assert (tile.n, tile.shape) == (40, (1, 48, 48))
        assert tile.attrs["bands"] == ["r"] and tile.attrs["stretch"]["kind"] == "asinh"
        assert tile.attrs["pixel_scale_arcsec"] == pytest.approx(32 / 48)
        rows = truth[truth["tile"] == tile.name].sort_values("row")
        object_id, ra, dec = tile.read_coords()
        np.testing.assert_array_equal(rows["object_id"], object_id)
        np.testing.assert_array_equal(rows["ra"], ra)
        np.testing.assert_array_equal(rows["dec"], dec)
        np.testing.assert_array_equal(rows["row"], np.arange(40))


def test_positions_fall_in_their_healpix_tile(survey):
    from astropy import units as u
    from cdshealpix import nested

    out, _ = survey
    for url in read_tile_list(storage.join(out, "tiles.txt")):
        tile = open_tile(url)
        order, pixel = tile.attrs["healpix_order"], tile.attrs["healpix_pixel"]
        assert tile.name == f"hpx{order}_{pixel:05d}"
        _, ra, dec = tile.read_coords()
        got = nested.lonlat_to_healpix(ra * u.deg, dec * u.deg, order)
        assert np.all(got == pixel)
        assert np.ptp(ra) > 0.3 and np.ptp(dec) > 0.3  # spread over the ~1.8 degree pixel, not one point
        assert 120 <= nested.healpix_to_lonlat(np.array([pixel], np.uint64), order)[0].deg[0] < 250


def test_votes_follow_the_decision_tree(survey):
    out, _ = survey
    labels = _table(storage.join(out, "labels.parquet"))
    schema = get_schema("decals")
    for q in schema.questions:
        asked = labels[[f"{q.name}_{a}" for a in q.answers]].sum(axis=1)
        expected = labels["total_votes"] if q.asked_by is None else labels["_".join(q.asked_by)]
        np.testing.assert_array_equal(asked, expected, err_msg=q.name)
    assert labels["total_votes"].between(15, 70).all() and abs(labels["total_votes"].mean() - 40) < 4


def test_survey_votes_match_its_truth(survey):
    out, _ = survey
    labels = _table(storage.join(out, "labels.parquet"))
    truth = _table(storage.join(out, "truth.parquet"))
    observed = labels["smooth_or_featured_smooth"] / labels["total_votes"]
    assert np.corrcoef(observed, truth["smooth_or_featured_smooth_true"])[0, 1] > 0.8
    asked = labels["disk_edge_on_yes"] + labels["disk_edge_on_no"]
    edge_on = (truth["axis_ratio"] < 0.2) & ~truth["smooth"] & (asked >= 10)
    face_on = (truth["axis_ratio"] > 0.6) & ~truth["smooth"] & (asked >= 10)
    assert edge_on.sum() >= 3 and face_on.sum() >= 3
    assert (labels["disk_edge_on_yes"] / asked)[edge_on].mean() > 0.6
    assert (labels["disk_edge_on_yes"] / asked)[face_on].mean() < 0.3


def test_same_seed_same_bytes_in_parallel_and_serial(survey, tmp_path):
    out, _ = survey
    again = str(tmp_path / "again")
    synthesize(again, workers=2, **SMALL)
    for name in ("labels.parquet", "truth.parquet", "tiles.txt"):
        assert storage.read_bytes(storage.join(out, name)) == storage.read_bytes(storage.join(again, name)), name
    for a, b in zip(read_tile_list(storage.join(out, "tiles.txt")), read_tile_list(storage.join(again, "tiles.txt"))):
        np.testing.assert_array_equal(open_tile(a).read_images(), open_tile(b).read_images())


def test_different_seed_differs(survey, tmp_path):
    out, _ = survey
    other = str(tmp_path / "other")
    synthesize(other, workers=1, **{**SMALL, "seed": 4})
    assert storage.read_bytes(storage.join(out, "labels.parquet")) != storage.read_bytes(storage.join(other, "labels.parquet"))
    first = lambda root: open_tile(read_tile_list(storage.join(root, "tiles.txt"))[0]).read_images()  # noqa: E731
    assert not np.array_equal(first(out), first(other))


def test_survey_on_s3(s3_bucket, tmp_path):
    out, local = f"{s3_bucket}/synth", str(tmp_path / "synth")
    summary = synthesize(out, n_tiles=2, per_tile=16, size=32, workers=1, progress=False)
    synthesize(local, n_tiles=2, per_tile=16, size=32, workers=1, progress=False)
    assert summary.n_galaxies == 32
    tiles = read_tile_list(f"{out}/tiles.txt")
    assert tiles == sorted(tiles) and all(t.startswith(f"{out}/tiles/hpx5_") for t in tiles)
    assert sum(open_tile(t).n for t in tiles) == 32
    # The same survey as written locally: same rows, same pixels.
    for name in ("labels.parquet", "truth.parquet"):
        remote_table = storage.read_parquet(f"{out}/{name}")
        assert remote_table.num_rows == 32 and remote_table.equals(storage.read_parquet(f"{local}/{name}")), name
    for remote_tile, local_tile in zip(tiles, read_tile_list(f"{local}/tiles.txt"), strict=True):
        np.testing.assert_array_equal(open_tile(remote_tile).read_images(), open_tile(local_tile).read_images())


def test_a_survey_at_out_is_refused_unless_overwrite_which_leaves_none_of_it(s3_bucket):
    """Writing over a survey in place used to leave its extra tile stores beside the new list."""
    out = f"{s3_bucket}/synth"
    tiny = dict(per_tile=8, size=16, workers=1, progress=False)
    synthesize(out, n_tiles=4, **tiny)
    storage.atomic_write_text(f"{out}/notes.txt", "mine")
    with pytest.raises(InputError, match=rf"--out '{out}' already holds a survey \(tiles.txt, labels.parquet, "
                                         r"truth.parquet, 4 tile store\(s\) in tiles/\); choose another --out or pass --overwrite"):
        synthesize(out, n_tiles=2, **tiny)
    synthesize(out, n_tiles=2, seed=1, overwrite=True, **tiny)
    fs, path = storage.filesystem(out)
    stores = sorted(p.rsplit("/", 1)[-1] for p in fs.ls(f"{path}/tiles", refresh=True))
    assert [url.rsplit("/", 1)[-1] for url in read_tile_list(f"{out}/tiles.txt")] == stores and len(stores) == 2
    assert _table(f"{out}/labels.parquet").shape[0] == 16
    assert storage.read_text(f"{out}/notes.txt") == "mine"  # not the survey's: kept


def test_a_survey_being_written_is_refused_to_a_second_writer_and_its_lock_goes_with_it(s3_bucket):
    """Two writers of one new --out both found it empty and wrote tile stores of the same names."""
    out = f"{s3_bucket}/synth"
    tiny = dict(n_tiles=2, per_tile=8, size=16, workers=1, progress=False)
    with writing_survey(out, False, None, "survey ingest"):  # this process: alive, so the lock is not stale
        storage.atomic_write_text(f"{out}/tiles.txt", "# the first writer's, half made\n")
        with pytest.raises(CatalogError, match=rf"^'{out}' is being written by another `skymorph survey ingest` \(host .*, pid "
                                               rf"{os.getpid()}, started .* UTC, heartbeat \d+ s ago\); wait for it to finish, or "
                                               rf"if it is dead, remove {out}/{WRITER_LOCK} \(it goes stale 300 s after"):
            synthesize(out, **tiny)  # not "already holds a survey ... pass --overwrite", which would destroy the first's
    synthesize(out, **tiny, overwrite=True)
    assert not storage.exists(f"{out}/{WRITER_LOCK}") and _table(f"{out}/labels.parquet").shape[0] == 16


def test_overwrite_with_a_footprint_too_small_refuses_before_the_old_survey_is_removed(tmp_path):
    out = str(tmp_path / "survey")
    tiny = dict(per_tile=4, size=16, workers=1, progress=False, healpix_order=0)
    synthesize(out, n_tiles=1, **tiny)
    labels = _table(f"{out}/labels.parquet")
    with pytest.raises(InputError, match="the footprint holds only 1 HEALPix pixels of order 0, fewer than the 5 tiles"):
        synthesize(out, n_tiles=5, footprint=Footprint(0, 10, 0, 10), overwrite=True, **tiny)
    assert len(read_tile_list(f"{out}/tiles.txt")) == 1 and open_tile(read_tile_list(f"{out}/tiles.txt")[0]).n == 4
    assert _table(f"{out}/labels.parquet").equals(labels)


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_out_holding_other_files_is_refused_with_or_without_overwrite(tmp_path, request, where):
    """synth wrote its survey into any directory: into a skymorph catalog, which `skymorph run` then refused
    ("holds 'labels.parquet', 'tiles', ... which a skymorph catalog does not")."""
    out = f"{request.getfixturevalue('s3_bucket')}/mine" if where == "s3" else str(tmp_path / "mine")
    fs, root = storage.filesystem(out)
    fs.makedirs(root, exist_ok=True)
    fs.pipe(f"{root}/notes.txt", b"mine")
    tiny = dict(n_tiles=1, per_tile=4, size=16, workers=1, progress=False)
    for overwrite in (False, True):
        with pytest.raises(InputError) as refused:
            synthesize(out, overwrite=overwrite, **tiny)
        assert str(refused.value) == (f"--out {out!r} holds 'notes.txt', which a survey does not (it has no tiles.txt or "
                                      "tiles/*.zarr); give a new or empty --out (--overwrite replaces only a survey, never "
                                      "other files)")
        fs.invalidate_cache()
        assert [p.rsplit("/", 1)[-1] for p in fs.find(root)] == ["notes.txt"]
    fs.rm(f"{root}/notes.txt")
    # a labels.parquet of the user's own (the active-learning loop writes one) is no survey: --overwrite deleted it
    fs.pipe(f"{root}/labels.parquet", b"my labels")
    for overwrite in (False, True):
        with pytest.raises(InputError, match=r"holds 'labels.parquet', which a survey does not \(it has no tiles.txt"):
            synthesize(out, overwrite=overwrite, **tiny)
        fs.invalidate_cache()
        assert fs.cat(f"{root}/labels.parquet") == b"my labels"
    fs.rm(f"{root}/labels.parquet")  # emptied: taken
    if where == "s3":  # a console's "folder" marker (the key "mine/") is the prefix itself, not a file in it
        fs.pipe(f"{root}/", b"")
    assert synthesize(out, **tiny).n_galaxies == 4
    assert len(read_tile_list(f"{out}/tiles.txt")) == 1 and _table(f"{out}/labels.parquet").shape[0] == 4


def test_cli_refuses_a_catalog_directory_and_takes_an_empty_one(tmp_path, capsys):
    catalog = tmp_path / "catalog"
    for name in ("dataset/Norder=0/Dir=0/Npix=1/part-x.parquet", "_skymorph/manifest.json", "hats.properties",
                 "partition_info.csv", ".tiles.txt.0123456789abcdef0123456789abcdef.tmp"):
        (catalog / name).parent.mkdir(parents=True, exist_ok=True)
        (catalog / name).write_text("")
    args = ["survey", "synth", "--tiles", "1", "--per-tile", "4", "--size", "16", "--workers", "1"]
    assert main([*args, "--out", str(catalog), "--overwrite"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [
        f"skymorph: error: --out {str(catalog)!r} holds '_skymorph', 'dataset', 'hats.properties' and 1 more, which a "
        "survey does not (it has no tiles.txt or tiles/*.zarr); give a new or empty --out (--overwrite replaces only a "
        "survey, never other files)"]
    assert sorted(p.name for p in catalog.iterdir()) == [
        ".tiles.txt.0123456789abcdef0123456789abcdef.tmp", "_skymorph", "dataset", "hats.properties", "partition_info.csv"]
    # an empty directory, or one left by a survey stopped early (an empty tiles/, a temporary file), is taken
    empty, stopped = tmp_path / "empty", tmp_path / "stopped"
    empty.mkdir()
    (stopped / "tiles").mkdir(parents=True)
    (stopped / ".labels.parquet.0123456789abcdef0123456789abcdef.tmp").write_text("")
    for out in (empty, stopped):
        assert main([*args, "--out", str(out)]) == 0
        assert len(read_tile_list(str(out / "tiles.txt"))) == 1


def test_vote_fractions_follow_the_truth():
    """True fractions respond to the parameters they should, on many drawn galaxies (no images)."""
    rng = np.random.default_rng(0)
    p = GalaxyParams.draw(rng, 4000)
    schema = get_schema("decals")
    f = true_vote_fractions(p, schema)
    col = lambda name: f[:, schema.answer_columns.index(name)]  # noqa: E731
    for q, cols in zip(schema.questions, schema.question_slices):
        np.testing.assert_allclose(f[:, cols].sum(axis=1), 1.0, err_msg=q.name)
    seen = (p.snr > 60) & (p.size_arcsec > 3)
    disks = ~p.smooth & seen
    assert col("disk_edge_on_yes")[disks & (p.axis_ratio < 0.2)].mean() > 0.8
    assert col("disk_edge_on_yes")[disks & (p.axis_ratio > 0.6)].mean() < 0.1
    face_on = disks & (p.axis_ratio > 0.7)
    assert col("bar_strong")[face_on & (p.bar_strength > 0.8)].mean() > 0.5
    assert col("bar_no")[face_on & (p.bar_strength == 0)].mean() > 0.7
    assert col("has_spiral_arms_yes")[face_on & (p.arm_count > 0) & (p.arm_amplitude > 0.5)].mean() > 0.8
    two_arms = face_on & (p.arm_count == 2)
    arm_counts = f[two_arms][:, schema.question_slices[schema.question_index("spiral_arm_count")]]
    assert np.mean(arm_counts.argmax(axis=1) == 1) > 0.9  # answer "2"
    assert col("smooth_or_featured_smooth")[p.smooth & seen].mean() > 0.8
    assert col("merging_none")[seen & (p.companion_flux_ratio == 0)].mean() > 0.8
    assert col("merging_none")[seen & (p.companion_flux_ratio > 0)].mean() < 0.2
    # hard to see -> close to uniform
    faint = disks & (p.snr < 8) & (p.size_arcsec < 2)
    bar = f[faint][:, schema.question_slices[schema.question_index("bar")]]
    assert np.all(np.abs(bar - 1 / 3) < 0.15)


def test_votes_estimate_the_true_fractions():
    schema = get_schema("gz2")
    rng = np.random.default_rng(1)
    p = GalaxyParams.draw(rng, 3000)
    f = true_vote_fractions(p, schema)
    counts, total = simulate_votes(f, schema, 40, rng)
    root = schema.question_slices[0]
    observed = counts[:, root] / total[:, None]
    # multinomial sampling: the observed fraction's error is ~ sqrt(f (1 - f) / N)
    assert np.abs(observed - f[:, root]).mean() < 0.06
    assert np.corrcoef(observed[:, 0], f[:, 0])[0, 1] > 0.9
    for q, cols in zip(schema.questions, schema.question_slices):
        asked = total if q.asked_by is None else counts[:, schema.answer_index(*q.asked_by)]
        np.testing.assert_array_equal(counts[:, cols].sum(axis=1), asked, err_msg=q.name)


def test_unknown_questions_get_uniform_fractions(tmp_path):
    path = tmp_path / "tree.json"
    path.write_text(json.dumps({"name": "mine", "questions": [
        {"name": "colour", "answers": ["red", "blue", "green"], "asked_by": None},
        {"name": "disk_edge_on", "answers": ["yes", "no"], "asked_by": ["colour", "blue"]},
        {"name": "bar", "answers": ["maybe", "no"], "asked_by": None},
    ]}))
    schema = get_schema(str(path))
    p = GalaxyParams.draw(np.random.default_rng(0), 50)
    f = true_vote_fractions(p, schema)
    np.testing.assert_allclose(f[:, 0:3], 1 / 3)
    np.testing.assert_allclose(f[:, 5:7], 1 / 2)  # "maybe" is not an answer this module knows
    assert np.ptp(f[:, 3]) > 0.3  # disk_edge_on is known: it follows the axis ratio


@pytest.mark.parametrize(
    "amplitude, r_eff, n, x_0, y_0, ellip, theta",
    [(1.0, 5.0, 4.0, 0.0, 0.0, 0.3, 0.5), (2.5, 12.0, 1.0, 3.2, -1.5, 0.7, 2.0), (0.7, 3.0, 0.5, -2.0, 4.0, 0.0, 0.0),
     (1.3, 8.0, 2.3, 0.4, 0.6, 0.5, -1.0)],
)
def test_image_model_matches_astropy_sersic2d(amplitude, r_eff, n, x_0, y_0, ellip, theta):
    from astropy.modeling.models import Sersic2D

    y, x = np.mgrid[-20:21, -20:21].astype(np.float64) + 0.25
    expected = Sersic2D(amplitude, r_eff, n, x_0, y_0, ellip, theta)(x, y)
    np.testing.assert_allclose(sersic2d(x, y, amplitude, r_eff, n, x_0, y_0, ellip, theta), expected, rtol=1e-10)
    # batched: (B, 1, 1) parameters on one grid give B images, the second the same model again
    batch = sersic2d(x, y, np.array([amplitude, amplitude])[:, None, None], r_eff, n, x_0, y_0, ellip, theta)
    np.testing.assert_allclose(batch[1], expected, rtol=1e-10)


@pytest.mark.parametrize("fwhm_px, beta, half", [(4.0, 3.5, 16), (1.7, 2.5, 7), (6.2, 4.765, 25)])
def test_psf_matches_astropy_moffat2dkernel(fwhm_px, beta, half):
    from astropy.convolution import Moffat2DKernel

    gamma = fwhm_px / (2 * np.sqrt(2 ** (1 / beta) - 1))
    expected = Moffat2DKernel(gamma, beta, x_size=2 * half + 1, y_size=2 * half + 1, mode="center").array
    np.testing.assert_allclose(moffat_kernel(fwhm_px, beta, half), expected / expected.sum(), rtol=1e-10)


def test_images_reflect_the_truth():
    rng = np.random.default_rng(2)
    p = GalaxyParams.draw(rng, 96)
    images = render(p, 64, 1.2, rng)
    centre = images[:, 28:36, 28:36].mean(axis=(1, 2))
    # brighter (higher SNR, same size) galaxies have brighter centres: rank correlation
    ranks = lambda a: np.argsort(np.argsort(a))  # noqa: E731
    assert np.corrcoef(ranks(centre), ranks(p.snr / p.size_arcsec))[0, 1] > 0.6
    # sky is pure noise: an empty corner has mean ~0 and the sky sigma
    corner = images[:, :6, :6]
    assert abs(corner.mean()) < 2 and corner.std() == pytest.approx(np.sqrt(300 + 36), rel=0.25)
    u8 = render(p, 64, 1.2, np.random.default_rng(3), stretch=True)
    assert u8.dtype == np.uint8 and 10 < np.median(u8) < 60 and u8.max() > 150


@pytest.mark.parametrize(
    "kwargs, error, message",
    [
        (dict(n_tiles=0), InputError, r"n_tiles \(--tiles\) must be an integer >= 1, got 0"),
        (dict(size=8), InputError, r"size \(--size\) must be an integer >= 16"),
        (dict(size=100_000), InputError, r"^size \(--size\) must be at most 1024, got 100000; galaxy models train at 64 to 300$"),
        (dict(n_volunteers=0), InputError, "n_volunteers"),
        (dict(n_volunteers=float("inf")), InputError, r"n_volunteers \(--volunteers\) must be a finite number > 0, got inf"),
        (dict(n_volunteers=1e8), InputError, r"^n_volunteers \(--volunteers\) must be at most 1000, as `skymorph run "
                                              r"--n-volunteers`, got 1e\+08$"),  # labels that train refused
        (dict(healpix_order=11), InputError, r"healpix_order \(--healpix-order\) must be at most 10"),
        (dict(schema="decal"), SchemaError, "Did you mean 'decals'"),
        (dict(n_tiles=5, footprint=Footprint(10, 11, 0, 1)), InputError, "only 0 HEALPix pixels of order 5"),
    ],
)
def test_bad_arguments(tmp_path, kwargs, error, message):
    with pytest.raises(error, match=message):
        synthesize(str(tmp_path / "out"), **{**SMALL, **kwargs})


def test_footprint_is_validated():
    with pytest.raises(InputError, match="ra_min < ra_max"):
        Footprint(200, 100, 0, 10)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--tiles", "-2"], r"n_tiles \(--tiles\) must be an integer >= 1, got -2"),
        (["--schema", "nosuch"], "unknown schema 'nosuch'"),
        (["--per-tile", "0"], r"per_tile \(--per-tile\)"),
        (["--seed", "-1"], r"--seed must be a non-negative integer below 2\*\*64, got -1"),
        (["--seed", str(2**64)], r"--seed must be a non-negative integer below 2\*\*64, got 18446744073709551616"),
    ],
)
def test_cli_bad_input_is_one_line(tmp_path, capsys, args, message):
    assert main(["survey", "synth", "--out", str(tmp_path / "o"), *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skymorph: error: ")
    assert re.search(message, err[0])


def test_cli_unwritable_out(tmp_path, capsys):
    blocker = tmp_path / "a_file"
    blocker.write_text("not a directory")
    assert main(["survey", "synth", "--out", str(blocker / "survey"), "--tiles", "1", "--per-tile", "2"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "cannot write to --out" in err[0]


def test_cli_missing_bucket(s3, capsys):
    assert main(["survey", "synth", "--out", "s3://no-such-bucket-here/x", "--tiles", "1", "--per-tile", "2"]) == 2
    assert "bucket 'no-such-bucket-here' does not exist" in capsys.readouterr().err


def test_cli_writes_a_survey(tmp_path, capsys):
    out = str(tmp_path / "cli")
    assert main(["survey", "synth", "--out", out, "--tiles", "1", "--per-tile", "8", "--size", "32",
                 "--workers", "1", "--schema", "gz2"]) == 0
    assert "1 tiles, 8 galaxies" in capsys.readouterr().out
    labels = storage.read_parquet(storage.join(out, "labels.parquet"))
    assert "bar_yes" in labels.column_names and labels.num_rows == 8


def test_a_component_between_the_pixels_of_a_small_grid_is_not_a_black_image(tmp_path):
    """At 16 px, a strong bar in an edge-on disk fell between the pixel centres: 0 / 0 made the whole
    galaxy NaN, written as an all-black image beside a truth table giving it snr 77."""
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("error", RuntimeWarning)
        synthesize(str(tmp_path / "s"), n_tiles=1, per_tile=16, size=16, seed=0, workers=1)
    (tile,) = read_tile_list(str(tmp_path / "s" / "tiles.txt"))
    assert open_tile(tile).read_images().max(axis=(1, 2, 3)).min() > 100


def _synth_with_two_workers(out):
    """``survey synth --workers 2`` started, and its two workers once they make tiles."""
    import subprocess
    import sys
    import time

    import psutil

    process = subprocess.Popen([sys.executable, "-m", "skymorph", "survey", "synth", "--out", str(out), "--tiles", "60",
                                "--per-tile", "300", "--size", "32", "--workers", "2", "--healpix-order", "6"],
                               stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 120
    while not any((out / "tiles").glob("*.zarr")) and time.monotonic() < deadline:
        time.sleep(0.1)
    workers = [p for p in psutil.Process(process.pid).children() if "spawn_main" in " ".join(p.cmdline())]
    assert len(workers) == 2, [p.cmdline() for p in psutil.Process(process.pid).children()]
    return process, workers


def test_sigterm_stops_a_pool_of_workers_without_making_the_tiles_queued(tmp_path):
    """The with block's own shutdown() reset cancel_futures: on SIGTERM, survey synth --workers 2 went on
    making every queued tile (52 s), then threw them away, past a batch system's grace period."""
    import signal

    out = tmp_path / "survey"
    process, _ = _synth_with_two_workers(out)
    process.send_signal(signal.SIGTERM)
    _, err = process.communicate(timeout=120)
    made = len(list((out / "tiles").glob("*.zarr")))
    assert process.returncode == 143 and "terminated" in err, err[-2000:]
    assert made < 20, f"{made} of 60 tiles made after SIGTERM"
    assert not (out / "tiles.txt").exists()


@pytest.mark.parametrize("size", [18, 33, 128, 129])
def test_a_rendered_galaxy_is_centred_where_the_truth_puts_it(size):
    """Where the FFT's padding and the cutout differed by an odd number of pixels (sizes 18 and 129 of 2,000
    sizes and seeings, 941), every galaxy sat half a pixel off its truth's offset_x_px and offset_y_px."""
    from dataclasses import replace

    from skymorph.survey._galaxy import GalaxyParams, render

    rng = np.random.default_rng(0)
    params = GalaxyParams.draw(rng, 32)
    params = replace(params, snr=np.full(32, 1e9), companion_flux_ratio=np.zeros(32), arm_count=np.zeros(32, np.int64),
                     bar_strength=np.zeros(32))
    image = render(params, size, 1.2, np.random.default_rng(1))
    yy, xx = np.mgrid[:size, :size]
    total = image.sum(axis=(1, 2))
    centroid_x = (image * xx).sum(axis=(1, 2)) / total - (size - 1) / 2
    centroid_y = (image * yy).sum(axis=(1, 2)) / total - (size - 1) / 2
    assert abs(np.median(centroid_x - params.offset_x_px)) < 0.05 and abs(np.median(centroid_y - params.offset_y_px)) < 0.05


def test_a_killed_worker_is_a_one_line_error_and_workers_end_with_their_parent(tmp_path):
    """A worker killed (the OOM killer) ended survey synth as an internal error with BrokenProcessPool's
    traceback; with the parent killed, its workers went on making tiles into the survey a rerun had made
    since, then waited on their queue for ever."""
    import signal

    import psutil

    process, workers = _synth_with_two_workers(tmp_path / "a")
    workers[0].send_signal(signal.SIGKILL)
    _, err = process.communicate(timeout=120)
    # (then multiprocessing's resource tracker may warn of the semaphore the killed worker held)
    assert process.returncode == 2 and (
        "skymorph: error: a tile-making process died (killed, or out of memory?); rerun with --overwrite, with fewer "
        "--workers or a smaller --per-tile or --size if memory ran out") in err.splitlines(), err[-2000:]
    assert "Traceback" not in err

    process, workers = _synth_with_two_workers(tmp_path / "b")
    process.send_signal(signal.SIGKILL)
    process.wait(timeout=30)
    gone, alive = psutil.wait_procs(workers, timeout=30)
    assert not alive, [p.pid for p in alive]
