r"""Pick the next Galaxy Zoo batch by BALD (``skymorph catalog pick``).

Galaxies are ranked by BALD (Walmsley et al. 2020, MNRAS 491, 1554: the expected information a
volunteer's vote gives about the model): ``bald_total``, or for one question q

.. math:: s = \mathrm{asked}_q \, \mathrm{bald}_q ,

the information expected from the volunteers the decision tree leads to q (the term of q in
``bald_total``): a galaxy whose volunteers are not asked q, an edge-on disk for ``bar``, tells
nothing about q however uncertain the model is. ``weight_by_asked=False`` ranks by
:math:`\mathrm{bald}_q` alone. Two strategies:

``top``
    The ``n`` largest scores; ties broken by the smaller ``object_id`` so the batch is deterministic.
``power``
    Stochastic batch acquisition (Kirsch et al. 2023, "Stochastic Batch Acquisition: A Simple
    Baseline for Deep Active Learning", TMLR): ``n`` galaxies drawn without replacement with
    probability proportional to :math:`\mathrm{BALD}^\beta`. By the Gumbel top-k trick this is the
    ``n`` largest keys

    .. math:: k_i = \beta \ln s_i + G_i, \qquad G_i = -\ln(-\ln U_i), \quad U_i \sim U(0, 1)

    over galaxies with score :math:`s_i > 0`. :math:`U_i` is a hash of ``(seed, model, object_id)``
    (splitmix64; the model is the catalog's ``model_sha256``), so a pick depends only on the seed and
    the catalog, not on how it is partitioned or in which order partitions are read, and each round
    of active learning (a new model, so a new catalog) draws afresh with the same ``--seed``: a hash
    of the id and the seed alone would give every galaxy the same Gumbel noise in every round,
    keeping the same ones at the back of every batch.

Both are out of core: DuckDB streams ``object_id``, the score, ``tile`` and ``row`` (a top-n heap for
``top``; Arrow batches merged into a running top-n of keys for ``power``), then reads the other
columns of the ``n`` picked rows. A galaxy is picked at most once, at its best row. ``exclude`` (ids already labelled or retired) is an anti-join.
"""

from __future__ import annotations

import contextlib
import math
import sys

import numpy as np

from skymorph.catalog.info import Catalog, open_catalog
from skymorph.catalog.query import connect
from skymorph.errors import CatalogError, InputError, did_you_mean
from skymorph.schema import Schema
from skymorph.seeds import check_seed
from skymorph.tiles import object_ids

__all__ = ["pick", "pick_to", "name_subject_images", "write_subject_images", "gumbel_keys", "hash_uniform", "model_salt", "read_ids", "STRATEGIES"]

STRATEGIES = ("top", "power")
_BATCH_ROWS = 1 << 20
# What the columns a pick adds to the catalog's mean (the catalog's own are described by
# skymorph.catalog.writer.column_metadata), as Arrow field metadata: exports to Parquet, FITS and
# VOTable carry it.
_PICK_DESCRIPTIONS = {
    "rank": "Position in the batch, 1 first: by score (strategy top) or in the order drawn (strategy power).",
    "image_location": "Where the galaxy's image is: <tile store URL>#images[<row>], a row of the tile's images array.",
    "model_sha256": "SHA-256 of the exported model whose catalog the batch was picked from.",
    "image": "The galaxy's cutout, a PNG file: its path relative to the manifest's directory where both are local.",
}

_GOLDEN = np.uint64(0x9E3779B97F4A7C15)


def _splitmix64(x: np.ndarray) -> np.ndarray:
    """Steele et al.'s splitmix64 finaliser on uint64 (wrapping arithmetic), a bijection with good mixing."""
    with np.errstate(over="ignore"):
        z = x + _GOLDEN
        z = (z ^ (z >> np.uint64(30))) * np.uint64(0xBF58476D1CE4E5B9)
        z = (z ^ (z >> np.uint64(27))) * np.uint64(0x94D049BB133111EB)
        return z ^ (z >> np.uint64(31))


