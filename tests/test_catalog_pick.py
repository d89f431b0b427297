"""skymorph.catalog.pick and `skymorph catalog pick`: top-n against a direct sort, power sampling
against its distribution, exclusions, the subject manifest and the gallery."""

from __future__ import annotations

import glob
import importlib
import os

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skymorph.catalog import open_catalog, pick
from skymorph.catalog.pick import gumbel_keys, hash_uniform, model_salt
from skymorph.cli import main
from skymorph.errors import InputError, SchemaError
from skymorph.testing.catalogs import FAKE_MODEL_SHA256, write_synthetic_catalog


@pytest.fixture(scope="module")
def synthetic(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("pick") / "catalog")
    return write_synthetic_catalog(out, 2000, per_tile=400, tile_deg=1.0, order=6, workers=1)


@pytest.fixture(scope="module")
def catalog(synthetic) -> str:
    return synthetic.url


@pytest.fixture(scope="module")
def full(catalog):
    files = sorted(glob.glob(os.path.join(catalog, "dataset", "Norder=*", "Dir=*", "Npix=*", "part-*.parquet")))
    return pa.concat_tables(pq.read_table(f) for f in files).to_pandas()


def _scored(frame, column):
    """``frame`` with the score ``column``: a question's asked x bald is computed here, in float32 as
    the catalog's columns are."""
    if not column.endswith("_asked_bald"):
        return frame
    q = column.removesuffix("_asked_bald")
    return frame.assign(**{column: frame[f"{q}_asked"].astype(np.float32) * frame[f"{q}_bald"].astype(np.float32)})


def _direct_top(frame, column, n):
    frame = _scored(frame, column)
    return frame.sort_values([column, "object_id"], ascending=[False, True]).head(n).object_id.tolist()


@pytest.mark.parametrize("question, column, weighted", [
    (None, "bald_total", None), ("bar", "bar_asked_bald", None), ("merging", "merging_asked_bald", True), ("bar", "bar_bald", False),
])
def test_top_equals_direct_sort(catalog, full, question, column, weighted):
    batch = pick(catalog, 25, question=question, weight_by_asked=weighted)
    assert batch["object_id"].to_pylist() == _direct_top(full, column, 25)
    assert batch["rank"].to_pylist() == list(range(1, 26))
    by_id = _scored(full, column).set_index("object_id")
    np.testing.assert_array_equal(batch[column].to_numpy(), by_id.loc[batch["object_id"].to_pylist(), column])
    assert batch.schema.field(column).type == pa.float32()  # the catalog's: a CSV shows no spurious digits
    if column.endswith("_asked_bald"):
        from skymorph.catalog.writer import describe_schema

        assert "its term in bald_total" in describe_schema(batch.schema).field(column).metadata[b"description"].decode()
    np.testing.assert_allclose(batch["ra"].to_numpy(), by_id.loc[batch["object_id"].to_pylist(), "ra"])


def test_exclusions_never_picked(catalog, full, tmp_path):
    top = _direct_top(full, "bald_total", 60)
    pd.DataFrame({"object_id": top[:30], "note": "labelled"}).to_csv(tmp_path / "done.csv", index=False)
    pq.write_table(pa.table({"object_id": np.array(top[30:60], dtype=np.int64)}), tmp_path / "retired.parquet")
    batch = pick(catalog, 20, exclude=str(tmp_path / "done.csv"))
    assert batch["object_id"].to_pylist() == top[30:50]
    batch = pick(catalog, 20, exclude=top[:60])
    assert batch["object_id"].to_pylist() == _direct_top(full[~full.object_id.isin(top[:60])], "bald_total", 20)
    # a table, as read from the labels: iterating a DataFrame gave its column names ("invalid literal for int()")
    labelled = pd.DataFrame({"votes": 1, "note": [object()] * 60, "object_id": top[:60]})  # a column Arrow cannot convert
    arrow = pa.table({"object_id": top[:60]})
    for table in (labelled, labelled.set_index("object_id"), arrow, arrow.to_batches()[0]):
        assert pick(catalog, 20, exclude=table)["object_id"].to_pylist() == batch["object_id"].to_pylist()
    with pytest.raises(InputError, match=r"the exclude table has no object_id column \(columns: votes, note, id\); name its id "
                                         r"column with --exclude-id-column \(exclude_id_column= in Python\)"):
        pick(catalog, 20, exclude=labelled.rename(columns={"object_id": "id"}))
    wide = pd.DataFrame({f"smooth-or-featured_answer-{i}_fraction": [0.5] for i in range(118)})  # a volunteer table's width
    with pytest.raises(InputError, match=r"\(columns: smooth-or-featured_answer-0_fraction, .*, smooth-or-featured_answer-11_fraction, "
                                         r"\.\.\. \(106 more\)\); name its id column"):
        pick(catalog, 20, exclude=wide)
    excluded = set(full.object_id.sample(frac=0.5, random_state=1))
    for seed in range(5):
        batch = pick(catalog, 100, strategy="power", seed=seed, exclude=sorted(excluded))
        assert not excluded & set(batch["object_id"].to_pylist())
    retired = set(top[30:60])
    assert not retired & set(pick(catalog, 200, strategy="power", exclude=str(tmp_path / "retired.parquet"))["object_id"].to_pylist())
    # a Galaxy Zoo table names its ids otherwise: --exclude-id-column
    pd.DataFrame({"galaxy_id": top[:30]}).to_csv(tmp_path / "gz.csv", index=False)
    out = tmp_path / "gz-batch.csv"
    assert main(["catalog", "pick", catalog, "--n", "20", "--exclude", str(tmp_path / "gz.csv"), "--exclude-id-column", "galaxy_id",
                 "--out", str(out)]) == 0
    assert pd.read_csv(out)["object_id"].tolist() == top[30:50]
    # the labels and a batch still with the volunteers: several files
    pd.DataFrame({"galaxy_id": top[30:40]}).to_csv(tmp_path / "waiting.csv", index=False)
    assert main(["catalog", "pick", catalog, "--n", "20", "--exclude", str(tmp_path / "gz.csv"), str(tmp_path / "waiting.csv"),
                 "--exclude-id-column", "galaxy_id", "--out", str(out), "--overwrite"]) == 0
    assert pd.read_csv(out)["object_id"].tolist() == top[40:60]


