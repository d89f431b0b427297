"""SQL and cone queries over a catalog, out of core (``skymorph catalog query``).

Every reader gets a DuckDB connection from :func:`connect` with one view, ``catalog``, over the part
files it needs. Local parts are read by DuckDB's own Parquet reader, which DuckDB pushes projections
and filters into. S3 parts are an Arrow dataset over pyarrow's own S3 filesystem, configured from the
same endpoint, credentials and ``storage_options`` as s3fs, which DuckDB pushes them into as well;
where an option has no Arrow equivalent, parts are read whole, one at a time, by s3fs into an Arrow
stream (:class:`_RemoteParts`), and DuckDB projects and filters them after. Not DuckDB's ``httpfs``
extension: it is not bundled with the wheel and is downloaded from extensions.duckdb.org on first use,
which clusters without internet (and this build machine) cannot reach.

User SQL (``--where``, ``--order-by``) runs on a locked connection: ``--where`` must parse as one
expression, ``--order-by`` as an ORDER BY list alone, and each must make exactly one SELECT statement;
then ``enable_external_access`` is off (only the catalog's own part files are allowed) and the
configuration is locked, so a fragment can neither write nor read other files nor undo that. A DuckDB error inside the connection leaves it as one
:class:`~skymorph.errors.CatalogError`: naming the part file when one is unreadable, the user's option
(``--where``, ``--order-by``) when its SQL fails on a row (a cast, ``error()``), else the catalog.

A cone first selects the order-K partitions that overlap it (cdshealpix), then pushes down ranges of
``_healpix_29`` covering it at a finer order, then keeps rows whose great-circle distance is within the
radius (haversine, exact).
"""

from __future__ import annotations

import math
import numbers
import re
from contextlib import contextmanager
from dataclasses import dataclass

from skymorph.catalog import layout
from skymorph.catalog.info import Catalog, open_catalog
from skymorph.errors import CatalogError, InputError, did_you_mean, first_line
from skymorph.storage import arrow_filesystem, is_remote, strip_protocol

__all__ = ["Cone", "QueryPlan", "QueryResult", "connect", "plan_query", "query", "query_reader", "query_to", "check_sql",
           "check_columns", "MEMORY_LIMIT"]

MEMORY_LIMIT = "1GB"
"""DuckDB's memory limit per connection: scans stream, so this bounds a query's memory."""

_MAX_RANGES = 256
_MAX_CONE_DEPTH = 27
"""cdshealpix's cone search panics (a Rust index out of bounds) at depth 28 and 29; a depth-27 cell is
1.6 milliarcsec wide, and the distance condition selects the rows exactly."""