def hash_uniform(object_id, seed: int, salt: int = 0) -> np.ndarray:
    """U(0, 1) per ``object_id``: ``(splitmix64(splitmix64(seed ^ salt) ^ id) >> 11 + 0.5) / 2^53``, never
    0 or 1 (the largest, (2^53 - 0.5) / 2^53, rounds to 1.0 in float64: it is the float below 1 instead,
    else its galaxy's Gumbel noise is infinite). ``salt``: a 64-bit integer, the catalog's model
    (:func:`model_salt`) in a pick."""
    ids = np.asarray(object_id, dtype=np.int64).view(np.uint64)
    key = _splitmix64(np.array([check_seed(seed) ^ salt], dtype=np.uint64))[0]
    bits = _splitmix64(ids ^ key) >> np.uint64(11)
    return np.minimum((bits.astype(np.float64) + 0.5) / 2.0**53, np.nextafter(1.0, 0.0))


def model_salt(model_sha256: str) -> int:
    """The first 64 bits of a model's sha256 digest, which salt the Gumbel noise of a pick."""
    return int(model_sha256[:16], 16)


def gumbel_keys(object_id, score, seed: int, beta: float = 1.0, salt: int = 0) -> np.ndarray:
    """Gumbel top-k keys, in the order of ``beta * ln(score) + G`` (see the module docstring); ``-inf``
    where score <= 0. Computed so for beta < 1 (``G`` at beta = 0), and as ``ln(score) + G / beta``, the
    same order divided by beta, from 1 on: ``beta * ln(score)`` overflowed to -inf for every galaxy at a
    large beta, as ``G / beta`` did to +inf at a tiny one (1e-310: ties, broken by object_id)."""
    score = np.asarray(score, dtype=np.float64)
    with np.errstate(divide="ignore", invalid="ignore"):
        log_score = np.where(score > 0, np.log(np.where(score > 0, score, 1.0)), -np.inf)
    gumbel = -np.log(-np.log(hash_uniform(object_id, seed, salt)))
    if beta < 1:
        with np.errstate(invalid="ignore"):  # 0 x -inf where score <= 0: -inf below
            return np.where(score > 0, beta * log_score + gumbel, -np.inf)
    return log_score + gumbel / beta


def read_ids(source, storage_options: dict | None = None, id_column: str = "object_id", schema: Schema | None = None) -> np.ndarray:
    """Object ids (int64) from the ``id_column`` of a CSV, FITS, VOTable or Parquet file (e.g. ``galaxy_id`` in a
    Galaxy Zoo table), of several (a list of paths: the labels and the batches still with the
    volunteers), or of a table (pandas or pyarrow), or from an iterable.

    A table with vote counts of ``schema``'s answers (labels, in any spelling ``train`` reads) names only
    its rows with a vote, as ``train`` reads labels: a row without any is a galaxy nobody has classified
    (a cutout ingested without a label), not returned, and warned about unless another of the files
    lists it (a batch still with the volunteers)."""
    several = isinstance(source, (list, tuple)) and source and all(isinstance(s, str) or hasattr(s, "__fspath__") for s in source)
    read = [_read_one(one, storage_options, id_column, schema) for one in (source if several else [source])]
    ids = np.concatenate([got for got, _, _ in read])
    for _, unvoted, what in read:
        left = unvoted[~np.isin(unvoted, ids)]
        if len(left):
            print(f"skymorph: warning: {what}: {len(left)} row(s) have no votes (first: {id_column} {int(left[0])}), "
                  "galaxies nobody has classified, so they may be picked; give the batches still with the volunteers "
                  "to --exclude too", file=sys.stderr)
    return ids


