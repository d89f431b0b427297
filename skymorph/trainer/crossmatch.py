"""Give a volunteer table the tiles' galaxy ids by position: ``skymorph labels match``.

Galaxy Zoo's tables name galaxies their own way (GZ DECaLS' ``iauname``, GZ2's ``dr7objid``) and give
each one's ``ra`` and ``dec``; the tiles hold galaxies by skymorph's integer ``object_id``. :func:`match_labels`
pairs each row of the table with the nearest tile galaxy on the sky (astropy's
:func:`~astropy.coordinates.search_around_sky`, a k-d tree on unit vectors) and writes the
rows that have one within ``radius_arcsec`` as labels ``train``, ``evaluate`` and ``labels ingest`` read:
the table's own columns behind ``object_id``, ``tile`` and ``row`` (where the image is) and
``match_arcsec`` (how far apart the two positions are, to judge the match by).

A tile galaxy nearest to two rows (a galaxy classified twice, as some are in Galaxy Zoo's tables, or in
two releases concatenated) goes to the nearer row, the first of rows at one distance; the other row is
left out, its votes not added, as are rows with no tile galaxy within the radius (outside the tiles'
footprint) and rows without a position. Both are counted in a warning: silently, a volunteer table's
galaxies would just be fewer. The radius is at most the 5" that ``train`` allows between a galaxy's
labelled position and its image. Tiles with placeholder positions (cutouts ingested without ra/dec)
cannot be matched by position: they are skipped, with a warning. Rows matched to one ``object_id`` at
two positions (tiles of two surveys, whose ids are unique only within each) are an error: keeping the
nearer by id would merge two galaxies. The tiles are read one at a time, so memory holds the table and
one tile however large the survey.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from skymorph.errors import InputError

__all__ = ["Matched", "match_labels"]

MATCHED_KEY = "skymorph.matched"
ADDED_COLUMNS = ("object_id", "tile", "row", "match_arcsec")


@dataclass(frozen=True)
class Matched:
    """What :func:`match_labels` wrote: ``matched`` of the table's ``rows`` to a tile galaxy, with the
    median separation; ``unmatched`` rows had none within the radius (or no position), ``duplicates`` lost
    their galaxy to a nearer row."""

    out: str
    rows: int
    matched: int
    unmatched: int
    duplicates: int
    median_arcsec: float
    radius_arcsec: float

    def summary(self) -> str:
        left = self.unmatched + self.duplicates
        return (f'matched {self.matched} of {self.rows} rows to tile galaxies within {self.radius_arcsec:g}" (median '
                f'{self.median_arcsec:.2f}") -> {self.out}' + (f"; rows left out: {left}" if left else ""))


def match_labels(table: str, tiles: str, out: str, *, radius_arcsec: float = 1.0, overwrite: bool = False,
                 storage_options=None, progress: bool = True) -> Matched:
    """Write ``out`` (Parquet): the rows of ``table`` (CSV, gzipped CSV, Parquet or FITS, with ``ra`` and
    ``dec`` in degrees) that have a galaxy of the ``tiles`` (a tile list or one tile's URL) within
    ``radius_arcsec``, each given the nearest one's ``object_id``, ``tile`` and ``row`` and the separation
    ``match_arcsec``; the table's own columns follow unchanged. Its Parquet metadata records the match
    under ``skymorph.matched``: the table (URL, sha256), the tiles, the radius and the counts.

    One-line errors: ``out`` not ``.parquet`` or existing unless ``overwrite``; a radius that is not a
    positive number up to 5"; a table without rows, without ``ra``/``dec`` as numbers in degrees (dec
    within +-90), or that already has a column this adds; tiles all with placeholder positions; rows
    matched to tiles of two surveys; no row matched (with a hint where the positions look like hours or
    radians).
    """
    import pyarrow as pa

    from skymorph.storage import check_new, write_parquet
    from skymorph.tables import LABELLED_POSITION_ARCSEC, carried_metadata, plain, read_table, sky_positions
    from skymorph.tiles import read_tiles

    if not str(out).lower().endswith((".parquet", ".pq")):
        raise InputError(f"--out {out!r}: labels match writes Parquet; give a .parquet file")
    if not (np.isfinite(radius_arcsec) and 0 < radius_arcsec <= LABELLED_POSITION_ARCSEC):
        raise InputError(f"--radius {radius_arcsec}: give a number of arcseconds above 0 and at most "
                         f"{LABELLED_POSITION_ARCSEC:g}, the most train allows between a galaxy's labelled position and "
                         "its image (1 is typical for one survey's positions)")
    check_new(out, "--out", overwrite, storage_options)
    source, sha256 = read_table(str(table), storage_options, what="table")
    source = plain(source)
    if not source.num_rows:
        raise InputError(f"table {table!r} has no rows; give one row per galaxy")
    if "object_id" in source.column_names:
        raise InputError(f"table {table!r} already has an object_id column; train on it as it is if those are the tiles' "
                         "ids, else rename it (labels match adds the tiles' object_id, tile and row)")
    taken = [name for name in ADDED_COLUMNS if name in source.column_names]
    if taken:
        raise InputError(f"table {table!r} already has column(s) {', '.join(map(repr, taken))}, which labels match adds; "
                         "rename them")
    said = sky_positions(str(table), source, needed_for="to match them to the tiles' galaxies")
    beyond = np.abs(said[:, 1]) > 90
    if beyond.any():
        raise InputError(f"table {table!r} has dec {said[np.argmax(beyond), 1]:g} ({int(beyond.sum())} rows beyond +-90); "
                         "give ra and dec in degrees, and leave an unknown position empty")
    tile_urls = read_tiles(tiles, storage_options)
    best = _match_tiles(tile_urls, said, radius_arcsec, storage_options, progress)

    within = np.isfinite(best.arcsec)
    if not within.any():
        raise InputError(_nothing_matched(table, said, tile_urls, radius_arcsec, storage_options))
    rows = np.flatnonzero(within)
    _check_one_galaxy_per_id(best, rows)
    # a galaxy nearest to two rows goes to the nearer (the first at one distance): sort stably by (galaxy,
    # separation), keep each galaxy's first; by id, since a galaxy in two overlapping tiles is found in both
    rows = rows[np.lexsort((best.arcsec[rows], best.object_id[rows]))]
    _, first = np.unique(best.object_id[rows], return_index=True)
    kept = np.sort(rows[first])
    duplicates = len(rows) - len(kept)
    unmatched = len(said) - len(rows)
    _warn_left_out(table, unmatched, duplicates, len(said), radius_arcsec)

    added = {"object_id": pa.array(best.object_id[kept], pa.int64()), "tile": pa.array(best.tile[kept], pa.string()),
             "row": pa.array(best.row[kept], pa.int64()), "match_arcsec": pa.array(best.arcsec[kept], pa.float64())}
    result = source.take(pa.array(kept))
    for i, (name, column) in enumerate(added.items()):
        result = result.add_column(i, name, column)
    record = {"table": str(table), "table_sha256": sha256, "tiles": str(tiles), "tile_count": len(tile_urls),
              "tiles_without_positions": best.skipped, "radius_arcsec": float(radius_arcsec), "rows": len(said),
              "matched": len(kept), "unmatched": unmatched, "duplicates": duplicates}
    # pandas' and astropy's keys describe the table's columns without the added ones; anything else (a tree) carries over
    metadata = carried_metadata(source)
    metadata[MATCHED_KEY.encode()] = json.dumps(record).encode()
    write_parquet(result.replace_schema_metadata(metadata), out, storage_options)
    return Matched(out=str(out), rows=len(said), matched=len(kept), unmatched=unmatched, duplicates=duplicates,
                   median_arcsec=float(np.median(best.arcsec[kept])), radius_arcsec=float(radius_arcsec))


@dataclass(frozen=True)
class _Nearest:
    """Per row of the table, the nearest tile galaxy within the radius: separation in arcseconds (inf where
    none), its ``object_id``, tile name, row and (ra, dec); and how many tiles were skipped for placeholder
    positions."""

    arcsec: np.ndarray
    object_id: np.ndarray
    tile: np.ndarray
    row: np.ndarray
    ra_dec: np.ndarray
    skipped: int


def _sky(ra_dec: np.ndarray):
    """(ra, dec) rows in degrees as an astropy SkyCoord."""
    import astropy.units as u
    from astropy.coordinates import SkyCoord

    return SkyCoord(ra_dec[:, 0] * u.deg, ra_dec[:, 1] * u.deg)


def _tiles_with_positions(tile_urls: list[str], storage_options, progress: bool, desc: str):
    """``(name, object_id, (n, 2) ra_dec)`` per tile, one tile at a time, so that memory holds the table and
    one tile however many tiles a survey has; None for a tile with placeholder positions."""
    from skymorph.progress import progress_bar
    from skymorph.tiles import open_tile, tile_name

    for url in progress_bar(tile_urls, desc=desc, unit="tile", disable=not progress, leave=False):
        tile = open_tile(url, storage_options=storage_options)
        if tile.placeholder_positions:
            yield None
            continue
        object_id, ra, dec = tile.read_coords()
        yield tile_name(url), object_id, np.stack([ra, dec], axis=1)


def _report_skipped(skipped: int, n_tiles: int) -> None:
    """A warning for tiles with placeholder positions, which are not searched; an error when all are."""
    if skipped == n_tiles:
        raise InputError(f"the {n_tiles} tile(s) given have placeholder positions (cutouts ingested without "
                         "ra/dec), so there is nothing to match positions to; give the table the object_id each galaxy "
                         "was ingested with instead")
    if skipped:
        print(f"skymorph: warning: tiles with placeholder positions (ingested without ra/dec) are not searched: {skipped} of "
              f"{n_tiles}", file=sys.stderr)


def _match_tiles(tile_urls: list[str], said: np.ndarray, radius: float, storage_options, progress: bool) -> _Nearest:
    """For each (ra, dec) row of ``said`` the nearest tile galaxy within ``radius`` arcseconds: the pairs
    within the radius from astropy's :func:`~astropy.coordinates.search_around_sky` (a k-d tree on the
    table's unit vectors, built once), tile by tile, each row keeping the nearest pair so far (the first
    tile's at one distance). Rows without a position match nothing."""
    import astropy.units as u
    from astropy.coordinates import search_around_sky

    known = np.flatnonzero(np.isfinite(said).all(axis=1))
    table_sky = _sky(said[known])
    n = len(said)
    arcsec, object_id = np.full(n, np.inf), np.zeros(n, dtype=np.int64)
    tile, row, ra_dec = np.full(n, None, dtype=object), np.full(n, -1, dtype=np.int64), np.full((n, 2), np.nan)
    skipped = 0
    for found in _tiles_with_positions(tile_urls, storage_options, progress, "matching tiles"):
        if found is None:
            skipped += 1
            continue
        name, ids, at = found
        if not len(known) or not len(ids):
            continue
        in_tile, in_table, separation, _ = search_around_sky(_sky(at), table_sky, radius * u.arcsec)
        separation, targets = separation.to_value(u.arcsec), known[in_table]
        order = np.lexsort((separation, targets))  # by row, nearest first: keep each row's first pair
        _, first = np.unique(targets[order], return_index=True)
        pairs = order[first]
        pairs = pairs[separation[pairs] < arcsec[targets[pairs]]]  # nearer than any earlier tile's
        in_tile, targets = in_tile[pairs], targets[pairs]
        arcsec[targets], object_id[targets], tile[targets] = separation[pairs], ids[in_tile], name
        row[targets], ra_dec[targets] = in_tile, at[in_tile]
    _report_skipped(skipped, len(tile_urls))
    return _Nearest(arcsec, object_id, tile, row, ra_dec, skipped)


