"""Write query results and picked batches: CSV, Parquet, FITS or VOTable, chosen by file extension.

Every format but CSV says what each column means (:func:`skymorph.catalog.writer.describe_schema`;
``deg`` on ``ra``/``dec``): Arrow field metadata ``description`` and ``unit`` in Parquet (and astropy's own
header, which ``Table.read`` takes them and the provenance from: :func:`_astropy_metadata`), ``TUNITn`` and
``TCOMMn`` cards (besides astropy's own YAML comment cards) in FITS, ``FIELD`` ``unit`` and
``DESCRIPTION`` in VOTable. FITS and VOTable go through an astropy Table with the model's
provenance in its meta (``MODELSHA``: the model digest, ``SAMPLES``, ``SEED``, ``NVOLUNT`` as integers,
``SCHEMA``, ``LIKELIHD``, ``SMVERS``; ``PICK``, a picked batch's strategy, score, beta and seed), so the
file says which model made the numbers: FITS header
cards, or VOTable PARAMs and the table's DESCRIPTION (astropy's ``Table.read`` returns a VOTable's
DESCRIPTION in ``meta`` but not its PARAMs). A seed of 2**63 or more is text, a card or a PARAM: a
VOTable ``long`` is signed, as FITS readers' integers (cfitsio's) are. Every output is written
atomically (local temporary file and rename, or one S3 upload). :func:`export_reader` streams Parquet
and CSV batch by batch, so their size is not bounded by memory; FITS and VOTable are built whole by
astropy.
"""

from __future__ import annotations

import base64
import io
import json

import numpy as np

from skymorph.catalog.layout import metadata_text
from skymorph.catalog.writer import describe_schema
from skymorph.errors import InputError

__all__ = ["FORMATS", "output_format", "check_exportable", "to_astropy", "export_table", "export_reader", "format_terminal"]

FORMATS = {
    ".csv": "csv",
    ".parquet": "parquet",
    ".pq": "parquet",
    ".fits": "fits",
    ".fit": "fits",
    ".vot": "votable",
    ".xml": "votable",
}

_FITS_META = {
    "skymorph.model_sha256": "MODELSHA",
    "skymorph.samples": "SAMPLES",
    "skymorph.seed": "SEED",
    "skymorph.n_volunteers": "NVOLUNT",
    "skymorph.version": "SMVERS",
    "skymorph.likelihood": "LIKELIHD",
    "skymorph.pick": "PICK",  # how a picked batch was drawn; SEED is the model's dropout-mask seed
}
_INTEGER_CARDS = ("SAMPLES", "SEED", "NVOLUNT")


def output_format(out: str) -> str:
    """``csv``, ``parquet``, ``fits`` or ``votable`` from the extension of ``out``; one-line error otherwise."""
    name = str(out).lower()
    for suffix, fmt in FORMATS.items():
        if name.endswith(suffix):
            return fmt
    raise InputError(f"cannot tell the format of {out!r}: end it in one of {', '.join(FORMATS)}")


def _provenance(metadata: dict | None) -> dict:
    text = metadata_text(metadata)
    meta = {card: text[key] for key, card in _FITS_META.items() if key in text}
    for card in _INTEGER_CARDS:  # an integer beyond int64 (a seed up to 2^64 - 1) stays text: readers hold int64
        if card in meta and meta[card].lstrip("-").isdigit() and -(2**63) <= int(meta[card]) < 2**63:
            meta[card] = int(meta[card])
    if "skymorph.schema" in text:
        try:
            meta["SCHEMA"] = json.loads(text["skymorph.schema"]).get("name", "")
        except (ValueError, AttributeError):
            meta["SCHEMA"] = ""
    return meta


def to_astropy(table):
    """An ``astropy.table.Table`` of a pyarrow ``table``: column descriptions and units (ra/dec in deg)
    as in :func:`skymorph.catalog.writer.describe_schema`, provenance in ``meta``."""
    import astropy.units as u
    from astropy.table import Table

    schema = describe_schema(table.schema)
    result = Table(meta=_provenance(schema.metadata))
    for field in schema:
        values = table.column(field.name).to_numpy(zero_copy_only=False)
        if values.dtype == object:
            values = np.asarray(["" if v is None else str(v) for v in values], dtype=str)
        result[field.name] = values
        meta = {k.decode(): v.decode() for k, v in (field.metadata or {}).items()}
        result[field.name].description = meta.get("description")
        if "unit" in meta:
            result[field.name].unit = u.Unit(meta["unit"])
    return result


