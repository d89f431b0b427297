"""Ingest real cutouts (JPEG, PNG, FITS) into tile stores plus a labels table.

The catalog is a CSV with a ``file`` column (paths relative to the CSV), an id column (``object_id``
by default, integers), optional ``ra``/``dec`` (degrees ICRS) and any other columns (e.g. ``label``,
``split``), which pass through to ``labels.parquet`` (a ``split`` is checked first, as ``train`` reads
it: train, validation, test or empty). Writes ``OUT/tiles/ingest_NNNNN.zarr``,
``OUT/tiles.txt``, ``OUT/labels.parquet`` (object_id, tile, row, passthrough columns, and with a
label mapping one vote-count column per answer of the labelled question, empty for a cutout without
a label) and, if any file could not be read, ``OUT/ingest_failures.csv`` (file, object_id, reason).

Pixels: 8-bit JPEG/PNG/TIFF are decoded by Pillow as RGB (or L) and keep their values; FITS (first HDU
with data, (H, W) or (C, H, W); its rows flipped, as tiles hold images top row first; known by its
first bytes, whatever its name, so also tile-compressed ``.fits.fz`` and gzipped ``.fits.gz``) is
flux, mapped to [0, 255] by an asinh stretch over a percentile interval per image, one interval for
all its bands, so that their flux ratios (colours) are kept (astropy.visualization
``AsinhStretch(a) + PercentileInterval(p)``), as are one-band images of more than 8 bits (16-bit
PNG/TIFF, integer or float TIFF); each tile's ``stretch`` attribute says which. 16-bit colour or
grey+alpha PNG/TIFF is reported and skipped: Pillow reads only its high bytes. ``bands="mean"``
averages the bands into one grey channel (flux before the stretch for FITS); ``"keep"`` keeps them. A
blank FITS image (no finite pixel, or one value throughout; with ``"keep"``, any blank band, as at a
survey's coverage edge: ``"mean"`` keeps such a cutout) is reported and skipped. A non-square
image is centre-cropped to a square, then resized with Lanczos (antialiased) to ``size`` pixels.

Tile order: with ``ra``/``dec`` the galaxies are written in nested HEALPix order (their order-29
index from cdshealpix, as the catalog's ``_healpix_29``; a stable sort, so galaxies of one index keep
catalog order) before being cut into tiles of ``tile_size``. Nested index order is a space-filling
curve, so each tile is a compact patch of sky. That matters downstream: ``skymorph run`` writes one Parquet part per tile
(range) and HEALPix partition it touches, so tiles cut in catalog order from a sky-wide catalog each
spanned the whole sky and wrote a part into nearly every partition (2,000 GZ2 cutouts given sky-wide
positions, 2 tiles, catalog order 2: 380 parts; in sky order 193, for the 192 partitions holding
galaxies). Placeholder positions (below) carry no sky order: those galaxies keep catalog order.

Pixel scale: a cutout whose square side is ``s`` pixels of ``pixel_scale_arcsec`` becomes ``size``
pixels of ``pixel_scale_arcsec * s / size``. A tile records one scale, so given a scale the cutouts are
written grouped by their side (sky order, or catalog order, within a side): every tile holds cutouts
of one input size (``resize.from_px``) and records the scale of its own resized pixels. Without a scale
the tiles are not grouped, and ``from_px`` is recorded where a tile's cutouts share one side.
``labels.parquet`` keeps the catalog order and says where each galaxy went (``tile``, ``row``).

Streaming: cutouts are read and decoded in that order, a few per thread ahead of the one being placed,
and each tile is written as soon as it holds ``tile_size`` cutouts (``ingest_00000``, ``ingest_00001``,
... as they fill; with a pixel scale, the part-filled tile of each side at the end, by side). Memory
holds the tiles being filled, one, or one per input side, of ``tile_size x C x size^2`` bytes each (50
MB for 1,024 RGB cutouts of 128 px), not the survey: holding every cutout until the last was read
took 15 GB for 300,000 of them.

Positions: a catalog without ``ra``/``dec`` gets the placeholder position ra = dec = 0 for every
galaxy, flagged as ``position_is_placeholder`` in the tile attributes and in every labels row. One
obviously artificial point (rather than made-up scattered positions) means nothing downstream can
mistake it for a sky position, and sky-partitioned outputs put all such galaxies in one partition.
"""

from __future__ import annotations

import contextlib
import csv
import io
import itertools
import math
import numbers
import os
import re
import sys
import warnings
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

import numpy as np

from skymorph.cores import usable_cores
from skymorph.errors import InputError, check_int, error_text, first_line
from skymorph.schema import get_schema
from skymorph.storage import FITS_SUFFIXES, atomic_write_text, is_remote, join, read_bytes, write_parquet
from skymorph.survey._output import prepare_survey_out, remove_survey, writing_survey
from skymorph.tables import read_split
from skymorph.tiles import MISSING_OBJECT_ID, check_cutout_size

