"""Catalog layout and writer: parts, manifest, finish step; read back with hats, LSDB and pyarrow."""

from __future__ import annotations

import os
import re
import zlib

import numpy as np
import pyarrow.parquet as pq
import pytest

from skymorph.catalog import layout
from skymorph.catalog.layout import CatalogMetadata, CatalogProperties
from skymorph.catalog.writer import (
    Manifest,
    ManifestJournal,
    RangeRecord,
    build_part_table,
    catalog_schema,
    column_metadata,
    describe_schema,
    finish_catalog,
    healpix_29,
    read_manifest,
    with_version,
    write_failures,
    write_manifest,
    write_part,
)
from skymorph.errors import CatalogError
from skymorph.storage import exists, filesystem, read_text

ORDER = 3
COLUMNS = ("smooth_yes_fraction", "smooth_no_fraction", "smooth_asked", "smooth_bald", "bald_total")


def _metadata() -> CatalogMetadata:
    return CatalogMetadata(model_sha256="ab" * 32, samples=4, seed=7, n_volunteers=40,
                           schema_json='{"name": "toy"}', version="0.1.0")


def _tile(rng, name, n, ra0):
    ra = (ra0 + rng.uniform(0, 40, n)) % 360
    dec = rng.uniform(-30, 30, n)
    object_id = np.arange(n, dtype=np.int64) + 1000 * (zlib.crc32(name.encode()) % 10**6)  # hash() differs per process
    posterior = {c: rng.random(n).astype(np.float32) for c in COLUMNS}
    return object_id, ra, dec, posterior


def _write_catalog(catalog, rng, tiles=(("t0", 300, 0.0), ("t1", 200, 120.0))):
    meta = _metadata()
    schema = catalog_schema(COLUMNS, meta)
    manifest = Manifest(model_sha256=meta.model_sha256, order=ORDER, ranges={})
    expected = {}
    for name, n, ra0 in tiles:
        object_id, ra, dec, posterior = _tile(rng, name, n, ra0)
        table = build_part_table(schema, object_id, ra, dec, name, 0, posterior)
        parts = write_part(catalog, table, name, 0, n, ORDER)
        manifest.add(RangeRecord(tile=name, start=0, stop=n, n=n, chunk_size=64, parts=tuple(parts)))
        expected[name] = (object_id, ra, dec, posterior)
    props = CatalogProperties(catalog_name="toy", total_rows=0, order=ORDER, builder="skymorph test")
    report = finish_catalog(catalog, manifest, schema, props)
    return manifest, expected, report


def test_properties_round_trip_and_hats_reads_them(tmp_path):
    from hats.catalog import TableProperties

    props = CatalogProperties(catalog_name="cat", total_rows=12, order=4, builder="skymorph 0.1.0",
                              creation_date=CatalogProperties.now(), skymorph_model_sha256="c" * 64,
                              skymorph_samples=8, skymorph_positions="placeholder", extra={"obs_title": "x"})
    layout.write_properties(str(tmp_path), props)
    assert layout.read_properties(str(tmp_path)) == props and props.placeholder_positions
    hats_props = TableProperties.read_from_dir(tmp_path)
    assert (hats_props.catalog_name, hats_props.total_rows, hats_props.npix_suffix) == ("cat", 12, "/")
    assert (hats_props.ra_column, hats_props.dec_column) == ("ra", "dec")


@pytest.mark.parametrize("schema_name", ["Galaxy Zoo tree\nv2", "C:\\trees\\", "tree\\", " leading, tab\there", "galaxiés = 2: ok",
                                         "\\u0041 \\n literally", "bell\x07", "a\u2028b", "a\x85b", "trail "])
