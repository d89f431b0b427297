"""Tables of galaxies as volunteers and surveys give them: reading one (CSV, gzipped CSV, FITS, VOTable or Parquet),
where its galaxies are on the sky (``ra``, ``dec``) and in the tiles (``tile``, ``row``), which side of
the train/validation split a ``split`` column puts them on, and the angles between two sets of positions.

Shared by every reader of such tables: labels (:mod:`skymorph.trainer.labels`), the images they name
(:mod:`skymorph.trainer.data`), votes added to them (``labels ingest``), a volunteer table matched to the
tiles by position (``labels match``) and the galaxies ``catalog pick --exclude`` leaves out. It sits below
the trainer and the catalog so that both read a table one way.
"""

from __future__ import annotations

import hashlib
import sys

import numpy as np

from skymorph.errors import InputError, first_line
from skymorph.storage import FITS_SUFFIXES, exists, join, read_bytes

__all__ = [
    "CSV_SUFFIXES",
    "KeyIndex",
    "LABELLED_POSITION_ARCSEC",
    "OTHER_UNITS",
    "SAME_GALAXY_ARCSEC",
    "TEST",
    "TRAIN",
    "VALIDATION",
    "VOTABLE_SUFFIXES",
    "arcsec_between",
    "arcsec_text",
    "carried_metadata",
    "check_unique_columns",
    "index_in",
    "locations",
    "plain",
    "read_split",
    "read_table",
    "sky_positions",
]

CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")  # tables read as CSV, FITS binary tables as FITS; any other name as Parquet
VOTABLE_SUFFIXES = (".vot", ".xml")  # as catalog pick and query write them

SAME_GALAXY_ARCSEC = 1.0
"""How far apart one object id may be in two tiles and still be one galaxy (in overlapping tiles of one
survey); farther, it is two surveys' galaxies."""
LABELLED_POSITION_ARCSEC = 5.0
"""How far a galaxy's image may be from where its labels put it: their positions may come from another
catalog of the same galaxies (an extended galaxy's centre differs by an arcsecond or so), while a
galaxy of another survey that shares its object id lies arcminutes to degrees away."""
OTHER_UNITS = (("hours", np.array([15.0, 1.0])), ("radians", np.degrees(np.ones(2))))
"""What (ra, dec) given in other units are multiplied by to be degrees: ra in hours, both in radians."""

TRAIN, VALIDATION, TEST = "train", "validation", "test"
_SPLIT_NAMES = {"train": TRAIN, "training": TRAIN, "validation": VALIDATION, "val": VALIDATION, "valid": VALIDATION,
                "test": TEST, "testing": TEST, "holdout": TEST}


def read_table(url: str, storage_options, what: str = "labels"):
    """``(pyarrow table, sha256 of the file)``: CSV (``.csv``, ``.txt``, gzipped ``.csv.gz`` as Galaxy Zoo 2's
    table is published), a FITS binary table (:data:`skymorph.storage.FITS_SUFFIXES`), a VOTable
    (:data:`VOTABLE_SUFFIXES`), else Parquet."""
    import gzip
    import zlib

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    try:
        data = read_bytes(url, storage_options)
    except (FileNotFoundError, IsADirectoryError) as err:  # S3 reads a prefix as a missing object
        listed = join(url, "labels.parquet")
        if exists(listed, storage_options):
            raise InputError(f"{what} {url!r} is a survey's directory, not a table; its labels are {listed!r}") from err
        raise
    name = url.lower()
    try:
        raw = gzip.decompress(data) if name.endswith(".gz") else data
        # One thread, and ParquetFile rather than pq.read_table, whose pyarrow.dataset scan runs threads
        # that can abort the interpreter at exit once torch is loaded (see storage.read_parquet).
        if name.endswith(CSV_SUFFIXES):
            # a tile named 06879 or a split of 0/1 read as numbers: tile and row locations were then ignored
            text = pacsv.ConvertOptions(column_types={"tile": pa.string(), "split": pa.string()})
            # newlines_in_values: a quoted cell may span lines (RFC 4180); without it a file over one 1 MiB block fails
            table = pacsv.read_csv(pa.BufferReader(raw), read_options=pacsv.ReadOptions(use_threads=False),
                                   parse_options=pacsv.ParseOptions(newlines_in_values=True), convert_options=text)
        elif name.endswith(FITS_SUFFIXES):
            table = _read_astropy_table(raw, "fits")
        elif name.endswith(VOTABLE_SUFFIXES):
            table = _read_astropy_table(raw, "votable")
        else:
            table = pq.ParquetFile(pa.BufferReader(raw)).read(use_threads=False)
    except (pa.ArrowInvalid, OSError, ValueError, TypeError, EOFError, zlib.error) as err:  # a truncated or corrupt .gz too
        known = (*CSV_SUFFIXES, *FITS_SUFFIXES, *VOTABLE_SUFFIXES, ".parquet", ".pq")
        named = "" if name.endswith(known) else f"; it was read as Parquet, its name ending in none of {', '.join(known)}"
        raise InputError(f"{what} {url!r} is not a readable Parquet, CSV, FITS or VOTable table ({first_line(err, 120)})"
                         + named) from err
    check_unique_columns(url, table.column_names, what)
    return table, hashlib.sha256(data).hexdigest()