__all__ = ["ingest", "IngestSummary", "decode_image", "parse_label_map"]

MAX_INGEST_WORKERS = 256
"""Most decoding threads ``--workers`` may ask for: enough to keep many S3 reads in flight; a million
started one thread per file, until Python could start no more."""
_WARNED_FAILURES = 20  # skipped files named on stderr; ingest_failures.csv lists them all
_SKY_ORDER = 29  # the finest nested HEALPix order cdshealpix supports (~0.4 mas cells): the tiles' sort key
_ASINH_A, _PERCENTILE = 0.1, 99.5  # the stretch of values beyond 8 bits: AsinhStretch(a) over a percentile interval
# Pillow's raw modes of 16 bits per band for colour or grey+alpha ("RGB;16B", "LA;16B", "RGBA;16L", ...),
# which it reads as their high bytes; one-band 16-bit images open as mode I;16 and read whole.
_FITS_START = b"SIMPLE  ="  # every FITS file's first card
_GZIP_START = b"\x1f\x8b"
_SIXTEEN_BIT_BANDS = re.compile(r"^(RGB|RGBA|RGBX|LA|CMYK)[A-Z]*;16[BLN]$")  # not BGR;16: 5-6-5 bits a pixel


@dataclass(frozen=True)
class IngestSummary:
    """What :func:`ingest` wrote: counts, tile URLs, the labels and failures paths, and whether the
    positions are placeholders (no ``ra``/``dec`` in the catalog; printed, so that it is noticed)."""

    out: str
    n_galaxies: int
    n_failed: int
    tiles: tuple[str, ...]
    labels: str
    failures: str | None
    position_is_placeholder: bool
    n_unlabelled: int = 0

    def __str__(self) -> str:
        failed = f", {self.n_failed} file(s) skipped (see {self.failures})" if self.n_failed else ""
        unlabelled = (f"; without a label (no votes: train leaves them out): {self.n_unlabelled}" if self.n_unlabelled else "")
        placeholder = ("; positions are placeholders (ra = dec = 0): the catalog has no ra/dec columns"
                       if self.position_is_placeholder else "")
        return f"ingested {self.n_galaxies} galaxies into {len(self.tiles)} tile(s) at {self.out}{failed}{unlabelled}{placeholder}"


def parse_label_map(text: str | None) -> dict[str, str]:
    """``"spiral=yes,non_spiral=no"`` -> ``{"spiral": "yes", "non_spiral": "no"}`` (label -> answer)."""
    if not text:
        return {}
    mapping = {}
    for item in text.split(","):
        label, sep, answer = item.partition("=")
        if not sep or not label.strip() or not answer.strip():
            raise InputError(f"--label-map entry {item!r} is not LABEL=ANSWER; give e.g. spiral=yes,non_spiral=no")
        mapping[label.strip()] = answer.strip()
    return mapping


def _square(array: np.ndarray) -> np.ndarray:
    h, w = array.shape[-2:]
    side = min(h, w)
    top, left = (h - side) // 2, (w - side) // 2
    return array[..., top : top + side, left : left + side]


def _resize(plane: np.ndarray, size: int) -> np.ndarray:
    """Lanczos-resize one float (H, W) plane to (size, size)."""
    from PIL import Image

    if plane.shape == (size, size):
        return plane
    return np.asarray(Image.fromarray(plane.astype(np.float32), mode="F").resize((size, size), Image.LANCZOS))


def decode_image(data: bytes, name: str, *, size: int, bands: str, stretch: str = "asinh") -> np.ndarray:
    """Bytes of one JPEG/PNG/FITS cutout -> uint8 (C, size, size); C = 1 for ``bands="mean"``. A file it
    cannot use is an :class:`InputError` saying why."""
    return _decode(data, name, size=size, bands=bands, stretch=stretch)[0]