def test_properties_values_with_escapes_round_trip_here_and_in_hats(tmp_path, schema_name):
    """hats.properties is a Java properties file: a model's schema name with a newline broke the finished
    catalog (line 'v2' is not key=value), and a backslash read back otherwise in hats (``\\t`` as a tab; a
    trailing one joined the next line, losing skymorph_likelihood)."""
    from hats.catalog import TableProperties

    props = CatalogProperties(catalog_name="cat", total_rows=12, order=4, skymorph_schema=schema_name,
                              skymorph_likelihood="multinomial")
    layout.write_properties(str(tmp_path), props)
    assert layout.read_properties(str(tmp_path)) == props
    hats_props = TableProperties.read_from_dir(tmp_path)
    assert (hats_props.extra_dict()["skymorph_schema"], hats_props.extra_dict()["skymorph_likelihood"]) == (schema_name, "multinomial")


def test_a_catalog_named_by_a_hive_style_directory_round_trips(tmp_path):
    """--out s3://bucket/survey=dr10 named the catalog 'survey=dr10', which the finish step refused after the
    whole run, and every rerun again: a value in hats.properties may hold '='."""
    from hats.catalog import TableProperties

    props = CatalogProperties(catalog_name="survey=dr10", total_rows=3, order=4)
    layout.write_properties(str(tmp_path), props)
    assert layout.read_properties(str(tmp_path)) == props
    assert TableProperties.read_from_dir(tmp_path).catalog_name == "survey=dr10"


def test_properties_reject_bad_values():
    with pytest.raises(CatalogError, match=r"^hats.properties: hats_nrows='' is not an integer$"):
        CatalogProperties.from_text("obs_collection=c\nhats_nrows=\n")
    with pytest.raises(CatalogError, match=r"^catalog order must be in 0\.\.19, got 30$"):
        CatalogProperties(catalog_name="c", total_rows=1, order=30)
    with pytest.raises(CatalogError, match="hats_nrows"):
        CatalogProperties.from_text("obs_collection=c\n")
    with pytest.raises(CatalogError, match="skymorph_positions must be 'sky' or 'placeholder', got 'fake'"):
        CatalogProperties.from_text("obs_collection=c\nhats_nrows=1\nskymorph_positions=fake\n")


def test_part_names_are_deterministic_and_distinct():
    # Pinned: a name salted per process (Python's hash()) would let a resumed run duplicate parts.
    assert layout.part_name("s3://b/t.zarr", 0, 256) == "part-ae9d5658835184292be1.parquet"
    assert layout.part_name("s3://b/t.zarr", 0, 256) != layout.part_name("s3://b/t.zarr", 256, 512)
    assert layout.pixel_dir("/c", 5, 12345).endswith("dataset/Norder=5/Dir=10000/Npix=12345")


def test_healpix_29_matches_hats():
    from hats.pixel_math.spatial_index import compute_spatial_index

    rng = np.random.default_rng(1)
    ra, dec = rng.uniform(0, 360, 500), rng.uniform(-90, 90, 500)
    np.testing.assert_array_equal(healpix_29(ra, dec), compute_spatial_index(ra, dec))


def test_a_range_over_two_pixels_writes_each_row_once_in_its_own_pixel_with_its_tile_row(tmp_path):
    """Rows 40-43 of a tile, two in each of two order-3 pixels: a split only for more than two pixels wrote the
    whole range into both, and rows numbered from 0 rather than from the range's start pointed at other galaxies
    (_write_catalog's ranges all start at 0 and cover many pixels)."""
    import pyarrow as pa

    catalog = str(tmp_path / "cat")
    schema = catalog_schema(COLUMNS, _metadata())
    ra, dec = np.array([10.0, 100.0, 10.1, 100.1]), np.zeros(4)
    posterior = {c: np.arange(4, dtype=np.float32) + i for i, c in enumerate(COLUMNS)}
    table = build_part_table(schema, np.arange(7, 11), ra, dec, "t", 40, posterior)
    parts = write_part(catalog, table, "t", 40, 44, ORDER)
    assert len({npix for npix, _, _ in parts}) == 2 and [rows for _, _, rows in parts] == [2, 2]
    shift = 2 * (layout.SPATIAL_INDEX_ORDER - ORDER)
    for part in layout.list_parts(catalog):
        got = pq.read_table(part.url)
        assert (got[layout.SPATIAL_INDEX_COLUMN].to_numpy() >> shift == part.npix).all()
    rows = pa.concat_tables(pq.read_table(p.url) for p in layout.list_parts(catalog)).sort_by("object_id")
    assert rows["object_id"].to_pylist() == [7, 8, 9, 10] and rows["row"].to_pylist() == [40, 41, 42, 43]
    assert rows["ra"].to_pylist() == ra.tolist() and rows["bald_total"].to_pylist() == posterior["bald_total"].tolist()