@dataclass(frozen=True)
class Cone:
    """A cone on the sky: centre ``ra_deg``, ``dec_deg`` (ICRS degrees) and ``radius_arcsec`` > 0."""

    ra_deg: float
    dec_deg: float
    radius_arcsec: float

    def __post_init__(self) -> None:
        for name in ("ra_deg", "dec_deg", "radius_arcsec"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, numbers.Real) or not math.isfinite(value):
                raise InputError(f"cone {name} must be a finite number, got {value!r}")
        if not 0 <= self.ra_deg <= 360:
            raise InputError(f"cone RA must be in [0, 360] degrees, got {self.ra_deg}")
        if not -90 <= self.dec_deg <= 90:
            raise InputError(f"cone Dec must be in [-90, 90] degrees, got {self.dec_deg}")
        if not 0 < self.radius_arcsec <= 180 * 3600:
            raise InputError(f"cone radius must be in (0, 648000] arcsec, got {self.radius_arcsec}")

    def healpix_cells(self, depth: int):
        """``(ipix, depth)`` arrays of the HEALPix cells (nested, down to ``depth``) overlapping the cone;
        for a cone wider than a hemisphere, the whole sky (the 12 base cells): cdshealpix's cone search
        leaves out cells near the opposite point of cones wider than about 140 degrees (a 175 degree cone
        read none of the rows inside it), and the distance condition selects the rows anyway."""
        import astropy.units as u
        import numpy as np
        from astropy.coordinates import Latitude, Longitude
        from cdshealpix.nested import cone_search

        if self.radius_arcsec > 90 * 3600:
            return np.arange(12, dtype=np.int64), np.zeros(12, dtype=np.int64)
        ipix, depths, _ = cone_search(
            Longitude(self.ra_deg, u.deg), Latitude(self.dec_deg, u.deg), self.radius_arcsec * u.arcsec, depth
        )
        return ipix.astype("int64"), depths.astype("int64")

    def overlapping_pixels(self, pixels, order: int):
        """The order-``order`` ``pixels`` that overlap the cone, in their given order (a superset:
        :meth:`healpix_cells` is conservative).

        The cone's cells stay at their own depth ``d`` <= ``order`` (expanding them to ``order`` makes
        millions of pixels for a degree-wide cone at order 14): pixel ``p`` lies in cell ``c`` of depth
        ``d`` iff ``p >> 2 (order - d) == c``.
        """
        import numpy as np

        pixels = np.asarray(pixels, dtype=np.int64)
        ipix, depths = self.healpix_cells(order)
        inside = np.zeros(len(pixels), dtype=bool)
        for depth in np.unique(depths):
            inside |= np.isin(pixels >> (2 * (order - depth)), ipix[depths == depth])
        return pixels[inside]

    def index_ranges(self) -> list[tuple[int, int]]:
        """Inclusive ranges of ``_healpix_29`` covering the cone, from cells about a quarter radius wide.

        A depth-d cell ``p`` holds the order-29 indices ``[p * 4^(29-d), (p+1) * 4^(29-d))``; adjacent
        ranges are merged. The depth is lowered until at most :data:`_MAX_RANGES` ranges are pushed down
        (coarser cells hold the cone too, and the distance condition is exact; keeping cells as fine as
        an order-12 catalog's partitions made thousands of ranges, and a cone 50 times slower than a full
        scan), and is at most :data:`_MAX_CONE_DEPTH`.
        """
        import numpy as np

        cell_deg = max(self.radius_arcsec / 3600 / 4, 1e-7)
        depth = int(min(_MAX_CONE_DEPTH, math.ceil(math.log2(58.6 / cell_deg))))
        while True:
            ipix, depths = self.healpix_cells(depth)
            shift = 2 * (layout.SPATIAL_INDEX_ORDER - depths)
            by_start = np.argsort(ipix << shift)
            starts, stops = (ipix << shift)[by_start], ((ipix + 1) << shift)[by_start]
            ranges = []
            for start, stop in zip(starts.tolist(), stops.tolist()):
                if ranges and ranges[-1][1] + 1 >= start:
                    ranges[-1][1] = max(ranges[-1][1], stop - 1)
                else:
                    ranges.append([start, stop - 1])
            if len(ranges) <= _MAX_RANGES or depth == 0:
                return [tuple(r) for r in ranges]
            depth -= 1

    def sql(self) -> str:
        """A WHERE condition: the ``_healpix_29`` ranges, then the exact haversine distance.

        .. math:: \\theta = 2 \\arcsin \\sqrt{\\sin^2\\frac{\\delta-\\delta_0}{2}
                  + \\cos\\delta \\cos\\delta_0 \\sin^2\\frac{\\alpha-\\alpha_0}{2}} \\le r
        """
        ranges = " OR ".join(f"{layout.SPATIAL_INDEX_COLUMN} BETWEEN {a} AND {b}" for a, b in self.index_ranges())
        radius_rad = math.radians(self.radius_arcsec / 3600)
        ra0, dec0 = math.radians(self.ra_deg), math.radians(self.dec_deg)
        distance = (
            f"2 * asin(least(1.0, sqrt(pow(sin((radians(dec) - {dec0!r}) / 2), 2) + cos(radians(dec)) * "
            f"{math.cos(dec0)!r} * pow(sin((radians(ra) - {ra0!r}) / 2), 2))))"
        )
        return f"({ranges}) AND {distance} <= {radius_rad!r}"