def _read_one(source, storage_options: dict | None, id_column: str, schema: Schema | None) -> tuple[np.ndarray, np.ndarray, str]:
    """``(ids, ids of rows without votes, what to call the source)`` of one source of :func:`read_ids`."""
    import pyarrow as pa

    from skymorph.gz_tables import vote_columns

    if isinstance(source, (pa.Table, pa.RecordBatch)):  # a table: iterating it gives its column names
        return _ids_of(pa.table(source), id_column, "the exclude table", schema)
    if hasattr(source, "columns"):  # pandas: the id and vote columns alone (the others may not convert), or the index
        if id_column not in source.columns and id_column in (source.index.names or []):
            source = source.reset_index()
        names = [str(c) for c in source.columns]
        if id_column not in names:
            raise _no_id_column("the exclude table", id_column, names)
        columns = {id_column: pa.array(source[id_column], from_pandas=True)}
        for name in vote_columns(names, schema) if schema is not None else ():
            try:
                columns[name] = pa.array(source[name], from_pandas=True)
            except (pa.ArrowInvalid, pa.ArrowTypeError):  # mixed text and numbers: no votes to read (_voted)
                columns[name] = pa.array(source[name].astype(str))
        return _ids_of(pa.table(columns), id_column, "the exclude table", schema)
    if not isinstance(source, (str, bytes)) and not hasattr(source, "__fspath__"):  # ids: checked as a file's are
        values = pa.array(source if hasattr(source, "dtype") else list(source), from_pandas=True)
        return object_ids(values, "the exclude ids", drop_empty=True), np.empty(0, np.int64), ""
    from skymorph.storage import filesystem
    from skymorph.tables import CSV_SUFFIXES, plain, read_table

    url = str(source)
    fs, path = filesystem(url, storage_options)
    if not fs.exists(path):
        raise InputError(f"--exclude file {url!r} does not exist")
    table, _ = read_table(url, storage_options, what="--exclude")
    table = plain(table)
    return _ids_of(table, id_column, f"--exclude {url!r}", schema, text=url.lower().endswith(CSV_SUFFIXES))


def _no_id_column(what: str, id_column: str, names: list[str]) -> InputError:
    listed = ", ".join(names[:12]) + (f", ... ({len(names) - 12} more)" if len(names) > 12 else "")
    return InputError(f"{what} has no {id_column} column (columns: {listed}); name its id column with "
                      "--exclude-id-column (exclude_id_column= in Python)." + did_you_mean(id_column, names))


def _ids_of(table, id_column: str, what: str, schema: Schema | None = None, text: bool = False) -> tuple[np.ndarray, np.ndarray, str]:
    """``(ids, ids of rows without votes, what)``: the ``id_column`` of pyarrow ``table`` as int64
    (:func:`skymorph.tiles.object_ids`), its empty cells dropped (a row of the labels or a batch may not
    have its id yet); with ``schema``'s vote columns, only the rows with a vote (:func:`read_ids`).
    ``text``: the table was read from CSV, whose first line is taken for the column names."""
    names = table.column_names
    if text and len(names) == 1 and _is_integer(names[0]):  # else --exclude-id-column 1735 un-excluded galaxy 1735
        header = "object_id (and drop --exclude-id-column)" if _is_integer(id_column) else id_column
        raise InputError(f"{what} looks like a list of ids without a header: its first line, {names[0]}, was read as the "
                         f"column's name; add a first line {header}")
    if id_column not in names:
        raise _no_id_column(what, id_column, names)
    voted = _voted(table, schema, what) if schema is not None else None
    unvoted = np.empty(0, np.int64)
    if voted is not None and not voted.all():
        unvoted = object_ids(table.filter(~voted).column(id_column), what, name=id_column, drop_empty=True)
        table = table.filter(voted)
    return object_ids(table.column(id_column), what, name=id_column, drop_empty=True), unvoted, what


def _is_integer(text: str) -> bool:
    return text.strip().lstrip("-").isdigit()