def test_catalog_opens_in_hats_and_lsdb_with_every_row_once(tmp_path):
    import hats
    import lsdb
    from hats.pixel_math.healpix_pixel import HealpixPixel

    catalog = str(tmp_path / "cat")
    manifest, expected, report = _write_catalog(catalog, np.random.default_rng(0))
    assert report.total_rows == 500 and report.removed_parts == 0

    hc = hats.read_hats(catalog)
    assert hc.catalog_info.total_rows == 500
    pixels = {p.pixel for p in hc.get_healpix_pixels()}
    ra = np.concatenate([expected[t][1] for t in expected])
    dec = np.concatenate([expected[t][2] for t in expected])
    assert pixels == set((healpix_29(ra, dec) >> 2 * (29 - ORDER)).tolist())
    assert all(p.order == ORDER for p in hc.get_healpix_pixels())
    assert HealpixPixel(ORDER, min(pixels)) in hc.get_healpix_pixels()

    frame = lsdb.open_catalog(catalog).compute()
    assert len(frame) == 500 and frame["object_id"].is_unique
    for tile, (object_id, ra_t, _, posterior) in expected.items():
        rows = frame[frame["tile"] == tile].sort_values("row")
        np.testing.assert_array_equal(rows["object_id"].to_numpy(), object_id)
        np.testing.assert_array_equal(rows["ra"].to_numpy(), ra_t)
        np.testing.assert_array_equal(rows["smooth_bald"].to_numpy(), posterior["smooth_bald"])

    schema, meta = layout.read_common_metadata(catalog)
    assert meta == _metadata() and schema.names[:6] == list(layout.BASE_COLUMNS)
    part = layout.list_parts(catalog)[0]
    assert CatalogMetadata.from_kv(pq.read_schema(part.url).metadata) == _metadata()
    assert layout.read_partition_info(catalog) == [(ORDER, p) for p in sorted(pixels)]


def test_every_column_says_what_it_holds(tmp_path):
    catalog = str(tmp_path / "cat")
    _write_catalog(catalog, np.random.default_rng(0))
    schema, _ = layout.read_common_metadata(catalog)
    part = pq.read_schema(layout.list_parts(catalog)[0].url)  # the same columns; their meanings once, here
    assert part.equals(schema) and all(f.metadata is None for f in part)
    meta = {f.name: {k.decode(): v.decode() for k, v in f.metadata.items()} for f in schema}
    assert meta["ra"] == {"description": "Right ascension, ICRS.", "unit": "deg"} and meta["dec"]["unit"] == "deg"
    assert [name for name, m in meta.items() if "unit" in m] == ["ra", "dec"]
    assert all(set(m) <= {"description", "unit"} and m["description"].endswith(".") for m in meta.values())
    assert meta["_healpix_29"]["description"] == "HEALPix nested index of (ra, dec) at order 29 (the HATS spatial index)."
    assert meta["smooth_yes_fraction"]["description"] == (
        "Posterior-mean vote fraction: the share of volunteers asked this question who give this answer.")
    assert "product of the fractions of the answers leading to it" in meta["smooth_asked"]["description"]
    assert "largest mutual information" in meta["smooth_bald"]["description"]
    assert meta["bald_total"]["description"] == "Sum over questions q of q_asked x q_bald, in nats."
    assert column_metadata("smooth_yes_fraction_q05", 40)["description"].startswith(
        "5% quantile of the vote fraction k/N (N = 40 volunteers asked the question) under the posterior predictive")
    assert "(N volunteers asked" in column_metadata("smooth_yes_fraction_std")["description"]
    assert column_metadata("rank") == {}
    # Deterministic: a resumed job's schema, described, equals the stored one, field metadata included.
    assert describe_schema(catalog_schema(COLUMNS, _metadata())).equals(schema, check_metadata=True)


