"""The tile store: one Zarr v3 group per sky tile, local or on S3.

A tile store holds

- ``images`` (N, C, H, W) uint8, row 0 of each image its top as displayed (JPEG and PNG order; FITS,
  whose first row is the bottom, is flipped at ingest: a mirror image reverses a spiral's winding),
  chunked along N only (one chunk = ``chunk_size`` whole cutouts),
  Blosc zstd level 5 with bit shuffle (the best ratio on noisy galaxy cutouts, measured in the team's
  shared NOTES.md);
- ``object_id`` (N,) int64 and ``ra``, ``dec`` (N,) float64, degrees ICRS, in chunks of 65,536 rows
  (512 KiB: a worker task reading a range of a million-row tile fetches one or two chunks, not all),
  zstd; their fill values (NaN for ``ra``/``dec``, :data:`MISSING_OBJECT_ID` for ``object_id``) are
  values no stored row holds, so a chunk file that went missing reads as an error, not as galaxies at
  (0, 0);
- every chunk of every array ends in a CRC-32C checksum (Zarr's ``crc32c`` codec), so a chunk changed
  after writing (truncated, overwritten, bit rot) fails to read even where the compressor would not
  notice (Blosc stores incompressible data raw);
- group attribute ``skymorph``: format version, survey, bands, pixel scale, how the pixels were made
  (stretch, resize), creation time and skymorph version, plus any extra provenance.

:func:`write_tile` writes the arrays first and the ``skymorph`` attribute last, so a tile whose writer
died halfway carries only the ``skymorph_incomplete`` marker and :func:`open_tile` reports it as
incomplete instead of serving half-written chunks. :func:`open_tile` validates everything a reader
relies on (arrays, dtypes, shapes, lengths, bands) and names the tile in every error.

A tile list is a text file with one tile URL per line; ``#`` starts a comment, blank lines are skipped,
relative entries are relative to the list's own directory.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import posixpath
from collections.abc import Iterator, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor

import numpy as np

from skymorph import storage
from skymorph.errors import InputError, SkymorphError, TileError, TileNotFoundError, check_int, first_line

__all__ = [
    "FORMAT_VERSION",
    "Tile",
    "open_tile",
    "write_tile",
    "read_tile_list",
    "read_tiles",
    "write_tile_list",
    "tile_name",
    "MISSING_OBJECT_ID",
    "MAX_CUTOUT_PX",
    "check_cutout_size",
    "object_ids",
    "PIXEL_KEYS",
    "pixels_differ",
    "sampled_pixels",
]

FORMAT_VERSION = 1
_ATTR = "skymorph"
PIXEL_KEYS = ("bands", "stretch", "pixel_scale_arcsec")
"""The attributes that say what an image's pixel values are: a model sees them again only in tiles that agree."""
_INCOMPLETE_ATTR = "skymorph_incomplete"
_RESERVED = frozenset(
    {"format_version", "survey", "bands", "pixel_scale_arcsec", "stretch", "resize", "created", "skymorph_version"}
)
_COORD_DTYPES = {"object_id": np.dtype("int64"), "ra": np.dtype("float64"), "dec": np.dtype("float64")}
_COORD_CHUNK = 65_536
MISSING_OBJECT_ID = np.iinfo(np.int64).min
"""The ``object_id`` fill value: what a lost chunk reads as, so no galaxy may have it."""
_COORD_FILL = {"object_id": MISSING_OBJECT_ID, "ra": np.nan, "dec": np.nan}
MAX_CUTOUT_PX = 1024
"""The largest cutout side ``survey synth`` and ``survey ingest`` write (``train --resize`` takes at most as
much): a tile of 1,024 cutouts at 1,024 px is already 1 GiB per band in memory, and Galaxy Zoo's are 424."""


def check_cutout_size(size, minimum: int) -> int:
    """``size`` (``--size``, the side of the cutouts a survey writer makes) as an int in
    [``minimum``, :data:`MAX_CUTOUT_PX`], else a one-line :class:`InputError`."""
    return check_int("size", "--size", size, minimum, MAX_CUTOUT_PX, "; galaxy models train at 64 to 300")


