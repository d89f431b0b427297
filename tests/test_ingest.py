"""survey ingest: JPEG/PNG/FITS decoding, failures reported by name, labels and tiles; real GZ2 slice end to end."""

from __future__ import annotations

import contextlib
import io
import json
import os
import re
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from skymorph import cli
from skymorph.errors import InputError
from skymorph.storage import filesystem as storage_filesystem
from skymorph.survey.ingest import decode_image, ingest, parse_label_map
from skymorph.tiles import open_tile, read_tile_list
from skymorph.trainer.labels import labels_schema

GZ2_SPIRALS = Path(__file__).resolve().parents[2] / "shared" / "data" / "gz2_spirals"


pytestmark = pytest.mark.usefixtures("torch_one_thread")


def _run(argv) -> tuple[int, str]:
    err = io.StringIO()
    with contextlib.redirect_stderr(err), contextlib.redirect_stdout(io.StringIO()):
        code = cli.main(argv)
    return code, err.getvalue()


def test_decode_png_mean_and_keep_with_lanczos_resize():
    from PIL import Image

    rgb = np.zeros((40, 40, 3), dtype=np.uint8)
    rgb[..., 0], rgb[..., 1], rgb[..., 2] = 30, 90, 150
    buffer = io.BytesIO()
    Image.fromarray(rgb).save(buffer, format="PNG")
    grey = decode_image(buffer.getvalue(), "x.png", size=20, bands="mean")
    assert grey.shape == (1, 20, 20) and np.all(grey == 90)
    keep = decode_image(buffer.getvalue(), "x.png", size=20, bands="keep")
    assert keep.shape == (3, 20, 20) and keep[:, 5, 5].tolist() == [30, 90, 150]

    # a checkerboard, which every filter resamples differently: Lanczos's values, to rounding
    board = (np.indices((40, 40)).sum(axis=0) % 2 * 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(board).save(buffer, format="PNG")
    expected = np.asarray(Image.fromarray(board.astype(np.float32), mode="F").resize((15, 15), Image.LANCZOS))
    got = decode_image(buffer.getvalue(), "x.png", size=15, bands="mean")[0].astype(float)
    assert np.abs(got - np.clip(expected, 0, 255)).max() <= 0.5 + 1e-6
    nearest = np.asarray(Image.fromarray(board).resize((15, 15), Image.NEAREST), dtype=float)
    assert np.abs(got - nearest).max() > 10


def test_decode_fits_applies_asinh_over_percentile_interval():
    from astropy.io import fits
    from astropy.visualization import AsinhStretch, PercentileInterval

    flux = np.random.default_rng(0).gamma(2.0, 10.0, size=(2, 16, 16))
    buffer = io.BytesIO()
    fits.PrimaryHDU(flux).writeto(buffer)
    got = decode_image(buffer.getvalue(), "x.fits", size=16, bands="mean")
    expected = (AsinhStretch(0.1) + PercentileInterval(99.5))(flux.mean(axis=0)[::-1]) * 255  # top row first
    assert got.shape == (1, 16, 16)
    assert np.abs(got[0].astype(float) - expected).max() <= 0.5 + 1e-6


@pytest.mark.parametrize("packing", ["RICE_1", "GZIP_2", "HCOMPRESS_1", "gzip", "no .fits name"])
def test_fits_is_known_by_its_content_compressed_or_gzipped(packing):
    """Pillow read a tile-compressed .fits.fz as an 8-bit image of its compressed bytes (correlation 0.01 with
    the picture), and astropy does not decompress a .fits.gz given as bytes: every one was skipped."""
    import gzip

    from astropy.io import fits

    yy, xx = np.mgrid[:40, :40]
    flux = (1000 * np.exp(-((xx - 17) ** 2 + (yy - 22) ** 2) / 30.0)).astype(np.int32) + 1  # integers: compressed losslessly
    plain = io.BytesIO()
    fits.PrimaryHDU(flux).writeto(plain)
    expected = decode_image(plain.getvalue(), "x.fits", size=16, bands="mean")
    packed = io.BytesIO()
    if packing == "gzip":
        data, name = gzip.compress(plain.getvalue()), "x.fits.gz"
    elif packing == "no .fits name":
        data, name = plain.getvalue(), "x.png"
    else:
        fits.HDUList([fits.PrimaryHDU(), fits.CompImageHDU(flux, compression_type=packing)]).writeto(packed)
        data, name = packed.getvalue(), "x.fits.fz"
    np.testing.assert_array_equal(decode_image(data, name, size=16, bands="mean"), expected)


def test_a_fits_cube_s_bands_share_one_interval_so_colours_are_kept():
    """Each band was stretched over its own percentile interval: bands of flux f, 2f and 4f came out equal."""
    from astropy.io import fits
    from astropy.visualization import AsinhStretch, PercentileInterval

    flux = np.random.default_rng(0).gamma(2.0, 10.0, size=(16, 16))
    cube = np.stack([flux, 2 * flux, 4 * flux])
    buffer = io.BytesIO()
    fits.PrimaryHDU(cube).writeto(buffer)
    got = decode_image(buffer.getvalue(), "x.fits", size=16, bands="keep")
    low, high = np.percentile(cube, [0.25, 99.75])  # PercentileInterval(99.5) over all three bands
    expected = AsinhStretch(0.1)(np.clip((cube[:, ::-1] - low) / (high - low), 0, 1)) * 255
    assert np.abs(got.astype(float) - expected).max() <= 0.5 + 1e-6
    assert got[0].mean() < got[1].mean() < got[2].mean()
    assert PercentileInterval(99.5).get_limits(cube) == pytest.approx((low, high))


def test_a_fits_cutout_and_a_png_of_it_give_the_same_picture():
    """FITS rows run bottom to top, PNG rows top to bottom: the FITS image was kept mirrored, which reverses
    a spiral's winding, so a model trained on cutouts of one kind saw mirror images of the other."""
    from astropy.io import fits
    from PIL import Image

    picture = np.zeros((16, 16), np.uint8)  # as displayed: a bright square top left, a fainter one lower right
    picture[1:4, 1:4], picture[11:14, 9:12] = 200, 100
    png, fits_file = io.BytesIO(), io.BytesIO()
    Image.fromarray(picture).save(png, format="PNG")
    fits.PrimaryHDU(picture[::-1].astype(np.float32)).writeto(fits_file)  # how a FITS cutout of it stores it
    from_png = decode_image(png.getvalue(), "x.png", size=16, bands="mean")[0]
    from_fits = decode_image(fits_file.getvalue(), "x.fits", size=16, bands="mean", stretch="linear")[0]
    assert np.unravel_index(from_png.argmax(), from_png.shape) == np.unravel_index(from_fits.argmax(), from_fits.shape) == (1, 1)
    assert np.array_equal(from_fits > 0, from_png > 0)


@pytest.mark.parametrize("dtype, fmt", [(np.uint16, "PNG"), (np.uint16, "TIFF"), (np.int32, "TIFF"), (np.float32, "TIFF")])
def test_decode_images_of_more_than_8_bits_stretches_them_as_fits(dtype, fmt):
    """16-bit PNG and TIFF went through PIL's convert("L"), which clips at 255: 99.6% of a 0-65535 ramp was white."""
    from astropy.visualization import AsinhStretch, PercentileInterval
    from PIL import Image

    flux = np.random.default_rng(0).gamma(2.0, 3000.0, size=(16, 16)).clip(0, 65535).astype(dtype)
    buffer = io.BytesIO()
    Image.fromarray(flux).save(buffer, format=fmt)
    got = decode_image(buffer.getvalue(), f"x.{fmt.lower()}", size=16, bands="keep")
    expected = (AsinhStretch(0.1) + PercentileInterval(99.5))(flux.astype(float)) * 255
    assert got.shape == (1, 16, 16)
    assert np.abs(got[0].astype(float) - expected).max() <= 0.5 + 1e-6
    assert (got == 255).mean() < 0.05


def _png_16bit_rgb(pixels: np.ndarray) -> bytes:
    """A 16-bit colour PNG (Pillow cannot write one): signature, IHDR, one IDAT, IEND."""
    import struct
    import zlib

    h, w, _ = pixels.shape
    raw = b"".join(b"\x00" + pixels[y].astype(">u2").tobytes() for y in range(h))

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    header = struct.pack(">IIBBBBB", w, h, 16, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(raw)) + chunk(b"IEND", b"")


def test_16_bit_colour_is_refused_and_nan_is_blank():
    """Pillow keeps the high byte of 16-bit colour: values up to 1321 came out at most 5. A NaN pixel of a
    float TIFF was cast to uint8 (FITS NaN was already blank); an infinite one overflowed the stretch (a
    RuntimeWarning on stderr) and is as blank as NaN."""
    import warnings

    from PIL import Image

    with pytest.raises(ValueError, match=r"16 bits per band \(RGB;16B\), which Pillow reads as their high bytes only"):
        decode_image(_png_16bit_rgb(np.full((8, 8, 3), 1321, np.uint16)), "x.png", size=8, bands="keep")
    flux = np.random.default_rng(0).gamma(2.0, 3.0, size=(16, 16)).astype(np.float32)
    blank = flux.copy()
    blank[:4, :4] = np.nan
    with_zero = flux.copy()
    with_zero[:4, :4] = 0
    infinite = flux.copy()
    infinite[:4, :4] = np.where(np.arange(16).reshape(4, 4) % 2, np.inf, -np.inf)
    decoded = []
    for values in (blank, with_zero, infinite):
        buffer = io.BytesIO()
        Image.fromarray(values).save(buffer, format="TIFF")
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            decoded.append(decode_image(buffer.getvalue(), "x.tif", size=16, bands="keep"))
    np.testing.assert_array_equal(decoded[0], decoded[1])
    np.testing.assert_array_equal(decoded[2], decoded[1])


def test_blank_fits_cutouts_are_skipped_and_a_cube_s_planes_are_not_called_rgb(tmp_path):
    """A FITS image of NaNs or of one value became an all-black galaxy that was trained on; a 3-plane FITS cube
    kept with --bands keep was recorded as bands r, g, b, whatever its planes held."""
    from astropy.io import fits

    cube = np.random.default_rng(0).gamma(2.0, 10.0, size=(3, 24, 24))
    gap = cube.copy()
    gap[1] = np.nan  # a band missing: it was ingested black
    for name, data in (("nan", np.full((24, 24), np.nan)), ("flat", np.full((24, 24), 7.0)), ("cube", cube), ("cube2", cube[::-1]),
                       ("gap", gap)):
        fits.PrimaryHDU(data).writeto(tmp_path / f"{name}.fits")
    (tmp_path / "c.csv").write_text("object_id,file\n1,nan.fits\n2,flat.fits\n3,cube.fits\n4,cube2.fits\n5,gap.fits\n")
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "c.csv"), "--out", str(tmp_path / "o"), "--size", "16",
                      "--bands", "keep"])
    assert code == 1
    warnings = [line for line in re.split(r"[\r\n]", err) if line.startswith("skymorph: warning:")]
    assert len(warnings) == 3
    assert warnings[0].endswith("nan.fits (object_id 1): no finite pixel (all NaN or infinite): a blank cutout")
    assert warnings[1].endswith("flat.fits (object_id 2): every pixel is 7: a blank cutout")
    assert warnings[2].endswith("gap.fits (object_id 5): band 1: no finite pixel (all NaN or infinite): a blank cutout")
    [url] = read_tile_list(str(tmp_path / "o" / "tiles.txt"))
    tile = open_tile(url)
    assert tile.read_coords()[0].tolist() == [3, 4] and tile.attrs["bands"] == ["band0", "band1", "band2"]
    # averaged, the blank band is left out of the mean instead of darkening it: the two other bands' image
    gap_mean = decode_image((tmp_path / "gap.fits").read_bytes(), "gap.fits", size=16, bands="mean")
    others = io.BytesIO()
    fits.PrimaryHDU(cube[[0, 2]]).writeto(others)
    np.testing.assert_array_equal(gap_mean, decode_image(others.getvalue(), "x.fits", size=16, bands="mean"))


