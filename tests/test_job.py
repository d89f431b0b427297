"""The survey job on real parts: moto S3 on 127.0.0.1, real Dask (LocalCluster and `dask worker` processes).

The catalog must hold exactly the input galaxies, once each, with the values posterior.summarize gives
on the engine's outputs for the same images; a rerun changes nothing; killed workers and an
interrupted driver still give the exact catalog.
"""

from __future__ import annotations

import glob
import hashlib
import json
import os
import re
import signal
import socket
import subprocess
import sys
import time
from dataclasses import replace

import numpy as np
import pytest
from jobhelpers import SIZE, assert_exact, make_tiles, read_catalog

from skymorph.catalog import layout
from skymorph.errors import ClusterError
from skymorph.storage import filesystem, read_bytes, read_parquet
from skymorph.testing.dask_processes import dask_processes, wait_for

pytestmark = pytest.mark.slow

SCHEMA = "gz2"


def snapshot(catalog: str) -> dict:
    fs, root = filesystem(catalog)
    return {path: (info["size"], info.get("ETag"), str(info.get("LastModified") or info.get("mtime")))
            for path, info in fs.find(root, detail=True).items()}


def test_run_writes_the_exact_catalog_and_a_rerun_changes_nothing(s3_bucket, tiny_model):
    import hats

    from skymorph.inference.job import RunConfig, run_survey

    tiles = make_tiles(s3_bucket, n_tiles=3, per_tile=100)
    catalog = f"{s3_bucket}/catalog"
    config = RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=catalog, workers=1,
                       rows_per_task=64, batch_size=40, catalog_order=3, progress=False)
    report = run_survey(config)
    assert report.ok and report.rows_written == 300 and report.total_rows == 300
    assert report.ranges_run == 6  # 100 rows in chunks of 32, 64 rows a task: [0, 64), [64, 100)
    assert_exact(catalog, tiny_model, tiles)

    meta = layout.read_common_metadata(catalog)[1]
    assert (meta.samples, meta.seed, meta.n_volunteers, meta.likelihood) == (4, 3, 40, "multinomial")
    assert json.loads(meta.schema_json)["name"] == SCHEMA
    manifest = json.loads(filesystem(layout.manifest_url(catalog))[0].cat_file(layout.manifest_url(catalog)))
    assert manifest["model_sha256"] == report.model_sha256 and len(manifest["ranges"]) == 6
    assert read_parquet(layout.failures_url(catalog)).num_rows == 0

    before = snapshot(catalog)
    again = run_survey(config)
    assert again.ranges_run == 0 and (again.tiles_skipped, again.ranges_skipped) == (3, 6) and again.total_rows == 300
    assert snapshot(catalog) == before

    from hats.pixel_math.spatial_index import compute_spatial_index

    frame = read_catalog(catalog)
    np.testing.assert_array_equal(frame["_healpix_29"], compute_spatial_index(frame["ra"], frame["dec"]))
    from upath import UPath

    opened = hats.read_hats(UPath(catalog, endpoint_url=os.environ["AWS_ENDPOINT_URL"]))
    assert opened.catalog_info.total_rows == 300 and opened.catalog_info.npix_suffix == "/"


def test_a_dirichlet_model_for_20_volunteers_written_to_s3_by_storage_options_alone(tmp_path, s3_server, monkeypatch):
    """Every other job test runs a multinomial model for 40 volunteers with S3 reached through the AWS
    environment: workers summarizing for 40 under metadata saying 20, or ignoring --storage-options, passed."""
    import torch

    from skymorph.exporter import export_onnx_model
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.model_metadata import InputSpec
    from skymorph.schema import get_schema
    from skymorph.trainer.models import build_model

    torch.manual_seed(0)
    model = str(tmp_path / "dirichlet.onnx")
    export_onnx_model(build_model("w20", get_schema(SCHEMA), InputSpec(1, SIZE, SIZE), "dirichlet_multinomial", dense=16),
                      model, samples=4, seed=0)
    tiles = make_tiles(str(tmp_path), n_tiles=2, per_tile=40)
    for key in s3_server.env:
        monkeypatch.delenv(key, raising=False)  # workers inherit the driver's environment: no endpoint in it
    catalog = f"{s3_server.create_bucket(f'skymorph-{os.getpid()}-opts')}/catalog"
    report = run_survey(RunConfig(tiles=str(tmp_path / "tiles.txt"), model=model, out=catalog, workers=1, n_volunteers=20,
                                  storage_options=s3_server.storage_options, catalog_order=3, progress=False))
    assert report.ok and report.total_rows == 80

    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    meta = layout.read_common_metadata(catalog)[1]
    assert (meta.n_volunteers, meta.likelihood) == (20, "dirichlet_multinomial")
    assert_exact(catalog, model, tiles, n_volunteers=20)


def test_catalog_of_another_model_is_refused(tmp_path, s3_bucket, tiny_model):
    from skymorph.catalog.writer import Manifest, write_manifest
    from skymorph.errors import CatalogError
    from skymorph.inference.job import RunConfig, run_survey

    make_tiles(s3_bucket, n_tiles=1, per_tile=10)
    catalog = str(tmp_path / "catalog")
    write_manifest(catalog, Manifest(model_sha256="0" * 64, order=5, ranges={}))
    with pytest.raises(CatalogError, match=r"was written by model sha256 000000000000\.\.\., not .*; choose another --out"):
        run_survey(RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=catalog, progress=False))
    assert not glob.glob(f"{catalog}/dataset/**/part-*.parquet", recursive=True)


def test_resume_with_other_rows_per_task_is_refused_so_no_row_is_written_twice(tmp_path, s3_bucket, tiny_model):
    from skymorph.catalog.writer import read_manifest
    from skymorph.errors import CatalogError
    from skymorph.inference.job import RunConfig, run_survey

    make_tiles(s3_bucket, n_tiles=1, per_tile=40, chunk_size=8)
    catalog = str(tmp_path / "catalog")
    config = RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=catalog, progress=False, rows_per_task=16)
    assert run_survey(config).total_rows == 40
    assert read_manifest(catalog).rows_per_task == 16
    with pytest.raises(CatalogError, match="written with --rows-per-task 16, not 8; keep the number"):
        run_survey(replace(config, rows_per_task=8))
    report = run_survey(replace(config, rows_per_task=8, overwrite=True))
    assert report.ok and report.total_rows == 40 and read_manifest(catalog).rows_per_task == 8


def test_a_tile_rewritten_with_other_rows_since_its_first_range_fails_instead_of_being_cut_in_the_old_places(tmp_path, tiny_model):
    """A resumed run plans a started tile's remaining ranges from the row count the manifest recorded; a
    tile rewritten at the same URL since then (48 rows where there were 40) had rows 40-47 left out
    without a word. Its ranges now fail, naming both counts, and write nothing."""
    from skymorph.catalog.writer import read_manifest, write_manifest
    from skymorph.inference.job import RunConfig, run_survey

    make_tiles(str(tmp_path), n_tiles=1, per_tile=40, chunk_size=8)
    catalog = str(tmp_path / "catalog")
    config = RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog, workers=1, progress=False, rows_per_task=16)
    assert run_survey(config).total_rows == 40
    manifest = read_manifest(catalog)
    manifest.ranges = {key: record for key, record in manifest.ranges.items() if record.start == 0}  # stopped after the first
    write_manifest(catalog, manifest)
    for part in layout.list_parts(catalog):
        if read_parquet(part.url)["row"].to_numpy().min() >= 16:
            os.remove(part.url)
    tile = make_tiles(str(tmp_path), n_tiles=1, per_tile=48, chunk_size=8)[0]

    report = run_survey(config)
    assert not report.ok and report.ranges_run == 2
    assert [(f["start"], f["stage"]) for f in report.failures] == [(16, "open"), (32, "open")]
    assert report.failures[0]["reason"] == (
        f"TileError: tile {tile!r} has 48 rows in chunks of 8, but 40 rows in chunks of 8 when this catalog read its first rows: it "
        "was rewritten since; run the changed tiles into a new catalog, or this one again with --overwrite")
    assert sorted(read_catalog(catalog)["row"]) == list(range(16))