def check_unique_columns(url: str, names: list[str], what: str = "labels") -> None:
    """One line for a table with two columns of one name (a CasJobs ``SELECT g.*, p.ra``): pyarrow's
    ``select`` and ``column`` raised ``KeyError`` on them, a traceback."""
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"{what} {url!r} has more than one column named {' and '.join(map(repr, twice))}; keep one of each")


def _read_astropy_table(data: bytes, fmt: str):
    """The first table of a FITS file or VOTable (``fmt``) as a pyarrow table (astropy: big-endian columns to
    native, masked cells to nulls, text as str, not bytes), without its vector columns."""
    import io

    import pyarrow as pa
    from astropy.table import Table

    table = Table.read(io.BytesIO(data), format=fmt, **({"character_as_bytes": False} if fmt == "fits" else {}))
    flat = [name for name in table.colnames if table[name].ndim <= 1]  # a vector column is no vote count
    return pa.Table.from_pandas(table[flat].to_pandas(), preserve_index=False)


def read_split(url: str, values: list, what: str = "labels") -> np.ndarray | None:
    """A ``split`` column's ``values`` as train/validation/test, None where a cell is empty (such a galaxy
    takes the seed's hash split: rows added to labels that had a split, as the active-learning loop does),
    or None for a column of empty cells only. Any other value is an error: a misspelt ``Validaton`` would
    otherwise keep its galaxies out of both sides. ``what`` names the table in that error."""
    raw = np.array([None if s is None or not str(s).strip() else str(s).strip() for s in values], dtype=object)
    split = np.array([None if s is None else _SPLIT_NAMES.get(s.lower()) for s in raw], dtype=object)
    unknown = np.flatnonzero((raw != None) & (split == None))  # noqa: E711
    if len(unknown):
        names = sorted({raw[i] for i in unknown})
        raise InputError(
            f"{what} {url!r} column 'split' holds {', '.join(map(repr, names[:3]))} ({len(unknown)} row(s)), which is not "
            "train, validation or test; correct it, or leave the cell empty for the seed's hash split"
        )
    return None if (split == None).all() else split  # noqa: E711 -- a column of empty cells splits nothing


def plain(table):
    """``table`` without pandas' saved index (``__index_level_0__``) and with dictionary (pandas categorical)
    columns as their values, so that new rows can be appended to it."""
    import pyarrow as pa

    table = table.select([name for name in table.column_names if not name.startswith("__index_level_")])
    for i, field in enumerate(table.schema):
        if pa.types.is_dictionary(field.type):
            table = table.set_column(i, field.name, table.column(i).cast(field.type.value_type))
    return table


def carried_metadata(table) -> dict[bytes, bytes]:
    """The key-value metadata of pyarrow ``table`` that a table of other columns made from it may keep: all but
    the keys that describe its columns one by one, pandas' (``pandas``) and astropy's (``table_meta_yaml``,
    ``table::len::<name>``); astropy's ``Table.read`` failed with a KeyError on a column its header did not
    name."""
    return {key: value for key, value in (table.schema.metadata or {}).items()
            if key not in (b"pandas", b"table_meta_yaml") and not key.startswith(b"table::len::")}