def _decode(data: bytes, name: str, *, size: int, bands: str, stretch: str):
    """:func:`decode_image`, the side (pixels) of the square it resized to ``size``, and whether it was
    stretched.

    FITS, and one-band images of more than 8 bits per pixel (16-bit PNG or TIFF, integer or float TIFF:
    PIL modes I;16, I, F), hold values beyond 0-255: they are stretched to 8 bits (``stretch`` over a
    percentile interval). 8-bit images (JPEG, PNG) are display images already and keep their values.
    16-bit colour or grey+alpha PNG/TIFF is refused: Pillow reads only the high byte of each value. A
    FITS file's image is the first HDU holding one, as 2-D or 3-D once its axes of length 1 are dropped
    (a ``(1, 1, H, W)`` cube is one plane). FITS is known by its first card, gzipped or not: Pillow read
    a tile-compressed ``.fits.fz`` as an 8-bit image of its compressed bytes."""
    if data[:2] == _GZIP_START:  # astropy decompresses a .fits.gz it opens by name, not bytes
        import gzip

        data = gzip.decompress(data)
    if data.startswith(_FITS_START) or name.lower().endswith(FITS_SUFFIXES):
        from astropy.io import fits

        with fits.open(io.BytesIO(data)) as hdus:
            arrays = [np.squeeze(h.data) for h in hdus if h.is_image and h.data is not None]
        planes = next((a for a in arrays if a.ndim in (2, 3)), None)
        if planes is None:
            found = ", ".join(f"{a.ndim}-D" for a in arrays) or "none"
            raise InputError(f"no 2-D or 3-D image in any HDU (images found: {found})")
        if planes.ndim == 3 and planes.shape[-1] <= 4 < planes.shape[0]:  # numpy's (H, W, 3) written as it is
            raise InputError(f"a cube of {planes.shape[0]} bands of {planes.shape[1]} x {planes.shape[2]} px (NAXIS3 = "
                             f"{planes.shape[0]}) looks like one image with its bands last; write it with the bands "
                             "first, as numpy's (bands, height, width)")
        # FITS rows run bottom to top (pixel 1,1 is drawn lower left); tiles hold images top row first
        planes = np.asarray(planes, dtype=np.float64).reshape(-1, *planes.shape[-2:])[:, ::-1]
        return *_stretched(planes, size, bands, stretch), True
    from PIL import Image

    with Image.open(io.BytesIO(data)) as image:
        rawmodes = [tile.args[0] if isinstance(tile.args, tuple) else tile.args for tile in image.tile]
        sixteen = next((raw for raw in rawmodes if isinstance(raw, str) and _SIXTEEN_BIT_BANDS.match(raw)), None)
        if sixteen is not None:
            raise InputError(f"16 bits per band ({sixteen}), which Pillow reads as their high bytes only; "
                             "save each band as a 16-bit grey image or the cutout as FITS")
        image.load()
        if image.mode.startswith(("I", "F")):  # one band of 16 or 32 bits
            return *_stretched(np.asarray(image, dtype=np.float64)[None], size, bands, stretch), True
        grey = image.mode in ("L", "LA", "La", "1")  # grey with alpha, or 1 bit: one band, not three
        pixels = np.asarray(image.convert("L" if grey else "RGB"), dtype=np.float32)
    planes = pixels[None] if pixels.ndim == 2 else pixels.transpose(2, 0, 1)
    if bands == "mean":
        planes = planes.mean(axis=0, keepdims=True)
    square = _square(planes)
    out = np.stack([_resize(p, size) for p in square])
    return np.clip(np.round(out), 0, 255).astype(np.uint8), int(square.shape[-1]), False


def _stretched(planes: np.ndarray, size: int, bands: str, stretch: str):
    """Float (C, H, W) values -> uint8 (C, size, size) through ``stretch`` (``AsinhStretch(_ASINH_A)`` or
    linear) after a ``_PERCENTILE`` interval over all the bands together (one per band stretched each to
    the full range: a cube of bands f, 2f and 4f became three equal bands), and the side of the square; NaN or infinity (a blank or
    flagged pixel) counts as 0, except that ``bands="mean"`` averages a pixel over the bands that have
    it. An image of no finite value, or of one value throughout (with ``bands="keep"``, any such band of it), holds no galaxy: an
    InputError, so that it is reported and skipped, not trained on."""
    from astropy.visualization import AsinhStretch, LinearStretch, ManualInterval, PercentileInterval

    for band, plane in ([(None, planes)] if bands == "mean" else enumerate(planes)):
        finite = plane[np.isfinite(plane)]
        which = "" if band is None or len(planes) == 1 else f"band {band}: "
        if not finite.size:
            raise InputError(f"{which}no finite pixel (all NaN or infinite): a blank cutout")
        if finite.min() == finite.max():
            raise InputError(f"{which}every pixel is {finite.min():g}: a blank cutout")
    # an infinite pixel is as blank as NaN: nan_to_num made it 1.8e308, and the interval overflowed
    planes = np.where(np.isinf(planes), np.nan, planes)
    if bands == "mean":  # over the bands that have the pixel: a band's blank pixel does not dim it
        with np.errstate(invalid="ignore"), warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "Mean of empty slice": blank in every band
            planes = np.nanmean(planes, axis=0, keepdims=True)
        finite = planes[np.isfinite(planes)]
        if finite.min() == finite.max():  # bands of one value each, one of them blank
            raise InputError(f"the mean of the bands is {finite.min():g} at every pixel: a blank cutout")
    planes = _square(np.nan_to_num(planes))
    low, high = PercentileInterval(_PERCENTILE).get_limits(planes)  # one interval for all bands: colours kept
    transform = (AsinhStretch(_ASINH_A) if stretch == "asinh" else LinearStretch()) + ManualInterval(low, high)
    unit = np.stack([transform(p) for p in planes])
    out = np.stack([_resize(p, size) for p in unit * 255.0])
    return np.clip(np.round(out), 0, 255).astype(np.uint8), int(unit.shape[-1])