@contextmanager
def connect(catalog: Catalog, pixels=None, memory_limit: str = MEMORY_LIMIT, threads: int | None = None,
            user_sql: tuple[str, ...] = (), preserve_order: bool = False, check_rows: bool = False):
    """A locked DuckDB connection whose view ``catalog`` holds the rows of ``pixels`` (default: all);
    DuckDB errors raised inside the ``with`` block leave it as one-line :class:`CatalogError` errors.
    ``user_sql`` names the options whose SQL the queries run (``("--where",)``): an error of that SQL
    on a row is blamed on them. Rows come in no particular order (DuckDB's parallel scans are freed of
    it), unless ``preserve_order``: then in the order of the part files and their rows. ``check_rows``
    (all pixels): the part files must hold ``hats.properties``' row count (:meth:`Catalog.check_total_rows`).

    Arithmetic that has no value (``ln``, ``log`` or ``sqrt`` of 0 or of a negative number) is an error,
    and ``x / 0`` is NULL: DuckDB's IEEE default made them NaN (or -inf), and NaN compares and sorts
    above every number, so ``ln(dec) > 0`` held for every negative ``dec``. BALD columns hold exact
    zeros: a condition guards its logarithm (``bar_bald > 0 AND ln(bar_bald) > -3``).

    The catalog must still be the one opened (:meth:`Catalog.check_unchanged`)."""
    import os

    import duckdb

    catalog.check_unchanged()
    parts = catalog.part_urls(pixels)
    threads = threads or min(4, os.cpu_count() or 1)
    con = duckdb.connect(config={"memory_limit": memory_limit, "threads": threads, "preserve_insertion_order": preserve_order,
                                 "ieee_floating_point_ops": False, "error_on_division_by_zero": False})
    try:
        schema = catalog.schema.remove_metadata()
        scan = None
        if not parts:
            con.register("catalog", schema.empty_table())
        elif is_remote(catalog.url):
            scan = _remote_scan(parts, schema, catalog.storage_options)
            con.register("catalog", scan)
        else:
            literal = [_glob_literal(part) for part in parts]
            con.execute(f"CREATE VIEW catalog AS SELECT * FROM read_parquet({_sql_list(literal)}, hive_partitioning = false)")
            con.execute("SET allowed_paths = ?", [sorted(set(parts) | set(literal))])
        con.execute("SET enable_external_access = false")
        con.execute("SET lock_configuration = true")
        with _interrupted_by_signals(con):  # the count too: it reads every footer, minutes of a large catalog on S3
            if check_rows:
                # _RemoteParts would read every part whole to count: their footers hold the count
                catalog.check_total_rows(_footer_rows(catalog, parts) if isinstance(scan, _RemoteParts)
                                         else con.execute("SELECT count(*) FROM catalog").fetchall()[0][0])
            yield con
    except duckdb.Error as err:
        raise CatalogError(_read_failure(catalog, parts, err, user_sql)) from None
    finally:
        con.close()


def _glob_literal(path: str) -> str:
    """``path`` as a DuckDB file pattern matching only itself: each ``*``, ``?`` and ``[`` as a
    one-character class (a catalog at ``dr10*`` read ``dr10-old``'s parts too)."""
    return re.sub(r"[*?\[]", lambda m: f"[{m.group()}]", path)


def _remote_scan(parts: list[str], schema, storage_options: dict | None):
    """What DuckDB scans for a remote catalog's ``parts``: an Arrow dataset over pyarrow's own S3
    filesystem, into which DuckDB pushes the query's columns and filters (a pick reads 2 of the 157
    columns of a DECaLS catalog); :class:`_RemoteParts` where the storage options have no Arrow
    equivalent (:func:`skymorph.storage.arrow_filesystem`)."""
    native = arrow_filesystem(parts[0], storage_options)
    if native is None:
        return _RemoteParts(parts, schema, storage_options)
    import pyarrow.dataset as ds

    # from_paths, not ds.dataset(paths): that would ask S3 for each part's size before the first row
    return ds.FileSystemDataset.from_paths([strip_protocol(p) for p in parts], schema=schema, format=ds.ParquetFileFormat(),
                                           filesystem=native[0])