def test_a_fits_image_is_the_first_hdu_holding_one_without_its_axes_of_length_1():
    """Only the first HDU with data was looked at, and a (1, 1, H, W) cube was refused: good cutouts were
    skipped as having "no 2-D or 3-D image in any HDU"."""
    from astropy.io import fits

    flux = np.random.default_rng(1).gamma(2.0, 10.0, size=(16, 16))
    expected = decode_image(_fits_bytes(fits.PrimaryHDU(flux)), "x.fits", size=16, bands="mean")
    after_a_spectrum = fits.HDUList([fits.PrimaryHDU(np.arange(5.0)), fits.ImageHDU(flux)])
    for hdus in (after_a_spectrum, fits.PrimaryHDU(flux[None, None])):
        np.testing.assert_array_equal(decode_image(_fits_bytes(hdus), "x.fits", size=16, bands="mean"), expected)
    table = fits.HDUList([fits.PrimaryHDU(), fits.BinTableHDU.from_columns([fits.Column("a", "E", array=[1.0])])])
    with pytest.raises(InputError, match=r"^no 2-D or 3-D image in any HDU \(images found: none\)$"):
        decode_image(_fits_bytes(table), "x.fits", size=16, bands="mean")
    with pytest.raises(InputError, match=r"^no 2-D or 3-D image in any HDU \(images found: 1-D\)$"):
        decode_image(_fits_bytes(fits.PrimaryHDU(np.arange(5.0))), "x.fits", size=16, bands="mean")


def _fits_bytes(hdus) -> bytes:
    buffer = io.BytesIO()
    hdus.writeto(buffer)
    return buffer.getvalue()


@pytest.mark.parametrize("arguments, message", [
    (dict(size="64"), "size (--size) must be an integer >= 8, got '64'"),
    (dict(size=4), "size (--size) must be an integer >= 8, got 4"),
    (dict(size=2048), "size (--size) must be at most 1024, got 2048; galaxy models train at 64 to 300"),  # was out of memory
    (dict(tile_size=0), "tile_size (--tile-size) must be an integer >= 1, got 0"),
    (dict(chunk_size=0), "chunk_size (--chunk-size) must be an integer >= 1, got 0"),
    (dict(workers=-1), "workers (--workers) must be an integer >= 1, got -1"),
    (dict(label_map={"s": "yes"}), "--label-map maps labels to the answers of --label-question; add --label-question"),
])
def test_bad_arguments_are_refused_before_out_is_touched(tmp_path, arguments, message):
    _one_png(tmp_path)
    (tmp_path / "cat.csv").write_text("object_id,file\n1,a.png\n")
    with pytest.raises(InputError, match=re.escape(message)):
        ingest(str(tmp_path / "cat.csv"), str(tmp_path / "o"), **{"size": 16, **arguments}, progress=False)
    assert not (tmp_path / "o").exists()