def _voted(table, schema: Schema, what: str) -> np.ndarray | None:
    """Per row of ``table``, whether any of its columns of ``schema``'s vote counts
    (:func:`skymorph.gz_tables.vote_columns`) holds a count above 0; None without such columns, or
    (with a warning) where one is not numbers: then every row names a galaxy to exclude."""
    import pyarrow as pa
    import pyarrow.compute as pc

    from skymorph.gz_tables import vote_columns

    present = vote_columns(table.column_names, schema)
    if not present:
        return None
    try:
        counts = [table.column(c).cast(pa.float64()) for c in present]
    except (pa.ArrowInvalid, pa.ArrowNotImplementedError):
        print(f"skymorph: warning: {what}: its vote columns are not all numbers, so every row is excluded, with votes or "
              "not", file=sys.stderr)
        return None
    return np.any([pc.fill_null(pc.greater(c, 0), False).to_numpy(zero_copy_only=False) for c in counts], axis=0)


def pick_to(
    url: str | Catalog,
    n: int,
    out: str,
    gallery_png: str | None = None,
    question: str | None = None,
    storage_options: dict | None = None,
    images: str | None = None,
    **choices,
):
    """:func:`pick` (``choices``: its other arguments), written to ``out`` (CSV, Parquet, FITS or VOTable by
    its extension) and, with ``gallery_png``, drawn there (:func:`skymorph.catalog.gallery.gallery`):
    ``skymorph catalog pick``. Returns the batch.

    ``images``: a directory to write each picked galaxy's cutout to, as ``<object_id>.png``; the batch
    then starts with an ``image`` column naming each file (:func:`name_subject_images`), so that a local
    CSV ``out`` with local ``images`` is a Zooniverse subject manifest (``panoptes subject-set
    upload-subjects --file-column 1 SET out.csv``). A file of the same name is replaced: it is the same
    galaxy's cutout.

    Both files or neither, so that a rerun is not refused for the one written before the other failed:
    the gallery is drawn first, in memory (it reads the tiles, the likelier to fail), then the images
    are written, then ``out``, then the gallery. A batch that cannot be written changes neither file, an
    earlier one replaced with ``overwrite`` included (its bytes are kept until the gallery is written);
    images written before a failure stay (each whole: an earlier batch's manifest may name them). An
    empty batch (every galaxy excluded) is written without a gallery, with a warning; a file at
    ``gallery_png`` (the replaced batch's) is removed."""
    from skymorph.catalog.export import check_exportable, export_table, output_format
    from skymorph.catalog.gallery import check_png
    from skymorph.catalog.gallery import gallery_png as draw
    from skymorph.storage import atomic_write_bytes, read_bytes, remove_file

    output_format(out)
    if gallery_png:
        check_png(gallery_png)
    catalog = url if isinstance(url, Catalog) else open_catalog(url, storage_options)
    for output, flag in ((out, "--out"), (gallery_png, "--gallery"), (images, "--images")):
        if output:
            catalog.check_outside(output, flag)
    batch = pick(catalog, n, question=question, storage_options=storage_options, **choices)
    if gallery_png and batch.num_rows == 0:
        print(f"skymorph: warning: nothing was picked, so no gallery is drawn at {gallery_png} (a gallery there is removed)",
              file=sys.stderr)
    png = draw(batch, catalog, question, storage_options) if gallery_png and batch.num_rows else None
    if images:
        batch = name_subject_images(batch, images, out)
        check_exportable(batch, out)  # before the images are written
        write_subject_images(batch, images, storage_options)
    previous = None  # the batch ``out`` holds now, back if the gallery cannot be written: the one the volunteers have
    if png is not None:
        with contextlib.suppress(FileNotFoundError):
            previous = read_bytes(out, storage_options)
    export_table(batch, out, storage_options)
    if png is not None:
        try:
            atomic_write_bytes(gallery_png, png, storage_options)
        except BaseException:
            with contextlib.suppress(Exception):  # the gallery's error is the one to see
                if previous is None:
                    remove_file(out, storage_options)
                else:
                    atomic_write_bytes(out, previous, storage_options)
            raise
    elif gallery_png:  # an empty batch: not beside the old batch's gallery (remove_file takes a missing one)
        remove_file(gallery_png, storage_options)
    return batch