def test_a_survey_moved_since_the_catalog_ran_is_refused_instead_of_run_twice(tmp_path, tiny_model):
    """The manifest knows tiles by URL: the same tiles listed from a copy of the survey ran again under new
    part names, and the catalog held every galaxy twice, exit 0. Tiles of a new name, or of an old name and
    size with other galaxies (a second ingest's ingest_00000), still run; a survey moved away, its old tiles
    gone, is known by name and size alone."""
    import shutil

    from skymorph.errors import CatalogError
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.tiles import open_tile, write_tile, write_tile_list

    tiles = make_tiles(str(tmp_path / "survey"), n_tiles=2, per_tile=30)
    catalog = str(tmp_path / "catalog")
    config = RunConfig(tiles=str(tmp_path / "survey" / "tiles.txt"), model=tiny_model, out=catalog, workers=1, progress=False)
    assert run_survey(config).total_rows == 60
    shutil.copytree(tmp_path / "survey", tmp_path / "moved")
    moved = [url.replace(str(tmp_path / "survey"), str(tmp_path / "moved")) for url in tiles]
    write_tile_list(str(tmp_path / "moved" / "tiles.txt"), moved)
    before = sorted(os.listdir(layout.dataset_url(catalog)))
    with pytest.raises(CatalogError, match=rf"^tile {re.escape(repr(moved[0]))} has the name, row count and first and last galaxies of "
                                           rf"{re.escape(repr(tiles[0]))}, which this catalog ran and the tile list no longer "
                                           "names: is it the survey moved or copied"):
        run_survey(replace(config, tiles=str(tmp_path / "moved" / "tiles.txt")))
    assert sorted(os.listdir(layout.dataset_url(catalog))) == before and layout.read_properties(catalog).total_rows == 60

    extra = make_tiles(str(tmp_path / "more"), n_tiles=3, per_tile=30, seed=1)[2]  # t002: a name the catalog has not run
    write_tile_list(str(tmp_path / "both.txt"), [*tiles, extra])
    assert run_survey(replace(config, tiles=str(tmp_path / "both.txt"))).total_rows == 90
    first = open_tile(tiles[0])
    other = str(tmp_path / "other" / "tiles" / "t000.zarr")  # t000 again, 30 rows, other galaxies
    write_tile(other, first.read_images(), first.read_coords()[0] + 7_000_000, *first.read_coords()[1:], survey="test", bands=["r"],
               pixel_scale_arcsec=0.262, stretch="asinh", resize="none")
    write_tile_list(str(tmp_path / "other.txt"), [other])
    assert run_survey(replace(config, tiles=str(tmp_path / "other.txt"))).total_rows == 120

    shutil.rmtree(tmp_path / "survey")  # moved, not copied
    with pytest.raises(CatalogError, match=rf"^tile {re.escape(repr(moved[0]))} has the name and row count of "
                                           rf"{re.escape(repr(tiles[0]))}, which this catalog ran"):
        run_survey(replace(config, tiles=str(tmp_path / "moved" / "tiles.txt")))
    gone = str(tmp_path / "gone" / "tiles" / "t000.zarr")  # a name the catalog ran, at a URL where nothing is
    write_tile_list(str(tmp_path / "gone.txt"), [gone])
    report = run_survey(replace(config, tiles=str(tmp_path / "gone.txt")))  # stopped the run, as if the list were wrong
    assert [(f["tile"], f["stage"]) for f in report.failures] == [(gone, "open")] and report.total_rows == 120


def test_a_tile_half_done_by_a_stopped_run_with_a_longer_list_is_not_finished_into_the_catalog(tmp_path, tiny_model):
    """A run over three tiles stopped in the third; the catalog run again over the first two finished, exit
    0, holding part of the third and no failure. Refused until a list that names the tile finishes it."""
    from skymorph.catalog.writer import read_manifest, write_manifest
    from skymorph.errors import CatalogError
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.tiles import write_tile_list

    tiles = make_tiles(str(tmp_path / "survey"), n_tiles=3, per_tile=64, compact=True)  # ranges of one 32-row chunk
    write_tile_list(str(tmp_path / "two.txt"), tiles[:2])
    catalog = str(tmp_path / "catalog")
    config = RunConfig(tiles=str(tmp_path / "survey" / "tiles.txt"), model=tiny_model, out=catalog, workers=1, progress=False,
                       rows_per_task=32)
    assert run_survey(config).total_rows == 192
    manifest = read_manifest(catalog)  # as the stopped run left it: the third tile's last range not done
    del manifest.ranges[(tiles[2], 32, 64)]
    write_manifest(catalog, manifest)
    with pytest.raises(CatalogError, match=rf"^the catalog holds 32 of the 64 rows of tile {re.escape(repr(tiles[2]))}, which the "
                                           "tile list does not name \\(a run with a longer list was stopped\\): give a tile list "
                                           "that names it, to finish it, or run with --overwrite$"):
        run_survey(replace(config, tiles=str(tmp_path / "two.txt")))
    assert run_survey(config).total_rows == 192
    assert_exact(catalog, tiny_model, tiles)


def test_a_model_of_one_sample_scores_every_galaxy_0_and_pick_says_so(tmp_path, capsys):
    """T = 1 (or dropout 0): every BALD score is 0, and catalog pick "picked" a batch in object_id order
    without a word."""
    import torch

    from skymorph.catalog import pick
    from skymorph.exporter import export_onnx_model
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.model_metadata import InputSpec
    from skymorph.schema import get_schema
    from skymorph.trainer.models import build_model

    torch.manual_seed(0)
    model = str(tmp_path / "one.onnx")
    export_onnx_model(build_model("w20", get_schema("gz2"), InputSpec(1, SIZE, SIZE), "multinomial", dense=16), model,
                      samples=1, seed=0)
    make_tiles(str(tmp_path), n_tiles=1, per_tile=20)
    catalog = str(tmp_path / "catalog")
    assert run_survey(RunConfig(tiles=str(tmp_path / "tiles.txt"), model=model, out=catalog, workers=1, progress=False)).ok
    capsys.readouterr()
    batch = pick(catalog, 5)
    assert batch["bald_total"].to_pylist() == [0.0] * 5 and batch["object_id"].to_pylist() == list(range(5))
    assert capsys.readouterr().err == (
        "skymorph: warning: every galaxy scores 0 on bald_total: the model's MC-dropout samples (T = 1) agree everywhere "
        "(T = 1, or a model trained with --dropout 0), so this batch is in object_id order, not ranked by what volunteers "
        "would teach the model\n")


def test_a_catalog_of_tiles_without_sky_positions_says_so_and_mixed_tiles_are_refused(tmp_path, tiny_model, capsys):
    """`survey ingest` without ra/dec puts every galaxy at ra = dec = 0 and marks its tiles; the catalog
    gave no sign of it, and a cone search at (0, 0) returned every galaxy as if it were there."""
    from pathlib import Path

    from skymorph.catalog import info, query
    from skymorph.catalog.layout import read_properties
    from skymorph.catalog.writer import read_manifest
    from skymorph.cli import main
    from skymorph.errors import CatalogError, InputError
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.tiles import write_tile, write_tile_list

    rng = np.random.default_rng(0)

    def tile(name: str, placeholder: bool) -> str:
        url = str(tmp_path / "tiles" / f"{name}.zarr")
        ra, dec = (np.zeros(8), np.zeros(8)) if placeholder else (rng.uniform(0, 1, 8), rng.uniform(0, 1, 8))
        write_tile(url, rng.integers(0, 256, (8, 1, SIZE, SIZE), dtype=np.uint8), np.arange(8) + 100 * len(name) + ord(name[-1]),
                   ra, dec, survey="test", bands=["grey"], pixel_scale_arcsec=1.0, stretch="none", resize="none",
                   extra_attrs={"position_is_placeholder": placeholder})
        return url

    fake = [tile(f"f{i}", True) for i in range(4)]
    real = tile("sky", False)
    lists = {name: str(tmp_path / f"{name}.txt") for name in ("fake", "fake4", "fake_then_sky", "sky_unsampled", "sky")}
    write_tile_list(lists["fake"], fake[:3])
    write_tile_list(lists["fake4"], fake)
    write_tile_list(lists["fake_then_sky"], [*fake[:3], real])  # the last tile is sampled
    write_tile_list(lists["sky_unsampled"], [fake[0], real, fake[2], fake[3]])  # sampled: 0, 2 and 3
    write_tile_list(lists["sky"], [real])
    catalog = str(tmp_path / "catalog")
    config = RunConfig(tiles=lists["fake"], model=tiny_model, out=catalog, workers=1, progress=False)
    assert run_survey(config).total_rows == 24
    assert read_properties(catalog).skymorph_positions == "placeholder" and read_manifest(catalog).placeholder_positions
    summary = info(catalog)
    assert summary.to_dict()["positions"] == "placeholder"
    assert "positions    placeholders (ra = dec = 0: the tiles were ingested without sky positions)" in str(summary)
    assert main(["catalog", "query", catalog, "--cone", "0", "0", "60"]) == 2
    assert "has placeholder positions (its tiles were ingested without ra/dec" in capsys.readouterr().err
    assert query(catalog, where="object_id >= 0").num_rows == 24
    # a batch has no positions to hand out: votes giving the galaxies' real ones were refused against ra = dec = 0
    import pandas as pd

    from skymorph.catalog import pick_to
    from skymorph.trainer.votes import add_votes

    batch = pick_to(catalog, 3, str(tmp_path / "batch.csv"))
    assert batch["ra"].null_count == batch["dec"].null_count == 3
    pd.DataFrame({"object_id": batch["object_id"].to_pylist(), "ra": [150.0, 150.1, 150.2], "dec": 2.0, "has_spiral_arms_yes": 3,
                  "has_spiral_arms_no": 1}).to_csv(tmp_path / "votes.csv", index=False)
    added = add_votes(str(tmp_path / "votes.csv"), str(tmp_path / "batch.csv"), str(tmp_path / "labels.parquet"), schema="gz2")
    assert added.added == 3
    # a catalog begun before the kind was recorded (no key in either file) is "unrecorded", and takes the
    # tiles' kind when a run extends it
    manifest = json.loads(Path(layout.manifest_url(catalog)).read_text())
    del manifest["placeholder_positions"]
    Path(layout.manifest_url(catalog)).write_text(json.dumps(manifest))
    properties = Path(layout.properties_url(catalog))
    properties.write_text("".join(line for line in properties.read_text().splitlines(True) if not line.startswith("skymorph_positions=")))
    assert info(catalog).to_dict()["positions"] is None and "positions " not in str(info(catalog))
    with pytest.raises(CatalogError, match="was written from tiles with placeholder positions"):  # its tiles say so
        run_survey(replace(config, tiles=lists["sky"]))
    assert run_survey(replace(config, tiles=lists["fake4"])).total_rows == 32
    assert read_properties(catalog).skymorph_positions == "placeholder" and read_manifest(catalog).placeholder_positions

    with pytest.raises(InputError, match=r"tile '.*f0\.zarr' has placeholder positions \(ingested without ra/dec\) but tile "
                                         r"'.*sky\.zarr' has sky positions: run them into separate catalogs"):
        run_survey(replace(config, tiles=lists["fake_then_sky"], out=str(tmp_path / "mixed")))
    report = run_survey(replace(config, tiles=lists["sky_unsampled"], out=str(tmp_path / "unsampled")))
    [failure] = report.failures
    assert failure["tile"] == real and failure["stage"] == "open"
    assert "has sky positions, the catalog's other tiles placeholder positions (ingested without ra/dec)" in failure["reason"]
    assert report.total_rows == 24
    with pytest.raises(CatalogError, match="was written from tiles with placeholder positions .*, and these tiles have sky "
                                           "positions: choose another --out or pass --overwrite"):
        run_survey(replace(config, tiles=lists["sky"]))
    assert read_properties(run_survey(replace(config, tiles=lists["sky"], overwrite=True)).catalog).skymorph_positions == "sky"
    assert info(catalog).to_dict()["positions"] == "sky"