def test_ids_to_exclude_of_which_none_is_in_the_catalog_are_warned_of(catalog, full, capsys):
    """A survey's own ids (GZ2's galaxy_id) given to --exclude excluded nothing, without a word: the
    volunteers were sent galaxies they had classified."""
    capsys.readouterr()
    foreign = np.arange(10**15, 10**15 + 5)
    assert pick(catalog, 5, exclude=foreign)["object_id"].to_pylist() == _direct_top(full, "bald_total", 5)
    assert capsys.readouterr().err == (f"skymorph: warning: none of the 5 ids to exclude (object_id) is a galaxy of catalog "
                                       f"{catalog!r}, so this batch excludes nothing: they must be the catalog's object_id "
                                       "(`survey ingest`'s labels.parquet, or `labels match` for a table with ra and dec)\n")
    pick(catalog, 5, exclude=[*foreign, int(full.object_id.iloc[0])])  # one of them is: no warning
    assert capsys.readouterr().err == ""


def test_exclude_reads_every_table_the_labels_may_be(catalog, full, tmp_path):
    """A FITS table, a gzipped CSV (as Galaxy Zoo 2's table is published) and a .txt CSV, as ``train``
    reads labels: --exclude took only .csv and .parquet, and refused the labels' own FITS file."""
    import gzip

    from astropy.table import Table

    top = _direct_top(full, "bald_total", 30)
    Table({"galaxy_id": np.array(top[:10], dtype=np.int64), "ra": np.zeros(10)}).write(tmp_path / "done.fits")
    (tmp_path / "done.csv.gz").write_bytes(gzip.compress(pd.DataFrame({"galaxy_id": top[10:20]}).to_csv(index=False).encode()))
    pd.DataFrame({"galaxy_id": top[20:25]}).to_csv(tmp_path / "done.txt", index=False)
    files = [str(tmp_path / name) for name in ("done.fits", "done.csv.gz", "done.txt")]
    assert pick(catalog, 5, exclude=files, exclude_id_column="galaxy_id")["object_id"].to_pylist() == top[25:30]
    # a column named 0 (pandas' name for a Series' values) is a name in Parquet, not a CSV's missing header
    pd.Series(top[:5]).to_frame().to_parquet(tmp_path / "done.parquet")
    assert pick(catalog, 5, exclude=str(tmp_path / "done.parquet"), exclude_id_column="0")["object_id"].to_pylist() == top[5:10]


def test_a_batch_in_every_format_pick_writes_reads_back_as_an_exclude(catalog, full, tmp_path):
    """pick --out offers .vot and .xml, which --exclude (and labels ingest --batch) could not read."""
    from skymorph.catalog import pick_to

    top = _direct_top(full, "bald_total", 8)
    for suffix in (".csv", ".parquet", ".fits", ".vot", ".xml"):
        out = str(tmp_path / f"first{suffix}")
        assert pick_to(catalog, 4, out)["object_id"].to_pylist() == top[:4]
        assert pick(catalog, 4, exclude=out)["object_id"].to_pylist() == top[4:8], suffix


def test_exclude_ids_stay_exact_beside_empty_cells_and_fractions_are_refused(tmp_path):
    """An empty id cell made the column floats: survey ids above 2^53 were rounded to multiples of 256, so
    labelled galaxies were picked again and others dropped, with only a numpy RuntimeWarning."""
    from skymorph.catalog.pick import read_ids

    big = [1237648720693755901, 1237648720693755912]
    (tmp_path / "pending.csv").write_text(f"object_id,votes\n{big[0]},3\n,1\n{big[1]},2\n")  # a row with no id yet
    pd.DataFrame({"object_id": pd.array([*big, None], dtype="Int64")}).to_parquet(tmp_path / "pending.parquet")
    for name in ("pending.csv", "pending.parquet"):
        assert read_ids(str(tmp_path / name)).tolist() == big
    (tmp_path / "half.csv").write_text("object_id\n1.5\n2\n")
    with pytest.raises(InputError, match=r"--exclude '.*half.csv': object_id must hold whole numbers within int64 \(Float value 1.5"):
        read_ids(str(tmp_path / "half.csv"))
    # pandas wrote the ids as floats beside the empty cell: beyond 2^53 they name neighbouring galaxies
    pd.DataFrame({"object_id": [float(big[0]), None]}).to_parquet(tmp_path / "floats.parquet")
    assert int(pd.read_parquet(tmp_path / "floats.parquet").object_id.iloc[0]) != big[0]
    with pytest.raises(InputError, match=r"--exclude '.*floats.parquet': object_id is stored as floats, which hold whole "
                                         r"numbers only up to 2\^53"):
        read_ids(str(tmp_path / "floats.parquet"))
    pd.DataFrame({"object_id": ["9223372036854775808", "1"]}).to_parquet(tmp_path / "huge.parquet")  # digits beyond int64
    with pytest.raises(InputError, match=r"--exclude '.*huge.parquet': object_id must hold whole numbers within int64"):
        read_ids(str(tmp_path / "huge.parquet"))
    # ids handed over as an array or a Series are checked as a file's are, not cast (which rounded and truncated)
    assert read_ids(pd.Series(big + [None], dtype="Int64")).tolist() == big and read_ids(range(3)).tolist() == [0, 1, 2]
    with pytest.raises(InputError, match=r"the exclude ids: object_id is stored as floats, which hold whole numbers only up to 2\^53"):
        read_ids(pd.Series([big[0], None]).dropna())
    with pytest.raises(InputError, match=r"the exclude ids: object_id must hold whole numbers within int64 \(Float value 1.5"):
        read_ids(np.array([1.5, 2.0]))
    pd.DataFrame({"galaxy_id": ["J160453.70-041937.4", None]}).to_parquet(tmp_path / "names.parquet")
    with pytest.raises(InputError, match=r"--exclude '.*names.parquet': galaxy_id holds text \('J160453.70-041937.4'\), "
                                         "not the integer ids of the tile stores"):
        read_ids(str(tmp_path / "names.parquet"), id_column="galaxy_id")