def test_tiles_record_the_stretch_of_their_images(tmp_path):
    """Tiles of 16-bit images said "none (8-bit input)", though their pixels were stretched."""
    from PIL import Image

    rows = []
    for i, dtype in enumerate((np.uint16, np.uint8)):
        Image.fromarray((np.random.default_rng(i).random((24, 24)) * 200).astype(dtype)).save(tmp_path / f"{i}.png")
        rows.append(f"{i}.png,{i + 1}")
    for kinds in ((0,), (1,), (0, 1)):
        (tmp_path / "c.csv").write_text("file,object_id\n" + "\n".join(rows[k] for k in kinds) + "\n")
        code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "c.csv"), "--size", "16", "--out",
                          str(tmp_path / f"out{len(kinds)}{kinds[0]}"), "--overwrite"])
        assert code == 0, err
        [url] = read_tile_list(str(tmp_path / f"out{len(kinds)}{kinds[0]}" / "tiles.txt"))
        stretch = open_tile(url).attrs["stretch"]
        if kinds == (1,):
            assert stretch == "none (8-bit input)"
        else:
            assert stretch["name"] == "asinh" and ("applies_to" in stretch) == (kinds == (0, 1))


def test_cutouts_without_a_label_are_ingested_as_galaxies_to_classify(tmp_path, capsys):
    """A catalog labelled in part said "catalog label nan has no answer in --label-map ...", then was refused:
    a survey's cutouts, some labelled, is what the loop starts from. Unlabelled cutouts get no votes (not a
    vote for "no"), and train leaves them out."""
    from PIL import Image

    from skymorph.schema import get_schema
    from skymorph.tiles import read_tiles
    from skymorph.trainer.data import load_images
    from skymorph.trainer.labels import load_labels

    for i in range(3):
        Image.fromarray(np.full((24, 24), 40 * i + 10, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    (tmp_path / "cat.csv").write_text("object_id,file,label\n1,0.png,spiral\n2,1.png,\n3,2.png,non_spiral\n")
    assert cli.main(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o"), "--size", "16",
                     "--label-question", "has_spiral_arms", "--label-map", "spiral=yes,non_spiral=no"]) == 0
    assert capsys.readouterr().out.startswith(f"ingested 3 galaxies into 1 tile(s) at {tmp_path / 'o'}; without a label (no "
                                              "votes: train leaves them out): 1")
    table = pd.read_parquet(tmp_path / "o" / "labels.parquet")
    assert table.has_spiral_arms_yes.astype(object).fillna(-1).tolist() == [1, -1, 0]
    assert table.has_spiral_arms_no.astype(object).fillna(-1).tolist() == [0, -1, 1]
    assert pq.read_schema(tmp_path / "o" / "labels.parquet").field("has_spiral_arms_yes").type == pa.int64()  # counts, not floats
    labels = load_labels(str(tmp_path / "o" / "labels.parquet"), get_schema("gz2"))
    assert labels.object_id.tolist() == [1, 3] and "1 row(s) hold no votes in any question (first: object_id 2)" in capsys.readouterr().err
    images, _ = load_images(read_tiles(str(tmp_path / "o" / "tiles.txt")), labels, progress=False)
    assert images[:, 0, 8, 8].tolist() == [10, 90]
    # 0/1 labels with an empty cell: pandas reads them as floats, which no --label-map named ('1.0')
    (tmp_path / "numbers.csv").write_text("object_id,file,label\n1,0.png,1\n2,1.png,\n3,2.png,0\n")
    assert cli.main(["survey", "ingest", "--catalog", str(tmp_path / "numbers.csv"), "--out", str(tmp_path / "n"), "--size", "16",
                     "--label-question", "has_spiral_arms", "--label-map", "1=yes,0=no"]) == 0
    table = pd.read_parquet(tmp_path / "n" / "labels.parquet")
    assert table.has_spiral_arms_yes.astype(object).fillna(-1).tolist() == [1, -1, 0]
    (tmp_path / "full.csv").write_text("object_id,file,label\n1,0.png,1\n2,1.png,1\n3,2.png,0\n")  # every label: plain counts
    assert cli.main(["survey", "ingest", "--catalog", str(tmp_path / "full.csv"), "--out", str(tmp_path / "f"), "--size", "16",
                     "--label-question", "has_spiral_arms", "--label-map", "1=yes,0=no"]) == 0
    column = pq.read_table(tmp_path / "f" / "labels.parquet").column("has_spiral_arms_yes")
    assert column.type == pa.int64() and column.null_count == 0 and column.to_pylist() == [1, 1, 0]


def test_parse_label_map():
    assert parse_label_map("spiral=yes, non_spiral=no") == {"spiral": "yes", "non_spiral": "no"}
    with pytest.raises(ValueError, match="LABEL=ANSWER"):
        parse_label_map("spiral")


def test_ingest_reports_unreadable_files_and_writes_placeholder_positions(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    for i in range(3):
        Image.fromarray(np.full((24, 24), 40 * i, dtype=np.uint8)).save(tmp_path / "img" / f"{i}.png")
    (tmp_path / "img" / "bad.jpg").write_bytes(b"\xff\xd8 definitely not a jpeg")
    (tmp_path / "cat.csv").write_text(
        "object_id,file,label,split\n1,img/0.png,yes,train\n2,img/1.png,no,train\n3,img/bad.jpg,yes,validation\n"
        "4,img/missing.png,no,validation\n5,img/2.png,no,validation\n6,foo://img/3.png,no,train\n"
    )
    out = tmp_path / "out"
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(out), "--size", "16",
                      "--label-question", "has_spiral_arms"])
    assert code == 1  # output written, but not every file made it: say so in the exit code
    warnings = [line for line in re.split(r"[\r\n]", err) if line.startswith("skymorph: warning:")]
    assert len(warnings) == 3 and "img/bad.jpg" in warnings[0] and "img/missing.png" in warnings[1]
    assert warnings[0].endswith("img/bad.jpg (object_id 3): UnidentifiedImageError: cannot identify image file")  # no buffer address
    assert warnings[2].endswith("foo://img/3.png (object_id 6): cannot open 'foo://img/3.png': Protocol not known: foo")
    failures = pd.read_csv(out / "ingest_failures.csv")
    assert failures["object_id"].tolist() == [3, 4, 6]  # a read refused otherwise than by the OS: skipped too

    labels = pq.read_table(out / "labels.parquet").to_pandas()
    assert labels_schema(str(out / "labels.parquet")).name == "gz2"  # the tree its votes are of, for `train`
    assert labels["object_id"].tolist() == [1, 2, 5]
    assert labels["has_spiral_arms_yes"].tolist() == [1, 0, 0] and labels["has_spiral_arms_no"].tolist() == [0, 1, 1]
    assert labels["split"].tolist() == ["train", "train", "validation"] and labels["position_is_placeholder"].all()
    tile = open_tile(read_tile_list(str(out / "tiles.txt"))[0])
    object_id, ra, dec = tile.read_coords()
    assert object_id.tolist() == [1, 2, 5] and np.all(ra == 0) and np.all(dec == 0)
    assert tile.attrs["position_is_placeholder"] is True
    images = tile.read_images(0, 3)
    assert images.shape == (3, 1, 16, 16) and images[1].min() == 40 and images[2].max() == 80
    assert labels["tile"].tolist() == [tile.name] * 3 and labels["row"].tolist() == [0, 1, 2]

    # Again, without the bad rows: refused, then replaced, with no failures table left from the first run.
    (tmp_path / "good.csv").write_text("object_id,file\n1,img/0.png\n5,img/2.png\n")
    again = ["survey", "ingest", "--catalog", str(tmp_path / "good.csv"), "--out", str(out), "--size", "16"]
    code, err = _run(again)
    assert code == 2 and err.strip().splitlines() == [
        f"skymorph: error: --out {str(out)!r} already holds a survey (tiles.txt, labels.parquet, ingest_failures.csv, "
        "1 tile store(s) in tiles/); "
        "choose another --out or pass --overwrite to replace it"]
    # --overwrite, but no cutout readable, a split train would refuse, or a column labels.parquet cannot hold:
    # the survey there stays as it was (it had been deleted before the cutouts were read, or before the
    # column was converted: a traceback, and tiles of the new galaxies under the old survey's name)
    (tmp_path / "bad.csv").write_text("object_id,file\n3,img/bad.jpg\n4,img/missing.png\n")
    (tmp_path / "bogus.csv").write_text("object_id,file,split\n1,img/0.png,train\n5,img/2.png,Validaton\n")
    (tmp_path / "bigint.csv").write_text("object_id,file,ls_id\n1,img/0.png,123456789012345678901\n")
    for catalog, message in (("bad.csv", "none of the 2 cutouts of"), ("bogus.csv", "column 'split' holds 'Validaton' (1 row(s)), which is not"),
                             ("bigint.csv", f"column 'ls_id' of {str(tmp_path / 'bigint.csv')!r} cannot be stored in labels.parquet (")):
        code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / catalog), "--out", str(out), "--size", "16", "--overwrite"])
        assert code == 2 and message in err and len(err.strip().splitlines()) == (3 if catalog == "bad.csv" else 1), err
        assert sorted(p.name for p in out.iterdir()) == ["ingest_failures.csv", "labels.parquet", "tiles", "tiles.txt"]
        assert pq.read_table(out / "labels.parquet").column("object_id").to_pylist() == [1, 2, 5]
    assert _run([*again, "--overwrite"])[0] == 0
    assert sorted(p.name for p in out.iterdir()) == ["labels.parquet", "tiles", "tiles.txt"]
    assert pq.read_table(out / "labels.parquet").column("object_id").to_pylist() == [1, 5]



