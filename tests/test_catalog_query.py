"""skymorph.catalog.query and `skymorph catalog query`: values against pandas/astropy over the full catalog."""

from __future__ import annotations

import glob
import os
import re
import shutil

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skymorph.catalog import Cone, export_table, open_catalog, query
from skymorph.catalog.layout import parse_part_path
from skymorph.catalog.query import plan_query
from skymorph.cli import main
from skymorph.errors import CatalogError, InputError
from skymorph.testing.catalogs import FAKE_MODEL_SHA256, write_synthetic_catalog

COLUMNS = ["object_id", "ra", "dec", "bald_total", "bar_bald", "tile", "row"]


@pytest.fixture(scope="module")
def catalog(tmp_path_factory) -> str:
    """3,000 rows in 6 one-degree tiles around (150, 2), HEALPix order 6: 16 partitions."""
    out = str(tmp_path_factory.mktemp("query") / "catalog")
    write_synthetic_catalog(out, 3000, per_tile=500, tile_deg=1.0, order=6, workers=1)
    return out


@pytest.fixture(scope="module")
def full(catalog):
    """Every row, read straight from the part files with pyarrow (not through skymorph's reader)."""
    files = sorted(glob.glob(os.path.join(catalog, "dataset", "Norder=*", "Dir=*", "Npix=*", "part-*.parquet")))
    return pa.concat_tables(pq.read_table(f) for f in files).to_pandas()


def _separation_arcsec(ra, dec, ra0, dec0):
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(ra * u.deg, dec * u.deg).separation(SkyCoord(ra0 * u.deg, dec0 * u.deg)).arcsec


def test_where_and_columns_match_pandas(catalog, full):
    got = query(catalog, where="bar_bald > 0.05 AND dec > 2.0", columns=COLUMNS).to_pandas()
    expected = full[(full.bar_bald > 0.05) & (full.dec > 2.0)]
    assert list(got.columns) == COLUMNS
    assert len(got) == len(expected) > 0
    merged = got.sort_values("object_id").reset_index(drop=True)
    np.testing.assert_array_equal(merged.object_id, np.sort(expected.object_id))
    np.testing.assert_allclose(merged.bald_total, expected.sort_values("object_id").bald_total)


def test_order_by_and_limit(catalog, full):
    got = query(catalog, columns=["object_id", "bald_total"], order_by="bald_total DESC, object_id", limit=7)
    expected = full.sort_values(["bald_total", "object_id"], ascending=[False, True]).head(7)
    assert got["object_id"].to_pylist() == expected.object_id.tolist()
    assert dict(got.schema.metadata)[b"skymorph.model_sha256"].decode() == FAKE_MODEL_SHA256


def test_user_sql_cannot_undo_the_cone_or_the_limit(catalog, full):
    """A --where that closes its parentheses early would OR away the cone; a trailing comment in
    --order-by would swallow the LIMIT after it."""
    cone = (150.0, 2.0, 1200.0)
    inside = query(catalog, cone=cone, columns=["object_id"]).num_rows
    assert 0 < inside < len(full)
    with pytest.raises(CatalogError, match=r"^--where is not a valid SQL expression: Parser Error: syntax error at or near \"\)\""):
        query(catalog, cone=cone, where="1=1) OR (1=1")
    assert query(catalog, cone=cone, where="1=1 -- every row", columns=["object_id"]).num_rows == inside
    got = query(catalog, columns=["object_id"], order_by="bald_total DESC -- largest first", limit=3)
    assert got["object_id"].to_pylist() == full.sort_values("bald_total", ascending=False).object_id.head(3).tolist()


@pytest.mark.parametrize(("order_by", "message"), [
    ("bald_total DESC LIMIT 1", "--order-by holds more than an ORDER BY list (a LIMIT or OFFSET?)"),
    ("bald_total OFFSET 380", "--order-by holds more than an ORDER BY list (a LIMIT or OFFSET?)"),
    ("bald_total; DROP TABLE x", "--order-by must be a single ORDER BY list (no ';')"),
    ("bald_total) (", "--order-by is not a valid ORDER BY list: Parser Error"),
    ("bald_total DESC ;", "--order-by ends in ';': give the SQL alone, without it"),
])
def test_order_by_is_only_an_order_list(catalog, order_by, message):
    with pytest.raises(CatalogError, match=re.escape(message)):
        query(catalog, order_by=order_by)


def test_an_order_by_position_counts_in_the_columns_selected(catalog, full):
    """Checked against every column, --order-by 5 passed, then failed in the whole query, blamed on 'query'."""
    with pytest.raises(CatalogError, match=r"^--order-by: Binder Error: ORDER term out of range - should be between 1 and 2"):
        query(catalog, columns=["object_id", "bald_total"], order_by="5")
    got = query(catalog, columns=["object_id", "bald_total"], order_by="2 DESC, 1", limit=3)["object_id"].to_pylist()
    assert got == full.sort_values(["bald_total", "object_id"], ascending=[False, True]).object_id[:3].tolist()


OUTSIDE = (151.3, 3.4, 200.0)  # north of the tiles (Dec 0.5-2.5): nothing there


@pytest.mark.parametrize("cone", [(150.0, 2.0, 1800.0), (148.7, 0.6, 3000.0), OUTSIDE, (150.3, 1.7, 7200.0), "row 0",
                                  "row 0 exactly", (340.0, -1.0, 630000.0), (0.0, 89.0, 400000.0)])