def _reason(err: Exception) -> str:
    """Why a file was skipped, in one line: skymorph's own message as it is, another library's with its
    error's type (``UnidentifiedImageError: cannot identify image file``), less the in-memory buffer Pillow
    names (``<_io.BytesIO object at 0x7f...>``: the file is named beside the reason)."""
    if isinstance(err, InputError):
        return first_line(err)
    return re.sub(r" ?<_io\.BytesIO object at 0x[0-9a-f]+>", "", error_text(err, 200))


def _passthrough_columns(table, votes: set, source: str) -> dict:
    """The catalog's columns that ``labels.parquet`` passes through, as Arrow arrays (blank cells of a text
    column become nulls): every column but the object id and those the labels table makes itself. A column
    Arrow cannot hold is a one-line error, found before any cutout is decoded."""
    import pyarrow as pa

    columns = {}
    for name in table.columns:
        if name not in ("object_id", "tile", "row", "position_is_placeholder", *votes):
            try:
                columns[name] = pa.array(table[name], from_pandas=True)
            except (pa.ArrowException, OverflowError, TypeError) as err:
                raise InputError(f"column {name!r} of {source!r} cannot be stored in labels.parquet ({first_line(err)}); "
                                 "drop it from the catalog (it is only passed through)") from None
    return columns


def _labels_table(object_id, tile_of_row, row, votes: dict, passthrough: dict, placeholder: bool, schema: str):
    """``labels.parquet``'s table: each kept galaxy's tile and row, its votes, and the catalog's other
    columns (:func:`_passthrough_columns`), all of the kept galaxies in catalog order."""
    import pyarrow as pa

    columns = {"object_id": object_id, "tile": tile_of_row.astype(str), "row": row, **votes, **passthrough,
               "position_is_placeholder": np.full(len(object_id), placeholder)}
    # the tree its votes are of, which `train` then takes without --schema (as a synthetic survey's)
    metadata = {"skymorph.schema": get_schema(schema).to_json()} if votes else None
    return pa.table(columns, metadata=metadata)


def _in_order(function, items: list, ahead: int, workers: int):
    """``function(item)`` of each of ``items``, in order, computed by ``workers`` threads at most ``ahead``
    items before the one yielded: ``pool.map`` submitted every item at once, and each result waited in
    memory for its turn however far ahead of the consumer (a survey's decoded cutouts, all of them)."""
    from collections import deque

    queued = iter(items)
    with ThreadPoolExecutor(max_workers=workers) as pool:
        pending = deque(pool.submit(function, item) for item in itertools.islice(queued, ahead))
        try:
            while pending:
                result = pending.popleft().result()
                for item in itertools.islice(queued, 1):
                    pending.append(pool.submit(function, item))
                yield result
        finally:  # the consumer stopped (an error, Ctrl-C): not the queued items, only those already running
            for future in pending:
                future.cancel()


@dataclass(frozen=True)
class _TileSpec:
    """What every tile of one ingest records of its cutouts, and the catalog they came from (``source``)."""

    source: str
    survey: str
    size: int
    bands: str
    stretch: str
    pixel_scale_arcsec: float | None
    chunk_size: int
    extra: dict


