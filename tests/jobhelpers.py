"""Helpers shared by the survey-job tests (test_job, test_job_faults, test_job_resources): tiles to run on,
and the check that a catalog holds exactly what the engine and posterior.summarize give for them.

A plain module next to the tests (not a test module: pytest collects nothing here), importable as
``jobhelpers`` because pytest puts tests/ on sys.path when it loads tests/conftest.py.
"""

from __future__ import annotations

import numpy as np

from skymorph.catalog import layout
from skymorph.storage import read_parquet

SIZE = 32  # the input of conftest.tiny_model (gz2, 32 px)


def make_tiles(root: str, n_tiles: int, per_tile: int, chunk_size: int = 32, size: int = SIZE, seed: int = 0,
               compact: bool = False) -> list[str]:
    """Write ``n_tiles`` random tiles under ``root`` and a tile list; return the tile URLs. A tile spans
    8 x 40 degrees, so that a range's rows go to several HEALPix parts, or with ``compact`` half a degree
    (one or two parts: the tests that kill processes write and read a third as many files)."""
    from skymorph.tiles import write_tile, write_tile_list

    rng = np.random.default_rng(seed)
    ra_span, dec_span = (0.5, 0.5) if compact else (8, 40)
    urls = []
    for t in range(n_tiles):
        url = f"{root}/tiles/t{t:03d}.zarr"
        ra = (40.0 * t + rng.uniform(0, ra_span, per_tile)) % 360
        dec = rng.uniform(-dec_span / 2, dec_span / 2, per_tile)
        images = rng.integers(0, 256, (per_tile, 1, size, size), dtype=np.uint8)
        write_tile(url, images, np.arange(per_tile, dtype=np.int64) + 100_000 * t, ra, dec, survey="test",
                   bands=["r"], pixel_scale_arcsec=0.262, stretch="asinh", resize="none", chunk_size=chunk_size)
        urls.append(url)
    write_tile_list(f"{root}/tiles.txt", urls)
    return urls


def expected_rows(model: str, tile_urls: list[str], n_volunteers: int = 40) -> dict[int, dict]:
    """object_id -> catalog values computed here, independently of the job: engine + summarize."""
    from skymorph.inference.engines import load_engine
    from skymorph.posterior import summarize
    from skymorph.tiles import open_tile

    engine = load_engine(model, threads=1)
    rows = {}
    for url in tile_urls:
        tile = open_tile(url)
        object_id, ra, dec = tile.read_coords()
        summary = summarize(engine(tile.read_images()), engine.metadata.schema, engine.metadata.likelihood, n_volunteers)
        for i, oid in enumerate(object_id):
            rows[int(oid)] = {"ra": ra[i], "dec": dec[i], "tile": url, "row": i, **{k: v[i] for k, v in summary.items()}}
    return rows


def read_catalog(catalog: str):
    """All rows of all part files (pyarrow, independent of the writer's bookkeeping)."""
    import pyarrow as pa

    tables = [read_parquet(p.url) for p in layout.list_parts(catalog)]
    return pa.concat_tables(tables).to_pandas() if tables else None


def assert_exact(catalog: str, model: str, tile_urls: list[str], n_volunteers: int = 40) -> None:
    frame = read_catalog(catalog)
    expected = expected_rows(model, tile_urls, n_volunteers)
    assert frame is not None
    assert sorted(frame["object_id"]) == sorted(expected), "catalog must hold every input galaxy exactly once"
    props = layout.read_properties(catalog)
    assert props.total_rows == len(expected)
    columns = [c for c in frame.columns if c not in layout.BASE_COLUMNS]
    assert len(columns) == len(next(iter(expected.values()))) - 4
    for record in frame.itertuples(index=False):
        want = expected[record.object_id]
        assert (record.tile, record.row, record.ra, record.dec) == (want["tile"], want["row"], want["ra"], want["dec"])
    got = frame.set_index("object_id").sort_index()
    for column in columns:
        want = np.array([expected[oid][column] for oid in got.index], dtype=np.float32)
        np.testing.assert_allclose(got[column].to_numpy(), want, rtol=1e-5, atol=1e-6, err_msg=column)