def test_catalog_held_by_a_live_driver_is_refused_even_with_overwrite(tmp_path, s3_bucket, tiny_model):
    from skymorph.catalog.lock import DriverLock
    from skymorph.errors import CatalogError
    from skymorph.inference.job import RunConfig, run_survey

    make_tiles(s3_bucket, n_tiles=1, per_tile=10)
    catalog = str(tmp_path / "catalog")
    config = RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=catalog, progress=False)
    with DriverLock(catalog):  # another driver, alive
        for overwrite in (False, True):
            with pytest.raises(CatalogError, match="being written by another skymorph run"):
                run_survey(replace(config, overwrite=overwrite))
        assert sorted(p.name for p in (tmp_path / "catalog" / "_skymorph").iterdir()) == ["driver.lock"]
    report = run_survey(config)
    assert report.ok and report.total_rows == 10 and not (tmp_path / "catalog" / "_skymorph" / "driver.lock").exists()


def test_catalog_for_other_volunteers_or_corrupt_is_refused_and_overwrite_restarts_it(tmp_path, s3_bucket, tiny_model):
    from skymorph.catalog.writer import Manifest, write_manifest
    from skymorph.errors import CatalogError
    from skymorph.inference.job import RunConfig, run_survey

    make_tiles(s3_bucket, n_tiles=1, per_tile=10)
    catalog = str(tmp_path / "catalog")
    config = RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=catalog, progress=False)
    write_manifest(catalog, Manifest(model_sha256=hashlib.sha256(read_bytes(tiny_model)).hexdigest(), order=config.catalog_order, ranges={},
                                     n_volunteers=20))
    with pytest.raises(CatalogError, match="for 20 volunteers, not --n-volunteers 40"):
        run_survey(config)
    (tmp_path / "catalog" / "_skymorph" / "manifest.json").write_text("{not json")
    with pytest.raises(CatalogError, match="corrupt"):
        run_survey(config)
    report = run_survey(replace(config, overwrite=True))
    assert report.ok and report.total_rows == 10


def test_out_holding_anything_but_a_catalog_is_refused_and_overwrite_keeps_the_bucket(tmp_path, s3, s3_bucket, tiny_model):
    """--overwrite used to delete whatever was at --out: a survey directory, or a whole bucket."""
    from skymorph.errors import CatalogError
    from skymorph.inference.job import RunConfig, run_survey

    make_tiles(s3_bucket, n_tiles=1, per_tile=10)
    config = RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=s3_bucket, progress=False)
    fs, _ = filesystem(s3_bucket)
    for overwrite in (False, True):  # the bucket holds the tiles
        with pytest.raises(CatalogError, match=rf"--out '{s3_bucket}' holds 'tiles', 'tiles.txt', which a skymorph catalog does not"):
            run_survey(replace(config, overwrite=overwrite))
    assert fs.exists(f"{s3_bucket}/tiles.txt")

    (tmp_path / "notes.txt").write_text("mine")
    with pytest.raises(CatalogError, match=r"is a file; give a directory"):
        run_survey(replace(config, out=str(tmp_path / "notes.txt")))

    catalogs = s3.create_bucket(f"{s3_bucket.removeprefix('s3://')}-catalog")  # a catalog at a bucket's root
    config = replace(config, out=catalogs)
    assert run_survey(config).total_rows == 10
    report = run_survey(replace(config, overwrite=True))
    assert report.ok and report.total_rows == 10  # the bucket is still there to write into
    assert sorted(p.rsplit("/", 1)[-1] for p in fs.ls(catalogs, refresh=True)) == ["_skymorph", "dataset", "hats.properties", "partition_info.csv"]


def test_progress_of_a_resumed_run_reaches_every_tile(tmp_path, tiny_model, capsys, monkeypatch):
    """Tiles found done behind a tile still to run count as finished too: the bar ends at 3/3."""
    from skymorph import progress
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.tiles import write_tile_list

    t0, t1, t2 = make_tiles(str(tmp_path), n_tiles=3, per_tile=20)
    write_tile_list(str(tmp_path / "first.txt"), [t0, t2])
    write_tile_list(str(tmp_path / "all.txt"), [t1, t0, t2])
    catalog = str(tmp_path / "catalog")
    config = RunConfig(tiles=str(tmp_path / "first.txt"), model=tiny_model, out=catalog, workers=1, progress=False)
    assert run_survey(config).total_rows == 40
    capsys.readouterr()
    monkeypatch.setattr(progress, "LOG_INTERVAL_S", 0.0)  # stderr is not a terminal here: a line per redraw
    report = run_survey(replace(config, tiles=str(tmp_path / "all.txt"), progress=True))
    assert (report.tiles_skipped, report.ranges_run, report.total_rows) == (2, 1, 60)
    err = capsys.readouterr().err
    # tiles 8 x 40 degrees wide, a few rows a partition, but 60 rows fill no partition at any order: no note
    assert "skymorph run: note:" not in err
    bar = err.splitlines()
    final = [line for line in bar if line.startswith("skymorph run:") and "|" in line][-1]
    assert "100%" in final and " 3/3 " in final, final


def _record_job_specs(patch) -> list:
    """The JobSpec of each run that registers one from now on (``patch``: a monkeypatch or its context)."""
    from skymorph.inference import job

    specs, registered_job = [], job.registered_job
    patch.setattr(job, "registered_job", lambda client, spec: specs.append(spec) or registered_job(client, spec))
    return specs


def test_a_finished_catalog_being_extended_reads_as_unfinished_until_its_run_ends(tmp_path, tiny_model, monkeypatch):
    """New parts beside a finished catalog's metadata were read at once, and after a stop, parts no
    finished range owns too (hats.properties said 40 rows, a query found more). The first version
    unfinished the catalog when the driver heard of the first rows, after the task had written them."""
    from skymorph.catalog import open_catalog, writer
    from skymorph.catalog.lock import DriverLock
    from skymorph.errors import CatalogError
    from skymorph.inference import job
    from skymorph.storage import exists
    from skymorph.tiles import write_tile_list

    t0, t1, t2 = make_tiles(str(tmp_path), n_tiles=3, per_tile=20)
    write_tile_list(str(tmp_path / "first.txt"), [t0, t2])
    write_tile_list(str(tmp_path / "all.txt"), [t0, t1, t2])
    catalog = str(tmp_path / "catalog")
    config = job.RunConfig(tiles=str(tmp_path / "first.txt"), model=tiny_model, out=catalog, workers=1, progress=False)
    assert job.run_survey(config).total_rows == 40

    def stopped(*args, **kwargs):
        raise KeyboardInterrupt

    with monkeypatch.context() as patch:  # stopped before any rows: the catalog is as it was
        sent = _record_job_specs(patch)
        patch.setattr(job, "run_tasks", stopped)
        with pytest.raises(KeyboardInterrupt):
            job.run_survey(replace(config, tiles=str(tmp_path / "all.txt")))
    assert open_catalog(catalog).metadata.n_volunteers == 40
    spec = sent[0]
    assert spec.unfinish_before_writing

    lock = DriverLock(catalog)
    lock.session = spec.driver_session  # the run's driver, alive again: its task may write
    finished_when_written = []
    write_part = writer.write_part

    def watched_write_part(catalog_url, *args):
        finished_when_written.append(exists(layout.properties_url(catalog_url)))
        return write_part(catalog_url, *args)

    with lock, monkeypatch.context() as patch:
        patch.setattr(writer, "write_part", watched_write_part)
        assert _run_in_process(spec, t1)["rows"] == 20
    assert finished_when_written == [False]
    with pytest.raises(CatalogError, match="is an unfinished catalog .*rerun it with the same --tiles, --model and --out"):
        open_catalog(catalog)
    assert job.run_survey(replace(config, tiles=str(tmp_path / "all.txt"))).total_rows == 60
    assert open_catalog(catalog).metadata.n_volunteers == 40
    assert_exact(catalog, tiny_model, [t0, t1, t2])