def _splitmix64(x: int) -> int:
    """Reference splitmix64 (Steele, Lea & Flood 2014) on Python integers."""
    mask = (1 << 64) - 1
    z = (x + 0x9E3779B97F4A7C15) & mask
    z = ((z ^ (z >> 30)) * 0xBF58476D1CE4E5B9) & mask
    z = ((z ^ (z >> 27)) * 0x94D049BB133111EB) & mask
    return z ^ (z >> 31)


def test_splitmix64_gives_the_published_sequence():
    """Known answers (the generator seeded with 1234567, as on Rosetta Code's "Splitmix64" page), so that a
    constant copied wrong into both the reference above and pick's would not go unseen."""
    from skymorph.catalog.pick import _splitmix64 as picks

    golden = 0x9E3779B97F4A7C15
    states = [(1234567 + k * golden) & ((1 << 64) - 1) for k in range(3)]
    expected = [6457827717110365317, 3203168211198807973, 9817491932198370423]
    assert [_splitmix64(state) for state in states] == expected
    assert picks(np.array(states, dtype=np.uint64)).tolist() == expected


def test_hash_uniform_matches_reference():
    ids = np.array([0, 1, 12345, -7, 2**62 + 3], dtype=np.int64)
    for seed in (0, 1, 99, 2**63, 2**64 - 1):
        expected = [((_splitmix64((int(i) & ((1 << 64) - 1)) ^ _splitmix64(seed)) >> 11) + 0.5) / 2**53 for i in ids]
        np.testing.assert_array_equal(hash_uniform(ids, seed), expected)
        salt = 0x0123456789ABCDEF
        salted = [((_splitmix64((int(i) & ((1 << 64) - 1)) ^ _splitmix64(seed ^ salt)) >> 11) + 0.5) / 2**53 for i in ids]
        np.testing.assert_array_equal(hash_uniform(ids, seed, salt), salted)
    with pytest.raises(InputError, match=r"--seed must be a non-negative integer below 2\*\*64, got -1"):
        hash_uniform(ids, -1)