def test_an_out_holding_the_inputs_is_refused_and_a_survey_s_other_files_stay(tmp_path):
    """--overwrite used to delete all of --out/tiles/, the cutouts being ingested included; then a directory
    of other files (here the cutouts and their CSV) took a survey mixed in. Now it is refused, --overwrite
    or not, and touched not; files put beside a survey later stay when --overwrite replaces it."""
    from PIL import Image

    (tmp_path / "tiles").mkdir()
    for i in range(2):
        Image.fromarray(np.full((24, 24), 50 * (i + 1), dtype=np.uint8)).save(tmp_path / "tiles" / f"{i}.png")
    (tmp_path / "cat.csv").write_text("object_id,file\n1,tiles/0.png\n2,tiles/1.png\n")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    ingest_here = ["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path), "--size", "16"]
    for extra in ([], ["--overwrite"]):
        code, err = _run([*ingest_here, *extra])
        assert code == 2 and err.strip().splitlines() == [
            f"skymorph: error: --out {str(tmp_path)!r} holds 'cat.csv', 'tiles/0.png', 'tiles/1.png', which a survey "
            "does not (it has no tiles.txt or tiles/*.zarr); give a new or empty --out (--overwrite replaces only a survey, "
            "never other files)"]
        assert sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before

    out = tmp_path / "out"
    ingest_out = ["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(out), "--size", "16"]
    assert _run(ingest_out)[0] == 0
    (out / "tiles" / "mine.png").write_bytes((tmp_path / "tiles" / "0.png").read_bytes())
    (out / "notes.txt").write_text("mine")
    assert _run([*ingest_out, "--overwrite"])[0] == 0
    assert sorted(p.name for p in (out / "tiles").iterdir()) == ["ingest_00000.zarr", "mine.png"]
    assert (out / "notes.txt").read_text() == "mine"
    assert open_tile(read_tile_list(str(out / "tiles.txt"))[0]).read_coords()[0].tolist() == [1, 2]


@pytest.mark.parametrize("where", ["local", "s3"])
def test_an_out_holding_other_files_is_refused_and_an_empty_one_taken(tmp_path, request, where):
    """A survey written into a skymorph catalog made `skymorph run` refuse the catalog ever after."""
    _one_png(tmp_path)
    (tmp_path / "cat.csv").write_text("object_id,file\n1,a.png\n")
    if where == "s3":
        out = f"{request.getfixturevalue('s3_bucket')}/catalog"
    else:
        out = str(tmp_path / "catalog")
    fs, root = storage_filesystem(out)
    catalog = {"hats.properties": b"", "partition_info.csv": b"", "dataset/Norder=0/Dir=0/Npix=1/part-x.parquet": b"",
               "_skymorph/manifest.json": b"{}"}
    for name, data in catalog.items():
        if where == "local":
            fs.makedirs(f"{root}/{name}".rsplit("/", 1)[0], exist_ok=True)
        fs.pipe(f"{root}/{name}", data)
    held = sorted(fs.find(root))
    ingest_to = ["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", out, "--size", "16"]
    for extra in ([], ["--overwrite"]):
        code, err = _run([*ingest_to, *extra])
        assert code == 2 and err.strip().splitlines() == [
            f"skymorph: error: --out {out!r} holds '_skymorph', 'dataset', 'hats.properties' and 1 more, which a survey "
            "does not (it has no tiles.txt or tiles/*.zarr); give a new or empty --out (--overwrite replaces only a survey, "
            "never other files)"]
        fs.invalidate_cache()
        assert sorted(fs.find(root)) == held

    for name in catalog:  # emptied (a local directory stays, empty): taken
        fs.rm(f"{root}/{name}")
    if where == "local":
        for name in ("dataset/Norder=0/Dir=0/Npix=1", "dataset/Norder=0/Dir=0", "dataset/Norder=0", "dataset", "_skymorph"):
            (tmp_path / "catalog" / name).rmdir()
        assert list((tmp_path / "catalog").iterdir()) == []
    assert _run(ingest_to)[0] == 0
    assert open_tile(read_tile_list(f"{out}/tiles.txt")[0]).read_coords()[0].tolist() == [1]


_HOLD_OUT = """
import sys, time
from skymorph.survey._output import writing_survey
with writing_survey(sys.argv[1], False, None, "survey synth"):
    print("holding", flush=True)
    time.sleep(300)
"""


def test_a_second_writer_is_refused_while_the_first_lives_and_takes_over_once_it_is_killed(tmp_path):
    """Two ingests into one new --out both found it empty and wrote tile stores of the same names: a store
    held rows of both, and labels.parquet described one of them."""
    _one_png(tmp_path)
    (tmp_path / "cat.csv").write_text("object_id,file\n1,a.png\n")
    out = str(tmp_path / "out")
    ingest_to = ["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", out, "--size", "16"]
    first = subprocess.Popen([sys.executable, "-c", _HOLD_OUT, out], stdout=subprocess.PIPE, text=True)
    try:
        assert first.stdout.readline() == "holding\n"
        code, err = _run(ingest_to)
        assert code == 2 and re.fullmatch(
            rf"skymorph: error: {re.escape(repr(out))} is being written by another `skymorph survey synth` \(host "
            rf"{re.escape(socket.gethostname())}, pid {first.pid}, started .* UTC, heartbeat \d+ s ago\); wait for it to "
            rf"finish, or if it is dead, remove {re.escape(out)}/\.skymorph-writer\.lock \(it goes stale 300 s after the "
            r"last heartbeat\)\n", err), err
        assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [".skymorph-writer.lock"]  # nothing written
    finally:
        first.kill()
        first.wait()
    # a killed writer's lock names a pid gone from this host: taken over, and removed once the survey is written
    assert _run(ingest_to)[0] == 0
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == ["labels.parquet", "tiles", "tiles.txt"]

    # the directories the lock made for an --out are removed when the ingest fails
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "no.csv"), "--out", str(tmp_path / "a" / "b" / "out")])
    assert code == 2 and "no.csv" in err
    assert not (tmp_path / "a").exists()


