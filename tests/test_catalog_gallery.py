"""skymorph.catalog.gallery and pick's subject images: each picked galaxy is drawn from the row that was
picked, also when a galaxy seen in two overlapping tiles has two rows with one ``object_id``."""

from __future__ import annotations

import csv
import glob
import importlib
import io
import os

import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest
from PIL import Image

from skymorph import cli
from skymorph.catalog import layout, open_catalog, pick, pick_to, query, writer
from skymorph.catalog.gallery import gallery, gallery_figure
from skymorph.errors import CatalogError, InputError
from skymorph.testing.catalogs import write_synthetic_catalog
from skymorph.tiles import write_tile

TWINS = 20
KEYS = ["object_id", "tile", "row"]


def _images(values) -> np.ndarray:
    """One 1-band 8x8 cutout per value, filled with it, so a drawn cutout names its tile and row."""
    return np.broadcast_to(np.asarray(values, dtype=np.uint8)[:, None, None, None], (len(values), 1, 8, 8)).copy()


def _image_value(tile_b: bool, row: int) -> int:
    return 255 - row if tile_b else row


@pytest.fixture(scope="module")
def overlapping(tmp_path_factory):
    """A finished catalog of tile A (200 galaxies) and tile B, which sees A's first ``TWINS`` galaxies
    again: same ``object_id`` and position, another galaxy's posterior, ``bald_total`` 10 times A's
    (even rows, so B's row is picked) or a tenth of it (odd rows, so A's row is). Both tile stores exist."""
    out = str(tmp_path_factory.mktemp("gallery") / "catalog")
    synthetic = write_synthetic_catalog(out, 200, per_tile=200, tile_deg=1.0, order=5, workers=1)
    tile_a, tile_b = synthetic.tile_urls[0], os.path.join(out, "tiles", "tile-b.zarr")
    rows = query(out).sort_by("row")
    twins, donors = rows.slice(0, TWINS), rows.slice(100, TWINS)
    schema, _ = layout.read_common_metadata(out)
    posterior = {name: donors[name].to_numpy() for name in schema.names[len(layout.BASE_COLUMNS):]}
    posterior["bald_total"] = twins["bald_total"].to_numpy() * np.where(np.arange(TWINS) % 2 == 0, 10.0, 0.1)
    table = writer.build_part_table(schema, twins["object_id"].to_numpy(), twins["ra"].to_numpy(),
                                    twins["dec"].to_numpy(), tile_b, 0, posterior)
    manifest = writer.read_manifest(out)
    parts = writer.write_part(out, table, tile_b, 0, TWINS, synthetic.order)
    manifest.add(writer.RangeRecord(tile_b, 0, TWINS, TWINS, TWINS, tuple(parts)))
    writer.finish_catalog(out, manifest, schema, layout.read_properties(out))
    writer.write_manifest(out, manifest)

    for url, source, tile_is_b in ((tile_a, rows, False), (tile_b, twins, True)):
        values = [_image_value(tile_is_b, r) for r in range(source.num_rows)]
        write_tile(url, _images(values), source["object_id"].to_numpy(), source["ra"].to_numpy(),
                   source["dec"].to_numpy(), survey="synthetic", bands=["r"], pixel_scale_arcsec=0.262,
                   stretch="none", resize="none")
    return out, tile_b, rows["object_id"].to_numpy()


def _all_rows(url: str) -> pd.DataFrame:
    """Every row of the catalog read straight from its part files, indexed by (object_id, tile, row)."""
    files = sorted(glob.glob(os.path.join(url, "dataset", "Norder=*", "Dir=*", "Npix=*", "part-*.parquet")))
    return pa.concat_tables(pq.read_table(f) for f in files).to_pandas().set_index(KEYS)