def test_a_task_whose_driver_no_longer_holds_the_catalog_writes_nothing(tmp_path, tiny_model, monkeypatch):
    """A task that outlived its driver (killed -9, its worker paused) wrote an old model's rows under the
    name a new --overwrite run had just finished, and a rerun called the mixed catalog done; a live
    driver whose lock was taken over kept writing beside the new holder."""
    from skymorph.catalog.lock import DriverLock
    from skymorph.errors import CatalogError
    from skymorph.inference import job
    from skymorph.tiles import write_tile_list

    (t0,) = make_tiles(str(tmp_path), n_tiles=1, per_tile=20)
    write_tile_list(str(tmp_path / "tiles.txt"), [t0])
    catalog = str(tmp_path / "catalog")
    config = job.RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog, workers=1, progress=False)
    run_tasks = job.run_tasks

    def taken_over_first(*args, **kwargs):
        _write_lock(catalog, session="another run")  # what a run that took the lease over as stale writes
        return run_tasks(*args, **kwargs)

    with monkeypatch.context() as patch:
        sent = _record_job_specs(patch)
        patch.setattr(job, "run_tasks", taken_over_first)
        with pytest.raises(CatalogError, match=r"this run's lock on .* was taken over by host .*stopped so that two runs do not write it at once"):
            job.run_survey(config)
    assert layout.list_parts(catalog) == []  # the task, on a real worker, checked the lock before writing
    assert DriverLock(catalog).holder().session == "another run"  # and the stopped driver left it

    layout.remove_catalog(catalog)  # the other run, gone: a task of the stopped driver still writes nothing
    result = _run_in_process(sent[0], t0)
    assert result["failure"]["stage"] == "lock" and "no longer holds" in result["failure"]["reason"]
    assert layout.list_parts(catalog) == []


def test_a_catalog_of_a_few_rows_a_partition_suggests_a_lower_order(capsys):
    """2,000 cutouts spread over the sky wrote 1,847 partitions at the default order 5, without a word. The
    note names the order to use: "a lower --catalog-order" was followed, for two tiles far apart, by the
    same note at every order above 0."""
    from skymorph.inference.job import _note_sparse_partitions

    sky_wide = np.arange(0, 12 * 4**5, 6)[:1847]  # order 5, spread over 11 of the 12 base pixels
    assert len(np.unique(sky_wide >> 10)) == 11 and len(np.unique(sky_wide >> 8)) == 44
    _note_sparse_partitions(2000, sky_wide, 5)  # 2,000 / 44 at order 1 is below 100 a partition; / 11 at order 0 is not
    assert capsys.readouterr().err == (
        "skymorph run: note: 2,000 rows in 1,847 partitions of HEALPix order 5 (1.1 a partition); a catalog this sparse "
        "reads faster with fewer, larger files: run it again with --catalog-order 0 (11 partitions) into a new --out, "
        "or with --overwrite\n")
    _note_sparse_partitions(1000, np.arange(16), 5)  # one patch of sky: its 16 pixels have 4 parents at order 4
    assert "run it again with --catalog-order 4 (4 partitions)" in capsys.readouterr().err
    # dense enough, one partition, order 0, and two tiles far apart, whose rows no lower order puts together
    for rows, pixels, order in ((2048, np.arange(8), 5), (50, [7], 5), (10, np.arange(12), 0), (128, [5, 9000], 5)):
        _note_sparse_partitions(rows, pixels, order)
    assert capsys.readouterr().err == ""


def test_a_task_queues_at_most_a_few_batches_for_its_posterior_thread(tmp_path, tiny_model, monkeypatch):
    """The engine's raw samples (T x A floats a galaxy) were queued for the posterior thread without
    bound: where the posterior maths is the slower (a Dirichlet-multinomial model on a fast GPU), a
    task held every batch of its range at once."""
    import threading

    from skymorph import posterior
    from skymorph.inference import job, task
    from skymorph.inference.engines import load_engine

    (t0,) = make_tiles(str(tmp_path), n_tiles=1, per_tile=240, chunk_size=24)
    catalog = str(tmp_path / "catalog")
    specs = _record_job_specs(monkeypatch)
    job.run_survey(job.RunConfig(tiles=t0, model=tiny_model, out=catalog, workers=1, progress=False, batch_size=8))
    _write_lock(catalog, specs[0].driver_session)  # the task's driver holds the catalog again: it writes

    engine, lock = load_engine(tiny_model, threads=1), threading.Lock()
    counts = {"engine": 0, "posterior": 0, "most_queued": 0}

    def counted_engine(images):
        with lock:
            counts["most_queued"] = max(counts["most_queued"], counts["engine"] - counts["posterior"])
            counts["engine"] += 1
        return engine(images)

    summarize = posterior.summarize

    def slow_summarize(*args, **kwargs):
        time.sleep(0.05)  # slower than the engine, as the posterior maths is beside a fast GPU
        out = summarize(*args, **kwargs)
        with lock:
            counts["posterior"] += 1
        return out

    monkeypatch.setattr(posterior, "summarize", slow_summarize)
    result = task.run_range(specs[0], t0, 0, None, lambda ref: counted_engine)
    assert result["failure"] is None and result["rows"] == 240
    assert counts["engine"] == counts["posterior"] == 30
    assert counts["most_queued"] <= task._POSTERIOR_BACKLOG, counts

    def failing_summarize(*args, **kwargs):  # a posterior error met while waiting is the posterior stage's
        raise ValueError("probabilities above 1")

    monkeypatch.setattr(posterior, "summarize", failing_summarize)
    result = task.run_range(specs[0], t0, 0, None, lambda ref: counted_engine)
    assert result["failure"]["stage"] == "posterior" and "probabilities above 1" in result["failure"]["reason"], result


def _run_in_process(spec, tile: str) -> dict:
    """The task of ``tile``'s first range, on a worker thread of this process (monkeypatches apply)."""
    from distributed import Client, LocalCluster

    from skymorph.inference.task import RunJob, run_job_range

    with LocalCluster(n_workers=1, threads_per_worker=1, processes=False, dashboard_address="127.0.0.1:0") as cluster, Client(cluster) as client:
        client.register_plugin(RunJob(spec, "skymorph-job-test"))
        return client.submit(run_job_range, "skymorph-job-test", tile, 0, None, pure=False).result()


def _write_lock(catalog: str, session: str) -> None:
    import socket

    from skymorph.storage import atomic_write_text

    now = time.time()
    atomic_write_text(layout.driver_lock_url(catalog), json.dumps(
        {"host": socket.gethostname(), "pid": os.getpid(), "session": session, "started": now, "heartbeat": now}))


def test_a_run_whose_tiles_all_fail_alike_stops_early(tmp_path, tiny_model, capsys):
    """Every tile failing the same way (missing stores here; workers without credentials in production)
    used to run the whole survey, one failure at a time."""
    from skymorph.cli import main
    from skymorph.inference.driver import SYSTEMIC_FAILURES
    from skymorph.tiles import write_tile_list

    missing = [str(tmp_path / f"nowhere/t{i:03d}.zarr") for i in range(3 * SYSTEMIC_FAILURES)]
    write_tile_list(str(tmp_path / "missing.txt"), missing)
    argv = ["run", "--tiles", str(tmp_path / "missing.txt"), "--model", tiny_model, "--out", str(tmp_path / "catalog"),
            "--workers", "1", "--max-in-flight", "4"]
    assert main(argv) == 2
    err = capsys.readouterr().err.strip().splitlines()[-1]
    assert err.startswith(f"skymorph: error: the first {SYSTEMIC_FAILURES} tile ranges all failed alike and none wrote a row (the first: open: ")
    assert "does not exist" in err and err.endswith("stopped: fix the cause and run again, or pass --allow-failures to go on")
    assert main([*argv, "--allow-failures"]) == 0  # accepted failures: every tile tried
    failures = read_parquet(layout.failures_url(str(tmp_path / "catalog"))).to_pylist()
    assert sorted(f["tile"] for f in failures) == missing


def _corrupt_chunk(tile_url: str) -> None:
    fs, root = filesystem(tile_url)
    chunk = sorted(p for p in fs.find(f"{root}/images") if "/c/" in p)[1]
    fs.pipe_file(chunk, b"this is not a zstd chunk")


def _float_images_tile(url: str) -> None:
    """A store like a tile but with float32 images: written by hand, as write_tile refuses it."""
    from skymorph.tiles import write_tile

    write_tile(url, np.zeros((8, 1, SIZE, SIZE), np.uint8), np.arange(8) + 9_000_000, np.zeros(8), np.zeros(8),
               survey="test", bands=["r"], pixel_scale_arcsec=0.262, stretch="asinh", resize="none")
    import zarr

    group = zarr.open_group(url, mode="a", storage_options={"endpoint_url": os.environ["AWS_ENDPOINT_URL"]})
    del group["images"]
    group.create_array("images", shape=(8, 1, SIZE, SIZE), dtype="float32", chunks=(8, 1, SIZE, SIZE))