def _check_one_galaxy_per_id(best: _Nearest, rows: np.ndarray) -> None:
    """Refuse matches that name one ``object_id`` at two positions more than 1" apart: tiles of two surveys,
    whose ids are unique only within each (as :func:`~skymorph.trainer.data.load_images` refuses them).
    One galaxy in two overlapping tiles of a survey passes."""
    from skymorph.tables import SAME_GALAXY_ARCSEC, arcsec_between, arcsec_text

    order = rows[np.argsort(best.object_id[rows], kind="stable")]
    _, first, group = np.unique(best.object_id[order], return_index=True, return_inverse=True)
    if len(first) == len(order):
        return
    to_first = arcsec_between(best.ra_dec[order], best.ra_dec[order[first[group]]])
    apart = np.flatnonzero(to_first > SAME_GALAXY_ARCSEC)
    if len(apart):
        a, b = order[first[group[apart[0]]]], order[apart[0]]
        raise InputError(
            f"tiles {best.tile[a]!r} and {best.tile[b]!r} hold object_id {int(best.object_id[a])} at positions "
            f"{arcsec_text(float(to_first[apart[0]]))} apart ({len(np.unique(group[apart]))} ids like it): tiles of two "
            "surveys, whose ids are unique only within each; match each survey's tiles on its own"
        )