_ZOONIVERSE_MAX_BYTES = 1 << 20
"""The largest file Zooniverse's uploader takes (panoptes-cli's MAX_UPLOAD_FILE_SIZE)."""


def _image_urls(batch, directory: str) -> list[str]:
    from skymorph.storage import join

    return [join(directory, f"{object_id}.png") for object_id in batch["object_id"].to_pylist()]


def name_subject_images(batch, directory: str, manifest: str):
    """``batch`` with a first column ``image`` naming ``directory/<object_id>.png`` as a subject manifest
    at ``manifest`` names it: relative to the manifest's directory where both are local, the symbolic
    links of both resolved (Zooniverse's uploader joins the two, and the system resolves a ``..`` after
    a link); an S3 image by its URL, a local image beside a manifest on S3 by its absolute path."""
    import os

    import pyarrow as pa

    from skymorph.storage import is_remote

    paths = _image_urls(batch, directory)
    if not is_remote(directory):
        paths = [os.path.realpath(path) for path in paths]
        if not is_remote(manifest):
            manifest_dir = os.path.dirname(os.path.realpath(manifest))
            paths = [os.path.relpath(path, manifest_dir) for path in paths]
    field = pa.field("image", pa.string(), metadata={"description": _PICK_DESCRIPTIONS["image"]})
    return batch.add_column(0, field, pa.array(paths, pa.string()))


def write_subject_images(batch, directory: str, storage_options: dict | None = None) -> None:
    """Write each picked galaxy's cutout, from its tile store as the model saw it, to
    ``directory/<object_id>.png``, each file whole or not at all. Warns of images over 1 MiB, which
    Zooniverse's uploader refuses."""
    from skymorph.catalog.cutouts import iter_cutouts, png_bytes
    from skymorph.progress import progress_bar
    from skymorph.storage import atomic_write_bytes

    urls = _image_urls(batch, directory)
    too_big = []
    cutouts = iter_cutouts(batch, storage_options)
    for i, image in progress_bar(cutouts, total=len(urls), desc="subject images", unit="image", disable=len(urls) < 100):
        data = png_bytes(image)
        atomic_write_bytes(urls[i], data, storage_options)
        if len(data) > _ZOONIVERSE_MAX_BYTES:
            too_big.append((len(data), urls[i]))
    if too_big:
        size, url = max(too_big)
        print(f"skymorph: warning: {len(too_big)} subject images exceed the 1 MiB Zooniverse takes (the largest: {url}, "
              f"{size / 2**20:.1f} MiB); ingest the tiles at a smaller --size to upload them", file=sys.stderr)


def _score(catalog: Catalog, question: str | None, weight_by_asked: bool) -> tuple[str, str]:
    """``(name, SQL expression)`` of the score: ``bald_total``, ``{q}_asked_bald`` or ``{q}_bald``."""
    if question is None:
        return "bald_total", '"bald_total"'
    catalog.metadata.schema.question(question)
    columns = [f"{question}_asked", f"{question}_bald"] if weight_by_asked else [f"{question}_bald"]
    for column in columns:
        if column not in catalog.columns:
            raise CatalogError(f"catalog {catalog.url!r} has no column {column!r}." + did_you_mean(column, catalog.columns))
    if weight_by_asked:
        return f"{question}_asked_bald", f'("{question}_asked" * "{question}_bald")'
    return f"{question}_bald", f'"{question}_bald"'


def _first_of_each(ids: np.ndarray) -> np.ndarray:
    """The positions of the first row of each id (rows in rank order: its best), in that order."""
    _, first = np.unique(ids, return_index=True)
    return np.sort(first)