def test_tiles_unlike_those_the_model_was_trained_on_are_warned_of(tmp_path, capsys):
    """Only the image shape was compared: a model of r-band asinh images classified u-band linear ones of
    the same size without a word. The checkpoint's provenance records its training tiles' pixels."""
    import torch

    from skymorph.exporter import export_onnx_model
    from skymorph.inference.engines import read_model_info
    from skymorph.inference.job import RunConfig, _check_sampled_tiles, run_survey
    from skymorph.model_metadata import InputSpec
    from skymorph.schema import get_schema
    from skymorph.trainer.models import build_model

    tiles = make_tiles(str(tmp_path / "s"), n_tiles=2, per_tile=32, compact=True)  # bands r, asinh, 0.262"
    torch.manual_seed(0)
    net = build_model("w20", get_schema("gz2"), InputSpec(1, SIZE, SIZE), "multinomial", dense=16)
    models = {}
    for bands, scale in ((["r"], 0.262), (["u"], 0.1)):
        provenance = {"pixels": [{"bands": bands, "stretch": "asinh", "pixel_scale_arcsec": scale}]}
        models[bands[0]] = str(tmp_path / f"{bands[0]}.onnx")
        export_onnx_model(net, models[bands[0]], samples=4, seed=3, extra={"provenance": json.dumps(provenance)})
    config = RunConfig(tiles=str(tmp_path / "s" / "tiles.txt"), model=models["u"], out=str(tmp_path / "catalog"), workers=1,
                       rows_per_task=64, catalog_order=3, progress=False)
    capsys.readouterr()
    assert run_survey(config).ok
    assert (f"skymorph run: warning: tile {tiles[0]!r} holds images unlike those the model was trained on (the tile's vs the "
            "training's: bands ['r'] vs ['u']; pixel_scale_arcsec 0.262 vs 0.1), and so do other tiles: its posteriors there are "
            "an extrapolation") in capsys.readouterr().err
    _check_sampled_tiles(tiles, read_model_info(models["r"]).metadata, replace(config, model=models["r"]))
    assert "warning" not in capsys.readouterr().err


def test_a_run_killed_as_it_finishes_leaves_no_earlier_run_s_failures(tmp_path, tiny_model, monkeypatch):
    """The failures table was written after hats.properties: a run killed in between left the catalog
    reading as finished with the last run's table, so the rerun (nothing left to do) reported a tile as
    failed that was in the catalog."""
    from skymorph.catalog import writer
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.tiles import write_tile_list

    good = make_tiles(str(tmp_path / "a"), n_tiles=2, per_tile=64, compact=True)
    late = str(tmp_path / "b" / "tiles" / "t000.zarr")  # missing at first
    write_tile_list(str(tmp_path / "tiles.txt"), [*good, late])
    config = RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=str(tmp_path / "catalog"), workers=1,
                       rows_per_task=64, catalog_order=3, allow_failures=True, progress=False)
    assert [f["tile"] for f in run_survey(config).failures] == [late]
    make_tiles(str(tmp_path / "b"), n_tiles=1, per_tile=64, compact=True, seed=1)

    def killed(*args, **kwargs):
        raise KeyboardInterrupt("the driver, killed once the catalog is finished")

    monkeypatch.setattr(writer, "write_manifest", killed)  # the compaction, the finish step's last write
    with pytest.raises(KeyboardInterrupt):
        run_survey(config)
    monkeypatch.undo()
    # what SIGKILL leaves besides: the dead driver's lock and the temporary files of writes it was making
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    lock_url = layout.driver_lock_url(config.out)
    with open(lock_url, "w") as fh:
        json.dump({"host": socket.gethostname(), "pid": dead.pid, "session": "0" * 32, "started": time.time(),
                   "heartbeat": time.time(), "pid_namespace": os.stat("/proc/self/ns/pid").st_ino}, fh)
    temps = [os.path.join(config.out, ".hats.properties.0f3c.tmp"), os.path.join(config.out, "_skymorph", ".manifest.json.9a1b.tmp")]
    for temp in temps:
        with open(temp, "w") as fh:
            fh.write("half")
    assert writer.journal_segments(config.out)
    report = run_survey(config)
    assert report.ok and report.ranges_run == 0 and report.total_rows == 192
    assert read_parquet(layout.failures_url(config.out)).num_rows == 0
    # the rerun finds the catalog finished and tidies what the killed driver left: a lock read as a live run
    assert writer.journal_segments(config.out) == [] and not os.path.exists(lock_url)
    assert not any(os.path.exists(temp) for temp in temps)


def test_bad_tiles_go_to_the_failures_table_and_the_rest_completes(s3_bucket, tiny_model, capsys):
    from skymorph.cli import main
    from skymorph.tiles import write_tile_list

    good = make_tiles(s3_bucket, n_tiles=2, per_tile=64)
    corrupt = make_tiles(f"{s3_bucket}/bad", n_tiles=1, per_tile=96, seed=1)[0]
    _corrupt_chunk(corrupt)
    wrong_shape = make_tiles(f"{s3_bucket}/big", n_tiles=1, per_tile=8, size=48, seed=2)[0]
    wrong_dtype = f"{s3_bucket}/float/t.zarr"
    _float_images_tile(wrong_dtype)
    missing = f"{s3_bucket}/nowhere/t.zarr"
    write_tile_list(f"{s3_bucket}/mixed.txt", good + [corrupt, wrong_shape, wrong_dtype, missing])

    catalog = f"{s3_bucket}/catalog"
    argv = ["run", "--tiles", f"{s3_bucket}/mixed.txt", "--model", tiny_model, "--out", catalog, "--workers", "1",
            "--rows-per-task", "1000", "--catalog-order", "2"]
    assert main(argv) == 1
    assert "or pass --allow-failures to accept the catalog without them" in capsys.readouterr().err

    failures = {f["tile"]: f for f in read_parquet(layout.failures_url(catalog)).to_pylist()}
    assert set(failures) == {corrupt, wrong_shape, wrong_dtype, missing}
    assert failures[corrupt]["stage"] == "read"
    assert failures[missing]["stage"] == "open" and "does not exist" in failures[missing]["reason"]
    assert failures[wrong_shape]["stage"] == "open" and "1x48x48" in failures[wrong_shape]["reason"]
    assert failures[wrong_dtype]["stage"] == "open" and "uint8" in failures[wrong_dtype]["reason"]
    assert_exact(catalog, tiny_model, good)
    assert main(argv + ["--allow-failures"]) == 0

    # tiles of another size (first, middle and last sampled): every tile would fail alike, so the run
    # stops before it starts; one odd tile first (above: the 4th) is left to its task
    other_size = make_tiles(f"{s3_bucket}/big2", n_tiles=2, per_tile=8, size=48, seed=3)
    write_tile_list(f"{s3_bucket}/big.txt", [wrong_shape, *other_size])
    capsys.readouterr()
    assert main(["run", "--tiles", f"{s3_bucket}/big.txt", "--model", tiny_model, "--out", f"{s3_bucket}/other"]) == 2
    assert (f"tile {wrong_shape!r} has images 1x48x48 (C x H x W), as do the other tiles sampled; the model {tiny_model!r} "
            f"takes 1x{SIZE}x{SIZE}") in capsys.readouterr().err
    assert not filesystem(s3_bucket)[0].exists(f"{s3_bucket}/other")
    write_tile_list(f"{s3_bucket}/odd-first.txt", [wrong_shape, *good])
    assert main(["run", "--tiles", f"{s3_bucket}/odd-first.txt", "--model", tiny_model, "--out", f"{s3_bucket}/other",
                 "--workers", "1", "--catalog-order", "2"]) == 1


# ---- real `dask scheduler` / `dask worker` processes -------------------------------------------------


@pytest.fixture
def two_workers(tmp_path):
    """A `dask scheduler` and two single-threaded `dask worker` processes (no nanny: a killed worker
    stays dead), killed afterwards."""
    with dask_processes(str(tmp_path), [["--nthreads", "1", "--no-nanny"]] * 2) as procs:
        yield procs


def _kill_mid_job(s3_bucket: str, tiny_model: str, scheduler_file: str, kill) -> None:
    """Run 8 tiles on the scheduler, call ``kill()`` once the first parts are written, and check that
    the job still gives the exact catalog."""
    import threading

    from skymorph.inference.job import RunConfig, run_survey

    tiles = make_tiles(s3_bucket, n_tiles=8, per_tile=128, compact=True)
    catalog = f"{s3_bucket}/catalog"
    config = RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=catalog, scheduler_file=scheduler_file,
                       rows_per_task=32, batch_size=32, catalog_order=3, progress=False)
    outcome = {}
    driver = threading.Thread(target=lambda: outcome.update(report=run_survey(config)), daemon=True)
    driver.start()
    wait_for(lambda: len(layout.list_parts(catalog)) >= 3, 120, "the first part files")
    assert driver.is_alive(), "the job finished before a worker could be killed: make it slower"
    kill()
    driver.join(timeout=240)
    assert not driver.is_alive()
    report = outcome["report"]
    assert report.ok, report.failures[:2]
    assert report.total_rows == 8 * 128
    assert_exact(catalog, tiny_model, tiles)


def test_killing_a_worker_mid_job_still_gives_the_exact_catalog(s3_bucket, tiny_model, two_workers):
    _kill_mid_job(s3_bucket, tiny_model, two_workers.scheduler_file, lambda: os.kill(two_workers.workers[0].pid, signal.SIGKILL))