class _TileWriter:
    """Cuts decoded cutouts into tile stores as they come, in the order they are added, and writes each
    as it fills (``tile_size`` cutouts): memory holds the open tiles, not the survey. Given a pixel scale
    (``spec``), each tile holds cutouts of one input side, so one scale: one open tile per side, those
    part-filled written at :meth:`close` in order of side. Tiles are numbered as they are written. The
    old survey at ``out`` (``--overwrite``) is removed just before the first tile is written: input found
    bad until then leaves it. ``kept``, ``tile_of_row`` and ``row`` say where each catalog row went."""

    def __init__(self, out: str, object_id, ra, dec, spec: _TileSpec, *, tile_size: int, lock, storage_options) -> None:
        self.out, self.object_id, self.ra, self.dec, self.spec = out, object_id, ra, dec, spec
        self.tile_size, self.by_side = tile_size, spec.pixel_scale_arcsec is not None
        self.lock, self.storage_options = lock, storage_options
        self.kept = np.zeros(len(object_id), dtype=bool)
        self.tile_of_row, self.row = np.empty(len(object_id), dtype=object), np.zeros(len(object_id), dtype=np.int64)
        self.urls: list[str] = []
        self._open: dict = {}  # side (None unless by_side) -> (images, rows, sides, stretched)
        self._first: tuple[str, int] | None = None  # the first cutout's file and band count: every one must have it

    def add(self, row: int, file: str, image: np.ndarray, side: int, stretched: bool) -> None:
        if self._first is None:
            self._first = (file, image.shape[0])
        elif image.shape[0] != self._first[1]:
            raise InputError(f"cutouts of {self.spec.source!r} decode to different band counts (first of each: "
                             f"{self._first[0]} {self._first[1]}, {file} {image.shape[0]}); use --bands mean")
        key = side if self.by_side else None
        if key not in self._open:  # pages are touched as cutouts fill them: a tile of a few costs a few
            capacity = min(self.tile_size, len(self.object_id))  # a --tile-size beyond the catalog's rows asked for no more
            self._open[key] = (np.empty((capacity, *image.shape), dtype=np.uint8), [], [], [])
        images, rows, sides, flags = self._open[key]
        images[len(rows)] = image
        rows.append(row)
        sides.append(side)
        flags.append(stretched)
        if len(rows) == self.tile_size:
            self._write(*self._open.pop(key))

    def close(self) -> None:
        """Write the tiles still open."""
        for key in sorted(self._open, key=lambda side: -1 if side is None else side):
            self._write(*self._open.pop(key))

    def remove(self) -> None:
        """Remove the tiles written (with the old survey, if any, gone already: neither is left)."""
        if self.urls:
            self.lock.check_held()  # else they may be another writer's, which took the lock over
            remove_survey(str(self.out), self.storage_options)

    def _write(self, images, rows, sides, stretched) -> None:
        from skymorph.tiles import write_tile

        self.lock.check_held()  # another writer took the lock over (this one stalled past its staleness): stop
        if not self.urls:
            prepare_survey_out(str(self.out), self.storage_options)
        spec = self.spec
        rows, sides, stretched, images = np.array(rows), np.array(sides), np.array(stretched), images[: len(rows)]
        name = f"ingest_{len(self.urls):05d}"
        url = join(self.out, "tiles", f"{name}.zarr")
        side = int(sides[0]) if np.all(sides == sides[0]) else None
        # only decoded colour images are known to be r, g, b; a FITS cube's planes are whatever it holds
        rgb = images.shape[1] == 3 and not stretched.any()
        bands = ["grey"] if spec.bands == "mean" else (["r", "g", "b"] if rgb else [f"band{i}" for i in range(images.shape[1])])
        scale = spec.pixel_scale_arcsec
        write_tile(
            url, images, self.object_id[rows], self.ra[rows], self.dec[rows],
            survey=spec.survey, bands=bands, pixel_scale_arcsec=1.0 if scale is None else scale * side / spec.size,
            stretch=_stretch_attr(spec.stretch, stretched),
            resize={"method": "lanczos", "size": spec.size, "square": "centre crop", **({"from_px": side} if side else {})},
            chunk_size=spec.chunk_size, storage_options=self.storage_options, extra_attrs=spec.extra,
        )
        self.urls.append(url)
        self.kept[rows] = True
        self.tile_of_row[rows], self.row[rows] = name, np.arange(len(rows))


def _stretch_attr(stretch: str, stretched: np.ndarray):
    """A tile's ``stretch`` attribute, from which of its images were stretched (FITS, more than 8 bits)."""
    if not stretched.any():
        return "none (8-bit input)"
    attr = {"name": stretch, **({"asinh_a": _ASINH_A} if stretch == "asinh" else {}), "percentile": _PERCENTILE}
    return attr if stretched.all() else {**attr, "applies_to": "FITS and images of more than 8 bits; 8-bit images kept their values"}