class _RemoteParts:
    """A remote catalog's part files as an Arrow stream that DuckDB can scan again and again: each
    ``__arrow_c_stream__`` is a fresh stream that reads the parts one at a time, whole, through fsspec, in
    the thread that pulls the rows. DuckDB applies the query's filters and projection itself; a cone's
    pixels have chosen the parts already.

    Not ``pyarrow.dataset`` over the fsspec filesystem: that deadlocked (once in six suite runs, in
    ``catalog info`` on S3). DuckDB's thread built the dataset's scanner holding the GIL and waited for
    an Arrow scan lock, which an Arrow I/O thread held while it waited for the GIL, to open the next part
    through the Python filesystem. Here Arrow runs no thread of its own that calls into Python.
    """

    def __init__(self, parts: list[str], schema, storage_options: dict | None) -> None:
        self.parts, self.schema, self.storage_options = parts, schema, storage_options

    def __arrow_c_schema__(self):
        return self.schema.__arrow_c_schema__()

    def __arrow_c_stream__(self, requested_schema=None):
        import pyarrow as pa

        return pa.RecordBatchReader.from_batches(self.schema, self._batches()).__arrow_c_stream__(requested_schema)

    def _batches(self):
        import pyarrow as pa
        import pyarrow.parquet as pq

        from skymorph.storage import filesystem

        for url in self.parts:
            fs, path = filesystem(url, self.storage_options)
            with fs.open(path, "rb") as fh:
                table = pq.ParquetFile(fh, pre_buffer=False).read(columns=self.schema.names, use_threads=False)
            for batch in table.to_batches():
                yield pa.RecordBatch.from_arrays(batch.columns, schema=self.schema)


def _sql_list(texts: list[str]) -> str:
    """``['a', 'it''s']``: a SQL list of string literals (a view takes no parameters). SQL doubles a quote
    and keeps backslashes as they are, where Python's repr escapes both."""
    return "[" + ", ".join("'" + text.replace("'", "''") + "'" for text in texts) + "]"


_DUCKDB_SIGNAL_MESSAGE = "Query interrupted"
"""What DuckDB 2.0 raises, as a bare ``RuntimeError``, when it finds a signal's Python handler pending
(it runs the handler and drops what the handler raised)."""


@contextmanager
def _interrupted_by_signals(con):
    """Make SIGINT and SIGTERM interrupt ``con``'s running query at once, and an interrupted query a
    ``KeyboardInterrupt`` (the CLI's "interrupted", not an error).

    Python runs a signal's handler only when DuckDB next hands control back: 14 s after Ctrl-C into a
    correlated subquery over 50,000 rows (measured), minutes on a larger catalog. A signal also writes
    its number to the wakeup fd at once, so a thread reading that fd calls ``con.interrupt()``, which
    stopped the same query within 0.3 s. If DuckDB found the handler pending first, it ran it and
    dropped what it raised, so it is run again (the CLI's SIGTERM handler raises its own exception);
    ``KeyboardInterrupt`` is raised if none raised. Only the main thread receives signals; a program
    with a wakeup fd of its own (an asyncio loop) keeps it, and Python's slower path.
    """
    import signal
    import socket
    import threading

    import duckdb

    received: list[int] = []
    # Signals whose handler stops the program: Python's Ctrl-C, and a handler someone set for SIGTERM
    # (the CLI's raises). A custom SIGINT handler ("press Ctrl-C again to quit") is left to itself.
    stopping_signals = {signum for signum, handler in ((signal.SIGINT, signal.getsignal(signal.SIGINT)),
                                                       (signal.SIGTERM, signal.getsignal(signal.SIGTERM)))
                        if handler is signal.default_int_handler or (signum == signal.SIGTERM and callable(handler))}
    watching = threading.current_thread() is threading.main_thread() and bool(stopping_signals)
    if watching:
        receiver, sender = socket.socketpair()
        sender.setblocking(False)
        previous = signal.set_wakeup_fd(sender.fileno(), warn_on_full_buffer=False)
        if previous != -1:  # an event loop's (asyncio): its signal callbacks need the fd, so no watcher
            signal.set_wakeup_fd(previous)
            receiver.close()
            sender.close()
            watching = False
    if watching:
        stopping = threading.Event()

        def watch() -> None:
            while True:
                data = receiver.recv(64)
                if not data or stopping.is_set():
                    return
                signums = [signum for signum in stopping_signals if signum in data]
                received.extend(signums)
                if signums:
                    con.interrupt()

        watcher = threading.Thread(target=watch, name="skymorph-query-interrupt", daemon=True)
        watcher.start()
    try:
        yield
    except duckdb.InterruptException:
        raise KeyboardInterrupt from None  # the signal's own handler, pending, runs first and raises its exception
    except RuntimeError as err:
        if str(err) != _DUCKDB_SIGNAL_MESSAGE:
            raise
        for signum in dict.fromkeys(received):  # DuckDB ran the handler and dropped what it raised: again
            signal.raise_signal(signum)
        raise KeyboardInterrupt from None
    finally:
        if watching:
            signal.set_wakeup_fd(previous)
            stopping.set()
            sender.send(b"\0")  # wake the watcher; 0 is no signal's number
            watcher.join()
            receiver.close()
            sender.close()