def test_a_lone_worker_restarted_by_its_nanny_finishes_the_job(s3_bucket, tiny_model, tmp_path):
    """Every task left failed with "lost dependencies" when the job spec was data scattered to the
    workers: it died with the only worker holding it, so a restarted worker could not run them."""
    import psutil

    with dask_processes(str(tmp_path), [["--nthreads", "1"]]) as procs:
        def kill_the_worker_process() -> None:  # the nanny's child, which the nanny then restarts
            [worker] = [child for child in psutil.Process(procs.workers[0].pid).children(recursive=True)
                        if "spawn_main" in " ".join(child.cmdline())]
            worker.kill()

        _kill_mid_job(s3_bucket, tiny_model, procs.scheduler_file, kill_the_worker_process)


def test_a_job_on_a_scheduler_without_workers_says_so_and_waits_for_one(tmp_path, tiny_model, capsys, monkeypatch):
    """It failed after 30 s with "No valid workers found", naming nothing; an adaptive cluster starts empty.
    The scheduler is given as a Kubernetes DaskJob gives it: DASK_SCHEDULER_ADDRESS."""
    import threading

    from skymorph.inference.job import RunConfig, run_survey

    tiles = make_tiles(str(tmp_path), n_tiles=2, per_tile=16)
    with dask_processes(str(tmp_path), []) as procs:
        monkeypatch.setenv("DASK_SCHEDULER_ADDRESS", procs.address)
        config = RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=str(tmp_path / "catalog"), progress=False)
        # with --worker-timeout it stops, resumable, instead (a worker image that never pulls hung the driver)
        with pytest.raises(ClusterError, match=rf"^the Dask scheduler at {procs.address} has had no worker for 1.5 s "
                                               r"\(--worker-timeout\); the catalog is left unfinished"):
            run_survey(replace(config, worker_timeout=1.5))
        assert "waiting for some to join, at most 1.5 s (--worker-timeout)" in capsys.readouterr().err
        outcome = {}
        driver = threading.Thread(target=lambda: outcome.update(report=run_survey(config)), daemon=True)
        driver.start()
        wait_for(lambda: "waiting for some to join" in capsys.readouterr().err, 60, "the driver's notice")
        dask = os.path.join(os.path.dirname(sys.executable), "dask")
        worker = subprocess.Popen([dask, "worker", procs.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            driver.join(timeout=120)
            assert not driver.is_alive(), "the driver did not finish after a worker joined"
        finally:
            worker.kill()
            worker.wait(timeout=30)
    assert outcome["report"].ok and outcome["report"].total_rows == 32
    assert_exact(config.out, tiny_model, tiles)


@pytest.mark.parametrize("stop", [signal.SIGKILL, signal.SIGTERM], ids=["SIGKILL", "SIGTERM"])
def test_interrupted_driver_resumes_and_skips_finished_ranges(s3, s3_bucket, tiny_model, two_workers, stop, tmp_path):
    """SIGKILL leaves the driver lock, which the next run on this host takes over; SIGTERM (what scancel
    and Kubernetes send) stops as Ctrl-C does: one line, exit 143, the lock released."""
    from skymorph.catalog import layout
    from skymorph.catalog.writer import Manifest, read_manifest
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.storage import filesystem, read_text

    scheduler_file = two_workers.scheduler_file
    tiles = make_tiles(s3_bucket, n_tiles=8, per_tile=128, compact=True)
    catalog = f"{s3_bucket}/catalog"
    args = ["--tiles", f"{s3_bucket}/tiles.txt", "--model", tiny_model, "--out", catalog,
            "--scheduler-file", scheduler_file, "--rows-per-task", "32", "--batch-size", "32", "--catalog-order", "3"]
    stderr = tmp_path / "driver.err"
    with open(stderr, "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "skymorph.cli", "run", *args], env={**os.environ, **s3.env},
                                  stdout=subprocess.DEVNULL, stderr=err)
    try:
        manifest = wait_for(lambda: (m := read_manifest(catalog)) is not None and len(m.ranges) >= 4 and m, 120,
                             "a manifest with some finished ranges")
        assert driver.poll() is None, "the driver finished before it could be interrupted: make the job slower"
        driver.send_signal(stop)
        code = driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)
    fs, _ = filesystem(catalog)
    fs.invalidate_cache()
    if stop == signal.SIGTERM:
        assert code == 143 and stderr.read_text().splitlines()[-1] == "skymorph: terminated", stderr.read_text()
        assert not fs.exists(layout.driver_lock_url(catalog))
        from distributed import Client

        with Client(scheduler_file=scheduler_file) as client:  # the run's job spec left the shared scheduler
            plugins = client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
        assert not [name for name in plugins if name.startswith("skymorph-job-")], plugins
    else:
        assert code == -signal.SIGKILL and fs.exists(layout.driver_lock_url(catalog))
    done_before = set(read_manifest(catalog).ranges)
    assert len(done_before) >= len(manifest.ranges) and len(done_before) < 8 * 4

    report = run_survey(RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=catalog,
                                  scheduler_file=scheduler_file, rows_per_task=32, batch_size=32,
                                  catalog_order=3, progress=False))
    assert report.ok and report.total_rows == 8 * 128
    assert report.ranges_run == 8 * 4 - len(done_before) and report.ranges_skipped == len(done_before)
    assert f"and {len(done_before)} range(s) already done" in report.summary()
    assert_exact(catalog, tiny_model, tiles)
    # the finished catalog's manifest is compacted: every range in manifest.json, no journal left
    fs, root = filesystem(layout.journal_url(catalog))
    fs.invalidate_cache()
    assert not fs.exists(root) or fs.ls(root) == []
    assert len(Manifest.from_json(read_text(layout.manifest_url(catalog))).ranges) == 8 * 4


def test_a_run_unregisters_the_job_plugins_of_drivers_that_left_the_scheduler(tmp_path, tiny_model, two_workers):
    """A driver killed with SIGKILL never unregistered its job plugin: every worker of a long-lived cluster
    kept its engine, and each worker that joined later loaded the dead run's model."""
    from distributed import Client

    from skymorph.inference.cluster import LeaveInterruptToDriver
    from skymorph.inference.job import RunConfig, run_survey

    def job_plugins(client):
        return sorted(n for n in client.run_on_scheduler(lambda dask_scheduler: list(dask_scheduler.worker_plugins))
                      if n.startswith("skymorph-job-"))

    make_tiles(str(tmp_path), n_tiles=1, per_tile=16)
    with Client(two_workers.address) as gone:
        orphan = f"skymorph-job-{'0' * 12}-{gone.id}"
        gone.register_plugin(LeaveInterruptToDriver(), name=orphan)  # as a killed driver leaves it
        legacy = f"skymorph-job-{'a' * 32}"  # an older skymorph's name says nothing of its driver: left alone
        gone.register_plugin(LeaveInterruptToDriver(), name=legacy)
    with Client(two_workers.address) as live:
        running = f"skymorph-job-{'1' * 12}-{live.id}"
        live.register_plugin(LeaveInterruptToDriver(), name=running)  # another driver's run, still going
        assert job_plugins(live) == sorted([orphan, legacy, running])
        report = run_survey(RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=str(tmp_path / "catalog"),
                                      scheduler=two_workers.address, progress=False))
        assert report.ok and job_plugins(live) == sorted([legacy, running])
        assert not any(orphan in worker_plugins for worker_plugins in live.run(lambda dask_worker: list(dask_worker.plugins)).values())


def _stop_mid_run(driver: subprocess.Popen, ready, what: str, stop) -> int:
    """Once ``ready()`` (``what``), ``stop()`` a part of the cluster under the running ``driver`` and return
    its exit code; a driver still running at the end is killed."""
    try:
        wait_for(ready, 120, what)
        assert driver.poll() is None, f"the driver finished before {what} could be stopped under it: make the job slower"
        stop()
        return driver.wait(timeout=120)
    finally:
        if driver.poll() is None:
            driver.kill()
            driver.wait(timeout=30)


def _error_lines(stderr) -> list[str]:
    return [line for line in stderr.read_text().splitlines() if line.startswith("skymorph: error:")]


def test_a_lost_scheduler_leaves_the_catalog_unfinished_and_a_rerun_completes_it(s3, s3_bucket, tiny_model, tmp_path):
    """The tasks Dask cancelled when the scheduler died were recorded as failed tiles, and the catalog was
    finished without them: a review's run exited 0 (--allow-failures) with 79% of its rows missing."""
    from skymorph.catalog.writer import read_manifest
    from skymorph.inference.job import RunConfig, run_survey

    tiles = make_tiles(s3_bucket, n_tiles=8, per_tile=128, compact=True)
    catalog = f"{s3_bucket}/catalog"
    args = ["--tiles", f"{s3_bucket}/tiles.txt", "--model", tiny_model, "--out", catalog, "--rows-per-task", "32",
            "--batch-size", "32", "--catalog-order", "3", "--allow-failures"]
    stderr = tmp_path / "driver.err"
    with dask_processes(str(tmp_path), [["--nthreads", "1", "--no-nanny"]] * 2) as procs, open(stderr, "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "skymorph.cli", "run", *args, "--scheduler-file", procs.scheduler_file],
                                  env={**os.environ, **s3.env}, stdout=subprocess.DEVNULL, stderr=err)
        code = _stop_mid_run(driver, lambda: len(layout.list_parts(catalog)) >= 3, "the first part files", procs.scheduler.kill)
    errors = _error_lines(stderr)
    assert code == 2 and len(errors) == 1, stderr.read_text()
    assert "Traceback" not in stderr.read_text() and "distributed.client - ERROR" not in stderr.read_text(), stderr.read_text()
    assert errors[0].startswith(f"skymorph: error: lost the Dask scheduler at {procs.address} mid-run (")
    assert errors[0].endswith("the catalog is left unfinished, its finished tile ranges kept: run the same command again to resume")
    fs, _ = filesystem(catalog)
    fs.invalidate_cache()
    assert not fs.exists(f"{catalog}/hats.properties") and not fs.exists(f"{catalog}/_skymorph/failures.parquet")
    done_before = set(read_manifest(catalog).ranges)
    assert len(done_before) < 8 * 4

    (tmp_path / "again").mkdir()
    with dask_processes(str(tmp_path / "again"), [["--nthreads", "1"]]) as procs:
        report = run_survey(RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=catalog,
                                      scheduler_file=procs.scheduler_file, rows_per_task=32, batch_size=32,
                                      catalog_order=3, progress=False))
    assert report.ok and report.total_rows == 8 * 128 and report.ranges_skipped == len(done_before)
    assert_exact(catalog, tiny_model, tiles)