def _first_per_object(ids: np.ndarray, *columns: np.ndarray) -> tuple[np.ndarray, ...]:
    """Keep the first row of each ``object_id`` (rows already in rank order), preserving that order."""
    keep = _first_of_each(ids)
    return (ids[keep], *(c[keep] for c in columns))


def _top(con, score_sql: str, where: str, n: int):
    """The ``n`` distinct galaxies with the largest scores, each at its best row (a galaxy seen in two
    overlapping tiles has two rows). Exact: the LIMIT doubles until ``n`` distinct ids are found or the
    catalog runs out, which duplicates make rare."""
    limit = n
    while True:
        rows = con.execute(
            f'SELECT object_id, {score_sql} AS score, tile, row FROM catalog WHERE {where} '
            f'ORDER BY score DESC, object_id ASC, tile ASC, row ASC LIMIT {limit}'
        ).fetchnumpy()
        ids, scores, tiles, row = _first_per_object(
            rows["object_id"].astype(np.int64), rows["score"].astype(np.float64),
            np.asarray(rows["tile"], dtype=object), rows["row"].astype(np.int64),
        )
        if len(ids) >= n or len(rows["object_id"]) < limit:
            return ids[:n], scores[:n], tiles[:n], row[:n]
        limit *= 2


def _best_rows(rows, n: int):
    """The rows of pyarrow table ``rows`` (``object_id``, ``score``, ``key``, ``tile``, ``row``) holding the
    ``n`` largest keys of distinct ids, each id at its best row, in rank order: key descending, then
    ``object_id``, ``tile`` and ``row``, as ``top``'s ORDER BY. So the batch does not depend on the order
    the rows arrive in, where keys tie (a galaxy seen in two overlapping tiles, float32 scores at a huge
    beta). Only the rows with a key at least the n-th largest are sorted, unless a galaxy is twice among them."""
    import pyarrow as pa
    import pyarrow.compute as pc

    keys = rows["key"].to_numpy()
    candidates = rows
    if len(keys) > n:
        nth = np.partition(keys, len(keys) - n)[len(keys) - n]
        candidates = rows.filter(pa.array(keys >= nth))  # every row tied with the n-th key too
    while True:
        order = pc.sort_indices(candidates, sort_keys=[("key", "descending"), ("object_id", "ascending"), ("tile", "ascending"),
                                                       ("row", "ascending")])
        ranked = candidates.take(order)
        first = _first_of_each(ranked["object_id"].to_numpy())
        if len(first) >= n or candidates.num_rows == rows.num_rows:
            return ranked.take(pa.array(first[:n], pa.int64()))
        candidates = rows  # a galaxy twice among them (overlapping tiles): its next best may be below the n-th key


def _power(con, score_sql: str, where: str, n: int, seed: int, beta: float, salt: int):
    """The ``n`` distinct galaxies with the largest Gumbel keys, each at its best row. Exact out of core:
    a row left out of a batch's or the running top ``n`` has ``n`` distinct ids with larger keys."""
    import pyarrow as pa

    reader = con.sql(f'SELECT object_id, {score_sql} AS score, tile, row FROM catalog WHERE {where} AND {score_sql} > 0') \
        .to_arrow_reader(_BATCH_ROWS)
    best = pa.table({"object_id": pa.array([], pa.int64()), "score": pa.array([], pa.float64()), "key": pa.array([], pa.float64()),
                     "tile": pa.array([], pa.string()), "row": pa.array([], pa.int64())})
    for batch in reader:
        ids = batch.column(0).to_numpy().astype(np.int64)
        scores = batch.column(1).to_numpy().astype(np.float64)
        rows = pa.table({"object_id": ids, "score": scores, "key": gumbel_keys(ids, scores, seed, beta, salt),
                         "tile": batch.column(2).cast(pa.string()), "row": batch.column(3).cast(pa.int64())})
        best = _best_rows(pa.concat_tables([best, _best_rows(rows, n)]), n)
    return (best["object_id"].to_numpy(), best["score"].to_numpy(), np.asarray(best["tile"].to_pylist(), dtype=object),
            best["row"].to_numpy())