def _grey_images(directory: Path, n: int) -> None:
    """``n`` 8 x 8 grey PNGs ``{i}.png`` of value ``i`` (kept as they are at --size 8)."""
    from PIL import Image

    directory.mkdir(exist_ok=True)
    for i in range(n):
        Image.fromarray(np.full((8, 8), i, dtype=np.uint8)).save(directory / f"{i}.png")


def _healpix(ra, dec, order: int) -> np.ndarray:
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from cdshealpix import nested

    return nested.lonlat_to_healpix(Longitude(ra, unit=u.deg), Latitude(dec, unit=u.deg), order).astype(np.int64)


def test_tiles_of_a_sky_wide_catalog_are_compact_patches_of_sky(tmp_path):
    """Tiles cut in catalog order each spanned the whole sky, and `skymorph run` writes one part per tile and
    partition it touches. In nested HEALPix order each tile is a run of the space-filling curve, so it
    touches few partitions, and tiles follow positions, not catalog rows."""
    from skymorph.survey import ingest

    n, per_tile = 200, 25
    _grey_images(tmp_path / "img", n)
    rng = np.random.default_rng(7)
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))  # uniform on the sphere
    ra[150], dec[150] = ra[5], dec[5]  # one position twice: catalog order between them
    table = pd.DataFrame({"object_id": np.arange(n) + 1000, "file": [f"img/{i}.png" for i in range(n)], "ra": ra, "dec": dec})
    table.to_csv(tmp_path / "cat.csv", index=False)
    summary = ingest(str(tmp_path / "cat.csv"), str(tmp_path / "o"), 8, tile_size=per_tile, progress=False)
    assert summary.n_galaxies == n and len(summary.tiles) == n // per_tile and not summary.position_is_placeholder
    assert "placeholder" not in str(summary)
    tiles = [open_tile(url) for url in summary.tiles]
    coords = [tile.read_coords() for tile in tiles]
    fine = [_healpix(r, d, 29) for _, r, d in coords]
    # runs of the curve, one after the other: no two tiles' order-29 ranges interleave
    assert all(np.all(np.diff(h) >= 0) for h in fine) and all(a[-1] <= b[0] for a, b in zip(fine, fine[1:]))
    # so a run at catalog order 0 writes at most one part per tile plus one per boundary between its 12 pixels
    # (18 here; 88 in catalog order)
    parts = sum(len(np.unique(_healpix(r, d, 0))) for _, r, d in coords)
    assert parts <= len(tiles) + 11
    ids = np.concatenate([c[0] for c in coords])
    assert sorted(ids) == list(range(1000, 1000 + n))
    assert ids.tolist().index(1005) == ids.tolist().index(1150) - 1  # equal keys keep catalog order

    # labels keep catalog order; tile and row point at each object's own row and image
    labels = pq.read_table(tmp_path / "o" / "labels.parquet").to_pandas()
    assert labels["object_id"].tolist() == list(range(1000, 1000 + n))
    by_name = {tile.name: tile for tile in tiles}
    for oid, name, row in labels[["object_id", "tile", "row"]].itertuples(index=False):
        assert by_name[name].read_coords(row, row + 1)[0][0] == oid
        assert np.all(by_name[name].read_images(row, row + 1) == oid - 1000)

    # the same tiles from the catalog in another order: they follow the sky (the tie flips, as its rows did)
    table.iloc[::-1].to_csv(tmp_path / "reversed.csv", index=False)
    again = ingest(str(tmp_path / "reversed.csv"), str(tmp_path / "r"), 8, tile_size=per_tile, progress=False)
    swapped = {1005: 1150, 1150: 1005}
    assert [[swapped.get(i, i) for i in open_tile(url).read_coords()[0].tolist()] for url in again.tiles] == \
        [c[0].tolist() for c in coords]


def test_placeholder_positions_keep_catalog_order_and_the_summary_says_so(tmp_path):
    from skymorph.survey import ingest

    _grey_images(tmp_path / "img", 7)
    order = [3, 0, 6, 1, 5, 2, 4]
    (tmp_path / "cat.csv").write_text("object_id,file\n" + "".join(f"{i + 10},img/{i}.png\n" for i in order))
    summary = ingest(str(tmp_path / "cat.csv"), str(tmp_path / "o"), 8, tile_size=3, progress=False)
    assert [open_tile(url).read_coords()[0].tolist() for url in summary.tiles] == [[13, 10, 16], [11, 15, 12], [14]]
    assert [open_tile(url).chunk_size for url in summary.tiles] == [3, 3, 1]  # one chunk each: 256 by default
    assert summary.position_is_placeholder
    assert str(summary) == (f"ingested 7 galaxies into 3 tile(s) at {tmp_path / 'o'}; positions are placeholders "
                            "(ra = dec = 0): the catalog has no ra/dec columns")


def test_a_given_pixel_scale_groups_by_side_then_sky_order(tmp_path):
    from PIL import Image

    from skymorph.survey import ingest

    rng = np.random.default_rng(3)
    n = 40
    side = np.where(rng.random(n) < 0.5, 8, 16)
    for i in range(n):
        Image.fromarray(np.full((side[i], side[i]), i, dtype=np.uint8)).save(tmp_path / f"{i}.png")
    ra, dec = rng.uniform(0, 360, n), np.degrees(np.arcsin(rng.uniform(-1, 1, n)))
    pd.DataFrame({"object_id": np.arange(n) + 1, "file": [f"{i}.png" for i in range(n)], "ra": ra, "dec": dec}).to_csv(
        tmp_path / "cat.csv", index=False)
    summary = ingest(str(tmp_path / "cat.csv"), str(tmp_path / "o"), 8, tile_size=6, pixel_scale_arcsec=0.5, progress=False)
    written = [open_tile(url).read_coords() for url in summary.tiles]
    sides = [np.unique(side[oid - 1]) for oid, _, _ in written]
    assert all(len(s) == 1 for s in sides)
    for wanted in (8, 16):  # within a side: one run of the curve, cut into tiles, each full but the last
        keys = [_healpix(r, d, 29) for (oid, r, d), s in zip(written, sides) if s[0] == wanted]
        assert [len(k) for k in keys] == [6] * (len(keys) - 1) + [np.sum(side == wanted) - 6 * (len(keys) - 1)]
        assert np.all(np.diff(np.concatenate(keys)) >= 0)


