"""Parquet exports (skymorph.catalog.export) read by astropy's ``Table.read``: units, descriptions and provenance
as the Arrow fields and the FITS and VOTable exports give them, values as pyarrow reads them."""

from __future__ import annotations

import warnings

import astropy.units as u
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from astropy.table import Table

from skymorph.catalog import export_table, open_catalog, pick
from skymorph.catalog.export import export_reader
from skymorph.cli import main
from skymorph.testing.catalogs import FAKE_MODEL_SHA256, write_synthetic_catalog

COLUMNS = ["object_id", "ra", "dec", "bald_total", "bar_bald", "tile", "row"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    """300 rows in 3 tiles around (150, 2)."""
    out = str(tmp_path_factory.mktemp("export") / "catalog")
    write_synthetic_catalog(out, 300, per_tile=100, tile_deg=1.0, order=6, workers=1)
    return out


def _provenance(catalog: str) -> dict:
    """The ``meta`` of a FITS export of ``catalog`` (skymorph.catalog.export._FITS_META)."""
    meta = open_catalog(catalog).metadata
    return {"MODELSHA": FAKE_MODEL_SHA256, "SAMPLES": meta.samples, "SEED": meta.seed, "NVOLUNT": meta.n_volunteers,
            "SMVERS": meta.version, "LIKELIHD": "multinomial", "SCHEMA": meta.schema.name}


def _read_as_pyarrow_does(path) -> Table:
    """``Table.read(path)``, checked against pyarrow: no warning (astropy warns of a text column whose length it
    guesses), each column's description and unit those of its Arrow field, its values pyarrow's."""
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        table = Table.read(path)
    arrow = pq.read_table(path)
    assert table.colnames == arrow.column_names
    for field, column in zip(arrow.schema, arrow.columns):
        assert table[field.name].description == field.metadata[b"description"].decode()
        assert table[field.name].unit == (u.Unit(field.metadata[b"unit"].decode()) if b"unit" in field.metadata else None)
        np.testing.assert_array_equal(np.asarray(table[field.name]), column.to_numpy(), err_msg=field.name)
    assert pd.read_parquet(path).equals(arrow.to_pandas())  # pandas' reader too
    return table


def test_astropy_reads_a_streamed_query_export(catalog, tmp_path):
    out = tmp_path / "rows.parquet"
    assert main(["catalog", "query", catalog, "--where", "bald_total > 0.2", "--columns", ",".join(COLUMNS),
                 "--order-by", "object_id", "--out", str(out)]) == 0
    table = _read_as_pyarrow_does(out)
    assert len(table) > 100 and table["tile"].dtype == np.dtype(f"<U{len(table['tile'][0])}")  # as astropy writes text
    assert table["ra"].unit == u.deg and table["dec"].unit == u.deg and table["row"].unit is None
    assert table["bald_total"].description == "Sum over questions q of q_asked x q_bald, in nats."
    assert table.meta == _provenance(catalog)
    fits = str(tmp_path / "rows.fits")
    assert main(["catalog", "query", catalog, "--limit", "1", "--columns", "object_id", "--out", fits]) == 0
    assert all(Table.read(fits).meta[key] == value for key, value in table.meta.items())  # as a FITS export says it


def test_astropy_reads_an_export_of_no_rows(catalog, tmp_path):
    """astropy's reader failed on it (``max() arg is an empty sequence``): it measured the longest text itself."""
    out = tmp_path / "none.parquet"
    assert main(["catalog", "query", catalog, "--where", "bald_total < 0", "--out", str(out)]) == 0
    table = _read_as_pyarrow_does(out)
    assert len(table) == 0 and table["ra"].unit == u.deg and table.meta == _provenance(catalog)


def test_the_text_length_is_the_longest_of_every_streamed_batch(tmp_path):
    """The longest text is in the middle batch: neither the first's nor the last's length would do. The
    metadata completed at the end is what the whole table's export writes at the start, byte for byte."""
    schema = pa.schema([pa.field("tile", pa.string(), metadata={"description": "a tile"})], metadata={"skymorph.seed": "7"})
    batches = [pa.record_batch([pa.array(texts, pa.string())], schema=schema) for texts in (["ab"], ["galaxiés", "c"], ["abc"])]
    assert export_reader(pa.RecordBatchReader.from_batches(schema, iter(batches)), str(tmp_path / "t.parquet")) == ("parquet", 4)
    assert pq.read_schema(tmp_path / "t.parquet").metadata[b"table::len::tile"] == b"8"
    table = _read_as_pyarrow_does(tmp_path / "t.parquet")
    assert list(table["tile"]) == ["ab", "galaxiés", "c", "abc"] and table.meta == {"SEED": 7}
    export_table(pa.Table.from_batches(batches), str(tmp_path / "whole.parquet"))
    assert pq.ParquetFile(tmp_path / "t.parquet").metadata.metadata == pq.ParquetFile(tmp_path / "whole.parquet").metadata.metadata


def test_astropy_reads_a_pick_export(catalog, tmp_path):
    out = tmp_path / "batch.parquet"
    assert main(["catalog", "pick", catalog, "--n", "5", "--out", str(out)]) == 0
    table = _read_as_pyarrow_does(out)
    assert list(table["rank"]) == [1, 2, 3, 4, 5] and table["ra"].unit == u.deg
    assert table["model_sha256"].description.startswith("SHA-256 of the exported model")
    assert table.meta == {**_provenance(catalog), "PICK": "strategy=top score=bald_total"}
    assert set(pick(catalog, 5, exclude=str(out))["object_id"].to_pylist()).isdisjoint(table["object_id"])  # --exclude reads it


def test_astropy_reads_a_pick_export_without_positions(catalog, tmp_path):
    """A catalog of cutouts ingested without positions gives a batch whose ra and dec are null: NaN in astropy, as
    in pyarrow's numpy."""
    batch = pick(catalog, 5)
    for name in ("ra", "dec"):
        batch = batch.set_column(batch.schema.get_field_index(name), batch.schema.field(name), pa.nulls(5, pa.float64()))
    export_table(batch, str(tmp_path / "batch.parquet"))
    table = _read_as_pyarrow_does(tmp_path / "batch.parquet")
    assert np.isnan(table["ra"]).all() and np.isnan(table["dec"]).all() and table["dec"].unit == u.deg
    assert list(table["object_id"]) == batch["object_id"].to_pylist()
    assert table.meta == {**_provenance(catalog), "PICK": "strategy=top score=bald_total"}


def test_a_null_text_gets_no_length_so_astropy_does_not_read_it_as_a_cut_none(tmp_path):
    """With a length, astropy's reader turned the null into the text "None" cut to it ("No" here); without
    one it refuses the column, as before, and pyarrow reads the null."""
    batches = [pa.record_batch({"name": pa.array(["ab"]), "n": [1]}), pa.record_batch({"name": pa.array([None, "c"], pa.string()), "n": [2, 3]})]
    streamed, whole = str(tmp_path / "streamed.parquet"), str(tmp_path / "whole.parquet")
    export_reader(pa.RecordBatchReader.from_batches(batches[0].schema, iter(batches)), streamed)
    export_table(pa.Table.from_batches(batches), whole)
    for out in (streamed, whole):
        metadata = pq.read_schema(out).metadata
        assert b"table_meta_yaml" in metadata and b"table::len::name" not in metadata
        assert pq.read_table(out)["name"].to_pylist() == ["ab", None, "c"]


@pytest.mark.parametrize("table", [
    pa.table({"": [1, 2]}),  # astropy: KeyError ''
    pa.table([pa.array([1.0])], schema=pa.schema([pa.field("flux", pa.float64(), metadata={"unit": "counts per pix"})])),
    pa.table({"a": [1]}).replace_schema_metadata({b"blob": b"\xff\xfe"}),  # not text
], ids=["no name", "unknown unit", "binary metadata"])
def test_a_table_astropy_cannot_hold_is_exported_without_its_header(table, tmp_path):
    for out, write in ((str(tmp_path / "whole.parquet"), lambda out: export_table(table, out)),
                       (str(tmp_path / "streamed.parquet"), lambda out: export_reader(pa.RecordBatchReader.from_batches(
                           table.schema, iter(table.to_batches())), out))):
        write(out)
        read = pq.read_table(out)
        assert read.column_names == table.column_names and read.equals(table.replace_schema_metadata(read.schema.metadata))
        assert b"table_meta_yaml" not in read.schema.metadata and all(k in read.schema.metadata for k in (table.schema.metadata or {}))