def pick(
    url: str | Catalog,
    n: int,
    question: str | None = None,
    strategy: str = "top",
    beta: float | None = None,
    seed: int | None = None,
    exclude=None,
    storage_options: dict | None = None,
    weight_by_asked: bool | None = None,
    exclude_id_column: str = "object_id",
):
    """The next volunteer batch from the catalog at ``url``, as a ``pyarrow.Table`` in rank order.

    Columns: ``rank`` (1 = first), ``object_id``, ``ra``, ``dec`` (empty for a catalog of cutouts ingested
    without positions), ``tile``, ``row``,
    ``image_location`` (``<tile URL>#images[<row>]``), the score (``bald_total``; with a ``question``,
    ``{question}_asked_bald``, or ``{question}_bald`` unless ``weight_by_asked``) and ``model_sha256``.
    ``exclude``: a table file read as labels are (CSV, FITS, VOTable or Parquet:
    :func:`skymorph.tables.read_table`) with ``object_id`` (or the ids in its ``exclude_id_column``), a list of
    such files, or an iterable of ids never to pick; of labels (a file with vote columns of the catalog's
    tree), only the rows with votes. Each galaxy comes back at most once: one seen in overlapping tiles
    (two rows, one ``object_id``) is ranked by its best row. Fewer than ``n`` rows come back when fewer
    galaxies qualify (``power`` needs a positive score). ``beta`` (default 1) and ``seed`` (default 0) are
    ``power``'s, and an error with ``top``, which takes the ``n`` highest scores; ``weight_by_asked`` (default
    True) is a ``question``'s, and an error without one (``bald_total`` weights each question by it).
    """
    import pyarrow as pa

    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise InputError(f"n must be a positive integer, got {n!r}")
    if strategy not in STRATEGIES:
        raise InputError(f"strategy must be one of {', '.join(STRATEGIES)}, got {strategy!r}." + did_you_mean(str(strategy), STRATEGIES))
    for name, value in (("beta", beta), ("seed", seed)):
        if value is not None and strategy != "power":  # top takes the n highest: nothing to weight or draw
            raise InputError(f"{name} (--{name}) applies to strategy power only; drop it, or add --strategy power")
    if weight_by_asked is not None and question is None:
        raise InputError("weight_by_asked (--weight-by-asked, --no-weight-by-asked) applies to a question only; bald_total "
                         "weights each question by it")
    weight_by_asked = weight_by_asked is not False
    beta = 1.0 if beta is None else beta
    if not (math.isfinite(beta) and beta >= 0):
        raise InputError(f"beta (--beta) must be a finite number >= 0, got {beta}")
    seed = check_seed(0 if seed is None else seed)
    catalog = url if isinstance(url, Catalog) else open_catalog(url, storage_options)
    score, score_sql = _score(catalog, question, weight_by_asked)
    excluded = pa.table({"object_id": read_ids(exclude, storage_options, exclude_id_column, catalog.metadata.schema)
                         if exclude is not None else np.empty(0, np.int64)})
    where = f"{score_sql} IS NOT NULL AND NOT isnan({score_sql}) AND object_id NOT IN (SELECT object_id FROM excluded)"
    with connect(catalog, check_rows=True) as con:
        con.register("excluded", excluded)
        # a survey's own ids (GZ2's), or the wrong --exclude-id-column, exclude nothing, without a word; one
        # match ends the scan, so only that case reads every id
        if excluded.num_rows and not con.execute("SELECT 1 FROM catalog WHERE object_id IN (SELECT object_id FROM excluded) "
                                                 "LIMIT 1").fetchall():
            print(f"skymorph: warning: none of the {excluded.num_rows} ids to exclude ({exclude_id_column}) is a galaxy of "
                  f"catalog {catalog.url!r}, so this batch excludes nothing: they must be the catalog's object_id (`survey "
                  "ingest`'s labels.parquet, or `labels match` for a table with ra and dec)", file=sys.stderr)
        if strategy == "top":
            ids, scores, tiles, row_numbers = _top(con, score_sql, where, int(n))
        else:
            ids, scores, tiles, row_numbers = _power(con, score_sql, where, int(n), int(seed), float(beta),
                                                     model_salt(catalog.metadata.model_sha256))
        rows = _fetch_rows(con, ids)
    if strategy == "top" and len(scores) and scores.max() <= 0:  # power refuses scores of 0: it returns fewer rows
        print(f"skymorph: warning: every galaxy scores 0 on {score}: the model's MC-dropout samples (T = "
              f"{catalog.metadata.samples}) agree everywhere (T = 1, or a model trained with --dropout 0), so this batch "
              "is in object_id order, not ranked by what volunteers would teach the model", file=sys.stderr)
    # A galaxy in two overlapping tiles has two rows: keep the one that was picked. One (tile, row) can
    # also come back twice, identical, while parts of two plans of its range coexist (a run resumed with
    # another --rows-per-task, until finish_catalog removes the stale ones): keep one per rank.
    ranked = pa.table({"object_id": pa.array(ids, pa.int64()), "tile": pa.array(tiles, pa.string()),
                       "row": pa.array(row_numbers, pa.int64()), "_rank": np.arange(len(ids), dtype=np.int64)})
    rows = rows.join(ranked, keys=["object_id", "tile", "row"], join_type="inner")
    _, first = np.unique(rows["_rank"].to_numpy(), return_index=True)
    rows = rows.take(pa.array(first, pa.int64()))
    image = [f"{t}#images[{r}]" for t, r in zip(rows["tile"].to_pylist(), rows["row"].to_pylist())]
    table = pa.table({
        "rank": np.arange(1, len(ids) + 1, dtype=np.int64),
        "object_id": rows["object_id"],
        # a catalog of cutouts ingested without positions holds ra = dec = 0 for each: no position, in a batch
        # handed to volunteers, and not one that votes giving the galaxies' real positions disagree with
        "ra": pa.nulls(len(ids), pa.float64()) if catalog.properties.placeholder_positions else rows["ra"],
        "dec": pa.nulls(len(ids), pa.float64()) if catalog.properties.placeholder_positions else rows["dec"],
        "tile": rows["tile"],
        "row": rows["row"],
        "image_location": pa.array(image, pa.string()),
        score: pa.array(scores.astype(np.float32)),  # the catalog's type: no spurious digits in a CSV
        "model_sha256": pa.array([catalog.metadata.model_sha256] * len(ids), pa.string()),
    })
    described = pa.schema([f.with_metadata({"description": _PICK_DESCRIPTIONS[f.name]}) if f.name in _PICK_DESCRIPTIONS else f
                           for f in table.schema])
    drawn = f" beta={beta} seed={seed}" if strategy == "power" else ""  # top uses neither
    meta = {**catalog.metadata.to_kv(), "skymorph.pick": f"strategy={strategy} score={score}{drawn}"}
    return pa.Table.from_arrays(table.columns, schema=described.with_metadata(meta))


def _fetch_rows(con, ids: np.ndarray):
    """The base columns of the rows with ``ids``, by a semi-join on them as an Arrow table. An IN list of
    literals took 380 s and 1.8 GB for a batch of 100,000 from 400,000 rows (against 14 s and 330 MB):
    picked ids lie in every part, so its pushdown skipped no row group."""
    import pyarrow as pa

    con.register("picked", pa.table({"object_id": pa.array(ids, pa.int64())}))
    try:
        return con.sql("SELECT object_id, ra, dec, tile, row FROM catalog WHERE object_id IN (SELECT object_id FROM picked)"
                       ).to_arrow_table()
    finally:
        con.unregister("picked")
