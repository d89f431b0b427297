"""Tile stores: round trips (local and S3), validation on open, chunked reads, tile lists."""

from __future__ import annotations

import os
import shutil
import time

import numpy as np
import pytest
import zarr

from skymorph import storage
from skymorph.errors import InputError, TileError, TileNotFoundError
from skymorph.tiles import MISSING_OBJECT_ID, open_tile, read_tile_list, read_tiles, tile_name, write_tile, write_tile_list

ATTRS = dict(survey="test", bands=["r"], pixel_scale_arcsec=0.262, stretch="asinh", resize="none")


def _data(n=70, c=1, h=12, w=10, seed=0):
    rng = np.random.default_rng(seed)
    images = rng.integers(0, 256, size=(n, c, h, w), dtype=np.uint8)
    object_id = rng.integers(0, 2**62, size=n, dtype=np.int64)
    ra = rng.uniform(0, 360, n)
    dec = rng.uniform(-90, 90, n)
    return images, object_id, ra, dec


def _check_round_trip(url, storage_options=None):
    images, object_id, ra, dec = _data()
    write_tile(url, images, object_id, ra, dec, chunk_size=32, storage_options=storage_options,
               extra_attrs={"seed": 7}, **ATTRS)
    tile = open_tile(url, storage_options=storage_options)
    assert (tile.n, tile.shape, tile.chunk_size) == (70, (1, 12, 10), 32)
    assert tile.name == "hpx5_00042"
    assert tile.attrs["bands"] == ["r"] and tile.attrs["seed"] == 7 and tile.attrs["format_version"] == 1
    assert tile.attrs["pixel_scale_arcsec"] == 0.262 and tile.attrs["survey"] == "test"
    got = tile.read_images()
    assert got.dtype == np.uint8 and np.array_equal(got, images)
    np.testing.assert_array_equal(tile.read_images(5, 40), images[5:40])
    oid, r, d = tile.read_coords()
    assert oid.dtype == np.int64 and r.dtype == np.float64
    np.testing.assert_array_equal(oid, object_id)
    np.testing.assert_array_equal(r, ra)
    np.testing.assert_array_equal(d, dec)
    oid, r, d = tile.read_coords(10, 12)
    np.testing.assert_array_equal(oid, object_id[10:12])


def test_round_trip_local(tmp_path):
    _check_round_trip(str(tmp_path / "hpx5_00042.zarr"))


def test_coordinates_of_a_large_tile_are_chunked_so_a_range_reads_only_its_chunks(tmp_path):
    images, object_id, ra, dec = _data(n=140_000, h=2, w=2)
    url = str(tmp_path / "big.zarr")
    write_tile(url, images, object_id, ra, dec, chunk_size=1024, **ATTRS)
    group = zarr.open_group(url, mode="r")
    assert [group[key].chunks for key in ("object_id", "ra", "dec")] == [(65_536,)] * 3
    oid, r, d = open_tile(url).read_coords(65_530, 65_540)  # across a chunk edge
    np.testing.assert_array_equal(oid, object_id[65_530:65_540])
    np.testing.assert_array_equal(r, ra[65_530:65_540])
    np.testing.assert_array_equal(d, dec[65_530:65_540])


def test_round_trip_s3(s3_bucket):
    _check_round_trip(f"{s3_bucket}/survey/tiles/hpx5_00042.zarr")


def test_round_trip_s3_explicit_storage_options(s3, s3_bucket, monkeypatch):
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    _check_round_trip(f"{s3_bucket}/t/hpx5_00042.zarr", storage_options=s3.storage_options)


def test_stored_with_blosc_zstd_bitshuffle_and_every_chunk_checksummed(tmp_path):
    url = str(tmp_path / "t.zarr")
    write_tile(url, *_data(), **ATTRS)
    group = zarr.open_group(url, mode="r")
    codec, checksum = group["images"].compressors
    assert (codec.cname.value, codec.clevel, codec.shuffle.value) == ("zstd", 5, "bitshuffle")
    assert isinstance(checksum, zarr.codecs.Crc32cCodec)
    for key in ("object_id", "ra", "dec"):
        assert [type(c) for c in group[key].compressors] == [zarr.codecs.ZstdCodec, zarr.codecs.Crc32cCodec]


def test_missing_tile_local_and_s3(tmp_path, s3_bucket):
    with pytest.raises(TileNotFoundError, match="nope.zarr.*does not exist"):
        open_tile(str(tmp_path / "nope.zarr"))
    url = f"{s3_bucket}/nope.zarr"
    with pytest.raises(TileNotFoundError, match="nope.zarr"):
        open_tile(url)
    assert not storage.exists(url)  # opening read-only must not create an empty group