@pytest.mark.parametrize("question", [None, "bar"])
def test_twins_are_drawn_from_the_picked_row(overlapping, question):
    url, tile_b, ids = overlapping
    catalog = open_catalog(url)
    batch = pick(catalog, TWINS, exclude=ids[TWINS:])
    assert sorted(batch["object_id"].to_pylist()) == sorted(ids[:TWINS].tolist())
    picked = list(zip(*(batch[k].to_pylist() for k in KEYS)))
    assert all((tile == tile_b) == (row % 2 == 0) for _, tile, row in picked)  # the best row of each twin

    expected = _all_rows(url).loc[picked]
    schema = catalog.metadata.schema
    fig = gallery_figure(batch, catalog, question=question)
    for i, ((object_id, tile, row), (_, record)) in enumerate(zip(picked, expected.iterrows())):
        image_ax, bar_ax = fig.axes[2 * i], fig.axes[2 * i + 1]
        drawn = image_ax.images[0].get_array()
        np.testing.assert_array_equal(drawn, np.full((8, 8), _image_value(tile == tile_b, row)))
        assert image_ax.get_title() == f"#{i + 1} id {object_id} row {row}"
        q = question or max(schema.question_names, key=lambda name: record[f"{name}_asked"] * record[f"{name}_bald"])
        assert bar_ax.get_title() == f"{q}\nasked {record[f'{q}_asked']:.2f}, bald {record[f'{q}_bald']:.3f}"
        widths = [patch.get_width() for patch in bar_ax.patches]
        np.testing.assert_allclose(widths, [record[f"{q}_{a}_fraction"] for a in schema.question(q).answers])
    plt.close(fig)


def test_gallery_png_of_twins(overlapping, tmp_path):
    url, _, ids = overlapping
    png = str(tmp_path / "twins.png")
    assert gallery(pick(url, TWINS, exclude=ids[TWINS:]), url, png) == png
    with Image.open(png) as image:
        assert image.format == "PNG" and image.size[0] > 300 and image.size[1] > 100


def test_subject_images_are_the_picked_rows_cutouts_named_as_zooniverse_reads_a_manifest(overlapping, tmp_path):
    """``pick --images``: one PNG per galaxy, of the row picked, in a first column ``image`` that
    Zooniverse's uploader resolves against the manifest's directory (os.path.join(dirname(manifest),
    value), panoptes-cli's subject_set.upload_subjects), here a sibling directory."""
    url, tile_b, ids = overlapping
    exclude, manifest = tmp_path / "seen.csv", tmp_path / "batch" / "manifest.csv"
    pd.DataFrame({"object_id": ids[TWINS:]}).to_csv(exclude, index=False)
    assert cli.main(["catalog", "pick", url, "--n", str(TWINS), "--exclude", str(exclude), "--out", str(manifest),
                     "--images", str(tmp_path / "subjects")]) == 0
    batch = pd.read_csv(manifest)
    assert batch.columns[0] == "image" and len(batch) == TWINS
    with open(manifest, newline="") as fh:
        assert next(csv.reader(fh))[0] == "image"
    for image, object_id, tile, row in batch[["image", *KEYS]].itertuples(index=False):
        assert image == os.path.join("..", "subjects", f"{object_id}.png")
        with Image.open(os.path.join(manifest.parent, image)) as png:
            assert png.format == "PNG" and png.mode == "L"
            np.testing.assert_array_equal(np.asarray(png), np.full((8, 8), _image_value(tile == tile_b, row)))
    assert sorted(os.listdir(tmp_path / "subjects")) == sorted(f"{i}.png" for i in ids[:TWINS])  # no temporary files left


def test_subject_images_are_named_as_the_uploader_finds_them_through_a_symbolic_link(tmp_path):
    """The uploader joins the manifest's directory and the cell, and the system resolves a ``..`` after a
    link: a manifest in ``home/batches``, a link to ``data/batches``, names ``imgs`` from ``data/``."""
    from skymorph.catalog.pick import name_subject_images

    (tmp_path / "data" / "batches").mkdir(parents=True)
    (tmp_path / "home").mkdir()
    (tmp_path / "home" / "batches").symlink_to(tmp_path / "data" / "batches")
    batch = pa.table({"object_id": [7]})
    named = name_subject_images(batch, str(tmp_path / "home" / "imgs"), str(tmp_path / "home" / "batches" / "b.csv"))
    assert named.column_names == ["image", "object_id"]
    assert os.path.normpath(os.path.join(tmp_path / "home" / "batches", named["image"][0].as_py())) == str(tmp_path / "home" / "imgs" / "7.png")
    on_s3 = name_subject_images(batch, "imgs", "s3://bucket/b.csv")["image"][0].as_py()  # no directory to be relative to
    assert on_s3 == os.path.join(os.path.realpath("imgs"), "7.png")