def test_cone_equals_astropy_separation(catalog, full, cone):
    if cone == "row 0":  # a 200" cone on a galaxy: the fine-depth ranges path with rows in it
        cone = (float(full.ra[0]), float(full.dec[0]), 200.0)
    if cone == "row 0 exactly":  # a cross-match by position: cdshealpix panicked below 0.0063" (depth 28)
        cone = (float(full.ra[0]), float(full.dec[0]), 0.001)
    got = query(catalog, cone=cone, columns=["object_id"])["object_id"].to_pylist()
    expected = full.object_id[_separation_arcsec(full.ra.values, full.dec.values, cone[0], cone[1]) <= cone[2]]
    assert sorted(got) == sorted(expected.tolist())
    assert (len(got) == 0) == (cone == OUTSIDE)


def test_a_limit_without_an_order_takes_the_same_first_rows_every_time(catalog):
    """With DuckDB's parallel scans free to reorder, --limit 5 gave other rows from call to call."""
    import pyarrow.parquet as pq

    opened = open_catalog(catalog)
    in_file_order = [i for url in opened.part_urls() for i in pq.read_table(url, columns=["object_id"])["object_id"].to_pylist()]
    for _ in range(4):
        assert query(catalog, columns=["object_id"], limit=7)["object_id"].to_pylist() == in_file_order[:7]
    got = query(catalog, columns=["object_id"], where="bald_total > 0", limit=3)["object_id"].to_pylist()
    assert got == query(catalog, columns=["object_id"], where="bald_total > 0", limit=3)["object_id"].to_pylist()


def test_a_wide_cone_pushes_down_a_bounded_number_of_index_ranges():
    """The ranges stayed as fine as the catalog's partitions: a 10 degree cone on an order-12 catalog was 2,359
    BETWEEN terms, and 50 times slower than reading every row."""
    from skymorph.catalog.query import _MAX_RANGES

    for radius in (36000.0, 400000.0, 648000.0):
        ranges = Cone(0.1, -60.0, radius).index_ranges()
        assert 0 < len(ranges) <= _MAX_RANGES
        assert all(a <= b for a, b in ranges) and all(b < c for (_, b), (c, _) in zip(ranges, ranges[1:]))


def test_cone_across_ra_zero(tmp_path):
    out = str(tmp_path / "wrap")
    write_synthetic_catalog(out, 1000, per_tile=250, tile_deg=1.0, order=6, centre=(0.2, 0.0), workers=1)
    full = query(out, columns=["object_id", "ra", "dec"]).to_pandas()
    assert full.ra.min() < 1 and full.ra.max() > 359
    got = query(out, cone=(0.0, 0.0, 2400.0), columns=["object_id"])["object_id"].to_pylist()
    expected = full.object_id[_separation_arcsec(full.ra.values, full.dec.values, 0.0, 0.0) <= 2400.0]
    assert sorted(got) == sorted(expected.tolist()) and len(got) > 50


def test_cone_reads_only_overlapping_partitions(catalog, full, tmp_path):
    """Partitions outside the cone are never opened: corrupt them all and the cone query still works."""
    cone = Cone(150.0, 2.0, 1200.0)
    opened = open_catalog(catalog)
    plan = plan_query(opened, cone=cone)
    order = opened.order
    shift = 2 * (29 - order)
    with_rows_in_cone = {
        int(h >> shift)
        for h, sep in zip(full._healpix_29, _separation_arcsec(full.ra.values, full.dec.values, 150.0, 2.0))
        if sep <= 1200.0
    }
    assert with_rows_in_cone <= set(plan.pixels)
    assert len(plan.pixels) < plan.total_pixels / 2

    copy = str(tmp_path / "corrupt")
    shutil.copytree(catalog, copy)
    for path in glob.glob(os.path.join(copy, "dataset", f"Norder={order}", "Dir=*", "Npix=*", "part-*.parquet")):
        if parse_part_path(path).npix not in plan.pixels:
            with open(path, "wb") as fh:
                fh.write(b"not parquet")
    got = query(copy, cone=cone, columns=["object_id"])["object_id"].to_pylist()
    expected = full.object_id[_separation_arcsec(full.ra.values, full.dec.values, 150.0, 2.0) <= 1200.0]
    assert sorted(got) == sorted(expected.tolist())
    with pytest.raises(CatalogError, match=r"part file .*/part-[0-9a-f]+\.parquet is not readable Parquet"):
        query(copy, columns=["object_id"])