def _unsplitmix64(y: int) -> int:
    """The x with ``_splitmix64(x) == y``: each step undone, last first (an xorshift by s is undone by
    applying it until it settles; a product by the multiplier's inverse modulo 2**64)."""
    mask = (1 << 64) - 1

    def unshift(z: int, s: int) -> int:
        x = z
        for _ in range(64 // s + 1):
            x = z ^ (x >> s)
        return x

    z = unshift(y, 31)
    z = unshift((z * pow(0x94D049BB133111EB, -1, 1 << 64)) & mask, 27)
    z = unshift((z * pow(0xBF58476D1CE4E5B9, -1, 1 << 64)) & mask, 30)
    return (z - 0x9E3779B97F4A7C15) & mask


def test_hash_uniform_is_never_1():
    """The id whose hash has its top 53 bits set gave (2**53 - 0.5) / 2**53, which rounds to 1.0: an
    infinite Gumbel key, so a galaxy that power always picked first, whatever its BALD."""
    assert _splitmix64(_unsplitmix64(12345)) == 12345
    unsigned = _unsplitmix64((1 << 64) - 1) ^ _splitmix64(0)
    worst = np.array([unsigned], dtype=np.uint64).view(np.int64)
    u = hash_uniform(worst, 0)
    assert u[0] < 1.0 and u[0] == np.nextafter(1.0, 0.0)
    assert np.isfinite(gumbel_keys(worst, [0.01], 0)).all()


def test_power_pick_is_the_gumbel_top_k_of_the_whole_catalog(catalog, full):
    """The out-of-core merge equals the keys' top-n over every row at once, in key order."""
    for seed, beta, question, column in [(0, 1.0, None, "bald_total"), (7, 2.0, "bar", "bar_asked_bald")]:
        batch = pick(catalog, 40, question=question, strategy="power", beta=beta, seed=seed)
        scored = _scored(full, column)
        eligible = scored[scored[column] > 0]
        salt = int(FAKE_MODEL_SHA256[:16], 16)  # the catalog's model: each model's catalog draws afresh
        keys = gumbel_keys(eligible.object_id.values, eligible[column].values, seed, beta, salt)
        expected = eligible.object_id.values[np.argsort(-keys)[:40]]
        assert batch["object_id"].to_pylist() == expected.tolist()
        assert dict(batch.schema.metadata)[b"skymorph.pick"].decode().startswith("strategy=power")


def test_a_fits_or_votable_batch_says_how_it_was_picked(catalog, tmp_path):
    """Their only seed was SEED, the model's dropout-mask seed: a batch picked with --seed 5 read SEED = 0."""
    from astropy.io import fits
    from astropy.io.votable import parse_single_table
    from astropy.table import Table

    argv = ["catalog", "pick", catalog, "--n", "3", "--strategy", "power", "--seed", "5", "--beta", "2", "--out"]
    for name in ("batch.fits", "batch.vot"):
        assert main([*argv, str(tmp_path / name)]) == 0
    drawn = "strategy=power score=bald_total beta=2.0 seed=5"
    assert fits.getheader(tmp_path / "batch.fits", 1)["PICK"] == drawn
    params = {param.name: param.value for param in parse_single_table(str(tmp_path / "batch.vot")).params}
    assert params["PICK"] == drawn and "PICK = strategy=power" in Table.read(tmp_path / "batch.vot").meta["description"]
    assert main([*argv[:5], "--out", str(tmp_path / "top.fits")]) == 0
    assert fits.getheader(tmp_path / "top.fits", 1)["PICK"] == "strategy=top score=bald_total"  # neither beta nor seed


def test_power_noise_differs_between_models_with_one_seed():
    """With the noise a hash of (seed, id) alone, every round of active learning run with the default
    --seed gave each galaxy the same Gumbel noise: the same 50 of 200 came first whatever the model."""
    ids, score = np.arange(200), np.ones(200)
    first = np.argsort(-gumbel_keys(ids, score, 0, 1.0, model_salt(FAKE_MODEL_SHA256)))[:50]
    other = np.argsort(-gumbel_keys(ids, score, 0, 1.0, model_salt("f" * 64)))[:50]
    assert model_salt(FAKE_MODEL_SHA256) == int(FAKE_MODEL_SHA256[:16], 16)
    assert len(set(first) & set(other)) < 30  # 12.5 expected by chance


def test_power_is_reproducible_and_seeded(catalog):
    first = pick(catalog, 50, strategy="power", seed=3)["object_id"].to_pylist()
    assert pick(catalog, 50, strategy="power", seed=3)["object_id"].to_pylist() == first
    assert pick(catalog, 50, strategy="power", seed=4)["object_id"].to_pylist() != first


def test_gumbel_top_1_samples_in_proportion_to_bald_power():
    """Two groups of 20 with BALD 1 and 3: P(pick from the high group) = 3^beta*20 / (3^beta*20 + 20).

    2,000 fixed seeds, so the test is deterministic; the bound is 5 binomial standard deviations."""
    ids = np.arange(40, dtype=np.int64) + 10_000
    score = np.where(np.arange(40) < 20, 1.0, 3.0)
    seeds = range(2000)
    for beta in (0.0, 1.0, 2.0):
        high = np.mean([gumbel_keys(ids, score, seed, beta).argmax() >= 20 for seed in seeds])
        p = 3.0**beta / (3.0**beta + 1.0)
        assert abs(high - p) < 5 * np.sqrt(p * (1 - p) / len(seeds)), (beta, high, p)


def test_a_tiny_beta_draws_as_beta_0_without_overflow():
    """G / beta overflowed to +inf for nearly every galaxy at beta = 1e-310: ties, broken by object_id."""
    import warnings

    ids, score = np.arange(10_000, dtype=np.int64), np.linspace(0.1, 5.0, 10_000)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        tiny = gumbel_keys(ids, score, 0, 1e-310)
    assert np.isfinite(tiny).all()
    np.testing.assert_array_equal(np.argsort(-tiny), np.argsort(-gumbel_keys(ids, score, 0, 0.0)))
    half = gumbel_keys(ids, score, 0, 0.5)  # beta < 1 computed as beta ln(score) + G: the order of ln(score) + G / beta
    np.testing.assert_array_equal(np.argsort(-half), np.argsort(-(np.log(score) + 2 * (half - 0.5 * np.log(score)))))


def test_a_huge_beta_ranks_as_top_without_overflow():
    """beta * ln(score) overflowed to -inf for every galaxy (a RuntimeWarning, and a batch of arbitrary order)."""
    import warnings

    ids = np.arange(50, dtype=np.int64)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        keys = gumbel_keys(ids, np.linspace(0.1, 5.0, 50), 0, 1e308)
    assert np.argsort(-keys)[:10].tolist() == list(range(49, 39, -1))


def test_power_inclusion_increases_with_bald():
    """Batches of 10 from 50 galaxies with BALD 0.1..5: inclusion frequency over 400 seeds rises with BALD."""
    from scipy.stats import spearmanr

    ids = np.arange(50, dtype=np.int64) * 7919
    score = np.linspace(0.1, 5.0, 50)
    counts = np.zeros(50)
    for seed in range(400):
        counts[np.argsort(-gumbel_keys(ids, score, seed))[:10]] += 1
    assert spearmanr(score, counts).statistic > 0.9
    assert counts[-10:].sum() > 3 * counts[:10].sum()


def test_power_picks_lean_to_high_bald_end_to_end(catalog, full):
    means = [pick(catalog, 50, strategy="power", seed=s)["bald_total"].to_numpy().mean() for s in range(8)]
    top_mean = full.bald_total.nlargest(50).mean()
    assert full.bald_total.mean() < min(means) and max(means) < top_mean


def test_top_breaks_ties_by_the_smaller_id_and_power_never_picks_a_zero_score(catalog, full, tmp_path, capsys):
    """A copy where 10 galaxies share one positive score and every other scores 0: the fixture's scores never
    tie, so neither top's tie-break flipped to the larger id nor power admitting scores of 0 was seen."""
    import shutil

    copy = str(tmp_path / "ties")
    shutil.copytree(catalog, copy)
    positive = np.sort(full.object_id.to_numpy())[::200]
    for f in glob.glob(os.path.join(copy, "dataset", "Norder=*", "Dir=*", "Npix=*", "part-*.parquet")):
        table = pq.read_table(f)
        score = np.where(np.isin(table["object_id"].to_numpy(), positive), 0.5, 0.0).astype(np.float32)
        i = table.schema.get_field_index("bald_total")
        pq.write_table(table.set_column(i, table.schema.field(i), pa.array(score)), f)
    zero = np.setdiff1d(full.object_id.to_numpy(), positive)
    assert len(positive) == 10 and pick(copy, 13)["object_id"].to_pylist() == positive.tolist() + zero[:3].tolist()
    batch = pick(copy, 25, strategy="power", seed=1)
    assert sorted(batch["object_id"].to_pylist()) == positive.tolist() and (batch["bald_total"].to_numpy() == 0.5).all()
    assert "every galaxy scores 0" not in capsys.readouterr().err


def test_bad_arguments(catalog):
    with pytest.raises(SchemaError, match="Did you mean 'bar'"):
        pick(catalog, 5, question="barr")
    with pytest.raises(InputError, match="n must be a positive integer, got 0"):
        pick(catalog, 0)
    with pytest.raises(InputError, match=r"^strategy must be one of top, power, got 'random'\.$"):
        pick(catalog, 5, strategy="random")
    with pytest.raises(InputError, match=r"^beta \(--beta\) must be a finite number >= 0, got -1\.0$"):
        pick(catalog, 5, strategy="power", beta=-1.0)
    # the rules the command line had alone: pick() took them and ignored them
    with pytest.raises(InputError, match=r"^seed \(--seed\) applies to strategy power only"):
        pick(catalog, 5, seed=3)
    for weighted in (False, True):  # both say something about a question that is not there
        with pytest.raises(InputError, match=r"^weight_by_asked \(--weight-by-asked, --no-weight-by-asked\) applies to a "):
            pick(catalog, 5, weight_by_asked=weighted)


def test_cli_manifest(catalog, full, tmp_path, capsys):
    out = tmp_path / "batch.csv"
    assert main(["catalog", "pick", catalog, "--n", "12", "--question", "bar", "--out", str(out)]) == 0
    manifest = pd.read_csv(out)
    assert list(manifest.columns) == ["rank", "object_id", "ra", "dec", "tile", "row", "image_location", "bar_asked_bald", "model_sha256"]
    assert manifest.object_id.tolist() == _direct_top(full, "bar_asked_bald", 12)
    unweighted = tmp_path / "unweighted.csv"
    assert main(["catalog", "pick", catalog, "--n", "12", "--question", "bar", "--no-weight-by-asked", "--out", str(unweighted)]) == 0
    assert pd.read_csv(unweighted).object_id.tolist() == _direct_top(full, "bar_bald", 12) != manifest.object_id.tolist()
    assert main(["catalog", "pick", catalog, "--n", "12", "--no-weight-by-asked", "--out", str(tmp_path / "x.csv")]) == 2
    assert "(--weight-by-asked, --no-weight-by-asked) applies to a question only" in capsys.readouterr().err
    assert main(["catalog", "pick", catalog, "--n", "12", "--weight-by-asked", "--out", str(tmp_path / "y.csv")]) == 2
    assert (manifest.image_location == manifest.tile + "#images[" + manifest.row.astype(str) + "]").all()
    assert (manifest.model_sha256 == FAKE_MODEL_SHA256).all()
    assert main(["catalog", "pick", catalog, "--n", "12", "--strategy", "power", "--seed", "5", "--out", str(tmp_path / "a.csv")]) == 0
    assert main(["catalog", "pick", catalog, "--n", "12", "--strategy", "power", "--seed", "5", "--out", str(tmp_path / "b.csv")]) == 0
    assert (tmp_path / "a.csv").read_bytes() == (tmp_path / "b.csv").read_bytes()
    capsys.readouterr()

    # An --exclude listing every galaxy (e.g. the catalog itself) used to pick nothing without a word, and
    # exit 0, so that a script went on with an empty batch
    everyone = tmp_path / "everyone.csv"
    pd.DataFrame({"object_id": full["object_id"]}).to_csv(everyone, index=False)
    assert main(["catalog", "pick", catalog, "--n", "12", "--exclude", str(everyone), "--out", str(tmp_path / "none.csv")]) == 1
    err = capsys.readouterr().err
    assert err == "skymorph: warning: picked 0, not --n 12: only 0 galaxies have a score and are not in --exclude\n"
    assert len(pd.read_csv(tmp_path / "none.csv")) == 0


@pytest.mark.parametrize("argv, fragment", [
    (["--question", "barr"], "Did you mean 'bar'"),
    (["--exclude", "EXCLUDE_NO_ID"], "no object_id column (columns: objid); name its id column with --exclude-id-column"),
    (["--exclude", "EXCLUDE_NO_ID", "--exclude-id-column", "galaxy_id"], "no galaxy_id column (columns: objid)"),
    (["--exclude", "NOT_A_TABLE"], "is not a readable Parquet, CSV, FITS or VOTable table ("),
    # a missing file is named as the --exclude file, not followed by the catalog's URL
    (["--exclude", "labels.parquet"], "skymorph: error: --exclude file 'labels.parquet' does not exist"),
    (["--exclude", "labels.csv"], "skymorph: error: --exclude file 'labels.csv' does not exist"),
    (["--gallery", "g.jpg"], ".png"),
    (["--beta", "3"], "beta (--beta) applies to strategy power only; drop it, or add --strategy power"),  # was ignored
    (["--seed", "7"], "seed (--seed) applies to strategy power only"),
])
def test_cli_bad_input_one_line_exit_2(catalog, tmp_path, capsys, argv, fragment):
    pd.DataFrame({"objid": [1, 2]}).to_csv(tmp_path / "bad.csv", index=False)
    (tmp_path / "ids.dat").write_bytes(b"1 2 3\n")
    argv = [{"EXCLUDE_NO_ID": str(tmp_path / "bad.csv"), "NOT_A_TABLE": str(tmp_path / "ids.dat")}.get(a, a) for a in argv]
    assert main(["catalog", "pick", catalog, "--n", "5", "--out", str(tmp_path / "b.csv"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skymorph: error:") and fragment in err[0]


def test_gallery_from_tile_stores(synthetic, full, tmp_path, capsys, monkeypatch):
    """Write real tile stores for the picked galaxies' tiles, then draw them from those stores."""
    from PIL import Image

    from skymorph.tiles import write_tile

    needed = set(pick(synthetic.url, 6, question="bar")["tile"].to_pylist()) | set(pick(synthetic.url, 5)["tile"].to_pylist())
    for url in needed:
        rows = full[full.tile == url].sort_values("row")
        images = np.random.default_rng(0).integers(0, 255, size=(len(rows), 1, 32, 32), dtype=np.uint8)
        write_tile(url, images, rows.object_id.values, rows.ra.values, rows.dec.values, survey="synthetic",
                   bands=["r"], pixel_scale_arcsec=0.262, stretch="none", resize="none")
    png = tmp_path / "batch.png"
    assert main(["catalog", "pick", synthetic.url, "--n", "6", "--question", "bar", "--out", str(tmp_path / "b.csv"),
                 "--gallery", str(png)]) == 0
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 100
    again = ["catalog", "pick", synthetic.url, "--n", "5", "--out", str(tmp_path / "c.csv"), "--gallery", str(png)]
    assert main(again) == 2
    assert capsys.readouterr().err == f"skymorph: error: --gallery {str(png)!r} exists; pass --overwrite to replace it, or choose another path\n"
    assert not (tmp_path / "c.csv").exists()
    assert main([*again, "--overwrite"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"gallery -> {png}"
    # a gallery draws at most a page: say so (the module, which skymorph.catalog's gallery function shadows)
    monkeypatch.setattr(importlib.import_module("skymorph.catalog.gallery"), "MAX_GALAXIES", 4)
    assert main([*again, "--overwrite"]) == 0
    assert capsys.readouterr().out.splitlines()[-1] == f"gallery -> {png} (the first 4 of 5)"
    # both files or neither: a batch that cannot be written takes its gallery with it
    from skymorph.catalog import pick_to

    (tmp_path / "a_file").write_text("not a directory")
    with pytest.raises(OSError):
        pick_to(synthetic.url, 5, str(tmp_path / "a_file" / "d.csv"), gallery_png=str(tmp_path / "d.png"))
    assert not (tmp_path / "d.png").exists()


def _count_rows(catalog: str, rows: int) -> None:
    """hats.properties' count of rows set to ``rows``, as the finish step of a run that wrote them would."""
    from dataclasses import replace

    from skymorph.catalog import layout

    layout.write_properties(catalog, replace(layout.read_properties(catalog), total_rows=rows))


def test_a_galaxy_in_two_overlapping_tiles_is_picked_once_at_its_best_row(catalog, full, tmp_path):
    """Copy the catalog, then add a second row for 300 galaxies (another tile), with a higher score for a
    third of them, a lower for a third and the same for the rest: picks hold each id once, ranked by its
    best row, and that row's tile and row come back; of two equal rows, the first by tile and row, whatever
    order the parts are read in."""
    import shutil

    copy = str(tmp_path / "overlap")
    shutil.copytree(catalog, copy)
    first = sorted(glob.glob(os.path.join(copy, "dataset", "Norder=*", "Dir=*", "Npix=*", "part-*.parquet")))[0]
    part = pq.read_table(first).to_pandas()
    twins = part.sample(n=min(300, len(part)), random_state=0).copy()
    twins["tile"] = "s3://survey/overlap.zarr"
    twins["row"] = np.arange(len(twins), dtype=np.int64)
    factor = np.array([3.0, 0.5, 1.0])[np.arange(len(twins)) % 3]
    twins["bald_total"] = (twins["bald_total"] * factor).astype(part["bald_total"].dtype)
    pq.write_table(pa.Table.from_pandas(twins, schema=pq.read_schema(first), preserve_index=False),
                   os.path.join(os.path.dirname(first), "part-0ff1a9.parquet"))
    rows = pd.concat([full, twins], ignore_index=True)
    _count_rows(copy, len(rows))

    best = rows.sort_values(["bald_total", "object_id", "tile", "row"], ascending=[False, True, True, True])
    best = best.drop_duplicates("object_id")
    batch = pick(copy, 80)
    assert batch["object_id"].to_pylist() == best.object_id.head(80).tolist()
    assert batch["tile"].to_pylist() == best.tile.head(80).tolist() and batch["row"].to_pylist() == best.row.head(80).tolist()
    assert "s3://survey/overlap.zarr" in batch["tile"].to_pylist()

    for seed in (0, 5):
        eligible = rows[rows["bald_total"] > 0].copy()
        eligible["key"] = gumbel_keys(eligible.object_id.values, eligible["bald_total"].values, seed, 1.0,
                                      int(FAKE_MODEL_SHA256[:16], 16))
        expected = eligible.sort_values(["key", "object_id", "tile", "row"], ascending=[False, True, True, True])
        expected = expected.drop_duplicates("object_id").head(60)
        batch = pick(copy, 60, strategy="power", seed=seed)
        assert batch["object_id"].to_pylist() == expected.object_id.tolist()
        assert batch["tile"].to_pylist() == expected.tile.tolist() and batch["row"].to_pylist() == expected.row.tolist()


def test_power_s_running_top_n_does_not_depend_on_the_order_rows_arrive_in():
    """Keys tie where float32 scores do at a huge beta, and a galaxy in two overlapping tiles has equal
    keys: the top n (each id once) is then key descending, object_id, tile, row, as ``top`` orders, for
    every order in which DuckDB may stream the rows (argpartition's cut among ties varied with it)."""
    from skymorph.catalog.pick import _best_rows

    rng = np.random.default_rng(3)
    ids = rng.choice(10_000, 400, replace=False).astype(np.int64)
    ids = np.concatenate([ids, ids[:150]])  # 150 galaxies seen twice
    frame = pd.DataFrame({"object_id": ids, "score": 1.0, "key": rng.integers(0, 4, len(ids)).astype(np.float64),
                          "tile": np.where(np.arange(len(ids)) < 400, "s3://survey/b.zarr", "s3://survey/a.zarr"),
                          "row": np.arange(len(ids)) % 400})
    frame.loc[400:, "key"] = frame["key"].to_numpy()[:150]  # the twins' keys equal: the tile decides
    expected = frame.sort_values(["key", "object_id", "tile", "row"], ascending=[False, True, True, True]).drop_duplicates("object_id")
    for n in (1, 37, 120, 400):
        for trial in range(5):
            shuffled = pa.Table.from_pandas(frame.sample(frac=1, random_state=trial), preserve_index=False)
            got = _best_rows(shuffled, n).to_pandas()
            assert got[["object_id", "tile", "row"]].values.tolist() == expected.head(n)[["object_id", "tile", "row"]].values.tolist()


def test_rows_written_under_two_range_plans_are_picked_once(synthetic, tmp_path):
    """A run resumed with another --rows-per-task writes a tile's rows again under new part names, and
    until finish_catalog removes the old parts every such (tile, row) is on disk twice, identical.
    Picks from such a catalog equal those from the catalog without the copies."""
    import shutil

    from skymorph.catalog import query, writer

    copy = str(tmp_path / "resplit")
    shutil.copytree(synthetic.url, copy)
    for tile in synthetic.tile_urls[:2]:
        rows = query(synthetic.url, where=f"tile = '{tile}'").sort_by("row")
        for start, stop in ((0, 150), (150, rows.num_rows)):
            writer.write_part(copy, rows.slice(start, stop - start), tile, start, stop, synthetic.order)
    _count_rows(copy, synthetic.rows + 800)
    assert query(copy, columns=["row"]).num_rows == synthetic.rows + 800
    for n, kwargs in ((2000, {}), (40, {"question": "bar"}), (2000, {"strategy": "power", "seed": 3}),
                      (40, {"strategy": "power", "seed": 1, "beta": 2.0})):
        batch = pick(copy, n, **kwargs)
        assert batch.num_rows == len(set(zip(batch["tile"].to_pylist(), batch["row"].to_pylist())))
        assert batch.equals(pick(synthetic.url, n, **kwargs), check_metadata=True)


@pytest.mark.parametrize("argv, fragment", [
    (["--strategy", "power", "--seed", str(2**64)], "--seed must be a non-negative integer below 2**64, got 18446744073709551616"),
    (["--strategy", "power", "--seed", "-1"], "--seed must be a non-negative integer below 2**64, got -1"),
    (["--exclude", "BINARY_CSV"], "is not a readable Parquet, CSV, FITS or VOTable table (Empty CSV file)"),
    (["--exclude", "IDS_CSV"], "looks like a list of ids without a header: its first line, 1735, was read as the column's "
                               "name; add a first line object_id"),
    (["--exclude", "IDS_CSV", "--exclude-id-column", "1735"], "its first line, 1735, was read as the column's name; add a first "
                                                              "line object_id (and drop --exclude-id-column)"),
])
def test_more_bad_input_is_one_line(catalog, tmp_path, capsys, argv, fragment):
    (tmp_path / "ids.csv").write_bytes(b"")
    (tmp_path / "ids_no_header.csv").write_text("1735\n1237\n")
    files = {"BINARY_CSV": str(tmp_path / "ids.csv"), "IDS_CSV": str(tmp_path / "ids_no_header.csv")}
    argv = [files.get(a, a) for a in argv]
    assert main(["catalog", "pick", catalog, "--n", "5", "--out", str(tmp_path / "b.csv"), *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skymorph: error:") and fragment in err[0], err
    assert not (tmp_path / "b.csv").exists()


def test_a_gallery_that_cannot_be_drawn_leaves_no_batch_behind(tmp_path, capsys):
    """The batch CSV was written before the gallery failed (tiles unreadable), and the rerun refused it."""
    catalog = write_synthetic_catalog(str(tmp_path / "catalog"), 200, per_tile=100, workers=1).url  # no tile stores
    out, png = tmp_path / "batch.csv", tmp_path / "batch.png"
    assert main(["catalog", "pick", catalog, "--n", "5", "--out", str(out), "--gallery", str(png)]) == 2
    assert "skymorph: error:" in capsys.readouterr().err
    assert not out.exists() and not png.exists()



def test_an_out_that_cannot_be_written_leaves_no_gallery_behind(tmp_path, capsys):
    """The other way round: FITS refused the tile paths (not ASCII) after the gallery was drawn, and the
    rerun with --out batch.vot, as the error advised, was refused for the gallery. With --overwrite, an
    earlier batch and gallery stay as they were (the gallery was replaced, then removed)."""
    from skymorph.catalog import pick_to, query
    from skymorph.tiles import write_tile

    catalog = write_synthetic_catalog(str(tmp_path / "galaxiés" / "catalog"), 100, per_tile=100, workers=1)
    for url in catalog.tile_urls:  # the tile stores the gallery reads
        rows = query(catalog.url, where=f"tile = '{url}'", order_by="row")
        write_tile(url, np.zeros((rows.num_rows, 1, 8, 8), np.uint8), rows["object_id"].to_numpy(), rows["ra"].to_numpy(),
                   rows["dec"].to_numpy(), survey="synthetic", bands=["r"], pixel_scale_arcsec=0.262, stretch="none", resize="none")
    png = tmp_path / "batch.png"
    argv = ["catalog", "pick", catalog.url, "--n", "5", "--gallery", str(png), "--out"]
    assert main([*argv, str(tmp_path / "batch.fits")]) == 2
    assert "FITS tables hold ASCII text only" in capsys.readouterr().err
    assert not png.exists() and not (tmp_path / "batch.fits").exists()
    (tmp_path / "batch.fits").write_text("the batch the volunteers have now")
    png.write_text("its gallery")
    assert main([*argv, str(tmp_path / "batch.fits"), "--overwrite"]) == 2
    assert png.read_text() == "its gallery" and (tmp_path / "batch.fits").read_text() == "the batch the volunteers have now"
    png.unlink()
    assert main([*argv, str(tmp_path / "batch.vot")]) == 0
    assert png.exists() and (tmp_path / "batch.vot").exists()
    vot_before = (tmp_path / "batch.vot").read_bytes()
    capsys.readouterr()

    everyone = tmp_path / "everyone.csv"
    query(catalog.url, columns=["object_id"]).to_pandas().to_csv(everyone, index=False)
    assert main([*argv[:-3], "--exclude", str(everyone), "--gallery", str(tmp_path / "empty.png"), "--out",
                 str(tmp_path / "empty.csv")]) == 1  # an empty batch is written, as without --gallery, and exits 1
    assert (tmp_path / "empty.csv").read_text().splitlines()[1:] == [] and not (tmp_path / "empty.png").exists()
    assert f"nothing was picked, so no gallery is drawn at {tmp_path / 'empty.png'}" in capsys.readouterr().err
    # replacing a batch and its gallery with an empty batch: the old gallery does not stay beside it
    (tmp_path / "empty.png").write_text("the replaced batch's gallery")
    assert main([*argv[:-3], "--exclude", str(everyone), "--gallery", str(tmp_path / "empty.png"), "--out",
                 str(tmp_path / "empty.csv"), "--overwrite"]) == 1
    assert not (tmp_path / "empty.png").exists()

    # a gallery that cannot be written (here its directory is a file) after the batch was: the batch it
    # replaced is put back, the one the volunteers have
    (tmp_path / "not_a_dir").write_text("")
    with pytest.raises(OSError):
        pick_to(catalog.url, 5, str(tmp_path / "batch.vot"), gallery_png=str(tmp_path / "not_a_dir" / "g.png"))
    assert (tmp_path / "batch.vot").read_bytes() == vot_before
    with pytest.raises(OSError):
        pick_to(catalog.url, 5, str(tmp_path / "new.csv"), gallery_png=str(tmp_path / "not_a_dir" / "g.png"))
    assert not (tmp_path / "new.csv").exists()


def test_labels_rows_without_votes_are_not_excluded(catalog, full, tmp_path, capsys):
    """Cutouts ingested without a label are rows of labels.parquet with empty votes: `--exclude labels.parquet`
    excluded them all, the very galaxies the loop means to pick. Rows with a vote, in any spelling train
    reads, are labelled; a batch still with the volunteers is excluded by its own file."""
    from skymorph.catalog.pick import read_ids
    from skymorph.schema import get_schema

    decals = get_schema("decals")
    labels = pd.DataFrame({"object_id": [1, 2, 3, 4], "bar_strong": pd.array([2, None, 0, 0], dtype="Int64"),
                           "bar_weak": pd.array([0, None, 0, 0], dtype="Int64"), "bar_no": pd.array([1, None, 0, 3], dtype="Int64")})
    labels.to_parquet(tmp_path / "labels.parquet")
    pd.DataFrame({"object_id": [2]}).to_csv(tmp_path / "batch.csv", index=False)
    assert read_ids(str(tmp_path / "labels.parquet"), schema=decals).tolist() == [1, 4]
    assert capsys.readouterr().err.strip() == (
        f"skymorph: warning: --exclude {str(tmp_path / 'labels.parquet')!r}: 2 row(s) have no votes (first: object_id 2), "
        "galaxies nobody has classified, so they may be picked; give the batches still with the volunteers to --exclude too")
    assert read_ids([str(tmp_path / "labels.parquet"), str(tmp_path / "batch.csv")], schema=decals).tolist() == [1, 4, 2]
    assert "1 row(s) have no votes (first: object_id 3)" in capsys.readouterr().err  # 2 is with the volunteers: no word
    pd.DataFrame({"object_id": [2, 3]}).to_csv(tmp_path / "batch.csv", index=False)
    read_ids([str(tmp_path / "labels.parquet"), str(tmp_path / "batch.csv")], schema=decals)
    assert capsys.readouterr().err == ""
    assert read_ids(labels, schema=decals).tolist() == [1, 4]  # pandas, as a notebook passes it
    assert read_ids(str(tmp_path / "labels.parquet")).tolist() == [1, 2, 3, 4]  # no tree given: every row
    # a Galaxy Zoo table's spelling beside the tree's, as `labels ingest` leaves them: a smooth galaxy's votes
    # are all in GZ's columns, and it is labelled for train and for pick alike
    gz = labels.assign(**{f"smooth-or-featured_{a}": pd.array([None, None, n, None], dtype="Int64")
                          for a, n in (("smooth", 30), ("featured-or-disk", 0), ("artifact", 0))})
    assert read_ids(gz, schema=decals).tolist() == [1, 3, 4]
    assert load_labels_ids(gz, tmp_path, decals) == [1, 3, 4]
    # vote cells that are not numbers: nothing to tell labelled from not, so every row is excluded
    assert read_ids(labels.assign(bar_no=["1", "-", "0", "3"]), schema=decals).tolist() == [1, 2, 3, 4]
    assert "its vote columns are not all numbers, so every row is excluded" in capsys.readouterr().err
    assert read_ids(labels.assign(bar_no=[1, "-", 0, 3]), schema=decals).tolist() == [1, 2, 3, 4]  # mixed: no crash
    # pick itself reads the catalog's tree: the 10 unvoted of the 30 best come back first
    top = _direct_top(full, "bald_total", 40)
    answers = open_catalog(catalog).metadata.schema.answer_columns
    survey = pd.DataFrame({"object_id": top[:30], **{a: pd.array([1] * 20 + [None] * 10, dtype="Int64") for a in answers}})
    assert pick(catalog, 20, exclude=survey)["object_id"].to_pylist() == top[20:40]


def load_labels_ids(frame, tmp_path, schema) -> list[int]:
    """The object ids train reads from labels ``frame`` (its rows with votes)."""
    from skymorph.trainer.labels import load_labels

    frame.to_parquet(tmp_path / "frame.parquet")
    return load_labels(str(tmp_path / "frame.parquet"), schema).object_id.tolist()