def _read_catalog(catalog_csv: str, id_column: str, storage_options):
    import pandas as pd

    try:
        table = pd.read_csv(io.BytesIO(read_bytes(catalog_csv, storage_options)))
    except ValueError as err:  # UnicodeDecodeError too
        raise InputError(f"catalog {catalog_csv!r} is not a readable CSV ({first_line(err, 160)})") from err
    except IsADirectoryError:
        raise InputError(f"catalog {catalog_csv!r} is a directory; give the CSV file that lists the cutouts") from None
    for column in ("file", id_column):
        if column not in table.columns:
            raise InputError(
                f"catalog {catalog_csv!r} has no {column!r} column (columns: {', '.join(map(str, table.columns))})"
                + ("; name the id column with --id-column" if column == id_column else "")
            )
    if id_column != "object_id" and "object_id" in table.columns:
        raise InputError(
            f"catalog {catalog_csv!r} has an 'object_id' column besides --id-column {id_column!r}, whose values "
            "become the object_id; drop or rename the 'object_id' column, or use it as the id (no --id-column)"
        )
    if not len(table):  # before the type checks: a header-only CSV's columns have no type
        raise InputError(f"catalog {catalog_csv!r} lists no cutouts, only a header; give one row per cutout")
    # pandas' own dtypes (text: StringDtype) are not numpy's: is_integer_dtype takes both
    if table[id_column].isna().any() or not pd.api.types.is_integer_dtype(table[id_column].dtype):
        raise InputError(f"catalog {catalog_csv!r}: {id_column!r} must be integers in every row (it becomes the int64 object_id)")
    if pd.api.types.is_unsigned_integer_dtype(table[id_column].dtype):  # pandas reads ids above 2**63 - 1 so
        big = table[id_column].to_numpy(np.uint64) > np.uint64(np.iinfo(np.int64).max)
        if big.any():
            raise InputError(f"catalog {catalog_csv!r}: {id_column} {int(table[id_column][big].iloc[0])} is above 2**63 - 1, "
                             "the largest int64 object_id; renumber such galaxies")
        table[id_column] = table[id_column].astype(np.int64)
    reserved = table[id_column] == MISSING_OBJECT_ID
    if reserved.any():
        raise InputError(f"catalog {catalog_csv!r}: {id_column} {MISSING_OBJECT_ID} is reserved (tile stores read it "
                         f"as a lost chunk); renumber that galaxy")
    duplicated = table[id_column][table[id_column].duplicated()]
    if len(duplicated):
        raise InputError(f"catalog {catalog_csv!r} lists {id_column} {int(duplicated.iloc[0])} more than once")
    # pandas reads an empty cell as NaN, which no text conversion turns into a file to report
    blank = table["file"].isna().to_numpy() | (table["file"].astype(str).str.strip() == "").to_numpy()
    if blank.any():
        raise InputError(f"catalog {catalog_csv!r}: the file of {id_column} {int(table[id_column][blank].iloc[0])} is empty; "
                         "give each row its cutout's file")
    table["file"] = table["file"].astype(str)
    same_file = table["file"][table["file"].map(lambda f: f if is_remote(f) else os.path.normpath(f)).duplicated()]  # ./a.png
    if len(same_file):  # two ids, one image: its copies could land on both sides of a train/validation split
        print(f"skymorph: warning: catalog {catalog_csv!r} lists {same_file.nunique()} file(s) under more than one "
              f"{id_column} (first: {same_file.iloc[0]}): those ids get one image, which can put it in both training and "
              "validation", file=sys.stderr)
    has_ra, has_dec = "ra" in table.columns, "dec" in table.columns
    if has_ra != has_dec:
        raise InputError(f"catalog {catalog_csv!r} has {'ra' if has_ra else 'dec'} but not {'dec' if has_ra else 'ra'}")
    if has_ra:
        for name in ("ra", "dec"):
            table[name] = pd.to_numeric(table[name], errors="coerce")
        bad = ~(np.isfinite(table["ra"].to_numpy(float)) & np.isfinite(table["dec"].to_numpy(float)))
        if bad.any():
            raise InputError(f"catalog {catalog_csv!r}: ra/dec missing or not finite for {id_column} {int(table[id_column][bad].iloc[0])}")
        outside = np.abs(table["dec"].to_numpy(float)) > 90
        if outside.any():
            first = int(np.flatnonzero(outside)[0])
            raise InputError(f"catalog {catalog_csv!r}: dec {float(table['dec'].iloc[first]):g} of {id_column} "
                             f"{int(table[id_column].iloc[first])} is outside [-90, 90] degrees; give ICRS degrees")
        ra = table["ra"].to_numpy(float)
        outside = (ra < -180) | (ra > 360)
        if outside.any():  # in neither convention of degrees
            first = int(np.flatnonzero(outside)[0])
            raise InputError(f"catalog {catalog_csv!r}: ra {ra[first]:g} of {id_column} {int(table[id_column].iloc[first])} "
                             "is outside [0, 360] (or [-180, 180]) degrees; give ICRS degrees")
        ra = np.mod(ra, 360.0)  # [-180, 180) as some catalogs give it: the tiles and catalog hold [0, 360)
        table["ra"] = np.where(ra >= 360.0, 0.0, ra)  # mod(-1e-15, 360) rounds to 360.0
    if "split" in table.columns:  # passed through to labels.parquet, where train would refuse it after the whole ingest
        import pyarrow as pa

        read_split(catalog_csv, pa.array(table["split"], from_pandas=True).to_pylist(), what="catalog")
    return table.rename(columns={id_column: "object_id"}) if id_column != "object_id" else table


def _sky_order(ra_deg: np.ndarray, dec_deg: np.ndarray) -> np.ndarray:
    """The permutation that puts positions in nested HEALPix order at :data:`_SKY_ORDER` (stable: equal
    indices keep their input order), so that consecutive galaxies, and hence each tile cut from them,
    lie in a compact patch of sky (nested order is a space-filling curve). Indices from cdshealpix, as
    for the catalog's ``_healpix_29``; right ascension wraps at 360 degrees."""
    import astropy.units as u
    from astropy.coordinates import Latitude, Longitude
    from cdshealpix import nested

    lon = Longitude(np.asarray(ra_deg, dtype=np.float64), unit=u.deg)
    lat = Latitude(np.asarray(dec_deg, dtype=np.float64), unit=u.deg)
    return np.argsort(nested.lonlat_to_healpix(lon, lat, _SKY_ORDER), kind="stable")