def _text_lengths(data) -> dict[str, int | None]:
    """The characters (code points, as numpy's ``str`` counts them) of the longest value of each text column
    of a pyarrow table or batch ``data``; 0 for a column of no values, None for one with a null, which
    astropy's reader would turn into the text "None" cut to that length (without a length it fails)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    return {field.name: None if column.null_count else pc.max(pc.utf8_length(column)).as_py() or 0
            for field, column in zip(data.schema, data.columns) if pa.types.is_string(field.type) or pa.types.is_large_string(field.type)}


def _longest(a: dict[str, int | None], b: dict[str, int | None]) -> dict[str, int | None]:
    """:func:`_text_lengths` of two parts of one table, from theirs."""
    return {name: None if a[name] is None or b[name] is None else max(a[name], b[name]) for name in a}


def _astropy_metadata(schema, text_lengths: dict[str, int | None]) -> dict[bytes, bytes]:
    """The Parquet key-value metadata astropy's reader (``Table.read``) takes column units, descriptions and
    ``meta`` from, as its own writer records them: ``table_meta_yaml``, the YAML header of an empty
    :func:`to_astropy` table of ``schema`` (the provenance as FITS and VOTable ``meta`` hold it), and
    ``table::len::<name>``, each text column's longest value in ``text_lengths``, its numpy ``str`` length
    (without it astropy warns, and fails on a file of no rows). Nothing for a table astropy cannot hold (a
    column without a name, a unit it cannot parse, metadata that is not text): it is written without."""
    from astropy.table.meta import get_yaml_from_table

    try:
        header = "\n".join(get_yaml_from_table(to_astropy(schema.empty_table())))
    except (KeyError, TypeError, ValueError):  # UnicodeDecodeError is a ValueError
        return {}
    lengths = {f"table::len::{name}": str(n) for name, n in text_lengths.items() if n is not None}
    return {key.encode(): value.encode() for key, value in {"table_meta_yaml": header, **lengths}.items()}


def _parquet_schema(schema, text_lengths: dict[str, int | None]):
    """``schema`` as a Parquet export writes it: :func:`describe_schema`, plus :func:`_astropy_metadata`."""
    described = describe_schema(schema)
    return described.with_metadata({**(described.metadata or {}), **_astropy_metadata(described, text_lengths)})


def check_exportable(table, out: str) -> None:
    """A one-line :class:`InputError` now if pyarrow ``table`` cannot be written to ``out`` in the format
    its extension names (FITS holds ASCII text only), for a caller with other files to write first."""
    if output_format(out) == "fits":
        _check_fits_text(table, out)


def _check_fits_text(table, out: str) -> None:
    """A one-line :class:`InputError` if a text column of pyarrow ``table`` holds a non-ASCII character:
    FITS tables hold ASCII text only (astropy raised a UnicodeEncodeError traceback for a tile path
    with an accent)."""
    import pyarrow as pa
    import pyarrow.compute as pc

    for name, column in zip(table.column_names, table.columns):
        if not (pa.types.is_string(column.type) or pa.types.is_large_string(column.type)):
            continue
        ascii_ = pc.fill_null(pc.string_is_ascii(column), True)
        if not pc.all(ascii_, min_count=0).as_py():  # min_count=0: an empty column is all ASCII (True, not null)
            row = pc.index(ascii_, False).as_py()
            raise InputError(f"{out!r}: FITS tables hold ASCII text only, and column {name!r} has {column[row].as_py()!r} "
                             f"(row {row}); write .vot, .parquet or .csv instead")


def _write_fits(table, buffer) -> None:
    """FITS with each column's description also in a ``TCOMMn`` card (the HEASARC convention, which
    TOPCAT reads): astropy writes descriptions only into its own YAML comment cards."""
    table = table.copy(copy_data=False)
    table.meta.update({f"TCOMM{i}": c.description for i, c in enumerate(table.itercols(), 1) if c.description})
    table.write(buffer, format="fits")


def _write_votable(table, buffer) -> None:
    """VOTable with the provenance as PARAMs of the table and in its DESCRIPTION (astropy's writer
    drops ``meta``)."""
    from astropy.io.votable import from_table, writeto
    from astropy.io.votable.tree import Param

    votable = from_table(table)
    first = votable.get_first_table()
    for key, value in table.meta.items():
        if isinstance(value, int) and -2**63 <= value < 2**63:  # a VOTable long is signed 64-bit
            first.params.append(Param(votable, name=key, value=value, datatype="long"))
        else:  # text, and integers beyond a long (a seed may be up to 2**64 - 1), exact as digits
            first.params.append(Param(votable, name=key, value=str(value), datatype="char", arraysize="*"))
    if table.meta:
        # Spaces around each value: astropy wraps the text, and a 64-character digest fits on a line.
        first.description = "skymorph morphology catalog rows; " + ", ".join(f"{key} = {value}" for key, value in table.meta.items())
    writeto(votable, buffer)


def export_table(table, out: str, storage_options: dict | None = None) -> str:
    """Write pyarrow ``table`` to ``out`` in the format its extension names; returns the format."""
    from skymorph.storage import atomic_write_bytes, write_parquet

    fmt = output_format(out)
    if fmt == "parquet":
        import pyarrow as pa

        write_parquet(pa.Table.from_arrays(table.columns, schema=_parquet_schema(table.schema, _text_lengths(table))), out, storage_options)
        return fmt
    buffer = io.BytesIO()
    if fmt == "csv":
        import pyarrow.csv as pcsv

        pcsv.write_csv(table, buffer)
    else:
        import warnings

        from astropy.utils.exceptions import AstropyWarning

        with warnings.catch_warnings():
            # astropy warns that long column names need HIERARCH cards; that is what we want.
            warnings.simplefilter("ignore", AstropyWarning)
            if fmt == "fits":
                _check_fits_text(table, out)
                _write_fits(to_astropy(table), buffer)
            else:
                _write_votable(to_astropy(table), buffer)
    atomic_write_bytes(out, buffer.getvalue(), storage_options)
    return fmt


def export_reader(reader, out: str, storage_options: dict | None = None) -> tuple[str, int]:
    """Write the batches of a ``pyarrow.RecordBatchReader`` to ``out``; returns (format, rows).

    Parquet and CSV are written batch by batch to a temporary file that becomes ``out`` at the end
    (:func:`skymorph.storage.atomic_output`); FITS and VOTable read the stream whole first.
    """
    from skymorph.storage import atomic_output

    fmt = output_format(out)
    if fmt not in ("parquet", "csv"):
        table = reader.read_all()
        export_table(table, out, storage_options)
        return fmt, table.num_rows
    with atomic_output(out, storage_options) as path:
        rows = _stream_parquet(reader, path) if fmt == "parquet" else _stream_csv(reader, path)
    return fmt, rows


def _stream_csv(reader, path: str) -> int:
    """Write the batches of ``reader`` to CSV at local ``path``; returns the rows."""
    import pyarrow.csv as pcsv

    rows = 0
    with pcsv.CSVWriter(path, reader.schema) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
    return rows


def _stream_parquet(reader, path: str) -> int:
    """Write the batches of ``reader`` to Parquet at local ``path``; returns the rows.

    The schema goes first, but the longest text of each column (:func:`_astropy_metadata`) is known only
    at the end: the file's key-value metadata is completed then, its ``ARROW:schema`` too, since pyarrow
    (and so astropy) reads a schema's metadata from that key alone; it is the base64 of the IPC-serialized
    schema, byte for byte what pyarrow writes of a schema known at the start."""
    import pyarrow.parquet as pq

    rows, lengths = 0, _text_lengths(reader.schema.empty_table())
    with pq.ParquetWriter(path, describe_schema(reader.schema)) as writer:
        for batch in reader:
            writer.write_batch(batch)
            rows += batch.num_rows
            lengths = _longest(lengths, _text_lengths(batch))
        schema = _parquet_schema(reader.schema, lengths)
        writer.add_key_value_metadata({**(schema.metadata or {}), b"ARROW:schema": base64.b64encode(schema.serialize())})
    return rows


def format_terminal(table, max_rows: int = 20, max_columns: int = 8) -> str:
    """A plain-text view of the first ``max_rows`` rows and ``max_columns`` columns of ``table``."""
    import pandas as pd

    names = table.column_names[:max_columns]
    frame = table.select(names).slice(0, max_rows).to_pandas()
    # positions to 1e-6 degree (3.6 milliarcsec); 6 significant digits showed RA 151.213, 3.6 arcsec
    positions = {name: "{:.6f}".format for name in ("ra", "dec") if name in names}
    with pd.option_context("display.width", 200, "display.max_columns", max_columns, "display.float_format", "{:.6g}".format):
        text = frame.to_string(index=False, formatters=positions) if len(frame) else "(no rows)"
    hidden = table.num_columns - len(names)
    if hidden > 0 and len(frame):  # of no rows, no columns are hidden
        text += f"\n... {hidden} more column(s); choose them with --columns or write all with --out"
    return text