def test_a_catalog_without_field_metadata_reads_and_a_rerun_adds_it(tmp_path):
    import pyarrow as pa

    from skymorph.catalog import query
    from skymorph.inference.job import _finished
    from skymorph.storage import atomic_write_bytes

    catalog = str(tmp_path / "cat")
    manifest, _, _ = _write_catalog(catalog, np.random.default_rng(0))
    write_failures(catalog, [])
    schema, _ = layout.read_common_metadata(catalog)
    assert _finished(catalog, manifest, schema, {}) == 500
    # As written before descriptions: no field metadata in _common_metadata.
    bare = pa.schema([f.remove_metadata() for f in schema], metadata=schema.metadata)
    buffer = pa.BufferOutputStream()
    pq.write_metadata(bare, buffer)
    atomic_write_bytes(layout.common_metadata_url(catalog), buffer.getvalue().to_pybytes())
    assert query(catalog, where="smooth_bald >= 0").num_rows == 500
    # The rerun of a finished job sees a stale _common_metadata and its finish step rewrites it.
    assert _finished(catalog, manifest, schema, {}) is None
    finish_catalog(catalog, manifest, schema, CatalogProperties(catalog_name="toy", total_rows=0, order=ORDER))
    assert _finished(catalog, manifest, schema, {}) == 500


def test_finish_removes_parts_no_finished_range_owns(tmp_path):
    catalog = str(tmp_path / "cat")
    rng = np.random.default_rng(2)
    manifest, _, _ = _write_catalog(catalog, rng)
    schema = catalog_schema(COLUMNS, _metadata())
    object_id, ra, dec, posterior = _tile(rng, "orphan", 50, 200.0)
    write_part(catalog, build_part_table(schema, object_id, ra, dec, "orphan", 0, posterior), "orphan", 0, 50, ORDER)
    npix_dir = os.path.dirname(layout.list_parts(catalog)[0].url)
    killed_writer_temp = os.path.join(npix_dir, ".part-0123.parquet.4f2a.tmp")
    with open(killed_writer_temp, "wb") as fh:
        fh.write(b"PAR1 half a file")
    unused = sorted(set(range(12 * 4**ORDER)) - {p.npix for p in layout.list_parts(catalog)})[0]
    os.makedirs(layout.pixel_dir(catalog, ORDER, unused))  # a writer killed before its only part's rename
    with open(os.path.join(layout.pixel_dir(catalog, ORDER, unused), ".part-4567.parquet.9c1e.tmp"), "wb") as fh:
        fh.write(b"PAR1")
    report = finish_catalog(catalog, manifest, schema, CatalogProperties(catalog_name="toy", total_rows=0, order=ORDER))
    assert report.total_rows == 500 and report.removed_parts >= 1
    assert report.removed_temp_files == 2 and not os.path.exists(killed_writer_temp)
    assert layout.list_temp_files(catalog) == []
    # S3 writes are one PUT, which leaves no temporary file: no listing (here it would fail on a refused port)
    assert layout.list_temp_files("s3://bucket/catalog", {"client_kwargs": {"endpoint_url": "http://127.0.0.1:1"}}) == []
    assert all("orphan" not in pq.read_table(p.url).column("tile").to_pylist() for p in layout.list_parts(catalog))
    # no pixel directory left without its part: hats' strict validation refused the catalog
    on_disk = {int(d.rsplit("=", 1)[1]) for d, _, _ in os.walk(layout.dataset_url(catalog)) if os.path.basename(d).startswith("Npix=")}
    assert on_disk == set(report.pixels)
    assert all(os.listdir(d) for d, _, _ in os.walk(layout.dataset_url(catalog)))