def _vote_columns(table, schema_name: str, question: str, mapping: dict[str, str]) -> dict:
    """One vote per galaxy for the answer its ``label`` maps to, as nullable integers: a cutout without a
    label gets empty cells, no votes, which ``train`` leaves out (a galaxy to classify, not one voted
    "no"). One-line errors for unmapped labels."""
    import pandas as pd

    q = get_schema(schema_name).question(question)
    given = bool(mapping)
    mapping = mapping or {a: a for a in q.answers}
    for label, answer in mapping.items():
        if answer not in q.answers:
            raise InputError(f"--label-map maps {label!r} to {answer!r}, which question {question!r} lacks; it has {list(q.answers)}")
    if "label" not in table.columns:
        raise InputError("--label-question needs a 'label' column in the catalog")
    label = table["label"]
    blank = (label.isna() | (label.astype(str).str.strip() == "")).to_numpy()
    if pd.api.types.is_float_dtype(label) and (label.dropna() % 1 == 0).all():
        label = label.astype("Int64")  # whole-number labels with an empty cell, which pandas reads as floats
    labels = label.astype(str)
    unmapped = sorted(set(labels[~blank]) - set(mapping))
    if unmapped and given:
        raise InputError(f"catalog label {unmapped[0]!r} has no answer in --label-map {mapping}; map every label value")
    if unmapped:
        raise InputError(f"catalog label {unmapped[0]!r} is not an answer of question {question!r} ({', '.join(q.answers)}); "
                         f"map the labels to answers with --label-map, e.g. --label-map {unmapped[0]}={q.answers[0]}")
    return {f"{question}_{a}": pd.arrays.IntegerArray((labels.map(mapping) == a).to_numpy(np.int64), blank) for a in q.answers}