def _damage_one_part(catalog: str, fs=None) -> str:
    """Keep the first part's head and tail but drop its middle: a footer that no longer parses."""
    import fsspec

    fs = fs or fsspec.filesystem("file")
    protocol = "s3://" if catalog.startswith("s3://") else ""
    path = sorted(fs.glob(f"{catalog.removeprefix(protocol)}/dataset/Norder=*/Dir=*/Npix=*/part-*.parquet"))[0]
    data = fs.cat_file(path)
    fs.pipe_file(path, data[: len(data) // 2] + data[-len(data) // 4:])
    return protocol + path


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_damaged_part_is_a_one_line_error_naming_it(catalog, tmp_path, capsys, request, where):
    from skymorph.storage import filesystem

    if where == "local":
        copy = str(tmp_path / "damaged")
        shutil.copytree(catalog, copy)
        damaged = _damage_one_part(copy)
    else:
        copy = f"{request.getfixturevalue('s3_bucket')}/catalog"
        fs, path = filesystem(copy)
        fs.put(catalog, path, recursive=True)
        damaged = _damage_one_part(copy, fs)
    for argv in (["info", copy], ["query", copy, "--limit", "3"], ["pick", copy, "--n", "3", "--out", str(tmp_path / "b.csv")]):
        assert main(["catalog", *argv]) == 2
        err = capsys.readouterr().err.strip()
        assert len(err.splitlines()) == 1, err
        assert f"part file {damaged} is not readable Parquet" in err and "--overwrite" in err
    assert not (tmp_path / "b.csv").exists()


def test_an_error_while_rows_stream_is_one_line(catalog):
    with pytest.raises(CatalogError, match=r"^--where failed on the rows of catalog '.*': Conversion Error: Could not "
                                           r"convert string .* to INT32 .*; TRY_CAST gives NULL where a value does not convert$"):
        query(catalog, where="CAST(tile AS INTEGER) > 0")


def _expanded_pixels(cone: Cone, order: int) -> set[int]:
    """The reference: every order-``order`` pixel inside the cone's cells, enumerated one by one."""
    ipix, depths = cone.healpix_cells(order)
    pixels = set()
    for p, d in zip(ipix.tolist(), depths.tolist()):
        pixels.update(range(p << 2 * (order - d), (p + 1) << 2 * (order - d)))
    return pixels


@pytest.mark.parametrize("cone", [(150.0, 2.0, 3 * 3600.0), (0.1, -0.2, 7200.0), (45.0, 89.5, 5400.0),
                                  (300.0, -60.0, 30 * 3600.0), (10.0, 10.0, 20.0)])
@pytest.mark.parametrize("order", [0, 3, 6])
def test_overlapping_pixels_equal_the_expanded_cells(cone, order):
    cone = Cone(*cone)
    every = np.arange(12 * 4**order, dtype=np.int64)[::-1]
    got = cone.overlapping_pixels(every, order)
    assert set(got.tolist()) == _expanded_pixels(cone, order)
    assert np.all(np.diff(got) < 0)  # in the order given


def test_overlapping_pixels_at_order_19_without_expanding():
    """A 3 degree cone holds about 4e9 order-19 pixels; the partitions are tested against its cells instead.
    Pixels of points well inside the radius are selected, those well outside are not."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    from skymorph.catalog.writer import healpix_29

    cone = Cone(150.0, 2.0, 3 * 3600.0)
    rng = np.random.default_rng(2)
    angle = rng.uniform(0, 360, 400) * u.deg
    separation = np.where(np.arange(400) < 200, rng.uniform(0, 0.99, 400), rng.uniform(1.01, 2.0, 400)) * 3 * u.deg
    points = SkyCoord(150.0 * u.deg, 2.0 * u.deg).directional_offset_by(angle, separation)
    pixels = healpix_29(points.ra.deg, points.dec.deg) >> 2 * (29 - 19)
    assert len(np.unique(pixels)) == 400
    np.testing.assert_array_equal(cone.overlapping_pixels(pixels, 19), pixels[:200])


def test_readers_see_the_pixels_of_partition_info(catalog, tmp_path):
    """A run resumed on a finished catalog writes parts in pixels partition_info.csv lacks: every reader
    (full scan, cone, info) ignores them until the run's finish step lists their pixels."""
    from skymorph.catalog import info, layout, writer

    copy = str(tmp_path / "resumed")
    shutil.copytree(catalog, copy)
    order = open_catalog(copy).order
    schema, _ = layout.read_common_metadata(copy)
    donors = query(copy, limit=50)
    posterior = {name: donors[name].to_numpy() for name in schema.names[len(layout.BASE_COLUMNS):]}
    ra, dec, tile = np.linspace(30.0, 30.1, 50), np.full(50, -20.0), "s3://survey/late.zarr"
    table = writer.build_part_table(schema, np.arange(10**6, 10**6 + 50), ra, dec, tile, 0, posterior)
    parts = writer.write_part(copy, table, tile, 0, 50, order)
    assert {npix for npix, _, _ in parts}.isdisjoint(open_catalog(copy).pixels)

    assert query(copy, columns=["object_id"]).num_rows == query(catalog, columns=["object_id"]).num_rows == 3000
    assert query(copy, cone=(30.05, -20.0, 900.0)).num_rows == 0
    assert info(copy).rows == 3000

    manifest = writer.read_manifest(copy)
    manifest.add(writer.RangeRecord(tile, 0, 50, 50, 50, tuple(parts)))
    writer.finish_catalog(copy, manifest, schema, layout.read_properties(copy))
    assert query(copy, columns=["object_id"]).num_rows == info(copy).rows == 3050
    assert sorted(query(copy, cone=(30.05, -20.0, 900.0))["object_id"].to_pylist()) == list(range(10**6, 10**6 + 50))


@pytest.mark.parametrize(("where", "message"), [
    ("1=1; DROP TABLE x", "--where is not a valid SQL expression: Parser Error"),
    ("COPY catalog TO 'stolen.csv'", "--where is not a valid SQL expression: Parser Error"),
    # Parses and binds as a SELECT: only the locked configuration stops it.
    ("object_id IN (SELECT 1 FROM read_csv('/etc/passwd'))", "--where: Permission Error: Cannot access file \"/etc/passwd\""),
    ("1=1); CREATE TABLE y AS (SELECT 1", "--where is not a valid SQL expression: Parser Error"),
    ("bald_total > 0 ;", "--where ends in ';': give the SQL alone, without it"),
])
def test_where_is_read_only(catalog, where, message, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    with pytest.raises(CatalogError, match=re.escape(message)):
        query(catalog, where=where)
    assert not os.listdir(tmp_path)


def test_where_must_be_a_condition(catalog):
    """DuckDB reads a number as a truth value: --where "bar_strong_fraction" kept every row not exactly 0."""
    for where, kind in (("bar_strong_fraction", "FLOAT"), ("object_id + 1", "BIGINT"), ("tile", "VARCHAR")):
        with pytest.raises(CatalogError, match=rf"^--where '{re.escape(where)}' is a {kind} value, not a true/false condition; "
                                               r"compare it, e.g. 'bald_total > 0.5'$"):
            query(catalog, where=where)
    assert query(catalog, where="bar_strong_fraction > 0 AND NOT (tile = '')", columns=["object_id"]).num_rows > 0


def test_unknown_column_did_you_mean(catalog):
    with pytest.raises(CatalogError, match="Did you mean 'bald_total'"):
        query(catalog, where="bald_totl > 0.1")
    with pytest.raises(CatalogError, match="Did you mean 'bar_bald'"):
        query(catalog, columns=["bar_bld"])


@pytest.mark.parametrize(("cone", "message"), [
    ((150, 2, -5), "cone radius must be in (0, 648000] arcsec, got -5"),
    ((150, 2, 0), "cone radius must be in (0, 648000] arcsec, got 0"),
    ((361, 2, 10), "cone RA must be in [0, 360] degrees, got 361"),
    ((150, 91, 10), "cone Dec must be in [-90, 90] degrees, got 91"),
    ((150, float("nan"), 10), "must be a finite number, got nan"),
])
def test_bad_cone(cone, message):
    with pytest.raises(InputError, match=re.escape(message)):
        Cone(*cone)


def test_a_cone_of_two_numbers_is_a_one_line_error(catalog):
    with pytest.raises(InputError, match=re.escape("cone must be (ra_deg, dec_deg, radius_arcsec), got (1, 2)")):
        query(catalog, cone=(1, 2))
    with pytest.raises(InputError, match=re.escape("cone must be (ra_deg, dec_deg, radius_arcsec), got (150, 2, 'x')")):
        query(catalog, cone=(150, 2, "x"))  # a ValueError traceback
    with pytest.raises(InputError, match=re.escape("cone ra_deg must be a finite number, got '150'")):
        Cone("150", 2, 3)  # a TypeError traceback


def test_a_limit_is_any_integer_but_a_bool(catalog):
    assert query(catalog, limit=np.int64(5), columns=["object_id"]).num_rows == 5  # was refused
    with pytest.raises(InputError, match=r"limit must be a non-negative integer, got True"):
        query(catalog, limit=True)  # was one row


def test_the_terminal_shows_positions_to_a_milliarcsecond(catalog, capsys):
    """Six significant digits showed RA 151.213: 3.6 arcsec."""
    full = query(catalog, columns=["ra", "dec"], limit=3).to_pandas()
    assert main(["catalog", "query", catalog, "--columns", "ra,dec,bald_total", "--limit", "3"]) == 0
    shown = capsys.readouterr().out.splitlines()[1:]
    assert [line.split()[:2] for line in shown] == [[f"{ra:.6f}", f"{dec:.6f}"] for ra, dec in full.itertuples(index=False)]


@pytest.mark.parametrize("options, scan", [(None, "arrow"), ({"config_kwargs": {"connect_timeout": 30}}, "s3fs")])
def test_s3_catalog_matches_local(catalog, s3, s3_bucket, options, scan):
    """Through pyarrow's S3 filesystem, or s3fs where an option has no Arrow equivalent: the same rows."""
    import pyarrow.dataset as ds

    from skymorph.catalog.query import _remote_scan
    from skymorph.storage import filesystem, strip_protocol

    url = f"{s3_bucket}/catalog"
    fs, path = filesystem(url)
    fs.put(catalog, path, recursive=True)
    remote_catalog = open_catalog(url, options)
    scanned = _remote_scan(remote_catalog.part_urls(None), remote_catalog.schema, options)
    assert isinstance(scanned, ds.Dataset) == (scan == "arrow")
    where, cone = "bar_bald > 0.05", (150.0, 2.0, 2400.0)
    remote = query(url, where=where, cone=cone, columns=["object_id", "bald_total"], storage_options=options).to_pandas()
    local = query(catalog, where=where, cone=cone, columns=["object_id", "bald_total"]).to_pandas()
    assert len(remote) > 0
    assert remote.sort_values("object_id").reset_index(drop=True).equals(local.sort_values("object_id").reset_index(drop=True))
    explicit = query(url, limit=3, columns=["object_id"], storage_options={**s3.storage_options, **(options or {})})
    assert explicit.num_rows == 3
    # a part lost from a pixel that keeps others: the s3fs scan skipped the count, and an export was short
    by_pixel = {}
    for part in remote_catalog.part_urls(None):
        by_pixel.setdefault(part.rsplit("/", 1)[0], []).append(part)
    lost = next(parts[0] for parts in by_pixel.values() if len(parts) > 1)
    fs.rm(strip_protocol(lost))
    with pytest.raises(CatalogError, match=r"its part files hold 2,[0-9]{3} rows where hats.properties counts 3,000"):
        query(url, columns=["object_id"], storage_options=options)


def test_a_catalog_path_with_wildcard_characters_reads_only_its_own_parts(catalog, tmp_path):
    """DuckDB read `dr10*` as a pattern: with `dr10-old` beside it (parts of one name: the same tiles), the
    query failed naming the other catalog's file."""
    for name in ("dr10*", "dr10-old", "v[2]?"):
        shutil.copytree(catalog, tmp_path / name)
    for name in ("dr10*", "v[2]?"):
        assert query(str(tmp_path / name), columns=["object_id"]).num_rows == 3000
        assert query(str(tmp_path / name), where="bar_bald > 0.05", cone=(150.0, 2.0, 2400.0)).num_rows > 0


@pytest.mark.parametrize("argv", [
    ["query", "{cat}", "--out", "{cat}/dataset/rows.parquet"],  # then read as a part by pyarrow, LSDB and hats
    ["query", "{link}", "--out", "{cat}/rows.csv"],
    ["pick", "{cat}", "--n", "3", "--out", "b.csv", "--images", "{cat}/_skymorph/images"],
], ids=["query-dataset", "query-root-through-a-link", "pick-images"])
def test_an_output_inside_the_catalog_is_refused(catalog, tmp_path, monkeypatch, capsys, argv):
    monkeypatch.chdir(tmp_path)
    os.symlink(catalog, tmp_path / "link")
    argv = [a.format(cat=catalog, link=tmp_path / "link") for a in argv]
    flag, out = argv[-2], argv[-1]
    assert main(["catalog", *argv]) == 2
    assert capsys.readouterr().err == f"skymorph: error: {flag} {out!r} is inside catalog {argv[1]!r}; write it elsewhere\n"
    assert os.listdir(tmp_path) == ["link"] and not os.path.exists(out)


def test_a_catalog_written_again_since_it_was_opened_is_refused(tmp_path):
    """A Catalog kept in a notebook over a catalog run again gave the new rows under the old run's
    provenance (model digest, N volunteers): in the table's metadata and in FITS and VOTable headers."""
    out = str(tmp_path / "cat")
    write_synthetic_catalog(out, 200, per_tile=100, order=6, workers=1)
    kept = open_catalog(out)
    assert query(kept, columns=["object_id"]).num_rows == 200
    shutil.rmtree(out)
    write_synthetic_catalog(out, 200, per_tile=100, order=6, n_volunteers=5, workers=1)
    with pytest.raises(CatalogError, match=rf"^catalog {re.escape(repr(out))} was written again since it was opened \(or is "
                                           r"being written\); open it again$"):
        query(kept, columns=["object_id"])
    assert query(out, columns=["object_id"]).schema.metadata[b"skymorph.n_volunteers"] == b"5"


def test_arithmetic_without_a_value_is_null_or_an_error_not_nan(catalog):
    """DuckDB's IEEE default made ln(-x) and sqrt(-x) NaN, which compares and sorts above every number."""
    assert query(catalog, where="bar_bald / 0 IS NULL", columns=["object_id"]).num_rows == 3000
    with pytest.raises(CatalogError, match=r"^--where failed on the rows of catalog .*cannot take square root of a negative"):
        query(catalog, where="sqrt(dec - 2) > 0", columns=["object_id"])
    with pytest.raises(CatalogError, match=r"cannot take logarithm of zero; guard the argument, e.g. 'bar_bald > 0 AND "
                                           r"ln\(bar_bald\) > -3'"):
        query(catalog, order_by="ln(bar_bald * 0)", columns=["object_id"])  # BALD columns hold exact zeros
    bald = query(catalog, columns=["bar_bald"])["bar_bald"].to_numpy()
    with np.errstate(divide="ignore"):
        expected = int(np.sum(np.log(bald[bald > 0]) > -3))
    assert query(catalog, where="bar_bald > 0 AND ln(bar_bald) > -3", columns=["object_id"]).num_rows == expected > 0


@pytest.mark.parametrize("suffix", [".fits", ".vot", ".xml"])
def test_fits_and_votable_units(catalog, tmp_path, suffix):
    from astropy.table import Table

    table = query(catalog, cone=(150.0, 2.0, 900.0), columns=COLUMNS)
    out = str(tmp_path / f"rows{suffix}")
    assert main(["catalog", "query", catalog, "--cone", "150", "2", "900", "--columns", ",".join(COLUMNS), "--out", out]) == 0
    back = Table.read(out, format="fits" if suffix == ".fits" else "votable")
    assert str(back["ra"].unit) == "deg" and str(back["dec"].unit) == "deg"
    # Column descriptions, though DuckDB drops the catalog's field metadata: made again from the names.
    assert back["dec"].description == "Declination, ICRS."
    assert back["bar_bald"].description.startswith("BALD (Walmsley et al. 2020)") and back["bar_bald"].unit is None
    assert back["bald_total"].description == "Sum over questions q of q_asked x q_bald, in nats."
    np.testing.assert_array_equal(np.sort(back["object_id"]), np.sort(table["object_id"].to_numpy()))
    meta = open_catalog(catalog).metadata
    provenance = {"MODELSHA": FAKE_MODEL_SHA256, "SAMPLES": meta.samples, "SEED": meta.seed, "NVOLUNT": meta.n_volunteers,
                  "SCHEMA": meta.schema.name, "LIKELIHD": "multinomial"}
    if suffix == ".fits":
        assert {card: back.meta[card] for card in provenance} == provenance
        assert back.meta[f"TCOMM{COLUMNS.index('tile') + 1}"] == "URL of the tile store that holds the galaxy's image."
    else:
        from astropy.io.votable import parse

        params = {p.name: p.value for p in parse(out).get_first_table().params}
        assert {name: params[name] for name in provenance} == provenance
        assert FAKE_MODEL_SHA256 in back.meta["description"]
        field = parse(out).get_first_table().get_field_by_id("row")
        assert field.description == "Index of the galaxy's image in its tile store." and field.unit is None


def test_fits_descriptions_of_every_posterior_column(catalog, tmp_path):
    from astropy.table import Table

    out = str(tmp_path / "rows.fits")
    assert main(["catalog", "query", catalog, "--limit", "3", "--out", out]) == 0
    back = Table.read(out)
    assert all(back[name].description for name in back.colnames)
    assert back["bar_strong_fraction_q95"].description.startswith(
        "95% quantile of the vote fraction k/N (N = 40 volunteers asked the question) under the posterior predictive")
    assert "asked this question who give this answer" in back["bar_strong_fraction"].description
    assert back["bar_asked"].description.startswith("Predicted share of volunteers who would be asked this question")


def test_csv_and_parquet_round_trip(catalog, tmp_path):
    import pandas as pd

    table = query(catalog, where="bald_total > 1.0", columns=COLUMNS)
    export_table(table, str(tmp_path / "rows.csv"))
    export_table(table, str(tmp_path / "rows.parquet"))
    csv = pd.read_csv(tmp_path / "rows.csv")
    parquet = pq.read_table(tmp_path / "rows.parquet").to_pandas()
    field = pq.read_schema(tmp_path / "rows.parquet").field("ra")
    assert field.metadata == {b"description": b"Right ascension, ICRS.", b"unit": b"deg"}
    np.testing.assert_array_equal(csv.object_id, table["object_id"].to_numpy())
    np.testing.assert_allclose(csv.ra, table["ra"].to_numpy())
    assert parquet.equals(table.to_pandas())



@pytest.mark.parametrize("where", ["local", "s3"])
def test_streamed_output_equals_the_query_batch_by_batch(catalog, tmp_path, where, request):
    import pandas as pd

    from skymorph.catalog.export import export_reader
    from skymorph.catalog.query import query_reader

    out_dir = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    order = "bald_total DESC, object_id"
    table = query(catalog, where="bald_total > 0.2", columns=COLUMNS, order_by=order)
    with query_reader(catalog, where="bald_total > 0.2", columns=COLUMNS, order_by=order, batch_rows=100) as reader:
        assert dict(reader.schema.metadata)[b"skymorph.model_sha256"].decode() == FAKE_MODEL_SHA256
        fmt, rows = export_reader(reader, f"{out_dir}/rows.parquet")
    assert (fmt, rows) == ("parquet", table.num_rows) and rows > 300
    with query_reader(catalog, where="bald_total > 0.2", columns=COLUMNS, order_by=order, batch_rows=100) as reader:
        export_reader(reader, f"{out_dir}/rows.csv")
    from skymorph.storage import filesystem

    fs, root = filesystem(f"{out_dir}/rows.parquet")
    with fs.open(root, "rb") as fh:
        written = pq.ParquetFile(fh)
        assert written.metadata.num_row_groups > 1  # written batch by batch, not as one table
        assert written.schema_arrow.field("bald_total").metadata[b"description"].endswith(b"in nats.")
        assert written.read().to_pandas().equals(table.to_pandas())
    with filesystem(f"{out_dir}/rows.csv")[0].open(filesystem(f"{out_dir}/rows.csv")[1], "rb") as fh:
        csv = pd.read_csv(fh)
    np.testing.assert_array_equal(csv.object_id, table["object_id"].to_numpy())
    assert main(["catalog", "query", catalog, "--where", "bald_total > 0.2", "--columns", ",".join(COLUMNS),
                 "--order-by", order, "--out", f"{out_dir}/cli.parquet"]) == 0
    with fs.open(filesystem(f"{out_dir}/cli.parquet")[1], "rb") as fh:
        assert pq.read_table(fh).to_pandas().equals(table.to_pandas())


def test_a_stream_that_fails_midway_leaves_no_file(catalog, tmp_path):
    from skymorph.catalog.export import export_reader

    table = query(catalog, columns=COLUMNS, limit=500)

    def batches():
        yield from table.to_batches(max_chunksize=100)[:2]
        raise OSError("connection lost")

    reader = pa.RecordBatchReader.from_batches(table.schema, batches())
    with pytest.raises(OSError, match="connection lost"):
        export_reader(reader, str(tmp_path / "rows.parquet"))
    assert os.listdir(tmp_path) == []

def test_cli_terminal_table(catalog, capsys):
    assert main(["catalog", "query", catalog, "--columns", "object_id,bald_total", "--order-by", "bald_total DESC", "--limit", "3"]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out[0].split() == ["object_id", "bald_total"] and len(out) == 4
    assert main(["catalog", "query", catalog, "--columns", "object_id", "--limit", "30"]) == 0
    assert len(capsys.readouterr().out.splitlines()) == 31  # all 30 asked for, not the 20 shown by default
    assert main(["catalog", "query", catalog, "--where", "bald_total < 0"]) == 0
    assert capsys.readouterr().out.splitlines() == ["(no rows)"]  # not "... 150 more column(s)" of no rows


@pytest.mark.parametrize("argv, fragment", [
    (["--where", "bald_totl > 1"], "Did you mean 'bald_total'"),
    (["--where", "1=1; DROP TABLE x"], "--where"),
    (["--where", "COPY catalog TO 'x.csv'"], "--where"),
    (["--cone", "150", "2", "-10"], "radius"),
    (["--cone", "150", "95", "10"], "Dec"),
    (["--columns", "object_idd"], "Did you mean 'object_id'"),
    (["--columns", ""], "--columns names no column"),  # an empty shell variable: it gave every column
    (["--out", "rows.txt"], "cannot tell the format"),
])
def test_cli_bad_input_one_line_exit_2(catalog, capsys, argv, fragment, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)  # a relative --out lands here, not in the checkout
    assert main(["catalog", "query", catalog, *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("skymorph: error:") and fragment in err[0]
    assert os.listdir(tmp_path) == []


def test_no_columns_is_an_error_from_python_too(catalog):
    for columns in ([], "", " , "):
        with pytest.raises(InputError, match="--columns names no column"):
            query(catalog, columns=columns)


def test_cli_not_a_catalog(tmp_path, capsys):
    assert main(["catalog", "query", str(tmp_path)]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "is not a catalog" in err[0]


def test_an_interrupted_scan_is_a_keyboard_interrupt(catalog):
    import threading

    from skymorph.catalog.query import connect

    opened = open_catalog(catalog)
    with pytest.raises(KeyboardInterrupt), connect(opened) as con:
        # DuckDB drops an interrupt that comes before the query starts: interrupt until it returns
        stop = threading.Event()

        def keep_interrupting() -> None:
            while not stop.wait(0.1):
                con.interrupt()

        interrupter = threading.Thread(target=keep_interrupting)
        interrupter.start()
        try:  # a scan that runs for minutes unless interrupted
            con.execute("SELECT count(*) FROM catalog a, catalog b, catalog c WHERE a.ra + b.ra + c.ra > 0").fetchall()
        finally:
            stop.set()
            interrupter.join()


@pytest.mark.parametrize("out", [None, "rows.csv", "rows.parquet", "rows.fits"])
def test_a_column_named_twice_is_one_line(catalog, tmp_path, capsys, out):
    argv = ["catalog", "query", catalog, "--columns", "ra,object_id,ra"] + (["--out", str(tmp_path / out)] if out else [])
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["skymorph: error: --columns names the column 'ra' more than once; list each column once"]
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("options, blamed", [
    (["--where", "error('boom') IS NULL"], "--where failed on the rows of catalog"),
    (["--where", "CAST(tile AS INTEGER) > 0", "--out", "rows.csv"], "--where failed on the rows of catalog"),
    (["--order-by", "CAST(tile AS INTEGER)", "--out", "rows.parquet"], "--order-by failed on the rows of catalog"),
    (["--where", "ra > 0", "--order-by", "ln(-ra) > CAST(tile AS INTEGER)"], "--where or --order-by failed on the rows"),
    (["--where", "ln(dec - 2) > 0"], "--where failed on the rows of catalog"),  # was NaN, above every number: every dec < 2 passed
    (["--where", "EXISTS (SELECT * FROM sniff_csv('/etc/passwd'))"], "--where may read the catalog's rows only, not other files"),
])
def test_an_error_of_user_sql_on_the_rows_names_the_option(catalog, tmp_path, capsys, monkeypatch, options, blamed):
    monkeypatch.chdir(tmp_path)
    assert main(["catalog", "query", catalog, *options]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"skymorph: error: {blamed}"), err
    assert os.listdir(tmp_path) == []


@pytest.mark.parametrize("signum, code, word", [(2, 130, "interrupted"), (15, 143, "terminated")])
def test_a_signal_stops_a_long_query_at_once(catalog, signum, code, word):
    """Python runs a signal's handler only when DuckDB hands back control (14 s into a correlated
    subquery, measured); the query must stop at once, and as the CLI stops on that signal. This one
    would run for hours: an exit within the 30 s waited is the interrupt's doing."""
    import subprocess
    import sys

    import psutil

    from skymorph.testing.dask_processes import wait_for

    endless = "(SELECT count(*) FROM catalog a, catalog b, catalog c WHERE a.ra + b.ra + c.ra > catalog.ra) > 0"
    process = subprocess.Popen([sys.executable, "-m", "skymorph.cli", "catalog", "query", catalog, "--where", endless],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        cpu = psutil.Process(process.pid).cpu_times
        # Into the scan: start-up and a whole small query take 0.9 s of CPU (measured); a sleep could
        # signal a slow start-up before the CLI's handlers are in place.
        wait_for(lambda: cpu().user + cpu().system > 2.0, 60, "the query to be scanning")
        process.send_signal(signum)
        _, err = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == code and err.strip() == f"skymorph: {word}"


def test_fits_of_non_ascii_text_is_one_line_and_votable_keeps_it(tmp_path):
    """A tile path with an accent made astropy raise a UnicodeEncodeError traceback."""
    from astropy.table import Table

    table = pa.table({"object_id": pa.array([1, 2], pa.int64()), "tile": ["s3://b/ok.zarr", "/data/galaxiés/t.zarr"]})
    with pytest.raises(InputError, match=r"FITS tables hold ASCII text only, and column 'tile' has '/data/galaxiés/t.zarr' \(row 1\); write .vot"):
        export_table(table, str(tmp_path / "rows.fits"))
    assert not os.path.exists(tmp_path / "rows.fits")
    export_table(table, str(tmp_path / "rows.vot"))
    assert list(Table.read(tmp_path / "rows.vot")["tile"]) == ["s3://b/ok.zarr", "/data/galaxiés/t.zarr"]


@pytest.mark.parametrize("suffix", [".fits", ".vot", ".parquet", ".csv"])
def test_a_query_matching_nothing_writes_an_empty_table(catalog, tmp_path, capsys, suffix):
    """FITS raised an IndexError traceback for 0 rows (the ASCII check read the all() of an empty column as
    null, then row -1); the README's own bar query matched nothing on a small survey."""
    from astropy.table import Table

    out = tmp_path / f"none{suffix}"
    assert main(["catalog", "query", catalog, "--where", "bald_total < 0", "--out", str(out)]) == 0
    assert "wrote 0 rows" in capsys.readouterr().out
    if suffix == ".parquet":
        back = pq.read_table(out)
        assert back.num_rows == 0 and "object_id" in back.column_names
    elif suffix == ".csv":
        [header] = out.read_text().splitlines()
        assert header.startswith('"object_id","ra","dec",')
    else:
        back = Table.read(out, format="fits" if suffix == ".fits" else "votable")
        assert len(back) == 0 and "tile" in back.colnames


@pytest.mark.parametrize("seed", [0, 2**63 - 1, 2**63, 2**64 - 1])
def test_fits_and_votable_keep_any_seed_exactly(tmp_path, seed):
    """A seed of 2**63 or more (skymorph takes seeds up to 2**64 - 1) went into a VOTable long, and read back
    as 2**63 - 1; it is text, in FITS too, whose readers (cfitsio) hold integer cards in 64 signed bits."""
    from astropy.io.votable import parse
    from astropy.table import Table

    table = pa.table({"object_id": pa.array([1], pa.int64())}).replace_schema_metadata({"skymorph.seed": str(seed)})
    export_table(table, str(tmp_path / "rows.fits"))
    assert Table.read(tmp_path / "rows.fits").meta["SEED"] == (seed if seed < 2**63 else str(seed))
    export_table(table, str(tmp_path / "rows.vot"))
    [param] = [p for p in parse(str(tmp_path / "rows.vot")).get_first_table().params if p.name == "SEED"]
    assert int(param.value) == seed


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_part_deleted_while_the_catalog_is_read_is_named_as_such(tmp_path, request, where):
    """A `run --overwrite` deleting the catalog under a query: the part was called unreadable Parquet, to
    be restored (on S3), or DuckDB's "file system operations are disabled" was passed on (locally).
    The part is deleted as another process would: not through this process's cached S3 listing."""
    from skymorph.catalog.query import connect

    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    write_synthetic_catalog(f"{root}/cat", 600, per_tile=200, order=6, workers=1)
    catalog = open_catalog(f"{root}/cat")
    for i in (1, 2):  # with a --where too: DuckDB's glob of the gone part as a directory was blamed on --where
        with pytest.raises(CatalogError) as info:
            with connect(catalog, user_sql=("--where",) if i == 2 else ()) as con:
                gone = catalog.part_urls()[i]
                if where == "local":
                    os.remove(gone)
                else:
                    import s3fs

                    s3fs.S3FileSystem(skip_instance_cache=True).rm(gone)
                con.execute("SELECT count(*) FROM catalog").fetchall()
        assert str(info.value).startswith(f"catalog {catalog.url!r}: part file {gone} was deleted while the catalog was read: "
                                          "a `skymorph run` is rewriting it")


def test_a_partition_without_its_directory_is_a_one_line_error(tmp_path):
    """A cone's pixels are listed one directory each: fs.ls's FileNotFoundError came out as the bare path."""
    from skymorph.catalog import layout

    write_synthetic_catalog(str(tmp_path / "cat"), 600, per_tile=200, order=6, workers=1)
    catalog = open_catalog(str(tmp_path / "cat"))
    shutil.rmtree(layout.pixel_dir(catalog.url, catalog.order, catalog.pixels[0]))
    with pytest.raises(CatalogError, match=rf"partition Npix={catalog.pixels[0]} of partition_info.csv has no directory"):
        catalog.part_urls(catalog.pixels[:1])


def test_a_catalog_whose_path_holds_quotes_and_a_backslash_is_queried(tmp_path):
    """The local view pasted Python's repr into SQL: a backslash was doubled (no file found), a path with
    both quotes did not parse, and either read as a damaged catalog."""
    out = str(tmp_path / "it's a \"survey\" \\ 2")
    write_synthetic_catalog(out, 200, per_tile=100, order=3, workers=1)
    assert sorted(query(out, columns=["object_id"])["object_id"].to_pylist()) == list(range(200))


def test_a_cone_lists_the_parts_written_since_the_catalog_was_opened_on_s3(s3_bucket):
    """A cone listed each pixel through fsspec's cached listing: in a notebook open while a run resumed,
    it missed the parts written since (the all-pixel listing invalidated the cache already)."""
    import s3fs

    write_synthetic_catalog(f"{s3_bucket}/cat", 200, per_tile=100, order=3, workers=1)
    catalog = open_catalog(f"{s3_bucket}/cat")
    pixels = catalog.pixels[:1]
    before = catalog.part_urls(pixels)
    other = s3fs.S3FileSystem(skip_instance_cache=True)  # another process, as a run's worker
    added = before[0].rsplit("/", 1)[0] + "/part-00000000000000000000.parquet"
    other.copy(before[0], added)
    assert catalog.part_urls(pixels) == sorted([*before, added], key=lambda url: url.rsplit("/", 1)[-1])


def test_a_file_url_reads_as_its_path(catalog, full):
    """A file:// catalog went down the remote branch (pyarrow datasets, no allowed_paths) while its parts
    were listed as bare paths in one place and as file:// URLs in another."""
    ids = sorted(query(catalog, columns=["object_id"])["object_id"].to_pylist())
    assert sorted(query(f"file://{os.path.abspath(catalog)}", columns=["object_id"])["object_id"].to_pylist()) == ids
    cone = Cone(150.0, 2.0, 1200.0)
    by_path = open_catalog(catalog).part_urls(plan_query(open_catalog(catalog), cone=cone).pixels)
    assert open_catalog(f"file://{os.path.abspath(catalog)}").part_urls(plan_query(open_catalog(catalog), cone=cone).pixels) == by_path


def test_query_to_reads_once_into_memory_or_into_a_file(catalog, full, tmp_path):
    """What `catalog query` runs, one call from Python: the plan it read by and the rows, in memory or
    streamed to a file whose format is checked before the catalog is read."""
    from skymorph.catalog import query_to

    cone = Cone(150.0, 2.0, 1200.0)
    in_memory = query_to(catalog, cone=cone, columns=["object_id"])
    expected = sorted(query(catalog, cone=cone, columns=["object_id"])["object_id"].to_pylist())
    assert sorted(in_memory.table["object_id"].to_pylist()) == expected and in_memory.rows == len(expected)
    assert in_memory.plan == plan_query(open_catalog(catalog), columns=["object_id"], cone=cone) and in_memory.out is None
    written = query_to(catalog, str(tmp_path / "rows.parquet"), cone=cone, columns=["object_id"])
    assert (written.rows, written.format, written.table) == (len(expected), "parquet", None)
    assert sorted(pq.read_table(tmp_path / "rows.parquet")["object_id"].to_pylist()) == expected
    with pytest.raises(InputError, match="cannot tell the format of 'nowhere/rows.txt'"):
        query_to("no-such-catalog", "nowhere/rows.txt")


def test_the_terminal_says_rows_are_left_out_only_when_some_are(catalog, full, capsys):
    """A result of exactly 20 rows was followed by '(first 20 rows; use --limit N ...)'."""
    ids = np.sort(full.object_id.to_numpy())
    for last, more in ((ids[19], False), (ids[20], True)):
        assert main(["catalog", "query", catalog, "--where", f"object_id <= {last}", "--columns", "object_id"]) == 0
        out, err = capsys.readouterr()
        assert ("(first 20 rows; use --limit N or --out FILE for more)" in err) is more
        assert ("; the first 20 rows" if more else "; 20 rows") in err
        assert sum(line.strip().isdigit() for line in out.splitlines()) == 20