def test_ingest_from_and_to_s3(s3_bucket):
    """Catalog and cutouts on S3 (relative and absolute URL entries), tiles, labels and failures written to S3."""
    from PIL import Image

    from skymorph.storage import filesystem

    fs, root = filesystem(s3_bucket)
    for i in range(2):
        buffer = io.BytesIO()
        Image.fromarray(np.full((24, 24, 3), 50 * (i + 1), dtype=np.uint8)).save(buffer, format="PNG")
        fs.pipe(f"{root}/cutouts/{i}.png", buffer.getvalue())
    fs.pipe(f"{root}/cutouts/cat.csv", f"object_id,file\n1,0.png\n2,{s3_bucket}/cutouts/1.png\n3,gone.png\n".encode())
    out = f"{s3_bucket}/ingested"
    code, err = _run(["survey", "ingest", "--catalog", f"{s3_bucket}/cutouts/cat.csv", "--out", out, "--size", "16", "--bands", "keep",
                      "--chunk-size", "1"])
    assert code == 1 and "gone.png" in err  # one cutout missing: reported, the rest written
    tile = open_tile(read_tile_list(f"{out}/tiles.txt")[0])
    assert tile.url.startswith(s3_bucket) and tile.read_coords()[0].tolist() == [1, 2] and tile.chunk_size == 1
    images = tile.read_images(0, 2)
    assert images.shape == (2, 3, 16, 16) and images[0].min() == images[0].max() == 50 and images[1].min() == 100
    assert pq.read_table(fs.open(f"{root}/ingested/labels.parquet")).column("object_id").to_pylist() == [1, 2]
    failures = pd.read_csv(io.BytesIO(fs.cat(f"{root}/ingested/ingest_failures.csv")))
    assert failures[["file", "object_id"]].values.tolist() == [["gone.png", 3]]

def test_ingest_bad_catalogs_are_one_line_errors(tmp_path):
    (tmp_path / "cat.csv").write_text("id,file\n1,a.png\n")
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o")])
    assert code == 2 and "no 'object_id' column" in err and "--id-column" in err
    (tmp_path / "cat.csv").write_text("object_id,file,label\n1,a.png,spiral\n")
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o"),
                      "--label-question", "has_spiral_arms", "--label-map", "spiral=yess"])
    assert code == 2 and "lacks" in err and err.count("\n") == 1
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o"),
                      "--label-question", "has_spiral_arms"])  # said: no answer in --label-map {'yes': 'yes', 'no': 'no'}
    assert code == 2 and err == ("skymorph: error: catalog label 'spiral' is not an answer of question 'has_spiral_arms' (yes, no); "
                                 "map the labels to answers with --label-map, e.g. --label-map spiral=yes\n")
    (tmp_path / "cat.csv").write_text("object_id,file,ra,dec\n1,a.png,abc,3\n")
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o")])
    assert code == 2 and "ra/dec missing or not finite for object_id 1" in err and err.count("\n") == 1
    (tmp_path / "cat.csv").write_text("object_id,file\nJ1234,a.png\n")  # pandas' text dtype: a TypeError traceback
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o")])
    assert code == 2 and "'object_id' must be integers in every row" in err and err.count("\n") == 1
    (tmp_path / "cat.csv").write_text("object_id,file,ra,dec\n1,a.png,400,3\n")  # was stored as 400
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o")])
    assert code == 2 and "ra 400 of object_id 1 is outside [0, 360] (or [-180, 180]) degrees" in err and err.count("\n") == 1
    (tmp_path / "cat.csv").write_text("object_id,file\n")  # said: 'object_id' must be integers in every row
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o")])
    assert code == 2 and "lists no cutouts, only a header; give one row per cutout" in err and err.count("\n") == 1


def test_failures_table_round_trips_names_with_quotes_commas_and_newlines(tmp_path):
    import csv

    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((24, 24), 40, dtype=np.uint8)).save(tmp_path / "img" / "0.png")
    odd = ['img/say "hi".png', "img/a,b.png", "img/two\nlines.png"]
    pd.DataFrame({"object_id": [1, 2, 3, 4], "file": ["img/0.png", *odd]}).to_csv(tmp_path / "cat.csv", index=False)
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "out"), "--size", "16"])
    assert code == 1, err
    with open(tmp_path / "out" / "ingest_failures.csv", newline="") as f:
        rows = list(csv.reader(f))
    assert rows[0] == ["file", "object_id", "reason"]
    assert [r[:2] for r in rows[1:]] == [[name, str(i)] for i, name in enumerate(odd, start=2)]
    assert all(r[2].startswith("FileNotFoundError") and len(r) == 3 for r in rows[1:])
    assert pd.read_csv(tmp_path / "out" / "ingest_failures.csv")["file"].tolist() == odd


def test_ingest_keeps_text_columns_with_blank_cells(tmp_path):
    from PIL import Image

    (tmp_path / "img").mkdir()
    Image.fromarray(np.full((24, 24), 40, dtype=np.uint8)).save(tmp_path / "img" / "0.png")
    (tmp_path / "cat.csv").write_text("object_id,file,split\n1,img/0.png,train\n2,img/0.png,\n")
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "out"),
                      "--size", "16"])
    assert code == 0, err
    assert pq.read_table(tmp_path / "out" / "labels.parquet").column("split").to_pylist() == ["train", None]


@pytest.mark.skipif(not GZ2_SPIRALS.is_dir(), reason=f"real GZ2 subset not found at {GZ2_SPIRALS}")
def test_real_gz2_slice_ingest_train_evaluate(tmp_path):
    table = pd.read_csv(GZ2_SPIRALS / "labels.csv").groupby(["split", "label"]).head(15)
    table["file"] = [str(GZ2_SPIRALS / f) for f in table["file"]]
    table.to_csv(tmp_path / "slice.csv", index=False)
    out = tmp_path / "gz2"
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "slice.csv"), "--out", str(out), "--size", "32",
                      "--id-column", "galaxy_id", "--label-question", "has_spiral_arms", "--label-map", "spiral=yes,non_spiral=no"])
    assert code == 0, err
    labels = pq.read_table(out / "labels.parquet").to_pandas()
    assert len(labels) == 60 and labels["has_spiral_arms_yes"].sum() == 30
    assert (labels["has_spiral_arms_yes"] == (labels["label"] == "spiral")).all()

    ckpt = str(tmp_path / "m.ckpt")  # no --schema: the labels record gz2 (it trained a decals model)
    code, err = _run(["train", "--tiles", str(out / "tiles.txt"), "--labels", str(out / "labels.parquet"),
                      "--epochs", "1", "--batch-size", "16", "--threads", "1", "--out", ckpt])
    assert code == 0, err
    from skymorph.trainer import load_checkpoint

    assert load_checkpoint(ckpt)[1].schema.name == "gz2"
    code, err = _run(["evaluate", ckpt, "--tiles", str(out / "tiles.txt"), "--labels", str(out / "labels.parquet"),
                      "--out", str(tmp_path / "eval"), "--samples", "5", "--threads", "1"])
    assert code == 0, err
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["n_galaxies"] == 30 and metrics["questions"]["has_spiral_arms"]["n_confident"] == 30
    assert [q for q, m in metrics["questions"].items() if m["n"]] == ["has_spiral_arms"]  # the other questions have no votes
    assert metrics["questions"]["bar"] == {"n": 0, "rmse": None, "n_confident": 0, "min_votes_confident": None,
                                           "accuracy_confident": None}  # listed, so that every question can be looked up