def _handmade(path, arrays, attrs=None, fill_values=None):
    """A Zarr group with the given arrays, their coordinates' fill values those write_tile gives (or
    ``fill_values``), and by default a valid ``skymorph`` attribute."""
    fill_values = {"object_id": MISSING_OBJECT_ID, "ra": np.nan, "dec": np.nan} if fill_values is None else fill_values
    group = zarr.open_group(path, mode="w")
    for key, values in arrays.items():
        group.create_array(key, shape=values.shape, dtype=values.dtype, fill_value=fill_values.get(key))[...] = values
    group.attrs.put({"skymorph": {"format_version": 1, **ATTRS}} if attrs is None else attrs)
    return path


def _good_arrays(n=8):
    images, object_id, ra, dec = _data(n)
    return {"images": images, "object_id": object_id, "ra": ra, "dec": dec}


@pytest.mark.parametrize(
    "change, message",
    [
        (lambda a: a.pop("ra"), r"no 'ra' array"),
        (lambda a: a.update(images=a["images"].astype(np.float64)), r"'images' must be uint8, got float64"),
        (lambda a: a.update(images=a["images"][:, 0]), r"must be 4-d"),
        (lambda a: a.update(dec=a["dec"][:-1]), r"'dec' has shape \(7,\), expected \(8,\)"),
        (lambda a: a.update(object_id=a["object_id"].astype(np.float64)), r"'object_id' must be int64, got float64"),
        (lambda a: a.update(images=np.concatenate([a["images"]] * 3, axis=1)), r"does not match 3 image channel"),
    ],
)
def test_invalid_tile_is_named(tmp_path, change, message):
    arrays = _good_arrays()
    change(arrays)
    url = _handmade(str(tmp_path / "bad_tile.zarr"), arrays)
    with pytest.raises(TileError, match=f"bad_tile.zarr.*{message}"):
        open_tile(url)


@pytest.mark.parametrize("key", ["object_id", "ra", "dec"])
def test_coordinates_whose_fill_value_a_real_row_may_hold_are_refused(tmp_path, key):
    """A store written with zarr's default fill value, 0, was read, and a chunk file it lost then read as
    galaxies with object_id 0 at (0, 0)."""
    fill_values = {"object_id": MISSING_OBJECT_ID, "ra": np.nan, "dec": np.nan, key: 0}
    url = _handmade(str(tmp_path / "zero.zarr"), _good_arrays(), fill_values=fill_values)
    with pytest.raises(TileError, match=rf"zero.zarr': '{key}' has fill value 0(\.0)?, not (nan|{MISSING_OBJECT_ID}), so a lost chunk"):
        open_tile(url)


def test_not_a_skymorph_store(tmp_path):
    url = _handmade(str(tmp_path / "plain.zarr"), _good_arrays(), attrs={})
    with pytest.raises(TileError, match="plain.zarr.*not a skymorph tile store"):
        open_tile(url)
    array_url = str(tmp_path / "array.zarr")
    zarr.create_array(array_url, shape=(3,), dtype="f8")
    with pytest.raises(TileError, match="array.zarr.*single Zarr array"):
        open_tile(array_url)


def test_wrong_format_version(tmp_path):
    url = _handmade(str(tmp_path / "v9.zarr"), _good_arrays(), attrs={"skymorph": {"format_version": 9, **ATTRS}})
    with pytest.raises(TileError, match="v9.zarr.*format version 9"):
        open_tile(url)


def test_writer_that_died_leaves_an_incomplete_tile(tmp_path):
    """A writer killed after creating the group but before the final attribute leaves the marker."""
    url = str(tmp_path / "half.zarr")
    write_tile(url, *_data(), **ATTRS)
    zarr.open_group(url, mode="r+").attrs.put({"skymorph_incomplete": True})
    with pytest.raises(TileError, match="half.zarr.*incomplete"):
        open_tile(url)


def test_rewrite_replaces_old_tile(tmp_path):
    url = str(tmp_path / "t.zarr")
    write_tile(url, *_data(n=70), **ATTRS)
    images, *rest = _data(n=5, seed=1)
    write_tile(url, images, *rest, **ATTRS)
    tile = open_tile(url)
    assert tile.n == 5 and np.array_equal(tile.read_images(), images)
    # damaged metadata, which open_tile says to write again: marking it incomplete first must not stop that
    for damaged in ("{not json", '{"zarr_format": 3, "node_type": "group", "attributes": 5}'):
        with open(os.path.join(url, "zarr.json"), "w") as fh:
            fh.write(damaged)
        write_tile(url, images, *rest, **ATTRS)
        assert np.array_equal(open_tile(url).read_images(), images)