def _nothing_matched(table: str, said: np.ndarray, tile_urls: list[str], radius: float, storage_options) -> str:
    """The error for a table none of whose rows has a tile galaxy within ``radius``: positions in hours or
    radians where (a sample of 1,000 rows) would match, else how far apart the nearest pair is. A second
    pass over the tiles, tile by tile."""
    import astropy.units as u

    from skymorph.tables import OTHER_UNITS, arcsec_text

    known = np.isfinite(said).all(axis=1)
    if not known.any():
        return f"table {table!r} has no row with both ra and dec; give each galaxy's position in degrees"
    sample = said[known][:1000]
    scaled = {unit: _sky(sample * scale) for unit, scale in OTHER_UNITS if (np.abs(sample[:, 1] * scale[1]) <= 90).all()}
    table_sky, nearest, near_in = _sky(said[known]), np.inf, set()
    for found in _tiles_with_positions(tile_urls, storage_options, False, ""):
        if found is None or not len(found[2]):
            continue
        at = found[2]
        tile_sky = _sky(at)  # each tile galaxy's nearest row: their least separation is the nearest pair's
        nearest = min(nearest, float(tile_sky.match_to_catalog_sky(table_sky)[1].min().to_value(u.arcsec)))
        for unit, sky in scaled.items():
            if unit not in near_in and (tile_sky.match_to_catalog_sky(sky)[1] <= radius * u.arcsec).any():
                near_in.add(unit)
    for unit, _ in OTHER_UNITS:
        if unit in near_in:
            return (f"table {table!r} gives ra, dec in {unit}, it seems: read as {unit}, its galaxies are at the tiles'; "
                    "give them in degrees")
    return (f'no row of table {table!r} has a tile galaxy within {radius:g}" (the nearest pair is {arcsec_text(nearest)} '
            f"apart) in the {len(tile_urls)} tile(s) given: give the tiles of the sky the table covers, or a larger --radius "
            "(up to 5) if the positions are of another catalog")


def _warn_left_out(table: str, unmatched: int, duplicates: int, rows: int, radius: float) -> None:
    """One warning line for the rows left out, when there are any."""
    parts = []
    if unmatched:
        parts.append(f'{unmatched} without a tile galaxy within {radius:g}" (outside the tiles, or without a position)')
    if duplicates:
        parts.append(f"{duplicates} nearest to a galaxy that a nearer row took (a galaxy classified twice; its votes "
                     "are not added)")
    if parts:
        print(f"skymorph: warning: rows of table {table!r} left out, of {rows}: {', '.join(parts)}", file=sys.stderr)