def _one_png(tmp_path) -> None:
    from PIL import Image

    Image.fromarray(np.full((24, 24), 70, dtype=np.uint8)).save(tmp_path / "a.png")


@pytest.mark.parametrize("csv, options, fragment", [
    ("galaxy_id,object_id,file\n1,5,a.png\n", ["--id-column", "galaxy_id"],
     "has an 'object_id' column besides --id-column 'galaxy_id'"),
    ("object_id,file,ra,dec\n1,a.png,10,95\n", [], "dec 95 of object_id 1 is outside [-90, 90] degrees"),
    ("object_id,file\n1,a.png\n", ["--pixel-scale-arcsec", "0"], "--pixel-scale-arcsec) must be a finite number > 0, got 0.0"),
    ("object_id,file\n1,a.png\n", ["--pixel-scale-arcsec", "-1"], "must be a finite number > 0, got -1.0"),
    ("object_id,file\n1,a.png\n", ["--pixel-scale-arcsec", "nan"], "must be a finite number > 0, got nan"),
    ("object_id,file\n1,a.png\n", ["--catalog-is-dir"], "is a directory; give the CSV file"),
    ("object_id,file\n-9223372036854775808,a.png\n", [], "object_id -9223372036854775808 is reserved"),
    ("object_id,file\n1,a.png\n2,\n", [], "the file of object_id 2 is empty; give each row its cutout's file"),  # was a TypeError
    ("object_id,file\n1,a.png\n2,  \n", [], "the file of object_id 2 is empty"),
    ("object_id,file\n9223372036854775813,a.png\n5,a.png\n", [],  # pandas reads them as uint64: they wrapped negative
     "object_id 9223372036854775813 is above 2**63 - 1, the largest int64 object_id; renumber such galaxies"),
])
def test_bad_catalog_or_options_fail_before_decoding_and_write_nothing(tmp_path, csv, options, fragment):
    _one_png(tmp_path)
    (tmp_path / "cat.csv").write_text(csv)
    catalog = str(tmp_path if "--catalog-is-dir" in options else tmp_path / "cat.csv")
    options = [o for o in options if o != "--catalog-is-dir"]
    code, err = _run(["survey", "ingest", "--catalog", catalog, "--out", str(tmp_path / "o"), "--size", "16", *options])
    assert code == 2 and err.count("\n") == 1 and err.startswith("skymorph: error: ") and fragment in err, err
    assert not (tmp_path / "o").exists()


def test_one_file_under_two_ids_is_warned_of_and_mixed_band_counts_name_their_files(tmp_path):
    from PIL import Image

    _one_png(tmp_path)
    Image.fromarray(np.full((24, 24, 3), 90, dtype=np.uint8)).save(tmp_path / "rgb.png")
    (tmp_path / "cat.csv").write_text("object_id,file\n1,a.png\n2,./a.png\n3,rgb.png\n")
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o"), "--size", "16"])
    assert code == 0
    assert err.splitlines()[0] == (f"skymorph: warning: catalog {str(tmp_path / 'cat.csv')!r} lists 1 file(s) under more than one "
                                   "object_id (first: ./a.png): those ids get one image, which can put it in both training and validation")
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "k"), "--size", "16",
                      "--bands", "keep"])
    assert code == 2 and err.splitlines()[-1] == (
        f"skymorph: error: cutouts of {str(tmp_path / 'cat.csv')!r} decode to different band counts (first of each: a.png 1, "
        "rgb.png 3); use --bands mean")


def test_tiles_are_written_as_they_fill_not_once_every_cutout_is_decoded(tmp_path):
    """Every decoded cutout was held until the last was read: 15 GB for 300,000 RGB cutouts of 128 px. The
    last cutout here is a named pipe, whose read waits for a writer: the full tiles before it must be on
    disk meanwhile. (Then it is skipped: a pipe cannot seek, as fsspec's reads do.)"""
    _grey_images(tmp_path / "png", 4)
    fifo = tmp_path / "png" / "last.png"
    os.mkfifo(fifo)
    (tmp_path / "cat.csv").write_text("object_id,file\n" + "".join(f"{i + 1},png/{i}.png\n" for i in range(4)) + "5,png/last.png\n")
    out = tmp_path / "o"
    with ThreadPoolExecutor(1) as pool:
        running = pool.submit(ingest, str(tmp_path / "cat.csv"), str(out), 8, tile_size=2, workers=2, progress=False)
        try:
            deadline = time.monotonic() + 60
            while not _complete(out / "tiles" / "ingest_00001.zarr") and time.monotonic() < deadline and not running.done():
                time.sleep(0.05)
            written_while_waiting = sorted(p.name for p in (out / "tiles").glob("*.zarr"))
        finally:  # the pipe's reader waits for a writer: this one (non-blocking: no reader is an error, not a hang)
            try:
                os.close(os.open(fifo, os.O_WRONLY | os.O_NONBLOCK))
            except OSError:
                pass
        summary = running.result(timeout=60)
    assert written_while_waiting == ["ingest_00000.zarr", "ingest_00001.zarr"]
    assert [open_tile(url).read_coords()[0].tolist() for url in summary.tiles] == [[1, 2], [3, 4]] and summary.n_failed == 1


def test_a_catalog_of_missing_files_names_twenty_and_says_where_relative_files_are_read(tmp_path):
    """A catalog read from the wrong directory failed every row: one warning line each, 2,000 for GZ2."""
    (tmp_path / "cat.csv").write_text("object_id,file\n" + "".join(f"{i},img/{i}.png\n" for i in range(1, 26)))
    code, err = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o")])
    lines = err.splitlines()
    assert code == 2 and len(lines) == 22 and lines[19].startswith("skymorph: warning: skipped img/20.png (object_id 20)")
    assert lines[20] == "skymorph: warning: ... and 5 more skipped"
    assert lines[21].endswith(f"(a relative file is read from the catalog's directory, {str(tmp_path)!r})")


def test_decoding_runs_at_most_its_window_ahead_and_stops_with_its_consumer():
    """pool.map submitted every cutout at once: each decoded result waited in memory for its turn, and after
    an error the whole catalog went on being decoded."""
    from skymorph.survey.ingest import _in_order

    started = []

    def decode(item):
        started.append(item)
        time.sleep(0.02)
        return item * 10

    with contextlib.closing(_in_order(decode, list(range(100)), 4, 2)) as decoded:
        assert [next(decoded) for _ in range(3)] == [0, 10, 20]
        time.sleep(0.2)
        assert sorted(started) == list(range(7))  # the 3 yielded and the 4 queued behind them
    assert sorted(started) == list(range(len(started))) and len(started) <= 7  # closed: none started since
    assert list(_in_order(decode, [1, 2, 3], 8, 2)) == [10, 20, 30] and list(_in_order(decode, [], 8, 2)) == []


def _complete(tile: Path) -> bool:
    try:
        open_tile(str(tile))
    except Exception:  # noqa: BLE001 -- not there yet, or still being written
        return False
    return True