def test_a_gpu_run_whose_gpu_workers_all_leave_stops_after_the_worker_timeout_and_resumes(tiny_model, tmp_path):
    """Without workers that can run them, the tasks waited for one forever: a DaskJob whose GPU workers were
    evicted never ended, nor does one left with CPU workers only."""
    from distributed import Client

    from skymorph.catalog.writer import read_manifest
    from skymorph.inference.job import RunConfig, run_survey

    tiles = make_tiles(str(tmp_path), n_tiles=8, per_tile=128)
    catalog = str(tmp_path / "catalog")
    stderr = tmp_path / "driver.err"
    gpu_worker, cpu_worker = ["--nthreads", "1", "--no-nanny", "--resources", "GPU=1"], ["--nthreads", "1"]
    with dask_processes(str(tmp_path), [gpu_worker, cpu_worker]) as procs, open(stderr, "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "skymorph.cli", "run", "--tiles", str(tmp_path / "tiles.txt"),
                                   "--model", tiny_model, "--out", catalog, "--rows-per-task", "32", "--batch-size", "32",
                                   "--catalog-order", "3", "--scheduler", procs.address, "--gpu", "--worker-timeout", "2"],
                                  stdout=subprocess.DEVNULL, stderr=err)
        code = _stop_mid_run(driver, lambda: (m := read_manifest(catalog)) is not None and len(m.ranges) >= 2,
                             "some finished ranges", procs.workers[0].kill)
        errors = _error_lines(stderr)
        assert code == 2 and errors == [
            f"skymorph: error: the Dask scheduler at {procs.address} has had no worker with resource GPU for 2 s "
            "(--worker-timeout); the catalog is left unfinished, its finished tile ranges kept: start workers (`dask worker "
            f"{procs.address} --resources GPU=1`) and run the same command again to resume"], stderr.read_text()
        assert not os.path.exists(f"{catalog}/hats.properties")
        done_before = set(read_manifest(catalog).ranges)

        dask = os.path.join(os.path.dirname(sys.executable), "dask")
        worker = subprocess.Popen([dask, "worker", procs.address, "--host", "127.0.0.1", "--nthreads", "1", "--no-dashboard",
                                   "--resources", "GPU=1"],
                                  stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            with Client(procs.address) as client:  # else the run is refused: no worker with GPU=1
                client.wait_for_workers(2, timeout=60)
            report = run_survey(RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog,
                                          scheduler=procs.address, rows_per_task=32, batch_size=32, catalog_order=3,
                                          gpu=True, worker_timeout=60, progress=False))
        finally:
            worker.kill()
            worker.wait(timeout=30)
    assert report.ok and report.total_rows == 8 * 128 and report.ranges_skipped == len(done_before) > 0
    assert_exact(catalog, tiny_model, tiles)


def test_ctrl_c_stops_a_local_cluster_run_in_one_line(tiny_model, tmp_path):
    """A terminal's Ctrl-C reaches the whole process group, the LocalCluster's worker processes too: each
    died of its own KeyboardInterrupt, printing a traceback (and distributed a CancelledError warning),
    around the driver's one line. (An interrupted run resumes: test_interrupted_driver_resumes_...)"""
    from skymorph.catalog.writer import read_manifest

    make_tiles(str(tmp_path), n_tiles=16, per_tile=256)  # 128 ranges: far more than the two awaited, on any machine
    catalog = str(tmp_path / "catalog")
    stderr = tmp_path / "driver.err"
    with open(stderr, "w") as err:
        driver = subprocess.Popen([sys.executable, "-m", "skymorph.cli", "run", "--tiles", str(tmp_path / "tiles.txt"),
                                   "--model", tiny_model, "--out", catalog, "--rows-per-task", "32", "--batch-size", "32",
                                   "--catalog-order", "3", "--workers", "1"],
                                  stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
    try:
        wait_for(lambda: (m := read_manifest(catalog)) is not None and len(m.ranges) >= 2, 120, "some finished ranges")
        assert driver.poll() is None, "the driver finished before it could be interrupted: make the job slower"
        os.killpg(driver.pid, signal.SIGINT)
        code = driver.wait(timeout=60)
    finally:
        if driver.poll() is None:
            os.killpg(driver.pid, signal.SIGKILL)
            driver.wait(timeout=30)
    text = stderr.read_text()
    assert code == 130 and text.splitlines()[-1] == "skymorph: interrupted", text
    assert "KeyboardInterrupt" not in text and "CancelledError" not in text, text
    wait_for(lambda: not _group_alive(driver.pid), 30, "the worker processes to exit")


def _group_alive(pgid: int) -> bool:
    try:
        os.killpg(pgid, 0)
    except ProcessLookupError:
        return False
    return True


# ---- pieces without a cluster ----------------------------------------------------------------------


def test_ranges_are_whole_chunks_covering_the_tile_once():
    from skymorph.inference.task import plan_ranges

    assert plan_ranges(100, 32, 64) == [(0, 64), (64, 100)]
    assert plan_ranges(100, 32, 10) == [(0, 32), (32, 64), (64, 96), (96, 100)]
    assert plan_ranges(5000, 256, 4096) == [(0, 4096), (4096, 5000)]
    assert plan_ranges(0, 256, 4096) == [(0, 0)]


def test_plan_ranges_tile_every_row_once_in_whole_chunks_rounded_to_the_nearest():
    """``rows_per_task`` rounded to the nearest whole number of chunks (at least one), the ranges covering
    [0, n) edge to edge: a plan that left out the last row (n one past a whole step), or floored 100 rows of
    64-row chunks to one chunk, passed the cases above."""
    from skymorph.inference.task import plan_ranges

    for chunk, rows_per_task, step in ((32, 64, 64), (32, 10, 32), (64, 100, 128), (64, 90, 64), (7, 50, 49), (256, 4096, 4096)):
        for n in (1, 31, 32, 33, 64, 65, 129, 257, 1000, 4097):
            ranges = plan_ranges(n, chunk, rows_per_task)
            assert ranges[0][0] == 0 and ranges[-1][1] == n, (n, chunk, rows_per_task, ranges)
            assert all(stop == start for (_, stop), (start, _) in zip(ranges, ranges[1:])), (n, chunk, rows_per_task, ranges)
            assert all(b - a == step for a, b in ranges[:-1]) and 0 < ranges[-1][1] - ranges[-1][0] <= step, (n, chunk, rows_per_task, ranges)
        assert plan_ranges(0, chunk, rows_per_task) == [(0, 0)]


def test_the_plan_runs_each_range_once_an_empty_tile_included():
    """A tile's first range finds its size; the plan then adds the rest. An empty tile's one range,
    (0, 0), was added again and run twice."""
    from skymorph.catalog.writer import Manifest
    from skymorph.inference.job import _Plan

    plan = _Plan(["empty", "full"], Manifest("0" * 64, 3, {}, 40, 64), rows_per_task=64)
    assert plan.next() == ("empty", 0, None)
    plan.first_range_done("empty", n=0, chunk_size=32, stop=0)
    assert plan.range_done("empty") and plan.outstanding == {}
    assert plan.next() == ("full", 0, None)
    plan.first_range_done("full", n=200, chunk_size=32, stop=64)
    assert [plan.next() for _ in range(3)] == [("full", 64, 128), ("full", 128, 192), ("full", 192, 200)]
    assert plan.next() is None and plan.outstanding == {"full": 4}


def test_local_cluster_does_not_oversubscribe_the_cores():
    from skymorph.inference.cluster import local_sizing

    for cores in (1, 2, 8, 64):
        for threads in (1, 2):
            sizing = local_sizing(None, threads, gpu=False, cores=cores)
            assert sizing.workers * sizing.threads_per_worker * sizing.engine_threads <= max(cores, threads)
    assert local_sizing(None, 1, gpu=False, cores=2) == local_sizing(1, 1, gpu=False, cores=2)
    assert local_sizing(None, 1, gpu=False, cores=2).engine_threads == 2


def test_run_config_rejects_bad_options(tmp_path):
    from skymorph.errors import InputError
    from skymorph.inference.job import RunConfig

    with pytest.raises(InputError, match=r"^--rows-per-task must be at least 1, got 0$"):
        RunConfig(tiles="t.txt", model="m.onnx", out="c", rows_per_task=0)
    with pytest.raises(InputError, match=r"^threads_per_worker \(--threads-per-worker\) must be at most \d+, got 1000000"):
        RunConfig(tiles="t.txt", model="m.onnx", out="c", threads_per_worker=10**6)  # a window of 2 million tasks
    with pytest.raises(InputError, match=r"^the catalog's name 'cat\\nv2' \(from --out\) must be one line$"):
        RunConfig(tiles="t.txt", model="m.onnx", out="cat\nv2")  # refused by the finish step, after the run
    assert RunConfig(tiles="t.txt", model="m.onnx", out="survey=dr10").out.endswith("/survey=dr10")
    with pytest.raises(InputError, match=r"^--n-volunteers must be at most 1000, got 1001$"):  # every tile failed
        RunConfig(tiles="t.txt", model="m.onnx", out="c", n_volunteers=1001)
    with pytest.raises(InputError, match=r"^--workers 1000 is more worker processes than this machine's \d+ usable cores"):
        RunConfig(tiles="t.txt", model="m.onnx", out="c", workers=1000)  # hung starting them
    with pytest.raises(InputError, match=r"^--catalog-order must be in 0\.\.19, got 25$"):
        RunConfig(tiles="t.txt", model="m.onnx", out="c", catalog_order=25)
    with pytest.raises(InputError, match=r"^--cluster slurm needs --cluster-config FILE"):
        RunConfig(tiles="t.txt", model="m.onnx", out="c", cluster="slurm")
    with pytest.raises(InputError, match=r"^scheduler file '.*none.json' does not exist; start `dask scheduler"):
        RunConfig(tiles="t.txt", model="m.onnx", out="c", scheduler_file=str(tmp_path / "none.json"))


def test_local_out_and_model_are_made_absolute_for_workers_elsewhere(tmp_path, monkeypatch):
    """A relative --out sent the part files of external workers into their own working directory."""
    from skymorph.inference.job import RunConfig

    monkeypatch.chdir(tmp_path)
    config = RunConfig(tiles="t.txt", model="m.onnx", out="cat", scheduler="tcp://127.0.0.1:1")
    assert (config.model, config.out) == (str(tmp_path / "m.onnx"), str(tmp_path / "cat"))
    remote = RunConfig(tiles="t.txt", model="s3://b/m.onnx", out="s3://b/cat")
    assert (remote.model, remote.out) == ("s3://b/m.onnx", "s3://b/cat")


def test_job_spec_rejects_no_attempts():
    from skymorph.errors import InputError
    from skymorph.inference.task import JobSpec, ModelRef

    fields = dict(catalog="c", order=3, arrow_schema=None, model=ModelRef("m.onnx", "0" * 64, masks_sha256="0" * 64), tree_json="{}",
                  likelihood="multinomial", n_volunteers=40, input_shape=(1, SIZE, SIZE), batch_size=8, rows_per_task=64,
                  driver_session="0" * 32)
    assert JobSpec(**fields, attempts=1).attempts == 1
    with pytest.raises(InputError, match=r"^JobSpec attempts \(tries per tile range\) must be at least 1, got 0$"):
        JobSpec(**fields, attempts=0)
    with pytest.raises(InputError, match="backoff_s must be at least 0 seconds, got -1"):
        JobSpec(**fields, backoff_s=-1)


def _truncate_common_metadata(catalog: str) -> None:
    with open(layout.common_metadata_url(catalog), "r+b") as fh:
        fh.truncate(100)


def test_rerun_of_a_finished_catalog_repairs_damaged_metadata_and_leaves_a_sound_one_alone(tmp_path, tiny_model):
    from skymorph.catalog import info
    from skymorph.inference.job import RunConfig, run_survey

    make_tiles(str(tmp_path), n_tiles=2, per_tile=20)
    catalog = str(tmp_path / "catalog")
    config = RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=catalog, workers=1, progress=False)
    assert run_survey(config).total_rows == 40
    metadata = [layout.properties_url(catalog), layout.partition_info_url(catalog), layout.common_metadata_url(catalog)]
    before = {url: os.stat(url).st_mtime_ns for url in metadata}
    assert run_survey(config).total_rows == 40
    assert {url: os.stat(url).st_mtime_ns for url in metadata} == before  # nothing to repair: nothing rewritten

    damages = {
        "truncated _common_metadata": _truncate_common_metadata,
        "garbage partition_info.csv": lambda c: open(layout.partition_info_url(c), "w").write("garbage\n"),
        "stale partition_info.csv": lambda c: open(layout.partition_info_url(c), "w").write("Norder,Npix\n"),
        "non-UTF-8 hats.properties": lambda c: open(layout.properties_url(c), "wb").write(b"x=1\n\xff\xfe"),
        "missing hats.properties": lambda c: os.remove(layout.properties_url(c)),
    }
    for name, damage in damages.items():
        damage(catalog)
        report = run_survey(config)
        assert (report.ranges_run, report.tiles_skipped, report.total_rows) == (0, 2, 40), name
        assert info(catalog).rows == 40, name


