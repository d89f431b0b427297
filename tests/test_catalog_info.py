"""skymorph.catalog.info and `skymorph catalog info`: counts, provenance, failures, bald_total quantiles."""

from __future__ import annotations

import glob
import json
import os
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skymorph.catalog import info, open_catalog
from skymorph.cli import main
from skymorph.errors import CatalogError
from skymorph.posterior import column_names
from skymorph.schema import get_schema
from skymorph.testing.catalogs import FAKE_MODEL_SHA256, write_synthetic_catalog

FAILED = (("s3://survey/tiles/t-9.zarr", "chunk 3 is corrupt"), ("s3://survey/tiles/t-12.zarr", "NaN pixels"))


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    out = str(tmp_path_factory.mktemp("info") / "catalog")
    write_synthetic_catalog(out, 1500, per_tile=300, tile_deg=1.0, order=6, seed=4, failed_tiles=FAILED, workers=1)
    return out


@pytest.fixture(scope="module")
def full(catalog):
    files = sorted(glob.glob(os.path.join(catalog, "dataset", "Norder=*", "Dir=*", "Npix=*", "part-*.parquet")))
    return pa.concat_tables(pq.read_table(f) for f in files).to_pandas()


def _summarize_columns(schema):
    """The column names skymorph.posterior.summarize gives, on a tiny random input."""
    from skymorph.posterior import summarize

    samples = np.random.default_rng(0).uniform(0.1, 1.0, size=(2, 3, schema.n_answers))
    for sl in schema.question_slices:
        samples[..., sl] /= samples[..., sl].sum(axis=-1, keepdims=True)
    return summarize(samples, schema).keys()


def test_info_values(catalog, full):
    summary = info(catalog)
    schema = get_schema("decals")
    assert summary.rows == len(full) == 1500
    assert summary.partitions == len(set(full._healpix_29.values >> (2 * (29 - 6))))
    assert summary.order == 6
    assert summary.columns[:6] == ("object_id", "ra", "dec", "_healpix_29", "tile", "row")
    assert list(summary.columns[6:]) == column_names(schema) == list(_summarize_columns(schema))
    assert len(summary.columns) == 6 + 34 * 4 + 2 * 10 + 1
    assert (summary.model_sha256, summary.samples, summary.seed, summary.n_volunteers, summary.schema, summary.likelihood) == \
        (FAKE_MODEL_SHA256, 30, 4, 40, "decals", "multinomial")
    assert "likelihood=multinomial" in str(summary) and "q95=" in str(summary) and "(approximate: t-digest)" in str(summary)
    assert [(t, r) for t, _, r in summary.failed_tiles] == list(FAILED)
    bald = full.bald_total.values.astype(np.float64)
    assert summary.bald_min == pytest.approx(bald.min()) and summary.bald_max == pytest.approx(bald.max())
    assert summary.bald_mean == pytest.approx(bald.mean(), rel=1e-6)
    spread = bald.max() - bald.min()
    for q, value in summary.bald_quantiles.items():
        # t-digest: approximate, within 2% of the range here
        assert abs(value - np.quantile(bald, q)) < 0.02 * spread, q