def test_missing_array_on_disk(tmp_path):
    url = str(tmp_path / "t.zarr")
    write_tile(url, *_data(), **ATTRS)
    shutil.rmtree(os.path.join(url, "ra"))
    with pytest.raises(TileError, match="t.zarr.*no 'ra' array"):
        open_tile(url)


@pytest.mark.parametrize(
    "kwargs, message",
    [
        (dict(chunk_size=0), "chunk_size must be a positive integer"),
        (dict(bands=["g", "r"]), r"2 band name\(s\)"),
        (dict(pixel_scale_arcsec=0), "pixel_scale_arcsec must be a number > 0, got 0"),
        (dict(pixel_scale_arcsec="0.262"), "pixel_scale_arcsec must be a number > 0, got '0.262'"),  # was a TypeError
        (dict(extra_attrs={"bands": 1}), "reserved key"),
        (dict(extra_attrs={"seeing": float("nan")}), "without NaN or infinity"),  # a bare NaN in zarr.json is not JSON
    ],
)
def test_write_tile_rejects_bad_arguments(tmp_path, kwargs, message):
    with pytest.raises(InputError, match=message):
        write_tile(str(tmp_path / "t.zarr"), *_data(), **{**ATTRS, **kwargs})


def test_write_tile_rejects_bad_arrays(tmp_path):
    images, object_id, ra, dec = _data()
    with pytest.raises(InputError, match="uint8"):
        write_tile(str(tmp_path / "t.zarr"), images.astype(np.float32), object_id, ra, dec, **ATTRS)
    with pytest.raises(InputError, match=r"ra has shape \(69,\)"):
        write_tile(str(tmp_path / "t.zarr"), images, object_id, ra[:-1], dec, **ATTRS)
    with pytest.raises(InputError, match="dec must lie"):
        write_tile(str(tmp_path / "t.zarr"), images, object_id, ra, dec * 2, **ATTRS)