def test_a_catalog_resumed_after_an_upgrade_names_every_version_that_wrote_it(tmp_path):
    """The finishing run stamped its own version on a catalog whose parts older versions wrote; a rerun of
    a finished catalog after an upgrade, writing nothing, relabelled it too."""
    from skymorph.catalog import open_catalog
    from skymorph.inference.job import _finished

    catalog = str(tmp_path / "cat")
    rng = np.random.default_rng(3)
    schema = catalog_schema(COLUMNS, _metadata())
    manifest = Manifest(model_sha256=_metadata().model_sha256, order=ORDER, ranges={})
    for name, ra0, worker_version in (("t0", 0.0, "0.10.0"), ("t1", 120.0, "0.9.2"), ("t2", 240.0, "0.10.0")):
        object_id, ra, dec, posterior = _tile(rng, name, 40, ra0)
        table = build_part_table(with_version(schema, worker_version), object_id, ra, dec, name, 0, posterior)
        parts = write_part(catalog, table, name, 0, 40, ORDER)
        manifest.add(RangeRecord(tile=name, start=0, stop=40, n=40, chunk_size=64, parts=tuple(parts)))
    driver = with_version(schema, "0.11.0")
    finish_catalog(catalog, manifest, driver, CatalogProperties(catalog_name="toy", total_rows=0, order=ORDER,
                                                                skymorph_version="0.11.0"))
    write_failures(catalog, [])
    assert layout.read_properties(catalog).skymorph_version == "0.9.2, 0.10.0"
    assert open_catalog(catalog).metadata.version == "0.9.2, 0.10.0"
    assert _finished(catalog, manifest, driver, {}) == 120  # nothing to rewrite: the versions stay the parts'
    assert layout.read_properties(catalog).skymorph_version == "0.9.2, 0.10.0"


def test_joined_versions_are_distinct_and_ordered_by_their_numbers():
    assert layout.joined_versions(["0.10.0", "", "0.9.1", "0.10.0"]) == "0.9.1, 0.10.0"
    assert layout.joined_versions(["0.1.0"]) == "0.1.0"
    assert layout.joined_versions([]) == ""


def test_finish_names_a_part_damaged_by_another_hand(tmp_path):
    """A truncated part at the finish step stopped the run with pyarrow's traceback, after the whole run."""
    catalog = str(tmp_path / "cat")
    manifest, _, _ = _write_catalog(catalog, np.random.default_rng(2))
    part = layout.list_parts(catalog)[0]
    with open(part.url, "r+b") as fh:
        fh.truncate(50)
    with pytest.raises(CatalogError, match=rf"part {re.escape(part.url)} is not a readable Parquet file \(.*\); rerun with --overwrite$"):
        finish_catalog(catalog, manifest, catalog_schema(COLUMNS, _metadata()), CatalogProperties(catalog_name="toy", total_rows=0, order=ORDER))


def test_finish_refuses_parts_that_disagree_with_the_manifest(tmp_path):
    """A part with fewer rows than the manifest records, or one it names that is gone (both by another hand):
    finish must stop, not write a catalog whose counts and queries miss those rows."""
    catalog = str(tmp_path / "cat")
    manifest, _, _ = _write_catalog(catalog, np.random.default_rng(2))
    schema = catalog_schema(COLUMNS, _metadata())
    short, lost = layout.list_parts(catalog)[:2]
    table = pq.read_table(short.url)
    pq.write_table(table.slice(0, table.num_rows - 1), short.url)
    with pytest.raises(CatalogError, match=rf"part {re.escape(short.url)} has {table.num_rows - 1} rows, the manifest says "
                                           rf"{table.num_rows}; rerun with --overwrite$"):
        finish_catalog(catalog, manifest, schema, CatalogProperties(catalog_name="toy", total_rows=0, order=ORDER))
    pq.write_table(table, short.url)  # whole again: only the lost part is wrong now
    os.remove(lost.url)
    with pytest.raises(CatalogError, match=rf"1 part file\(s\) in the manifest are missing \(e\.g\. Npix={lost.npix}/{re.escape(lost.name)}\); "
                                           "rerun with --overwrite$"):
        finish_catalog(catalog, manifest, schema, CatalogProperties(catalog_name="toy", total_rows=0, order=ORDER))