def tile_name(url: str) -> str:
    """``s3://b/survey/tiles/hpx5_01234.zarr`` -> ``hpx5_01234``: the last path part without ``.zarr``."""
    base = posixpath.basename(str(url).rstrip("/").replace(os.sep, "/"))
    return base[: -len(".zarr")] if base.endswith(".zarr") else base


def object_ids(column, what: str, *, name: str = "object_id", drop_empty: bool = False) -> np.ndarray:
    """A table's id column (pyarrow) as the tiles' int64 ``object_id``: what labels, votes and pick's
    ``--exclude`` files give to name galaxies. Cast in Arrow, not numpy: integers, digits stored as text,
    and whole-number floats below 2^53 (pandas' integers after a merge with an empty cell) are read
    exactly; a float from 2^53 on may have lost its last digits and would name a neighbouring galaxy,
    so it is refused, as are fractions, text (a survey's name for a galaxy, GZ's ``iauname``) and ids
    beyond int64.
    Empty cells are an error, or with ``drop_empty`` dropped (they name no galaxy). ``what`` names the
    file in the one-line errors (``"labels 'gz.csv'"``)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if drop_empty:
        column = pc.drop_null(column)
    elif column.null_count:
        raise InputError(f"{what}: {name} is empty in {column.null_count} row(s); give every row its galaxy's id")
    if pa.types.is_floating(column.type) and len(column) and pc.max(pc.abs(column)).as_py() >= 2**53:
        raise InputError(
            f"{what}: {name} is stored as floats, which hold whole numbers only up to 2^53, and these go beyond "
            "(a pandas merge with an empty cell turns ids into floats): keep them integers, e.g. with .astype('Int64')"
        )
    try:
        return column.cast(pa.int64(), safe=True).to_numpy()
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
        is_text = pa.types.is_string(column.type) or pa.types.is_large_string(column.type)
        text = next((v for v in column.to_pylist() if not v.strip().removeprefix("-").isdigit()), None) if is_text else None
        if text is not None:  # else digits beyond int64: the message below
            raise InputError(
                f"{what}: {name} holds text ({text!r}), not the integer ids of the tile stores; "
                "take each galaxy's object_id from `survey ingest`'s labels.parquet or a pick's batch file, or give a "
                "table with ra and dec its tiles' ids with `skymorph labels match`"
            ) from None
        raise InputError(f"{what}: {name} must hold whole numbers within int64 ({first_line(err, 120)})") from None


def _zarr_store(url: str, storage_options: dict | None) -> tuple[str, dict]:
    """The store argument and keyword arguments zarr needs for ``url``.

    zarr accepts ``storage_options`` only with an fsspec URL, never with a local path.
    """
    url = str(url)
    if storage.is_remote(url):
        return url, {"storage_options": storage.storage_options_for(url, storage_options)}
    return (storage.strip_protocol(url) if url.startswith("file://") else url), {}


class Tile:
    """An opened, validated tile store. Use :func:`open_tile` to get one.

    Attributes: ``url``, ``name`` (the store's name without ``.zarr``), ``n`` (galaxies),
    ``shape`` (C, H, W), ``chunk_size`` (images per stored chunk), ``attrs`` (the ``skymorph``
    group attribute: survey, bands, pixel_scale_arcsec, stretch, resize, created, ...).
    """

    def __init__(self, url: str, group, storage_options: dict | None = None) -> None:
        self.url = str(url)
        self.name = tile_name(url)
        self._group = group
        self._storage_options = storage_options
        self._images = group["images"]
        self.attrs: dict = dict(group.attrs[_ATTR])
        self.n: int = int(self._images.shape[0])
        self.shape: tuple[int, int, int] = tuple(int(s) for s in self._images.shape[1:])
        self.chunk_size: int = int(self._images.chunks[0])

    @property
    def placeholder_positions(self) -> bool:
        """Whether ra/dec are placeholders, not sky positions (``survey ingest`` of a catalog without ra/dec)."""
        return bool(self.attrs.get("position_is_placeholder", False))

    @property
    def pixels(self) -> dict:
        """The :data:`PIXEL_KEYS` attributes: bands, stretch and pixel scale of the images; the scale None
        where ``survey ingest`` was given none (it records 1.0 then, a placeholder)."""
        pixels = {key: self.attrs.get(key) for key in PIXEL_KEYS}
        if self.attrs.get("pixel_scale_is_placeholder"):
            pixels["pixel_scale_arcsec"] = None
        return pixels

    @staticmethod
    def positions_kind(placeholder: bool) -> str:
        """How messages name tiles' positions of either kind."""
        return "placeholder positions (ingested without ra/dec)" if placeholder else "sky positions"

    def __repr__(self) -> str:
        return f"Tile({self.url!r}, n={self.n}, shape={self.shape}, chunk_size={self.chunk_size})"

    def __len__(self) -> int:
        return self.n

    def _range(self, start: int, stop: int | None) -> tuple[int, int]:
        stop = self.n if stop is None else stop
        if not (0 <= start <= stop <= self.n):
            raise InputError(f"tile {self.name!r}: rows [{start}, {stop}) are outside [0, {self.n}]")
        return int(start), int(stop)

    def read_images(self, start: int = 0, stop: int | None = None) -> np.ndarray:
        """Images of rows ``start:stop`` as uint8 (n, C, H, W)."""
        start, stop = self._range(start, stop)
        images = self._read("images", self._images, start, stop)
        self._check_chunks_present(images, start, stop)
        return images

    def read_coords(self, start: int = 0, stop: int | None = None) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(object_id int64, ra float64, dec float64)`` of rows ``start:stop``."""
        start, stop = self._range(start, stop)
        coords = tuple(self._read(key, self._group[key], start, stop) for key in ("object_id", "ra", "dec"))
        for key, values in zip(("object_id", "ra", "dec"), coords):
            lost = _is_fill(key, values)
            if lost.any():
                row = start + int(np.argmax(lost))
                size = int(self._group[key].chunks[0])
                a = row // size * size
                name = self._chunk_file(key, a // size)
                if name is None or not storage.exists(storage.join(self.url, name), self._storage_options):
                    raise TileError(f"tile {self.url!r}: rows [{a}, {min(a + size, self.n)}) of {key!r} read as the fill "
                                    "value, so their chunk file is missing; the store is damaged, write the tile again")
                raise TileError(f"tile {self.url!r}: {key} of row {row} is {values[row - start]}, the fill value that marks a "
                                "lost chunk; write the tile again with real positions and ids")
        infinite = np.flatnonzero(np.isinf(coords[1]) | np.isinf(coords[2]))
        if len(infinite):  # write_tile refuses it; a store written by other means put it in a wrong HEALPix pixel
            row = int(infinite[0])
            raise TileError(f"tile {self.url!r}: row {start + row} has ra {coords[1][row]:g}, dec {coords[2][row]:g}, "
                            "not finite; write the tile again with ICRS degrees")
        outside = np.flatnonzero(np.abs(coords[2]) > 90)
        if len(outside):  # write_tile refuses it; a store written by other means reached astropy and cdshealpix, which raise
            row = int(outside[0])
            raise TileError(f"tile {self.url!r}: dec {coords[2][row]:g} of row {start + row} is outside [-90, 90] degrees; "
                            "write the tile again with ICRS degrees")
        return coords

    def _read(self, key: str, array, start: int, stop: int) -> np.ndarray:
        """Rows ``start:stop`` of ``array``; a chunk that does not decode (truncated, overwritten) is a
        one-line :class:`TileError` naming the tile and rows. Storage errors (OSError) pass through:
        a dropped connection is worth a retry, a damaged chunk is not."""
        try:
            return np.asarray(array[start:stop])
        except (RuntimeError, ValueError, TypeError) as err:  # blosc/zstd: RuntimeError; checksum, shapes: ValueError
            if isinstance(err, SkymorphError):
                raise
            why = "fail their CRC-32C checksum" if "checksum" in str(err) else f"cannot be decoded ({first_line(err)})"
            raise TileError(f"tile {self.url!r}: rows [{start}, {stop}) of {key!r} {why}; "
                            "the store is damaged, write the tile again") from None

    def _check_chunks_present(self, images: np.ndarray, start: int, stop: int) -> None:
        """Zarr reads a missing chunk file as zeros (the fill value). :func:`write_tile` writes every
        chunk, all-zero ones too, so a stored chunk that reads all zero is looked up (one ``exists``
        call; an image chunk that is not zero, the usual case, costs one row's check): when its file
        is missing the tile lost it, and a :class:`TileError` says so instead of serving blank images."""
        size = self.chunk_size
        for a in range(start - start % size, stop, size):
            lo, hi = max(a, start), min(a + size, stop)
            block = images[lo - start:hi - start]
            if hi <= lo or block[0].any() or block.any():
                continue
            name = self._chunk_file("images", a // size)
            if name is not None and not storage.exists(storage.join(self.url, name), self._storage_options):
                raise TileError(f"tile {self.url!r}: the chunk file of rows [{a}, {min(a + size, self.n)}) of 'images' "
                                f"({name}) is missing; the store is damaged, write the tile again")

    def _chunk_file(self, key: str, index: int) -> str | None:
        """The name in the store of chunk ``index`` (along N) of array ``key`` (``images/c/2/0/0/0``); None
        for a zarr that names chunks another way."""
        array = self._images if key == "images" else self._group[key]  # opening one reads its metadata again
        try:
            return f"{key}/{array.metadata.encode_chunk_key((index, *(0,) * (array.ndim - 1)))}"
        except AttributeError:
            return None

    def chunk_ranges(self, start: int = 0, stop: int | None = None) -> list[tuple[int, int]]:
        """``[(start, stop), ...]`` covering rows ``start:stop`` with boundaries on the stored chunks,
        so that no chunk is decoded twice."""
        start, stop = self._range(start, stop)
        edges = [start, *range((start // self.chunk_size + 1) * self.chunk_size, stop, self.chunk_size), stop]
        return [(a, b) for a, b in zip(edges[:-1], edges[1:]) if b > a]

    def iter_chunks(
        self, start: int = 0, stop: int | None = None, prefetch: bool = True, rows: np.ndarray | None = None
    ) -> Iterator[tuple[int, int, np.ndarray]]:
        """Yield ``(start, stop, images)`` over rows ``start:stop``, aligned to the stored chunks; with
        ``rows``, only over the chunks holding one of those rows.

        With ``prefetch`` the next chunk is read and decoded on a background thread while the caller
        works on this one (zarr's decode and S3 reads release the GIL), so I/O hides behind compute.
        """
        ranges = self.chunk_ranges(start, stop)
        if rows is not None:
            held = set((np.asarray(rows, dtype=np.int64) // self.chunk_size).tolist())
            ranges = [(a, b) for a, b in ranges if a // self.chunk_size in held]
        if not prefetch:
            for a, b in ranges:
                yield a, b, self.read_images(a, b)
            return
        with ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"tile-{self.name}") as pool:
            pending = pool.submit(self.read_images, *ranges[0]) if ranges else None
            try:
                for i, (a, b) in enumerate(ranges):
                    images = pending.result()
                    pending = pool.submit(self.read_images, *ranges[i + 1]) if i + 1 < len(ranges) else None
                    yield a, b, images
            finally:
                if pending is not None:
                    pending.cancel()


def pixels_differ(pixels: dict, other: dict) -> list[str]:
    """How two tiles' :attr:`Tile.pixels` differ, as ``"key a vs b"`` phrases; empty when they agree (pixel
    scales within 1%; a key either side lacks is not compared)."""
    differences = []
    for key in PIXEL_KEYS:
        a, b = pixels.get(key), other.get(key)
        if a is None or b is None:
            continue
        if key == "pixel_scale_arcsec" and isinstance(a, (int, float)) and isinstance(b, (int, float)):
            same = abs(a - b) <= 0.01 * max(abs(a), abs(b))
        else:
            same = a == b
        if not same:
            differences.append(f"{key} {a} vs {b}")
    return differences


def sampled_pixels(tile_urls: Sequence[str], storage_options: dict | None = None, at_most: int = 32) -> list[dict]:
    """The distinct :attr:`Tile.pixels` of up to ``at_most`` tiles spread evenly over ``tile_urls`` (one
    metadata read each); tiles that cannot be opened are left to whoever reads them."""
    k = min(at_most, len(tile_urls))
    picks = sorted({round(i * (len(tile_urls) - 1) / max(k - 1, 1)) for i in range(k)})
    distinct: dict[str, dict] = {}
    for i in picks:
        try:
            pixels = open_tile(tile_urls[i], storage_options).pixels
        except (SkymorphError, OSError, ValueError):
            continue
        distinct.setdefault(json.dumps(pixels, sort_keys=True), pixels)
    return list(distinct.values())


def open_tile(url: str, storage_options: dict | None = None) -> Tile:
    """Open and validate the tile store at ``url`` (read only).

    Raises :class:`TileNotFoundError` when nothing is there, :class:`TileError` (naming the tile and
    what is wrong) when it is not a complete skymorph tile store.
    """
    import zarr
    from zarr.errors import ContainsArrayError, NodeNotFoundError

    store, kwargs = _zarr_store(url, storage_options)
    try:
        group = zarr.open_group(store, mode="r", **kwargs)
        _validate(url, group)
        return Tile(url, group, storage_options)
    except (FileNotFoundError, NodeNotFoundError) as err:
        if isinstance(err, SkymorphError):
            raise
        if _exists(url, storage_options):
            raise TileError(f"tile {url!r} is not a Zarr tile store (it has no zarr.json); give a tile that "
                            "`skymorph survey synth` or `skymorph survey ingest` wrote") from None
        raise TileNotFoundError(f"tile {url!r} does not exist; check the URL or tile list") from err
    except ContainsArrayError as err:
        raise TileError(f"tile {url!r} is a single Zarr array, not a skymorph tile store (a Zarr group)") from err
    except (ValueError, TypeError, KeyError) as err:  # a zarr.json that is not JSON, not UTF-8, not Zarr metadata
        if isinstance(err, SkymorphError):
            raise
        raise TileError(f"tile {url!r} has damaged Zarr metadata ({first_line(err)}); write the tile again") from None


def _exists(url: str, storage_options: dict | None) -> bool:
    """Whether anything (a file, a directory, an S3 prefix) is at ``url``; False when that cannot be told."""
    try:
        return storage.exists(url, storage_options)
    except (OSError, ValueError):
        return False


def _is_fill(key: str, values):
    """Where coordinate ``key``'s ``values`` (an array or one value) are its fill value, which no stored row holds."""
    return values == MISSING_OBJECT_ID if key == "object_id" else np.isnan(values)


def _validate(url: str, group) -> None:
    attrs = dict(group.attrs)
    if _ATTR not in attrs:
        if _INCOMPLETE_ATTR in attrs:
            raise TileError(f"tile {url!r} is incomplete: its writer stopped before finishing; write it again")
        raise TileError(f"tile {url!r} is not a skymorph tile store: its group has no {_ATTR!r} attribute")
    meta = attrs[_ATTR]
    if not isinstance(meta, Mapping) or meta.get("format_version") != FORMAT_VERSION:
        got = meta.get("format_version") if isinstance(meta, Mapping) else meta
        raise TileError(f"tile {url!r} has tile format version {got!r}; this skymorph reads version {FORMAT_VERSION}")
    arrays = set(group.array_keys())
    for key in ("images", *_COORD_DTYPES):
        if key not in arrays:
            raise TileError(f"tile {url!r} has no {key!r} array (it has {sorted(arrays)})")
    images = group["images"]
    if images.dtype != np.uint8:
        raise TileError(f"tile {url!r}: 'images' must be uint8, got {images.dtype}")
    if images.ndim != 4:
        raise TileError(f"tile {url!r}: 'images' must be 4-d (N, C, H, W), got shape {tuple(images.shape)}")
    if tuple(images.chunks[1:]) != tuple(images.shape[1:]):
        raise TileError(f"tile {url!r}: 'images' must be chunked along N only, got chunks {tuple(images.chunks)}")
    n = images.shape[0]
    for key, dtype in _COORD_DTYPES.items():
        array = group[key]
        if array.dtype != dtype:
            raise TileError(f"tile {url!r}: {key!r} must be {dtype}, got {array.dtype}")
        if array.shape != (n,):
            raise TileError(f"tile {url!r}: {key!r} has shape {tuple(array.shape)}, expected ({n},) like 'images'")
        fill = array.fill_value
        if not _is_fill(key, fill):  # zarr's default is 0
            raise TileError(f"tile {url!r}: {key!r} has fill value {fill!s}, not {_COORD_FILL[key]!s}, so a lost chunk "
                            "would read as real galaxies; write the tile with skymorph (tiles.write_tile)")
    bands = meta.get("bands")
    if not isinstance(bands, list) or len(bands) != images.shape[1]:
        raise TileError(f"tile {url!r}: attribute bands={bands!r} does not match {images.shape[1]} image channel(s)")


def write_tile(
    url: str,
    images: np.ndarray,
    object_id: np.ndarray,
    ra: np.ndarray,
    dec: np.ndarray,
    *,
    survey: str,
    bands: Sequence[str],
    pixel_scale_arcsec: float,
    stretch: str | Mapping,
    resize: str | Mapping,
    chunk_size: int = 256,
    storage_options: dict | None = None,
    extra_attrs: Mapping | None = None,
) -> None:
    """Write one tile store at ``url``, replacing what is there.

    ``images`` uint8 (N, C, H, W) with one band name per channel; ``object_id``, ``ra``, ``dec`` (N,)
    (degrees ICRS). ``stretch`` and ``resize`` say how the pixels were made (a string or a JSON-able
    mapping). ``chunk_size`` images per chunk (256 to 1024 suits S3; a smaller tile gets one chunk).
    ``extra_attrs`` (JSON-able) join the ``skymorph`` attribute (e.g. the synthetic survey's seed).

    The arrays are written first and the ``skymorph`` attribute last: it marks the tile complete.
    """
    import zarr
    from zarr.errors import ContainsArrayError, NodeNotFoundError

    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise InputError(f"tile {url!r}: images must be uint8 (N, C, H, W), got {images.dtype} shape {images.shape}")
    n = images.shape[0]
    coords = {}
    for key, values in (("object_id", object_id), ("ra", ra), ("dec", dec)):
        values = np.asarray(values)
        if values.shape != (n,):
            raise InputError(f"tile {url!r}: {key} has shape {values.shape}, expected ({n},) like images")
        kinds = "iu" if key == "object_id" else "iuf"
        if values.dtype.kind not in kinds:
            raise InputError(f"tile {url!r}: {key} must be {'integer' if key == 'object_id' else 'real'}, got {values.dtype}")
        if values.dtype.kind == "u" and values.size and values.max() > np.uint64(np.iinfo(np.int64).max):  # astype wraps it negative
            raise InputError(f"tile {url!r}: {key} {int(values.max())} is above 2**63 - 1, the largest int64; renumber that galaxy")
        coords[key] = values.astype(_COORD_DTYPES[key])
    if np.any(coords["object_id"] == MISSING_OBJECT_ID):
        raise InputError(f"tile {url!r}: object_id {MISSING_OBJECT_ID} is reserved (it marks a lost chunk); renumber that galaxy")
    if not (np.all(np.isfinite(coords["ra"])) and np.all(np.isfinite(coords["dec"]))):
        raise InputError(f"tile {url!r}: ra and dec must be finite")
    if np.any(np.abs(coords["dec"]) > 90):
        raise InputError(f"tile {url!r}: dec must lie in [-90, 90] degrees")
    bands = [str(b) for b in bands]
    if len(bands) != images.shape[1]:
        raise InputError(f"tile {url!r}: {len(bands)} band name(s) {bands} for {images.shape[1]} image channel(s)")
    if not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
        raise InputError(f"tile {url!r}: chunk_size must be a positive integer, got {chunk_size!r}")
    if isinstance(pixel_scale_arcsec, bool) or not isinstance(pixel_scale_arcsec, (int, float, np.number)) or not (
            0 < pixel_scale_arcsec < np.inf):
        raise InputError(f"tile {url!r}: pixel_scale_arcsec must be a number > 0, got {pixel_scale_arcsec!r}")
    extra = dict(extra_attrs or {})
    clash = sorted(_RESERVED & set(extra))
    if clash:
        raise InputError(f"tile {url!r}: extra_attrs may not set the reserved key(s) {clash}")
    from skymorph import __version__

    meta = {
        "format_version": FORMAT_VERSION,
        "survey": str(survey),
        "bands": bands,
        "pixel_scale_arcsec": float(pixel_scale_arcsec),
        "stretch": stretch if isinstance(stretch, str) else dict(stretch),
        "resize": resize if isinstance(resize, str) else dict(resize),
        "created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        "skymorph_version": __version__,
        **extra,
    }
    try:
        json.dumps(meta, allow_nan=False)  # a bare NaN in zarr.json is not JSON: strict readers refuse the tile
    except (TypeError, ValueError) as err:
        raise InputError(f"tile {url!r}: attributes must be JSON-serialisable, without NaN or infinity ({err})") from err

    store, kwargs = _zarr_store(url, storage_options)
    try:  # a rewrite deletes the old store first, and a writer stopped then left its arrays half gone under
        # attributes that still said complete
        zarr.open_group(store, mode="r+", **kwargs).attrs.put({_INCOMPLETE_ATTR: True})
    except (FileNotFoundError, NodeNotFoundError, ContainsArrayError, ValueError, TypeError, KeyError):
        pass  # nothing there, or nothing readable as a tile (damaged metadata): replaced below all the same
    group = zarr.open_group(store, mode="w", attributes={_INCOMPLETE_ATTR: True}, **kwargs)
    chunk = int(min(chunk_size, max(n, 1)))
    checksum = zarr.codecs.Crc32cCodec()
    compressors = [zarr.codecs.BloscCodec(cname="zstd", clevel=5, shuffle="bitshuffle"), checksum]
    # every chunk is written, all-zero ones too: Tile.read_images tells a lost chunk from a blank one so
    group.create_array(
        "images", shape=images.shape, chunks=(chunk, *images.shape[1:]), dtype="uint8", compressors=compressors,
        config={"write_empty_chunks": True},
    )[...] = images
    for key, values in coords.items():
        group.create_array(
            key, shape=(n,), chunks=(min(_COORD_CHUNK, max(n, 1)),), dtype=values.dtype, fill_value=_COORD_FILL[key],
            compressors=[zarr.codecs.ZstdCodec(), checksum],
        )[...] = values
    group.attrs.put({_ATTR: meta})


# ---- tile lists -------------------------------------------------------------------------------------


def _list_dir(list_url: str) -> str:
    list_url = str(list_url)
    if storage.is_remote(list_url):
        return posixpath.dirname(list_url.rstrip("/"))
    return os.path.dirname(os.path.abspath(storage.strip_protocol(list_url)))


def _resolve(base: str, relative: str) -> str:
    """``relative`` joined onto the directory ``base`` (a path or URL), with ``..`` folded."""
    if storage.is_remote(base):
        scheme, path = base.split("://", 1)
        joined, bucket = posixpath.normpath(posixpath.join(path, relative)), path.split("/", 1)[0]
        if joined != bucket and not joined.startswith(bucket + "/"):  # '..' past the bucket named another one
            raise InputError(f"{relative!r} climbs out of bucket {bucket!r}; give a tile in another bucket by its whole URL")
        return f"{scheme}://{joined}"
    return os.path.normpath(os.path.join(base, relative))


def _local_key(path: str, real_dirs: dict[str, str]) -> str:
    """Where the local tile store ``path`` leads: its directory resolved once per directory (a list of
    10^5 tiles shares a few), the store itself only when it is a symlink."""
    if os.path.islink(path):
        return os.path.realpath(path)
    directory, name = os.path.split(os.path.normpath(path))
    if directory not in real_dirs:
        real_dirs[directory] = os.path.realpath(directory)
    return os.path.join(real_dirs[directory], name)


def read_tile_list(url: str, storage_options: dict | None = None) -> list[str]:
    """The tile URLs listed in the text file at ``url``, in order.

    One URL or path per line; ``#`` starts a comment; blank lines are skipped; relative entries are
    resolved against the list's directory. Errors name the file and line.
    """
    try:
        text = storage.read_text(url, storage_options)
    except FileNotFoundError as err:
        listed = storage.join(url, "tiles.txt")
        if storage.is_remote(url) and storage.exists(listed, storage_options):  # a survey's prefix (local: read_tiles)
            raise InputError(f"--tiles {url!r} is a survey's prefix, not a tile list; its tile list is {listed!r}") from err
        raise InputError(f"tile list {url!r} does not exist; check --tiles (a tile list, or one *.zarr store)") from err
    except UnicodeDecodeError as err:
        raise InputError(f"tile list {url!r} is not a text file ({err.reason})") from err
    text = text.removeprefix("\ufeff")  # the byte-order mark Windows editors put before UTF-8 text
    base = _list_dir(url)
    tiles: list[str] = []
    seen: dict[str, tuple[int, str]] = {}
    real_dirs: dict[str, str] = {}
    for lineno, line in enumerate(text.splitlines(), start=1):
        entry = line.split("#", 1)[0].strip()
        if not entry:
            continue
        if any(ch.isspace() for ch in entry):
            raise InputError(f"tile list {url!r} line {lineno}: expected one tile URL, got {entry!r}")
        try:  # s3:/bucket/x.zarr read as a path under the list's directory
            storage.check_url(entry)
        except InputError as err:
            raise InputError(f"tile list {url!r} line {lineno}: {err}") from None
        if "://" not in entry and not os.path.isabs(entry):
            try:
                entry = _resolve(base, entry)
            except InputError as err:
                raise InputError(f"tile list {url!r} line {lineno}: {err}") from None
        # One store under two names ('..', a symlink, file://, s3a://, a trailing '/') would be classified twice:
        # compare where they lead. Only the comparison is normalised: a catalog's manifest and part names
        # know tiles as listed.
        try:
            key = storage.remote_key(entry) if storage.is_remote(entry) else _local_key(storage.strip_protocol(entry), real_dirs)
        except (ImportError, ValueError) as err:  # fsspec: a scheme it does not know (S3://), or whose package is missing
            raise InputError(f"tile list {url!r} line {lineno}: cannot open {entry!r}: {err}") from None
        if key in seen:
            line, listed = seen[key]
            same = f" ({listed!r}, the same store)" if listed != entry else ""
            raise InputError(f"tile list {url!r} line {lineno}: tile {entry!r} is already listed on line {line}{same}")
        seen[key] = (lineno, entry)
        tiles.append(entry)
    if not tiles:
        raise InputError(f"tile list {url!r} lists no tiles; give one tile store URL or path per line")
    return tiles


def read_tiles(url: str, storage_options: dict | None = None) -> list[str]:
    """The tile URLs that ``--tiles url`` names: the entries of a tile list (:func:`read_tile_list`), or
    ``[url]`` when ``url`` is itself a tile store (``*.zarr``; a local one made absolute, as a list's
    entries are, for workers in other directories)."""
    url = str(url)
    if url.rstrip("/").endswith(".zarr"):
        if not storage.exists(url, storage_options):  # not fs.exists: s3fs answers that from a listing it cached
            raise InputError(f"tile store {url!r} does not exist; check the URL")
        return [url if storage.is_remote(url) else os.path.abspath(storage.strip_protocol(url))]
    if not storage.is_remote(url) and os.path.isdir(storage.strip_protocol(url)):
        listed = os.path.join(storage.strip_protocol(url), "tiles.txt")
        hint = f"; its tile list is {listed!r}" if os.path.isfile(listed) else ""
        raise InputError(f"--tiles {url!r} is a directory, not a tile list or a .zarr tile store{hint}")
    return read_tile_list(url, storage_options)


def write_tile_list(url: str, tile_urls: Sequence[str], storage_options: dict | None = None) -> None:
    """Write a tile list (atomically). Entries inside the list's directory are written relative to it,
    so the whole directory can be copied or moved (e.g. to S3) and the list still resolves."""
    base = _list_dir(url)
    lines = ["# skymorph tile list: one tile store per line; relative paths are relative to this file"]
    for tile in tile_urls:
        tile = str(tile)
        if storage.is_remote(tile):
            prefix = base.rstrip("/") + "/"
            if tile.startswith(prefix):
                tile = tile[len(prefix) :]
        elif storage.is_remote(base):
            raise InputError(f"tile list {url!r}: local tile {tile!r} in a list on remote storage, where workers "
                             "cannot read it; upload the tile and list its URL")
        else:  # inside the list's directory: relative to it; elsewhere absolute (a relative entry reads as the list's)
            absolute = os.path.abspath(storage.strip_protocol(tile))
            tile = os.path.relpath(absolute, base) if absolute.startswith(base + os.sep) else absolute
        if not tile or any(ch.isspace() for ch in tile) or "#" in tile:
            raise InputError(f"tile list {url!r}: tile URL {tile!r} is empty or contains whitespace or '#'")
        lines.append(tile)
    storage.atomic_write_text(url, "\n".join(lines) + "\n", storage_options)