def _read_failure(catalog: Catalog, parts: list[str], err: Exception, user_sql: tuple[str, ...] = ()) -> str:
    """One line for a DuckDB error while reading ``catalog``: the damaged part file named where one is,
    else the user's options in ``user_sql`` for an error their SQL can make (a failed cast, an
    ``error()`` call, a value out of range), else the catalog.

    DuckDB's message for a damaged Parquet footer ("TProtocolException: Invalid data") names no file,
    so on a read error the footers are checked (on the error path only) to name the first bad one.
    """
    import duckdb

    reason = first_line(err)
    # a file the SQL named (sniff_csv('/etc/passwd')); not a part that DuckDB, finding it gone, tried as a directory
    named = re.search(r'Cannot access (?:file|directory) "([^"]*?)(?:/\*\*/\*\.parquet)?"', reason)
    if user_sql and isinstance(err, duckdb.PermissionException) and named and named.group(1) not in {*parts, *map(_glob_literal, parts)}:
        return f"{' or '.join(user_sql)} may read the catalog's rows only, not other files: {reason}"
    # PermissionException: DuckDB, finding no file at a part's path, tries it as a glob, which the lock forbids
    if type(err) in (duckdb.Error, duckdb.IOException, duckdb.InvalidInputException, duckdb.PermissionException):
        damaged, deleted = _first_unreadable(parts, catalog.storage_options)
        if deleted:
            return _deleted(catalog, damaged)
        if damaged is not None:
            return (f"catalog {catalog.url!r}: part file {damaged} is not readable Parquet ({reason}); "
                    "restore it, or rerun `skymorph run` with --overwrite")
    if user_sql and isinstance(err, (duckdb.DataError, duckdb.ProgrammingError)):
        if isinstance(err, duckdb.ConversionException):
            hint = "TRY_CAST gives NULL where a value does not convert"
        elif isinstance(err, duckdb.OutOfRangeException):  # ln(0): BALD columns hold exact zeros
            hint = "guard the argument, e.g. 'bar_bald > 0 AND ln(bar_bald) > -3' (ln, log and sqrt outside their domain are errors)"
        else:
            hint = "fix the expression"
        return f"{' or '.join(user_sql)} failed on the rows of catalog {catalog.url!r}: {reason}; {hint}"
    return f"catalog {catalog.url!r}: {reason}"


def _deleted(catalog: Catalog, part: str) -> str:
    return (f"catalog {catalog.url!r}: part file {part} was deleted while the catalog was read: a `skymorph run` is "
            "rewriting it (--overwrite) or adding to it; query again when that run has finished (with no run writing it, "
            "the catalog is damaged: rerun `skymorph run` with --overwrite)")


def _footer_rows(catalog: Catalog, parts: list[str], threads: int = 16) -> int:
    """The rows of ``parts``, counted in their Parquet footers."""
    from concurrent.futures import ThreadPoolExecutor

    def rows(url: str) -> int:
        try:
            return layout.part_footer(url, catalog.storage_options).num_rows
        except FileNotFoundError:
            raise CatalogError(_deleted(catalog, url)) from None

    pool = ThreadPoolExecutor(max_workers=threads)
    try:
        return sum(pool.map(rows, parts))
    finally:  # Ctrl-C: the footers not yet read are not read
        pool.shutdown(wait=True, cancel_futures=True)


def _first_unreadable(parts: list[str], storage_options: dict | None, threads: int = 16) -> tuple[str | None, bool]:
    """``(url, deleted)`` of the first part whose footer does not read, ``deleted`` if it is not there;
    ``(None, False)`` if all read. Judged by the read itself: an exists() check could answer from the
    listing cache of the moment the parts were listed."""
    from concurrent.futures import ThreadPoolExecutor

    def problem(url: str) -> str | None:
        try:
            layout.part_footer(url, storage_options)
        except FileNotFoundError:
            return "deleted"
        except (OSError, ValueError):  # ValueError: pyarrow's ArrowInvalid, a footer that does not parse
            return "unreadable"
        return None

    with ThreadPoolExecutor(max_workers=threads) as pool:
        found = next(((url, kind) for url, kind in zip(parts, pool.map(problem, parts)) if kind), None)
    return (found[0], found[1] == "deleted") if found else (None, False)