def locations(table) -> tuple[np.ndarray | None, np.ndarray | None]:
    """``(tile, row)``: where the labels say each image is, when they have both a text ``tile`` column
    and a whole-number ``row`` column as skymorph writes them; tile names as
    :func:`skymorph.tiles.tile_name` gives them (None where null), rows -1 where null. ``(None, None)``
    otherwise: columns of other types (a field number, say) are none of skymorph's business."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from skymorph.tiles import tile_name

    if "tile" not in table.column_names or "row" not in table.column_names:
        return None, None
    tile, row = table.column("tile"), table.column("row")
    if pa.types.is_dictionary(tile.type):  # a pandas categorical
        tile = tile.cast(tile.type.value_type)
    if not (pa.types.is_string(tile.type) or pa.types.is_large_string(tile.type)):
        return None, None
    try:
        if pa.types.is_integer(row.type):
            rows = pc.fill_null(row.cast(pa.int64()), -1).to_numpy()
        elif pa.types.is_floating(row.type):  # pandas stores an integer column with a missing value as float
            values = pc.fill_null(row, -1.0).to_numpy()
            if not np.isfinite(values).all() or (values != np.round(values)).any():
                return None, None
            rows = values.astype(np.int64)
        else:
            return None, None
    except pa.ArrowInvalid:  # an unsigned row beyond int64
        return None, None
    # each distinct tile named once, by the one definition of a tile's name
    distinct = pc.unique(tile)
    # an empty cell is no location: a CSV reads it as "", not null
    names = np.array([tile_name(value) if value else None for value in distinct.to_pylist()], dtype=object)
    return names[pc.index_in(tile, value_set=distinct, skip_nulls=False).to_numpy()], rows


def sky_positions(url: str, table, *, needed_for: str | None = None) -> np.ndarray | None:
    """``(n, 2)`` (ra, dec) in degrees from the table's ``ra`` and ``dec`` columns, in either case (NaN where
    empty), or None without both, or (with a warning) where they are not numbers: volunteer tables give
    them, and :func:`skymorph.trainer.data.load_images` checks them against the tiles'. With ``needed_for``
    (what they are needed for), those two cases are one-line errors instead."""
    names = table.column_names
    folded: dict[str, str] = {}
    for name in names:  # RA and DEC as FITS tables spell them; ra and dec where both are given
        folded.setdefault(name.lower(), name)
    columns = [c if c in names else folded.get(c) for c in ("ra", "dec")]
    if None in columns:
        if needed_for:
            raise InputError(f"table {url!r} has no ra and dec columns (columns: {', '.join(names[:12])}); give each "
                             f"galaxy's position in degrees as ra and dec {needed_for}")
        return None
    try:
        return np.stack([table.column(c).to_numpy(zero_copy_only=False).astype(np.float64) for c in columns], axis=1)
    except (TypeError, ValueError) as err:  # sexagesimal text, say: not read, as before the check existed
        if needed_for:
            raise InputError(f"table {url!r} columns ra and dec are not numbers ({first_line(err, 80)}); give them in "
                             f"degrees {needed_for}") from None
        print(f"skymorph: warning: labels {url!r} columns ra and dec are not numbers ({first_line(err, 80)}), so the "
              "galaxies' positions are not checked against the tiles'; give them in degrees to check them", file=sys.stderr)
        return None


class KeyIndex:
    """Where each of unique ``keys`` is, sorted once for many lookups (:meth:`find`): a sort and binary
    searches, O((n + m) log n), instead of a Python dict lookup per galaxy."""

    def __init__(self, keys: np.ndarray) -> None:
        keys = np.asarray(keys)
        self._order = np.argsort(keys, kind="stable")
        self._sorted = keys[self._order]

    def find(self, ids: np.ndarray) -> np.ndarray:
        """For each of ``ids``, its index in ``keys``, or -1 where it is not one of them."""
        ids = np.asarray(ids)
        if not len(self._sorted):
            return np.full(len(ids), -1, dtype=np.int64)
        at = np.searchsorted(self._sorted, ids).clip(max=len(self._sorted) - 1)
        return np.where(self._sorted[at] == ids, self._order[at], -1)


def index_in(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each of ``ids``, its index in ``keys`` (unique), or -1 where it is not one of them
    (:class:`KeyIndex`, for one lookup)."""
    return KeyIndex(keys).find(ids)


def arcsec_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angular separation in arcseconds of the (ra, dec) rows of ``a`` and ``b``, in degrees."""
    from astropy.coordinates import angular_separation

    return np.degrees(angular_separation(*np.radians(a.T), *np.radians(b.T))) * 3600


def arcsec_text(arcsec: float) -> str:
    """An angle in arcseconds as a person would write it: mas, ", ' or degrees."""
    if arcsec < 0.1:
        return f"{arcsec * 1000:.2g} mas"
    if arcsec < 60:
        return f'{arcsec:.1f}"'
    return f"{arcsec / 60:.1f}'" if arcsec < 3600 else f"{arcsec / 3600:.2f} deg"