def test_finish_stops_where_s3_keeps_a_stale_part(s3, s3_bucket):
    """S3 answers a delete a bucket policy refuses with 200 and a per-key error, which s3fs ignores: finish
    reported the stale part removed and wrote a catalog whose queries read its rows beside the counted ones."""
    catalog = f"{s3_bucket}/cat"
    rng = np.random.default_rng(2)
    manifest, _, _ = _write_catalog(catalog, rng)
    schema = catalog_schema(COLUMNS, _metadata())
    object_id, ra, dec, posterior = _tile(rng, "orphan", 50, 0.0)
    layout.unfinish_catalog(catalog)  # as a run does before it adds a part
    write_part(catalog, build_part_table(schema, object_id, ra, dec, "orphan", 0, posterior), "orphan", 0, 50, ORDER)
    s3.deny_deletes(layout.dataset_url(catalog) + "/")
    with pytest.raises(PermissionError, match=r"S3 did not delete this object \(AccessDenied: Access Denied\), nor 30 more: 's3://.*/part-[0-9a-f]{20}\.parquet'$"):
        finish_catalog(catalog, manifest, schema, CatalogProperties(catalog_name="toy", total_rows=0, order=ORDER))
    assert not exists(layout.properties_url(catalog))


def test_manifest_round_trip_on_s3(s3_bucket):
    catalog = f"{s3_bucket}/cat"
    manifest = Manifest(model_sha256="ab" * 32, order=5, ranges={})
    manifest.add(RangeRecord("s3://b/t.zarr", 0, 256, 300, 128, ((7, "part-a.parquet", 200), (8, "part-a.parquet", 56))))
    write_manifest(catalog, manifest)
    again = read_manifest(catalog)
    assert again == manifest and again.ranges[("s3://b/t.zarr", 0, 256)].rows == 256
    assert read_manifest(f"{s3_bucket}/none") is None


def _record(i: int) -> RangeRecord:
    return RangeRecord(f"s3://b/t{i // 4}.zarr", 64 * (i % 4), 64 * (i % 4 + 1), 256, 64, ((i % 7, f"part-{i:04x}.parquet", 64),))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_journal_appends_segments_reads_whole_and_compacts(tmp_path, where, request):
    catalog = str(tmp_path / "cat") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/cat"
    manifest = Manifest(model_sha256="cd" * 32, order=4, ranges={}, n_volunteers=12)
    write_manifest(catalog, manifest)
    journal = ManifestJournal(catalog, manifest, compact_every=4)
    header = read_text(layout.manifest_url(catalog))
    for flush in range(3):
        for i in range(5 * flush, 5 * flush + 5):
            journal.add(_record(i))
        journal.flush()
        journal.flush()  # nothing new: no segment
        again = read_manifest(catalog)
        assert again == manifest and len(again.ranges) == 5 * (flush + 1)
    fs, root = filesystem(layout.journal_url(catalog))
    assert len(fs.ls(root)) == 3
    assert read_text(layout.manifest_url(catalog)) == header  # segments only: the manifest file is not rewritten

    journal.add(_record(15))
    journal.flush()  # the 4th segment: compaction writes the whole manifest and removes the segments
    fs.invalidate_cache()
    assert not fs.exists(root) or fs.ls(root) == []
    assert Manifest.from_json(read_text(layout.manifest_url(catalog))) == manifest
    assert len(read_manifest(catalog).ranges) == 16

    journal.add(_record(16))
    journal.flush()
    resumed = read_manifest(catalog)
    assert len(resumed.ranges) == 17 and ManifestJournal(catalog, resumed)._segments == 1