def test_bad_scheduler_options_are_one_line_and_leave_no_catalog(tmp_path, tiny_model, refused_port, capsys):
    import dask

    # distributed's config defaults must exist before dask.config.set: leaving the block restores the config
    # as it was, and would drop defaults that a first import inside it added
    import distributed  # noqa: F401

    from skymorph.errors import InputError
    from skymorph.inference.job import RunConfig, run_survey

    make_tiles(str(tmp_path), n_tiles=1, per_tile=10)
    (tmp_path / "garbage.json").write_text("not json")
    (tmp_path / "empty.json").write_text("{}")
    (tmp_path / "refused.json").write_text(json.dumps({"address": f"tcp://127.0.0.1:{refused_port}"}))
    out = tmp_path / "catalog"
    config = RunConfig(tiles=str(tmp_path / "tiles.txt"), model=tiny_model, out=str(out), progress=False)
    for options, message in [
        ({"scheduler": "not an address"}, r"^--scheduler 'not an address' is not a Dask scheduler address \(missing port"),
        ({"scheduler": "tcp://host:port"}, r"^--scheduler 'tcp://host:port' is not a Dask scheduler address"),
        ({"scheduler_file": str(tmp_path / "garbage.json")}, r"^--scheduler-file '.*garbage.json' is not JSON"),
        ({"scheduler_file": str(tmp_path / "empty.json")}, r"^--scheduler-file '.*empty.json' holds no scheduler \"address\""),
        ({"scheduler_file": str(tmp_path / "refused.json")}, rf"^cannot reach the Dask scheduler at 'tcp://127\.0\.0\.1:{refused_port}' "
                                                             r"\(from --scheduler-file '.*refused.json'\)"),
        # ignored without a word: a running scheduler's workers are sized where they were started
        ({"scheduler": "tcp://127.0.0.1:8786", "workers": 2}, r"^--workers size the cluster that skymorph starts, but "
                                                              r"--scheduler names a running one"),
        ({"scheduler_file": str(tmp_path / "refused.json"), "threads_per_worker": 4, "workers": 1},
         r"^--workers and --threads-per-worker size the cluster that skymorph starts, but --scheduler-file names"),
    ]:
        with dask.config.set({"distributed.comm.timeouts.connect": "1s"}), pytest.raises(InputError, match=message) as err:
            run_survey(replace(config, **options))
        assert "\n" not in str(err.value)
        assert not out.exists(), options
    # the wait for an unreachable scheduler (the connect timeout, 30 s by default) is announced, not silent
    assert f"skymorph run: connecting to the Dask scheduler at tcp://127.0.0.1:{refused_port} (giving up after 1 s)" in capsys.readouterr().err
    # a DaskJob's driver starts with its scheduler, which answers once it is ready: --worker-timeout, given, bounds
    # that wait instead of the connect timeout, longer or shorter
    for connect, worker_timeout in (("1s", 3), ("30s", 2)):
        with dask.config.set({"distributed.comm.timeouts.connect": connect}), pytest.raises(InputError, match="cannot reach"):
            run_survey(replace(config, scheduler_file=str(tmp_path / "refused.json"), worker_timeout=worker_timeout))
        assert f"at tcp://127.0.0.1:{refused_port} (giving up after {worker_timeout} s)" in capsys.readouterr().err


def test_the_in_flight_window_follows_the_cluster_as_workers_join():
    """Counted once at the start, an adaptive SLURM cluster (no worker yet) kept 4 tasks in flight for the
    whole run, however many workers joined."""
    from skymorph.inference.driver import WORKER_CHECK_S, Window

    threads = iter([0, 8, 3])
    window = Window(lambda: next(threads))
    assert window.size(now=100.0) == 4  # no worker yet: at least 4
    assert window.size(now=100.0 + WORKER_CHECK_S / 2) == 4  # not counted again so soon
    assert window.size(now=100.0 + WORKER_CHECK_S) == 16  # 8 threads joined
    assert window.size(now=100.0 + 2 * WORKER_CHECK_S) == 6
    assert Window(lambda: 1 / 0, fixed=3).size() == 3  # --max-in-flight: never counted
    # a count that fails (the scheduler gone) keeps the last: the next arrival reports the loss, resumable
    counts = iter([8])
    window = Window(lambda: next(counts))
    assert window.size(now=0.0) == 16 and window.size(now=WORKER_CHECK_S) == 16
    assert Window(lambda: 1 / 0).size(now=0.0) == 4