_MISSING_COLUMN = re.compile(r'Referenced column "([^"]+)" not found')


def check_sql(con, sql: str, columns, what: str):
    """Parse ``sql`` (one SELECT statement only) and bind it on ``con``; return the DuckDB relation.

    ``what`` names the user's option in errors, e.g. ``"--where"``. An unknown column gets
    "Did you mean"; any other parser or binder error becomes one line.
    """
    import duckdb

    try:
        statements = duckdb.extract_statements(sql)
    except duckdb.Error as err:
        raise CatalogError(f"{what} is not a valid SQL expression: {first_line(err)}") from None
    if len(statements) != 1 or statements[0].type != duckdb.StatementType.SELECT:
        raise CatalogError(f"{what} must be a single read-only SQL expression (no ';', no DDL/DML)")
    try:
        return con.sql(sql)
    except duckdb.BinderException as err:
        match = _MISSING_COLUMN.search(str(err))
        if match:
            name = match.group(1)
            raise CatalogError(f"{what}: the catalog has no column {name!r}." + did_you_mean(name, columns)) from None
        raise CatalogError(f"{what}: {first_line(err)}") from None
    except duckdb.Error as err:
        raise CatalogError(f"{what}: {first_line(err)}") from None


def _quote(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def check_columns(names, available, what: str = "--columns") -> list[str]:
    """``names`` if each is a column of the catalog, once; else a one-line error ("Did you mean" for
    an unknown name)."""
    seen = set()
    for name in names:
        if name not in available:
            raise CatalogError(f"{what}: the catalog has no column {name!r}." + did_you_mean(name, available))
        if name in seen:
            raise CatalogError(f"{what} names the column {name!r} more than once; list each column once")
        seen.add(name)
    return list(names)


@dataclass(frozen=True)
class QueryPlan:
    """What a query reads: the order-K ``pixels`` selected (all without a cone) of ``total_pixels``,
    and the ``sql`` run on the ``catalog`` view, whose ``select`` list it is."""

    pixels: tuple[int, ...]
    total_pixels: int
    sql: str
    select: str = "*"


def _check_expression(sql: str, what: str) -> None:
    """A one-line error unless ``sql`` parses as exactly one SQL expression.

    Spliced into the query, a fragment such as ``1=1) OR (1=1`` would otherwise close its parentheses
    early and OR away the cone's condition. Each user fragment also ends a line in the query, so a
    trailing ``-- comment`` cannot swallow what follows it (the LIMIT).
    """
    import duckdb

    _check_no_semicolon(sql, what)
    try:
        duckdb.SQLExpression(sql)
    except duckdb.Error as err:
        raise CatalogError(f"{what} is not a valid SQL expression: {first_line(err)}") from None


def _check_no_semicolon(sql: str, what: str) -> None:
    # A fragment ending in ';' parses alone but not inside the query, where it would fail as "query".
    if sql.rstrip().endswith(";"):
        raise CatalogError(f"{what} ends in ';': give the SQL alone, without it")


def _check_order_list(sql: str, what: str) -> None:
    """A one-line error unless ``sql`` is an ORDER BY list and nothing more: a LIMIT or OFFSET spliced
    in after it would cut the rows in a way no option shows (and clash with ``limit``)."""
    import json

    import duckdb

    _check_no_semicolon(sql, what)
    query = f"SELECT 1 ORDER BY {sql}\n"
    try:
        if len(duckdb.extract_statements(query)) != 1:
            raise CatalogError(f"{what} must be a single ORDER BY list (no ';')")
    except duckdb.Error as err:
        raise CatalogError(f"{what} is not a valid ORDER BY list: {first_line(err)}") from None
    with duckdb.connect() as con:
        tree = json.loads(con.execute("SELECT json_serialize_sql(?)", [query]).fetchone()[0])
    if tree.get("error") or any(m["type"] != "ORDER_MODIFIER" for m in tree["statements"][0]["node"]["modifiers"]):
        raise CatalogError(f"{what} holds more than an ORDER BY list (a LIMIT or OFFSET?): give only the list, e.g. "
                           "'bald_total DESC, object_id', and the row count as --limit")


def plan_query(catalog: Catalog, where=None, columns=None, cone: Cone | None = None, order_by=None, limit=None) -> QueryPlan:
    """Build (without running) the query: selected partitions and SQL. Columns are checked here."""
    if limit is not None and (isinstance(limit, bool) or not isinstance(limit, numbers.Integral) or limit < 0):
        raise InputError(f"limit must be a non-negative integer, got {limit!r}")
    limit = None if limit is None else int(limit)  # numpy's too
    columns = None if columns is None else list(columns)
    if columns == []:  # an empty shell variable: all columns would be a surprise
        raise InputError("--columns names no column; give a comma-separated list such as 'object_id,ra,dec', or leave it "
                         "out for all")
    select = "*" if columns is None else ", ".join(_quote(c) for c in check_columns(columns, catalog.columns))
    conditions = []
    pixels = catalog.pixels
    if cone is not None:
        if catalog.properties.placeholder_positions:
            raise InputError(f"catalog {catalog.url!r} has placeholder positions (its tiles were ingested without ra/dec, "
                             "every galaxy at ra = dec = 0): a cone search means nothing there; select with --where")
        pixels = tuple(cone.overlapping_pixels(catalog.pixels, catalog.order).tolist())
        conditions.append(cone.sql())
    if where:
        _check_expression(where, "--where")
        conditions.append(f"(\n{where}\n)")
    sql = f"SELECT {select} FROM catalog"
    if conditions:
        sql += " WHERE " + " AND ".join(conditions)
    if order_by:
        _check_order_list(order_by, "--order-by")
        sql += f" ORDER BY {order_by}\n"
    if limit is not None:
        sql += f" LIMIT {int(limit)}"
    return QueryPlan(pixels=tuple(pixels), total_pixels=len(catalog.pixels), sql=sql, select=select)


def _validate_fragments(con, catalog: Catalog, where, order_by, select: str = "*") -> None:
    # Each fragment is checked alone, so an error names the option that caused it.
    if where:
        check_sql(con, f"SELECT * FROM catalog WHERE (\n{where}\n)", catalog.columns, "--where")
        # DuckDB casts a number to a truth value, so --where "bar_strong_fraction" kept every row not exactly 0
        [kind] = check_sql(con, f"SELECT (\n{where}\n) AS condition FROM catalog", catalog.columns, "--where").types
        if str(kind) != "BOOLEAN":
            raise CatalogError(f"--where {where!r} is a {kind} value, not a true/false condition; compare it, "
                               "e.g. 'bald_total > 0.5'")
    if order_by:
        # over the columns selected: a position such as --order-by 5 counts in them
        check_sql(con, f"SELECT {select} FROM catalog ORDER BY {order_by}\n", catalog.columns, "--order-by")


def _prepare(url, where, columns, cone, order_by, limit, storage_options):
    catalog = url if isinstance(url, Catalog) else open_catalog(url, storage_options)
    if cone is not None and not isinstance(cone, Cone):
        try:
            numbers_given = tuple(float(v) for v in cone)
        except (TypeError, ValueError):
            numbers_given = ()
        if len(numbers_given) != 3:
            raise InputError(f"cone must be (ra_deg, dec_deg, radius_arcsec), got {tuple(cone)!r}")
        cone = Cone(*numbers_given)
    if isinstance(columns, str):
        columns = [c.strip() for c in columns.split(",") if c.strip()]
    return catalog, plan_query(catalog, where, columns, cone, order_by, limit)


@contextmanager
def query_reader(
    url: str | Catalog,
    where: str | None = None,
    columns=None,
    cone: Cone | tuple | None = None,
    order_by: str | None = None,
    limit: int | None = None,
    storage_options: dict | None = None,
    batch_rows: int = 1 << 17,
):
    """:func:`query` as a stream: a ``pyarrow.RecordBatchReader`` of at most ``batch_rows`` rows per
    batch, valid inside the ``with`` block, so a result of any size passes in bounded memory (an
    ORDER BY sorts first; DuckDB spills that to disk beyond its memory limit). The schema carries
    the catalog's ``skymorph.*`` keys."""
    catalog, plan = _prepare(url, where, columns, cone, order_by, limit, storage_options)
    with _reader(catalog, plan, where, order_by, limit, batch_rows) as reader:
        yield reader


@contextmanager
def _reader(catalog: Catalog, plan: QueryPlan, where, order_by, limit, batch_rows: int = 1 << 17):
    """The rows of ``plan`` on ``catalog`` as a RecordBatchReader carrying the catalog's metadata."""
    user_sql = tuple(option for option, sql in (("--where", where), ("--order-by", order_by)) if sql)
    every_pixel = len(plan.pixels) == plan.total_pixels  # one listing of the dataset, not one per pixel directory
    # a limit without an order takes the first rows in file order: the same rows on every call; every row:
    # a lost part file made an export short without a word
    with connect(catalog, None if every_pixel else plan.pixels, user_sql=user_sql, preserve_order=limit is not None and not order_by,
                 check_rows=every_pixel and limit is None) as con:
        _validate_fragments(con, catalog, where, order_by, plan.select)
        reader = check_sql(con, plan.sql, catalog.columns, "query").to_arrow_reader(batch_rows)
        yield _with_metadata(reader, catalog.metadata.to_kv())


def _with_metadata(reader, metadata: dict):
    import pyarrow as pa

    schema = reader.schema.with_metadata(metadata)
    return pa.RecordBatchReader.from_batches(schema, (batch.replace_schema_metadata(metadata) for batch in reader))


def query(
    url: str | Catalog,
    where: str | None = None,
    columns=None,
    cone: Cone | tuple | None = None,
    order_by: str | None = None,
    limit: int | None = None,
    storage_options: dict | None = None,
):
    """Rows of the catalog at ``url`` as a ``pyarrow.Table`` (``.to_pandas()`` for pandas).

    ``where``: a DuckDB SQL boolean expression over the columns (read-only; ``x / 0`` is NULL, ``ln`` or
    ``sqrt`` of 0 or a negative number an error, see :func:`connect`; with a ``cone``, a subquery
    in it over ``catalog`` sees the partitions that overlap the cone, not the whole catalog); ``columns``: names to
    return (default all); ``cone``: a :class:`Cone` or ``(ra_deg, dec_deg, radius_arcsec)``;
    ``order_by``: an SQL ORDER BY list; ``limit``: at most this many rows (pushed down, the scan stops):
    the first of ``order_by``, or without it the first in the catalog's order of partitions and rows,
    the same on every call. Rows are otherwise in no particular order. The table's schema metadata
    carries the catalog's ``skymorph.*`` keys (model digest, T, seed). The whole result is held in
    memory: :func:`query_reader` streams it instead.
    """
    with query_reader(url, where, columns, cone, order_by, limit, storage_options) as reader:
        return reader.read_all()


@dataclass(frozen=True)
class QueryResult:
    """What :func:`query_to` did: the ``plan`` it ran and the ``rows`` it gave, either as the ``table`` (no
    ``out``) or written to ``out`` in ``format``."""

    plan: QueryPlan
    rows: int
    table: object = None
    out: str | None = None
    format: str | None = None


def query_to(
    url: str | Catalog,
    out: str | None = None,
    where: str | None = None,
    columns=None,
    cone: Cone | tuple | None = None,
    order_by: str | None = None,
    limit: int | None = None,
    storage_options: dict | None = None,
) -> QueryResult:
    """:func:`query`, and what it read (``skymorph catalog query``): the rows in memory, or with ``out``
    streamed to that file, CSV, Parquet, FITS or VOTable by its extension (checked before the catalog is
    read), so that a result larger than memory still makes a file."""
    from skymorph.catalog.export import export_reader, output_format

    if out is not None:
        output_format(out)
    catalog, plan = _prepare(url, where, columns, cone, order_by, limit, storage_options)
    if out is not None:
        catalog.check_outside(out, "--out")
    with _reader(catalog, plan, where, order_by, limit) as reader:
        if out is None:
            table = reader.read_all()
            return QueryResult(plan, table.num_rows, table=table)
        fmt, rows = export_reader(reader, out, storage_options)
    return QueryResult(plan, rows, out=str(out), format=fmt)