def test_corrupt_journal_segment_is_a_one_line_error(tmp_path):
    catalog = str(tmp_path / "cat")
    write_manifest(catalog, Manifest(model_sha256="cd" * 32, order=4, ranges={}))
    os.makedirs(layout.journal_url(catalog))
    with open(os.path.join(layout.journal_url(catalog), "0001-x-00000000.json"), "w") as fh:
        fh.write('[{"tile": "t"')
    with pytest.raises(CatalogError, match="journal segment .*0001-x-00000000.json is corrupt.*--overwrite"):
        read_manifest(catalog)


def test_a_manifest_that_is_not_text_is_a_one_line_error(tmp_path):
    catalog = str(tmp_path / "cat")
    write_manifest(catalog, Manifest(model_sha256="cd" * 32, order=4, ranges={}))
    with open(layout.manifest_url(catalog), "wb") as fh:
        fh.write(b"\xff\xfe\x00garbage")
    with pytest.raises(CatalogError, match=r"manifest.json is corrupt \(not UTF-8 text: .*--overwrite"):
        read_manifest(catalog)


def test_foreign_entries_and_remove_catalog_on_s3_with_a_folder_marker(s3, s3_bucket):
    """A "folder" marker (key "out/", as the S3 console makes) lists as the root itself; it was taken for
    an entry named 'out' that no catalog writes, and `run --out` refused the empty prefix."""
    import boto3

    from skymorph.storage import atomic_write_text, exists

    out = f"{s3_bucket}/out"
    boto3.client("s3", endpoint_url=s3.endpoint_url, region_name="us-east-1").put_object(
        Bucket=s3_bucket.removeprefix("s3://"), Key="out/", Body=b"")
    assert layout.foreign_entries(out) == []
    for name in ("hats.properties", "dataset/_common_metadata", "_skymorph/manifest.json", "notes.txt"):
        atomic_write_text(f"{out}/{name}", "x")
    assert layout.foreign_entries(out) == ["notes.txt"]
    layout.remove_catalog(out)
    assert layout.foreign_entries(out) == ["notes.txt"] and read_text(f"{out}/notes.txt") == "x"
    assert not any(exists(f"{out}/{name}") for name in ("hats.properties", "dataset", "_skymorph"))


def test_removing_a_catalog_unfinishes_it_before_deleting_a_part(s3, s3_bucket, monkeypatch):
    """In listing order, parts went before hats.properties: a reader during `run --overwrite`, or the
    catalog a killed one left, read as finished with parts missing. Here the store refuses to delete any
    part (a bucket policy), and the catalog is left unfinished, every part in place."""
    from skymorph.catalog import open_catalog
    from skymorph.testing.catalogs import write_synthetic_catalog
    from skymorph.testing.faulty_proxy import FaultyProxy

    catalog = f"{s3_bucket}/cat"
    written = write_synthetic_catalog(catalog, 600, per_tile=200, order=6, workers=1)
    with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0, deny="Npix=") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(PermissionError):
            layout.remove_catalog(catalog)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    assert proxy.counts.denied >= 1
    filesystem(catalog)[0].invalidate_cache()
    with pytest.raises(CatalogError, match="hats.properties missing"):
        open_catalog(catalog)
    assert len(layout.list_parts(catalog)) == written.parts


def test_metadata_without_likelihood_reads_as_unrecorded():
    """Catalogs written before skymorph.likelihood was recorded still open."""
    kv = {k: v for k, v in _metadata().to_kv().items() if k != "skymorph.likelihood"}
    assert CatalogMetadata.from_kv(kv).likelihood == ""
    assert CatalogMetadata.from_kv({**kv, "skymorph.likelihood": "dirichlet_multinomial"}).likelihood == "dirichlet_multinomial"
    with pytest.raises(CatalogError, match="likelihood must be one of multinomial, dirichlet_multinomial, got 'gauss'"):
        CatalogMetadata.from_kv({**kv, "skymorph.likelihood": "gauss"})