def ingest(
    catalog_csv: str,
    out: str,
    size: int = 128,
    *,
    bands: str = "mean",
    stretch: str = "asinh",
    tile_size: int = 1024,
    chunk_size: int = 256,
    id_column: str = "object_id",
    label_question: str | None = None,
    label_map: dict[str, str] | None = None,
    schema: str = "gz2",
    survey: str = "ingest",
    pixel_scale_arcsec: float | None = None,
    workers: int | None = None,
    progress: bool = True,
    storage_options=None,
    overwrite: bool = False,
) -> IngestSummary:
    """Decode, resize and write the cutouts of ``catalog_csv`` as tile stores under ``out``.

    ``label_question`` (with ``label_map``, label value -> answer; default: labels are answer names)
    turns the catalog's ``label`` column into one vote per galaxy for that question of ``schema``; a
    cutout with an empty label gets empty vote cells (a galaxy nobody has classified, which ``train``
    leaves out and ``catalog pick --exclude`` does not exclude).
    ``chunk_size`` cutouts are stored per chunk, one S3 object each (256 to 1,024 suits S3: see
    :func:`skymorph.tiles.write_tile`).
    ``pixel_scale_arcsec`` is that of the input cutouts; each tile records the scale of its resized
    pixels (module docstring), or 1.0 flagged ``pixel_scale_is_placeholder`` when the scale is unknown.
    Files that cannot be read are warned about on stderr, listed in ``ingest_failures.csv`` and skipped.
    Tiles are written as they fill (module docstring), ``tiles.txt`` and ``labels.parquet`` last.
    An ``out`` that already holds a survey is refused unless ``overwrite``, which replaces it: the old
    survey is removed once the catalog is checked, just before the first new tile is written (a catalog
    found bad, or no cutout readable, leaves it); a cutout found unlike those in the tiles written by
    then (another band count) removes them too: neither survey is left. A failed write or an interrupt
    leaves the tiles written so far without ``tiles.txt``, which a rerun replaces with ``overwrite``. An
    ``out`` another ingest or synthesis is writing is refused (:func:`skymorph.survey._output.writing_survey`).
    """
    import pyarrow as pa

    from skymorph.progress import progress_bar
    from skymorph.tiles import write_tile_list

    if bands not in ("mean", "keep"):
        raise InputError(f"bands must be 'mean' or 'keep', got {bands!r}")
    if stretch not in ("asinh", "linear"):
        raise InputError(f"stretch must be 'asinh' or 'linear', got {stretch!r}")
    size = check_cutout_size(size, 8)
    tile_size = check_int("tile_size", "--tile-size", tile_size, 1)
    chunk_size = check_int("chunk_size", "--chunk-size", chunk_size, 1)
    workers = min(8, usable_cores()) if workers is None else check_int("workers", "--workers", workers, 1, maximum=MAX_INGEST_WORKERS,
                                                                     why=": more decoding threads only contend")
    if pixel_scale_arcsec is not None and (isinstance(pixel_scale_arcsec, bool) or not isinstance(pixel_scale_arcsec, numbers.Real)
                                           or not math.isfinite(pixel_scale_arcsec) or pixel_scale_arcsec <= 0):
        raise InputError(f"pixel_scale_arcsec (--pixel-scale-arcsec) must be a finite number > 0, got {pixel_scale_arcsec!r}; "
                         "leave it out when the scale is unknown")
    if label_map and not label_question:  # else ignored without a word
        raise InputError("--label-map maps labels to the answers of --label-question; add --label-question, or drop --label-map")
    with writing_survey(str(out), overwrite, storage_options, "survey ingest") as lock:
        table = _read_catalog(str(catalog_csv), id_column, storage_options)
        votes = _vote_columns(table, schema, label_question, label_map or {}) if label_question else {}
        base = os.path.dirname(str(catalog_csv))

        def load(file: str):
            absolute = os.path.isabs(file) or is_remote(file)  # a file entry may be a URL of its own
            try:
                data = read_bytes(file if absolute else join(base, file), storage_options)
                return _decode(data, file, size=size, bands=bands, stretch=stretch), None
            except Exception as err:  # missing, refused (HTTP 403), corrupt (Pillow and astropy raise many types):
                return None, _reason(err)  # reported by name and skipped; every file failing stops the ingest below

        placeholder = "ra" not in table.columns
        passthrough = _passthrough_columns(table, set(votes), str(catalog_csv))  # before any old survey is removed
        object_id = table["object_id"].to_numpy(np.int64)
        ra = np.zeros(len(table)) if placeholder else table["ra"].to_numpy(np.float64)
        dec = np.zeros(len(table)) if placeholder else table["dec"].to_numpy(np.float64)
        files = table["file"].tolist()
        extra = {"position_is_placeholder": placeholder, "source_catalog": str(catalog_csv), "pixel_scale_is_placeholder": pixel_scale_arcsec is None}
        spec = _TileSpec(str(catalog_csv), survey, size, bands, stretch, pixel_scale_arcsec, chunk_size, extra)
        tiles = _TileWriter(out, object_id, ra, dec, spec, tile_size=tile_size, lock=lock, storage_options=storage_options)
        order = np.arange(len(table)) if placeholder else _sky_order(ra, dec)  # the order tiles are cut in
        failures = []
        try:
            # closed here: a bar iterates without closing its input, and after an error the decoding threads ran on
            # for as long as a traceback (a notebook's) held this frame
            with contextlib.closing(_in_order(load, [files[i] for i in order], 4 * workers, workers)) as decoding:
                decoded = progress_bar(decoding, total=len(files), desc="ingesting", unit="image", disable=not progress)
                for i, (result, reason) in zip(order.tolist(), decoded):
                    if reason is None:
                        tiles.add(i, files[i], *result)
                    else:
                        failures.append((i, files[i], int(object_id[i]), reason))
            tiles.close()
        except InputError:  # a cutout unlike those in tiles written already: the survey is not made
            tiles.remove()
            raise
        failures = [failure[1:] for failure in sorted(failures)]  # catalog order
        ok = tiles.kept
        for file, oid, reason in failures[:_WARNED_FAILURES]:
            print(f"skymorph: warning: skipped {file} (object_id {oid}): {reason}", file=sys.stderr)
        if len(failures) > _WARNED_FAILURES:  # a wrong base directory fails every row: thousands of lines
            listed = f" (all in {join(out, 'ingest_failures.csv')})" if ok.any() else ""
            print(f"skymorph: warning: ... and {len(failures) - _WARNED_FAILURES} more skipped{listed}", file=sys.stderr)
        if not ok.any():
            file, _, reason = failures[0]
            missing = reason.startswith("FileNotFoundError") and not (os.path.isabs(file) or is_remote(file))
            relative = f" (a relative file is read from the catalog's directory, {base or '.'!r})" if missing else ""
            raise InputError(f"none of the {len(files)} cutouts of {catalog_csv!r} could be read; first: {file}: {reason}{relative}")
        labels = _labels_table(object_id[ok], tiles.tile_of_row[ok], tiles.row[ok], {name: values[ok] for name, values in votes.items()},
                               {name: values.filter(pa.array(ok)) for name, values in passthrough.items()}, placeholder, schema)
        lock.check_held()
        write_tile_list(join(out, "tiles.txt"), tiles.urls, storage_options)
        labels_url = join(out, "labels.parquet")
        write_parquet(labels, labels_url, storage_options)
        failures_url = None
        if failures:
            failures_url = join(out, "ingest_failures.csv")
            text = io.StringIO()
            writer = csv.writer(text, lineterminator="\n")  # quotes names holding commas, quotes or newlines
            writer.writerow(("file", "object_id", "reason"))
            writer.writerows(failures)
            atomic_write_text(failures_url, text.getvalue(), storage_options)
        unlabelled = int(next(iter(votes.values()))[ok].isna().sum()) if votes else 0
        return IngestSummary(str(out), int(ok.sum()), len(failures), tuple(tiles.urls), labels_url, failures_url, placeholder, unlabelled)