def test_a_cutout_unlike_those_in_written_tiles_leaves_neither_survey(tmp_path):
    """Tiles are written as they fill, so a cutout of another band count can come after some: the ingest
    removes them, as it removes the survey it replaces."""
    from PIL import Image

    _grey_images(tmp_path / "png", 3)
    Image.fromarray(np.full((8, 8, 3), 90, dtype=np.uint8)).save(tmp_path / "png" / "rgb.png")
    (tmp_path / "cat.csv").write_text("object_id,file\n1,png/0.png\n2,png/1.png\n3,png/2.png\n4,png/rgb.png\n")
    (tmp_path / "old.csv").write_text("object_id,file\n1,png/0.png\n")
    out = tmp_path / "o"
    ingest(str(tmp_path / "old.csv"), str(out), 8, progress=False)
    with pytest.raises(InputError, match=r"decode to different band counts \(first of each: png/0.png 1, png/rgb.png 3\)"):
        ingest(str(tmp_path / "cat.csv"), str(out), 8, bands="keep", tile_size=1, workers=1, progress=False, overwrite=True)
    assert list(out.iterdir()) == []


def test_a_given_pixel_scale_is_recorded_and_not_a_placeholder(tmp_path):
    _one_png(tmp_path)
    (tmp_path / "cat.csv").write_text("object_id,file\n1,a.png\n")
    code, _ = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o"), "--size", "16",
                    "--pixel-scale-arcsec", "0.262"])
    attrs = open_tile(str(tmp_path / "o" / "tiles" / "ingest_00000.zarr")).attrs
    assert code == 0 and attrs["pixel_scale_is_placeholder"] is False
    assert attrs["pixel_scale_arcsec"] == pytest.approx(0.262 * 24 / 16) and attrs["resize"]["from_px"] == 24


def test_cutouts_of_different_sizes_go_to_tiles_of_one_pixel_scale_each(tmp_path):
    from PIL import Image

    sides = {1: 24, 2: 40, 3: 24, 4: 32, 5: 40, 6: 24}  # object_id -> side; 40 x 60 is centre-cropped to 40
    for oid, side in sides.items():
        shape = (side, 60) if side == 40 else (side, side)
        Image.fromarray(np.full(shape, 10 * oid, dtype=np.uint8)).save(tmp_path / f"{oid}.png")
    (tmp_path / "cat.csv").write_text("object_id,file\n" + "".join(f"{oid},{oid}.png\n" for oid in sides))
    code, _ = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o"), "--size", "16",
                    "--pixel-scale-arcsec", "0.5", "--tile-size", "2"])
    assert code == 0
    labels = pq.read_table(tmp_path / "o" / "labels.parquet").to_pandas()
    assert labels["object_id"].tolist() == [1, 2, 3, 4, 5, 6]  # catalog order
    tiles = {open_tile(url).name: open_tile(url) for url in read_tile_list(str(tmp_path / "o" / "tiles.txt"))}
    # side 24: ids 1, 3 | 6; side 32: 4; side 40: 2, 5. Numbered as written: each full one once it fills,
    # the rest at the end by side
    assert {name: t.read_coords()[0].tolist() for name, t in tiles.items()} == {
        "ingest_00000": [1, 3], "ingest_00001": [2, 5], "ingest_00002": [6], "ingest_00003": [4]}
    for name, tile in tiles.items():
        side = sides[int(tile.read_coords()[0][0])]
        assert tile.attrs["pixel_scale_arcsec"] == pytest.approx(0.5 * side / 16) and tile.attrs["resize"]["from_px"] == side
    for oid, name, row in labels[["object_id", "tile", "row"]].itertuples(index=False):
        assert tiles[name].read_coords(row, row + 1)[0][0] == oid
        assert np.all(tiles[name].read_images(row, row + 1) == 10 * oid)

    # Without a scale there is none to get right: catalog order, full tiles, from_px only where one side.
    code, _ = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "n"), "--size", "16",
                    "--tile-size", "2"])
    tiles = [open_tile(url) for url in read_tile_list(str(tmp_path / "n" / "tiles.txt"))]
    assert code == 0 and [t.read_coords()[0].tolist() for t in tiles] == [[1, 2], [3, 4], [5, 6]]
    assert [t.attrs["resize"].get("from_px") for t in tiles] == [None, None, None]
    assert all(t.attrs["pixel_scale_is_placeholder"] for t in tiles)
    code, _ = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "one"), "--size", "16",
                    "--tile-size", "1"])
    tiles = [open_tile(url) for url in read_tile_list(str(tmp_path / "one" / "tiles.txt"))]
    assert code == 0 and [t.attrs["resize"]["from_px"] for t in tiles] == list(sides.values())


def test_ra_just_below_0_wraps_to_0_not_360(tmp_path):
    """np.mod(-1e-15, 360) is 360.0 in floating point, outside the tiles' [0, 360)."""
    _one_png(tmp_path)
    (tmp_path / "cat.csv").write_text("object_id,file,ra,dec\n1,a.png,-1e-15,5\n2,a.png,-90,5\n")
    code, _ = _run(["survey", "ingest", "--catalog", str(tmp_path / "cat.csv"), "--out", str(tmp_path / "o"), "--size", "16"])
    [url] = read_tile_list(str(tmp_path / "o" / "tiles.txt"))
    _, ra, _ = open_tile(url).read_coords()
    assert code == 0 and sorted(ra.tolist()) == [0.0, 270.0]


def test_a_band_last_fits_cube_and_a_blank_band_mean_are_refused():
    """A (H, W, 3) array written to FITS as it is was read as H bands of W x 3 px: cropped to 3 x 3 px and
    blown up into a tile of noise, without a word. Bands of one value each (one of them blank) averaged to
    a blank cutout that was ingested."""
    from astropy.io import fits

    rgb = np.random.default_rng(2).gamma(2.0, 10.0, size=(24, 24, 3))
    with pytest.raises(InputError, match=r"^a cube of 24 bands of 24 x 3 px \(NAXIS3 = 24\) looks like one image with its bands "
                                         r"last; write it with the bands first, as numpy's \(bands, height, width\)$"):
        decode_image(_fits_bytes(fits.PrimaryHDU(rgb)), "x.fits", size=16, bands="mean")
    assert decode_image(_fits_bytes(fits.PrimaryHDU(rgb.transpose(2, 0, 1))), "x.fits", size=16, bands="keep").shape == (3, 16, 16)
    flat = np.stack([np.full((24, 24), np.nan), np.full((24, 24), 1.0), np.full((24, 24), 2.0)])
    with pytest.raises(InputError, match=r"^the mean of the bands is 1.5 at every pixel: a blank cutout$"):
        decode_image(_fits_bytes(fits.PrimaryHDU(flat)), "x.fits", size=16, bands="mean")


@pytest.mark.parametrize("mode", ["LA", "1"])
def test_grey_images_with_alpha_or_of_one_bit_keep_one_band(mode):
    """They were converted to RGB: a catalog of grey PNGs, some with alpha, was refused as decoding to
    different band counts under --bands keep."""
    from PIL import Image

    grey = np.random.default_rng(3).integers(0, 256, (20, 20), dtype=np.uint8)
    image = Image.fromarray(grey).convert(mode)
    buffer = io.BytesIO()
    image.save(buffer, format="PNG")
    decoded = decode_image(buffer.getvalue(), "x.png", size=16, bands="keep")
    assert decoded.shape == (1, 16, 16)
    plain = io.BytesIO()
    image.convert("L").save(plain, format="PNG")
    np.testing.assert_array_equal(decoded, decode_image(plain.getvalue(), "y.png", size=16, bands="keep"))