def test_info_cli_json_and_text(catalog, capsys):
    assert main(["catalog", "info", catalog, "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["rows"] == 1500 and data["model"]["sha256"] == FAKE_MODEL_SHA256
    assert [f["reason"] for f in data["failed_tiles"]] == [r for _, r in FAILED]
    assert main(["catalog", "info", catalog]) == 0
    text = capsys.readouterr().out
    assert "1,500" in text and "failed tiles 2" in text and "chunk 3 is corrupt" in text
    assert f"columns      {len(data['columns'])}: object_id, " in text and "... (all of them: catalog info --json)" in text


def test_info_on_s3(catalog, s3_bucket):
    from skymorph.storage import filesystem

    url = f"{s3_bucket}/catalog"
    fs, path = filesystem(url)
    fs.put(catalog, path, recursive=True)
    remote, local = info(url), info(catalog)
    assert (remote.rows, remote.partitions, remote.bald_mean) == (local.rows, local.partitions, pytest.approx(local.bald_mean))
    assert len(remote.failed_tiles) == 2


def test_a_catalog_in_a_bucket_that_does_not_exist_says_so(s3_bucket):
    """It said "hats.properties missing", as of an empty prefix."""
    with pytest.raises(CatalogError, match=r"^'s3://no-such-bucket-info/cat' is not a catalog: bucket 'no-such-bucket-info' "
                                           r"does not exist; check the URL$"):
        open_catalog("s3://no-such-bucket-info/cat")
    with pytest.raises(CatalogError, match=r"/cat/hats.properties missing\); make one with `skymorph run`$"):
        open_catalog(f"{s3_bucket}/cat")


def test_not_a_catalog(tmp_path, capsys):
    with pytest.raises(CatalogError, match="is not a catalog"):
        open_catalog(str(tmp_path))
    (tmp_path / "rows.csv").write_text("object_id\n1\n")  # it said "[Errno 20] Not a directory"
    with pytest.raises(CatalogError, match=r"rows.csv' is a file, not a catalog \(a directory that `skymorph run` writes\)$"):
        open_catalog(str(tmp_path / "rows.csv"))
    (tmp_path / "hats.properties").write_text("obs_collection=x\nhats_nrows=3\n")
    (tmp_path / "partition_info.csv").write_text("Norder,Npix\n")
    with pytest.raises(CatalogError, match="not a skymorph catalog"):
        open_catalog(str(tmp_path))
    assert main(["catalog", "info", str(tmp_path / "missing")]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skymorph: error:")


def _truncate(path: str) -> None:
    with open(path, "r+b") as fh:
        fh.truncate(100)


@pytest.mark.parametrize("damage, fragment", [
    (lambda c: _truncate(os.path.join(c, "dataset", "_common_metadata")), "_common_metadata is not readable Parquet metadata (Parquet magic bytes not found"),
    (lambda c: open(os.path.join(c, "dataset", "_common_metadata"), "wb").close(), "_common_metadata is not readable Parquet metadata (Parquet file size is 0 bytes)"),
    (lambda c: open(os.path.join(c, "hats.properties"), "wb").write(b"x=1\n\xff\xfe"), "hats.properties is not a text file (invalid start byte at byte 4)"),
    (lambda c: open(os.path.join(c, "partition_info.csv"), "wb").write(b"\x89PNG\r\n"), "partition_info.csv is not a text file"),
    (lambda c: open(os.path.join(c, "partition_info.csv"), "w").write("garbage\n"), "partition_info.csv does not start with the header"),
    (lambda c: open(os.path.join(c, "hats.properties"), "a").write("hats_order=five\n"), "hats.properties: hats_order='five' is not an integer"),
])
def test_damaged_metadata_is_one_line_for_every_reader(catalog, tmp_path, capsys, damage, fragment):
    copy = str(tmp_path / "damaged")
    shutil.copytree(catalog, copy)
    damage(copy)
    for argv in (["info", copy], ["query", copy, "--limit", "3"], ["pick", copy, "--n", "3", "--out", str(tmp_path / "b.csv")]):
        assert main(["catalog", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and err[0].startswith("skymorph: error: ") and fragment in err[0], err
        if "not an integer" not in fragment:
            assert "rerun the `skymorph run` that made" in err[0]
    assert not (tmp_path / "b.csv").exists()


def test_a_lost_part_file_is_a_damaged_catalog_not_a_smaller_one(catalog, tmp_path, capsys):
    """With part files gone, info counted fewer rows than hats.properties, and query and pick read what was
    left, exit 0: a smaller catalog, silently. Pick, and a query of the whole catalog (an export), count
    its rows first; a cone's query cannot, for want of per-pixel counts."""
    import collections

    copy = str(tmp_path / "lost")
    shutil.copytree(catalog, copy)
    parts = sorted(glob.glob(os.path.join(copy, "dataset", "Norder=*", "Dir=*", "Npix=*", "part-*.parquet")))
    per_pixel = collections.Counter(os.path.dirname(part) for part in parts)
    lost = next(part for part in parts if per_pixel[os.path.dirname(part)] > 1)  # its pixel keeps other parts
    rows = pq.read_metadata(lost).num_rows
    os.remove(lost)
    for argv in (["info", copy], ["pick", copy, "--n", "3", "--out", str(tmp_path / "b.csv")],
                 ["query", copy, "--columns", "object_id", "--out", str(tmp_path / "all.csv")]):
        assert main(["catalog", *argv]) == 2
        assert capsys.readouterr().err == (f"skymorph: error: catalog {copy!r}: its part files hold {1500 - rows:,} rows where "
                                           "hats.properties counts 1,500: a `skymorph run` is rewriting the catalog, or it is "
                                           "damaged (then rerun it with --overwrite)\n")
    assert not (tmp_path / "all.csv").exists()
    alone = next(part for part in parts if per_pixel[os.path.dirname(part)] == 1)  # its pixel keeps its directory
    os.remove(alone)
    npix = int(os.path.basename(os.path.dirname(alone)).removeprefix("Npix="))
    for argv in (["info", copy], ["query", copy, "--limit", "3"], ["pick", copy, "--n", "3", "--out", str(tmp_path / "b.csv")]):
        assert main(["catalog", *argv]) == 2
        err = capsys.readouterr().err.strip().splitlines()
        assert len(err) == 1 and f"partition Npix={npix} of partition_info.csv has no part file" in err[0], err
    assert not (tmp_path / "b.csv").exists()


def test_info_of_a_catalog_without_rows_is_strict_json(tmp_path, tiny_model, capsys):
    """Every tile failed: --json printed NaN for bald_total, which strict JSON parsers refuse."""
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.tiles import write_tile_list

    write_tile_list(str(tmp_path / "tiles.txt"), [str(tmp_path / "missing.zarr")])
    catalog = str(tmp_path / "catalog")
    run_survey(RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog, workers=1,
                         allow_failures=True, progress=False))
    assert main(["catalog", "info", catalog, "--json"]) == 0
    data = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert data["rows"] == 0 and data["bald_total"]["min"] is None and data["bald_total"]["q50"] is None
    assert len(data["failed_tiles"]) == 1
    assert main(["catalog", "info", catalog]) == 0
    assert "bald_total   (no rows)" in capsys.readouterr().out


def test_nan_scores_of_a_catalog_from_elsewhere_are_left_out_of_the_summary(catalog, full, tmp_path, capsys):
    """skymorph run refuses non-finite posteriors, but a catalog written or edited by other tools may hold
    NaN: --json printed "mean": NaN, which strict JSON parsers refuse. The summary is of the finite scores."""
    copy = str(tmp_path / "nan")
    shutil.copytree(catalog, copy)
    part = sorted(glob.glob(os.path.join(copy, "dataset", "Norder=*", "Dir=*", "Npix=*", "part-*.parquet")))[0]
    table = pq.read_table(part)
    scores = table["bald_total"].to_numpy().copy()
    scores[0] = np.nan
    pq.write_table(table.set_column(table.schema.get_field_index("bald_total"), table.schema.field("bald_total"),
                                    pa.array(scores, table.schema.field("bald_total").type)), part)
    finite = np.concatenate([scores[1:], full["bald_total"].to_numpy()[~full["object_id"].isin(table["object_id"].to_numpy())]])
    assert main(["catalog", "info", copy, "--json"]) == 0
    data = json.loads(capsys.readouterr().out, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
    assert data["rows"] == len(full)
    np.testing.assert_allclose([data["bald_total"][k] for k in ("min", "mean", "max")],
                               [finite.min(), finite.mean(), finite.max()], rtol=1e-6)