@pytest.mark.parametrize("prefetch", [True, False])
@pytest.mark.parametrize("start, stop", [(0, None), (100, 900), (256, 512), (255, 257), (300, 300), (0, 1000)])
def test_iter_chunks_covers_rows_in_order(tmp_path, prefetch, start, stop):
    images, object_id, ra, dec = _data(n=1000, h=4, w=4)
    url = str(tmp_path / "t.zarr")
    write_tile(url, images, object_id, ra, dec, chunk_size=256, **ATTRS)
    tile = open_tile(url)
    pieces = list(tile.iter_chunks(start, stop, prefetch=prefetch))
    stop_ = 1000 if stop is None else stop
    if start == stop_:
        assert pieces == []
        return
    ranges = [(a, b) for a, b, _ in pieces]
    starts = [a for a, _ in ranges]
    stops = [b for _, b in ranges]
    assert starts == [start, *stops[:-1]] and stops[-1] == stop_  # contiguous, in order, exactly [start, stop)
    assert all(a < b and (b - 1) // 256 == a // 256 for a, b in ranges)  # each inside one stored chunk
    assert len(ranges) == len({a // 256 for a in range(start, stop_)})  # no chunk read twice
    np.testing.assert_array_equal(np.concatenate([im for _, _, im in pieces]), images[start:stop_])


def test_iter_chunks_prefetches_the_next_chunk_on_a_thread(tmp_path, monkeypatch):
    """While the caller holds chunk k, chunk k + 1 is already being read, on another thread."""
    import threading

    url = str(tmp_path / "t.zarr")
    write_tile(url, *_data(n=50), chunk_size=10, **ATTRS)
    tile = open_tile(url)
    calls = []
    read = tile.read_images

    def recording_read(start, stop):
        calls.append((start, threading.current_thread() is threading.main_thread()))
        return read(start, stop)

    monkeypatch.setattr(tile, "read_images", recording_read)
    for start, _, _ in tile.iter_chunks():
        if start + 10 < 50:  # the next read starts while the caller still holds this chunk
            deadline = time.monotonic() + 10
            while (start + 10, False) not in calls and time.monotonic() < deadline:
                time.sleep(0.001)
            assert (start + 10, False) in calls
    assert [c[0] for c in calls] == [0, 10, 20, 30, 40] and not any(on_main for _, on_main in calls)


def test_iter_chunks_stops_early_and_checks_range(tmp_path):
    url = str(tmp_path / "t.zarr")
    write_tile(url, *_data(n=100), chunk_size=10, **ATTRS)
    tile = open_tile(url)
    chunks = tile.iter_chunks()
    assert next(chunks)[:2] == (0, 10)
    chunks.close()  # must not hang on the pending prefetch
    with pytest.raises(InputError, match=r"rows \[50, 101\) are outside \[0, 100\]"):
        list(tile.iter_chunks(50, 101))


def test_iter_chunks_with_rows_yields_exactly_the_chunks_holding_them(tmp_path):
    """``rows`` picks the chunks that hold them, by each chunk's start: keyed on its end, it read the
    chunks after them instead."""
    images, object_id, ra, dec = _data(n=100, h=4, w=4)
    url = str(tmp_path / "t.zarr")
    write_tile(url, images, object_id, ra, dec, chunk_size=32, **ATTRS)
    for rows, expected in (([5, 70], [(0, 32), (64, 96)]), ([31, 32, 99], [(0, 32), (32, 64), (96, 100)]), ([], [])):
        for prefetch in (True, False):
            pieces = list(open_tile(url).iter_chunks(rows=np.array(rows, dtype=np.int64), prefetch=prefetch))
            assert [(a, b) for a, b, _ in pieces] == expected
            for a, b, got in pieces:
                np.testing.assert_array_equal(got, images[a:b])


def test_tile_name():
    assert tile_name("s3://b/x/tiles/hpx5_01234.zarr/") == "hpx5_01234"
    assert tile_name("/a/b/other") == "other"


def test_read_tile_list_comments_and_relative_paths(tmp_path):
    (tmp_path / "lists").mkdir()
    path = tmp_path / "lists" / "tiles.txt"
    path.write_text(
        "# my survey\n\n"
        "tiles/a.zarr\n"
        "   ../b.zarr   # trailing comment\n"
        f"{tmp_path}/abs.zarr\n"
        "s3://bucket/c.zarr\n"
    )
    assert read_tile_list(str(path)) == [
        str(tmp_path / "lists" / "tiles" / "a.zarr"),
        str(tmp_path / "b.zarr"),
        str(tmp_path / "abs.zarr"),
        "s3://bucket/c.zarr",
    ]


def test_a_tile_list_saved_by_a_windows_editor_reads_as_written(tmp_path):
    """The byte-order mark became part of the first tile's path, which then 'did not exist'."""
    (tmp_path / "tiles.txt").write_bytes("\ufeffa.zarr\r\nb.zarr\r\n".encode())
    assert read_tile_list(str(tmp_path / "tiles.txt")) == [str(tmp_path / "a.zarr"), str(tmp_path / "b.zarr")]


def test_read_tile_list_errors_name_file_and_line(tmp_path):
    path = tmp_path / "tiles.txt"
    path.write_text("# header\na.zarr\nb.zarr c.zarr\n")
    with pytest.raises(InputError, match=r"tiles.txt' line 3: expected one tile URL"):
        read_tile_list(str(path))
    path.write_text("a.zarr\n\na.zarr\n")
    with pytest.raises(InputError, match=r"line 3: .*already listed on line 1"):
        read_tile_list(str(path))
    (tmp_path / "a.zarr").mkdir()
    os.symlink(tmp_path / "a.zarr", tmp_path / "link.zarr")
    for alias in (f"{tmp_path}/sub/../a.zarr", f"{tmp_path}/link.zarr", f"file://{tmp_path}/a.zarr", "a.zarr/"):
        path.write_text(f"a.zarr\n{alias}\n")  # one store under another name
        with pytest.raises(InputError, match=r"line 2: .*already listed on line 1"):
            read_tile_list(str(path))
    for alias in ("s3://b/tiles/a.zarr/", "s3a://b/tiles/a.zarr"):  # s3a: every galaxy was written twice
        path.write_text(f"s3://b/tiles/a.zarr\n{alias}\n")
        with pytest.raises(InputError, match=r"line 2: .*already listed on line 1"):
            read_tile_list(str(path))
    path.write_text("a.zarr\nS3://b/x.zarr\n")  # a traceback from fsspec, "Protocol not known"
    with pytest.raises(InputError, match=r"tiles.txt' line 2: cannot open 'S3://b/x.zarr': Protocol not known: S3$"):
        read_tile_list(str(path))
    path.write_text("a.zarr\ns3://b//x.zarr\n")  # S3 keeps '//' in the key, which the entry, resolved as a path, lost
    with pytest.raises(InputError, match=r"tiles.txt' line 2: 's3://b//x.zarr' has an empty path segment \('//'\); write s3://b/x.zarr$"):
        read_tile_list(str(path))
    path.write_text("a.zarr\ns3:/bucket/b.zarr\n")  # read as a directory 's3:' beside the list
    with pytest.raises(InputError, match=r"tiles.txt' line 2: 's3:/bucket/b.zarr' is not a URL: write s3://bucket/b.zarr$"):
        read_tile_list(str(path))
    path.write_text("# nothing\n\n")
    with pytest.raises(InputError, match="lists no tiles"):
        read_tile_list(str(path))
    with pytest.raises(InputError, match="missing.txt' does not exist"):
        read_tile_list(str(tmp_path / "missing.txt"))


def test_relative_entries_of_an_s3_tile_list_stay_in_its_bucket(s3_bucket):
    """'../../other/x.zarr' against s3://bkt/survey became s3://other/x.zarr, another bucket, without a word."""
    bucket = s3_bucket.removeprefix("s3://")
    storage.atomic_write_text(f"{s3_bucket}/survey/tiles.txt", "tiles/a.zarr\n../b.zarr\n")
    assert read_tile_list(f"{s3_bucket}/survey/tiles.txt") == [f"{s3_bucket}/survey/tiles/a.zarr", f"{s3_bucket}/b.zarr"]
    storage.atomic_write_text(f"{s3_bucket}/survey/tiles.txt", "tiles/a.zarr\n../../other/x.zarr\n")
    with pytest.raises(InputError, match=rf"tiles.txt' line 2: '../../other/x.zarr' climbs out of bucket '{bucket}'; give a "
                                         "tile in another bucket by its whole URL$"):
        read_tile_list(f"{s3_bucket}/survey/tiles.txt")


def test_tile_list_round_trip_local(tmp_path):
    tiles = [str(tmp_path / "tiles" / "a.zarr"), str(tmp_path / "tiles" / "b.zarr"), "s3://other/c.zarr"]
    write_tile_list(str(tmp_path / "tiles.txt"), tiles)
    lines = (tmp_path / "tiles.txt").read_text().splitlines()
    assert lines[1:] == [os.path.join("tiles", "a.zarr"), os.path.join("tiles", "b.zarr"), "s3://other/c.zarr"]
    assert read_tile_list(str(tmp_path / "tiles.txt")) == tiles


def test_read_tile_list_on_s3_resolves_relative_entries(s3_bucket):
    url = f"{s3_bucket}/run/lists/tiles.txt"
    storage.atomic_write_text(url, "# tiles\n../tiles/a.zarr\nb.zarr\n/data/local.zarr\nfile:///data/c.zarr\n")
    assert read_tile_list(url) == [
        f"{s3_bucket}/run/tiles/a.zarr", f"{s3_bucket}/run/lists/b.zarr", "/data/local.zarr", "file:///data/c.zarr"
    ]


def test_tile_list_round_trip_s3(s3_bucket):
    tiles = [f"{s3_bucket}/run/tiles/a.zarr", f"{s3_bucket}/elsewhere/b.zarr"]
    url = f"{s3_bucket}/run/tiles.txt"
    write_tile_list(url, tiles)
    assert storage.read_text(url).splitlines()[1:] == ["tiles/a.zarr", f"{s3_bucket}/elsewhere/b.zarr"]
    assert read_tile_list(url) == tiles
    # a survey's prefix said "does not exist", where a local directory pointed to its list
    with pytest.raises(InputError, match=rf"^--tiles '{s3_bucket}/run' is a survey's prefix, not a tile list; its tile list "
                                         rf"is '{s3_bucket}/run/tiles.txt'$"):
        read_tiles(f"{s3_bucket}/run")
    with pytest.raises(InputError, match=rf"^tile list '{s3_bucket}/nothing' does not exist; check --tiles"):
        read_tiles(f"{s3_bucket}/nothing")


def _one_line_tile_error(url, read=lambda tile: tile.read_images()):
    with pytest.raises(TileError) as info:
        read(open_tile(url))
    message = str(info.value)
    assert "\n" not in message and repr(url) in message
    return message


def test_garbage_zarr_metadata_is_a_tile_error_naming_the_tile(tmp_path):
    url = str(tmp_path / "t.zarr")
    write_tile(url, *_data(), **ATTRS)
    with open(os.path.join(url, "images", "zarr.json"), "w") as fh:
        fh.write("{garb")
    message = _one_line_tile_error(url)
    assert "damaged Zarr metadata" in message and "write the tile again" in message


def test_a_chunk_that_does_not_decode_is_a_tile_error_naming_tile_and_rows(tmp_path):
    url = str(tmp_path / "t.zarr")
    write_tile(url, *_data(n=70), chunk_size=32, **ATTRS)
    with open(os.path.join(url, "images", "c", "1", "0", "0", "0"), "wb") as fh:
        fh.write(b"this is not a blosc chunk")
    tile = open_tile(url)
    np.testing.assert_array_equal(tile.read_images(0, 32), _data(n=70)[0][:32])  # the other chunks still read
    message = _one_line_tile_error(url, lambda t: list(t.iter_chunks()))
    assert "rows [32, 64) of 'images' fail their CRC-32C checksum; the store is damaged, write the tile again" in message


def test_one_flipped_bit_in_a_chunk_blosc_stores_raw_is_found(tmp_path):
    # Random pixels do not compress, so Blosc stores them as they are and would decode a changed byte
    # without complaint: only the checksum notices.
    url = str(tmp_path / "t.zarr")
    images, object_id, ra, dec = _data(n=70)
    write_tile(url, images, object_id, ra, dec, chunk_size=32, **ATTRS)
    chunk = os.path.join(url, "images", "c", "1", "0", "0", "0")
    data = bytearray(open(chunk, "rb").read())
    assert len(data) > images[32:64].nbytes  # stored raw
    data[len(data) // 2] ^= 1
    open(chunk, "wb").write(bytes(data))
    assert "rows [32, 64) of 'images' fail their CRC-32C checksum" in _one_line_tile_error(url, lambda t: list(t.iter_chunks()))
    ra_chunk = os.path.join(url, "ra", "c", "0")
    data = bytearray(open(ra_chunk, "rb").read())
    data[len(data) // 2] ^= 1
    open(ra_chunk, "wb").write(bytes(data))
    assert "rows [0, 70) of 'ra' fail their CRC-32C checksum" in _one_line_tile_error(url, lambda t: t.read_coords())


@pytest.mark.parametrize("key", ["object_id", "ra", "dec"])
def test_a_missing_coordinate_chunk_is_a_tile_error_not_galaxies_at_zero(tmp_path, key):
    url = str(tmp_path / "t.zarr")
    images, object_id, ra, dec = _data(n=140_000, h=1, w=1)
    write_tile(url, images, object_id, ra, dec, chunk_size=4096, **ATTRS)
    os.remove(os.path.join(url, key, "c", "1"))
    np.testing.assert_array_equal(open_tile(url).read_coords(0, 65_536)[0], object_id[:65_536])
    message = _one_line_tile_error(url, lambda t: t.read_coords(100_000, 100_010))
    assert f"rows [65536, 131072) of {key!r} read as the fill value, so their chunk file is missing" in message


def test_the_reserved_object_id_is_refused_on_write(tmp_path):
    images, object_id, ra, dec = _data(n=3)
    object_id[1] = np.iinfo(np.int64).min
    with pytest.raises(InputError, match=r"object_id -9223372036854775808 is reserved \(it marks a lost chunk\)"):
        write_tile(str(tmp_path / "t.zarr"), images, object_id, ra, dec, **ATTRS)
    assert not (tmp_path / "t.zarr").exists()


def test_unsigned_ids_beyond_int64_are_refused_not_wrapped(tmp_path):
    images, object_id, ra, dec = _data(n=3)
    ids = object_id.astype(np.uint64)
    write_tile(str(tmp_path / "ok.zarr"), images, ids, ra, dec, **ATTRS)
    assert open_tile(str(tmp_path / "ok.zarr")).read_coords()[0].tolist() == object_id.tolist()
    ids[2] = 2**63 + 5
    with pytest.raises(InputError, match=r"object_id 9223372036854775813 is above 2\*\*63 - 1, the largest int64"):
        write_tile(str(tmp_path / "t.zarr"), images, ids, ra, dec, **ATTRS)
    assert not (tmp_path / "t.zarr").exists()


def test_a_dec_outside_the_sky_written_by_other_means_is_a_tile_error(tmp_path):
    """write_tile refuses |dec| > 90; a store written another way reached astropy (labels match: a traceback)
    and cdshealpix (a panic, which no ``except Exception`` catches)."""
    import zarr

    from skymorph.errors import TileError

    url = str(tmp_path / "t.zarr")
    write_tile(url, *_data(n=3), **ATTRS)
    zarr.open_group(url, mode="r+")["dec"][1] = 95.0
    with pytest.raises(TileError, match=r"dec 95 of row 1 is outside \[-90, 90\] degrees; write the tile again"):
        open_tile(url).read_coords()


def test_galaxies_at_the_poles_are_written_and_read_back(tmp_path):
    """dec = +-90 is on the sky: a check of |dec| >= 90 instead of > 90 refused the poles."""
    url = str(tmp_path / "poles.zarr")
    images, object_id, _, _ = _data(n=2, h=4, w=4)
    write_tile(url, images, object_id, np.array([0.0, 180.0]), np.array([90.0, -90.0]), **ATTRS)
    np.testing.assert_array_equal(open_tile(url).read_coords()[2], [90.0, -90.0])


def test_a_nan_or_infinite_position_written_by_other_means_is_named_as_such(tmp_path):
    """A NaN ra was blamed on a missing chunk file, which was there; an infinite ra was served, and
    cdshealpix put it in a HEALPix pixel."""
    import zarr

    url = str(tmp_path / "t.zarr")
    write_tile(url, *_data(n=3), **ATTRS)
    zarr.open_group(url, mode="r+")["ra"][1] = np.nan
    message = _one_line_tile_error(url, lambda t: t.read_coords())
    assert message.endswith("t.zarr': ra of row 1 is nan, the fill value that marks a lost chunk; write the tile again "
                            "with real positions and ids"), message
    zarr.open_group(url, mode="r+")["ra"][1] = np.inf
    message = _one_line_tile_error(url, lambda t: t.read_coords())
    assert "t.zarr': row 1 has ra inf, dec " in message and message.endswith("not finite; write the tile again with ICRS degrees")


def test_a_rewrite_stopped_while_deleting_the_old_tile_leaves_it_incomplete(s3, s3_bucket, monkeypatch):
    """Rewriting deletes the old store first; a writer stopped then left arrays half gone under attributes
    that still said complete, and readers blamed the store or the URL. Here S3 refuses the deletes."""
    from skymorph.testing.faulty_proxy import FaultyProxy

    url = f"{s3_bucket}/t.zarr"
    write_tile(url, *_data(n=5), **ATTRS)
    with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0, deny=r"^(DELETE|POST \S*\?delete)") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(PermissionError):
            write_tile(url, *_data(n=5, seed=1), **ATTRS)
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    assert proxy.counts.denied >= 1
    with pytest.raises(TileError, match=r"t.zarr' is incomplete: its writer stopped before finishing; write it again"):
        open_tile(url)


def test_a_missing_chunk_is_a_tile_error_not_blank_images(tmp_path):
    url = str(tmp_path / "t.zarr")
    images, *rest = _data(n=70)
    images[:32] = 0  # an all-zero chunk is written and reads back as zeros, without error
    write_tile(url, images, *rest, chunk_size=32, **ATTRS)
    assert np.array_equal(open_tile(url).read_images(), images)
    os.remove(os.path.join(url, "images", "c", "2", "0", "0", "0"))
    np.testing.assert_array_equal(open_tile(url).read_images(0, 64), images[:64])
    for read in (lambda t: t.read_images(), lambda t: t.read_images(65, 66), lambda t: list(t.iter_chunks())):
        message = _one_line_tile_error(url, read)
        assert "chunk file of rows [64, 70) of 'images' (images/c/2/0/0/0) is missing" in message
    os.remove(os.path.join(url, "images", "c", "0", "0", "0", "0"))  # the all-zero chunk
    assert "rows [0, 32)" in _one_line_tile_error(url, lambda t: t.read_images(0, 32))


def test_a_directory_that_is_not_a_zarr_store_is_not_reported_missing(tmp_path):
    (tmp_path / "plain").mkdir()
    (tmp_path / "plain" / "x").write_text("hi")
    (tmp_path / "file.zarr").write_text("hi")
    for url in (str(tmp_path / "plain"), str(tmp_path / "file.zarr")):
        with pytest.raises(TileError, match=r"is not a Zarr tile store \(it has no zarr.json\)") as info:
            open_tile(url)
        assert not isinstance(info.value, TileNotFoundError)


def test_a_local_tile_outside_the_lists_directory_is_written_absolute(tmp_path, monkeypatch, s3_bucket):
    """It was written as given, relative to the working directory, and read back relative to the list's:
    another tile, or none."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "lists").mkdir()
    write_tile_list(str(tmp_path / "lists" / "tiles.txt"), ["other/a.zarr", "lists/b.zarr"])
    assert read_tile_list(str(tmp_path / "lists" / "tiles.txt")) == [str(tmp_path / "other" / "a.zarr"), str(tmp_path / "lists" / "b.zarr")]
    assert (tmp_path / "lists" / "tiles.txt").read_text().splitlines()[1:] == [str(tmp_path / "other" / "a.zarr"), "b.zarr"]
    with pytest.raises(InputError, match=r"local tile 'other/a.zarr' in a list on remote storage, where workers cannot read it"):
        write_tile_list(f"{s3_bucket}/tiles.txt", ["other/a.zarr"])


def test_absolute_entries_are_kept_as_listed(tmp_path):
    """A catalog's manifest and part names know tiles by their listed URL: rewriting '//' or a trailing
    '/' would make a rerun take every tile for a new one."""
    path = tmp_path / "tiles.txt"
    listed = [f"{tmp_path}//a.zarr", f"{tmp_path}/b.zarr/"]
    path.write_text("\n".join(listed) + "\n")
    assert read_tile_list(str(path)) == listed


def test_tiles_are_a_list_or_one_store_and_a_survey_directory_points_to_its_list(tmp_path, monkeypatch):
    """`run --tiles one.zarr` said "is a directory; give a file" where train and evaluate took it, and a
    survey directory got the same words without its tile list."""
    images, object_id, ra, dec = _data()
    write_tile(str(tmp_path / "survey" / "t.zarr"), images, object_id, ra, dec, **ATTRS)
    write_tile_list(str(tmp_path / "survey" / "tiles.txt"), [str(tmp_path / "survey" / "t.zarr")])
    monkeypatch.chdir(tmp_path)
    assert read_tiles("survey/t.zarr") == [str(tmp_path / "survey" / "t.zarr")]  # absolute, for workers elsewhere
    assert read_tiles("survey/tiles.txt") == [str(tmp_path / "survey" / "t.zarr")]
    with pytest.raises(InputError, match=r"^--tiles 'survey' is a directory, not a tile list or a .zarr tile store; its tile list is '.*survey/tiles.txt'$"):
        read_tiles("survey")
    with pytest.raises(InputError, match=r"tile store 'gone.zarr' does not exist"):
        read_tiles("gone.zarr")


def test_pixels_differ_names_bands_stretch_and_a_scale_off_by_more_than_one_percent():
    from skymorph.tiles import pixels_differ

    r = {"bands": ["r"], "stretch": "asinh", "pixel_scale_arcsec": 0.262}
    assert pixels_differ(r, dict(r)) == [] and pixels_differ(r, {**r, "pixel_scale_arcsec": 0.2645}) == []
    assert pixels_differ(r, {"bands": ["u"], "stretch": {"kind": "linear"}, "pixel_scale_arcsec": 0.1}) == [
        "bands ['r'] vs ['u']", "stretch asinh vs {'kind': 'linear'}", "pixel_scale_arcsec 0.262 vs 0.1"]
    assert pixels_differ(r, {"bands": ["r"], "stretch": None, "pixel_scale_arcsec": "0.262"}) == [
        "pixel_scale_arcsec 0.262 vs 0.262"]  # text is not a scale; an attribute not recorded is not compared


def test_sampled_pixels_spread_over_the_whole_list_and_skip_an_unknown_scale(tmp_path):
    """Spaced for 32 tiles, a list of 5 opened only its first 2, and tiles `survey ingest` gave no scale
    (a placeholder 1.0) read as pixels of 1 arcsec: both made run warn of tiles the model was trained on."""
    from skymorph.tiles import sampled_pixels

    urls = []
    for i, (scale, placeholder) in enumerate(((0.2, False),) * 3 + ((0.4, False), (1.0, True))):
        urls.append(str(tmp_path / f"t{i}.zarr"))
        write_tile(urls[-1], np.ones((2, 1, 4, 4), np.uint8), np.arange(2) + 10 * i, np.zeros(2), np.zeros(2),
                   **{**ATTRS, "pixel_scale_arcsec": scale}, extra_attrs={"pixel_scale_is_placeholder": placeholder})
    assert sampled_pixels(urls) == [{**{k: ATTRS[k] for k in ("bands", "stretch")}, "pixel_scale_arcsec": scale}
                                    for scale in (0.2, 0.4, None)]
    assert sampled_pixels(urls, at_most=2) == [{**{k: ATTRS[k] for k in ("bands", "stretch")}, "pixel_scale_arcsec": scale}
                                               for scale in (0.2, None)]  # the first and the last