def test_subject_images_over_zooniverse_s_limit_are_warned_of(overlapping, tmp_path, monkeypatch, capsys):
    url, _, ids = overlapping
    monkeypatch.setattr(importlib.import_module("skymorph.catalog.pick"), "_ZOONIVERSE_MAX_BYTES", 10)  # an 8 x 8 PNG is about 70 bytes
    pick_to(url, 3, str(tmp_path / "b.csv"), images=str(tmp_path / "imgs"), exclude=ids[TWINS:])
    assert "skymorph: warning: 3 subject images exceed the 1 MiB Zooniverse takes (the largest: " in capsys.readouterr().err


def test_a_fits_manifest_that_cannot_name_its_images_writes_none(overlapping, tmp_path):
    url, _, ids = overlapping
    with pytest.raises(InputError, match=r"FITS tables hold ASCII text only, and column 'image' has '.*bilder-ä/"):
        pick_to(url, 3, str(tmp_path / "b.fits"), images=str(tmp_path / "bilder-ä"), exclude=ids[TWINS:])
    assert not (tmp_path / "bilder-ä").exists() and not (tmp_path / "b.fits").exists()


def test_subject_images_on_s3_are_named_by_their_urls(overlapping, tmp_path, s3_bucket):
    """A manifest cannot name an S3 object relative to itself: the column holds each image's URL."""
    from skymorph.storage import read_bytes

    url, tile_b, ids = overlapping
    batch = pick_to(url, 4, str(tmp_path / "batch.csv"), images=f"{s3_bucket}/subjects", exclude=ids[TWINS:])
    for image, object_id, tile, row in zip(*(batch[k].to_pylist() for k in ["image", *KEYS])):
        assert image == f"{s3_bucket}/subjects/{object_id}.png"
        with Image.open(io.BytesIO(read_bytes(image))) as png:
            np.testing.assert_array_equal(np.asarray(png), np.full((8, 8), _image_value(tile == tile_b, row)))


def test_pick_columns_say_what_they_hold_in_a_parquet_export(overlapping, tmp_path):
    url, _, ids = overlapping
    out = str(tmp_path / "batch.parquet")
    pick_to(url, 3, out, images=str(tmp_path / "subjects"), exclude=ids[TWINS:])
    schema = pq.read_schema(out)
    for name, says in (("image", "PNG file"), ("rank", "1 first"), ("image_location", "#images[<row>]"),
                       ("model_sha256", "SHA-256"), ("bald_total", "nats")):
        assert says in schema.field(name).metadata[b"description"].decode()


def test_a_picked_row_missing_from_the_catalog_is_one_line(overlapping):
    url, _, ids = overlapping
    batch = pick(url, 3, exclude=ids[TWINS:])
    rows = batch["row"].to_pylist()[:2] + [10**6]
    batch = batch.set_column(batch.schema.get_field_index("row"), "row", pa.array(rows, pa.int64()))
    with pytest.raises(CatalogError, match=r"row 1000000\) is not in catalog .*; pick from this catalog") as err:
        gallery_figure(batch, url)
    assert "\n" not in str(err.value)


def test_a_tile_written_again_in_another_order_is_one_line(tmp_path):
    """The gallery draws the image at the picked (tile, row) only if that row still holds the picked
    object_id: a tile written again in another order since the catalog was made drew another galaxy."""
    synthetic = write_synthetic_catalog(str(tmp_path / "catalog"), 40, per_tile=40, tile_deg=1.0, order=5, workers=1)
    rows = query(synthetic.url).sort_by("row")
    object_id, ra, dec = (rows[key].to_numpy() for key in ("object_id", "ra", "dec"))
    for order in (np.arange(len(rows)), np.roll(np.arange(len(rows)), 1)):  # as the catalog saw it, then rolled by one
        write_tile(synthetic.tile_urls[0], _images(np.arange(len(rows))[order]), object_id[order], ra[order], dec[order],
                   survey="synthetic", bands=["r"], pixel_scale_arcsec=0.262, stretch="none", resize="none")
        if order[0] == 0:
            batch = pick(synthetic.url, 3)
            plt.close(gallery_figure(batch, synthetic.url))
    row = batch["row"][0].as_py()
    with pytest.raises(CatalogError, match=rf"holds object_id {object_id[row - 1]} at row {row}, where the catalog has "
                                           rf"{object_id[row]}: the tile was written again") as err:
        gallery_figure(batch, synthetic.url)
    assert "\n" not in str(err.value)
