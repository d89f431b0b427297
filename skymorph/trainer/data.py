"""Training data: vote labels, images from tile stores, the train/validation split, augmentation, batches.

Labels are a Parquet, CSV or FITS table with ``object_id`` and one integer vote-count column per answer,
``{question}_{answer}``; a missing answer column means nobody gave that answer; a question whose
cells in a row are all empty (null) has no votes there (nobody was asked it), and a row with some of a
question's cells empty is an error (a merge that lost one answer's votes). A column that starts like a
question of the schema (``{question}_``) but names none of its answers, or that is a near miss of an
answer column, is an error (a typo or another schema);
other columns (``iauname``, ...) are ignored, but ``ra`` and ``dec``, where numbers, are checked against
the tiles (see below). Galaxy Zoo's own volunteer tables read as they are: their spelling
(``has-spiral-arms_yes``) reads as the schema's, hyphens as underscores, and the quantities they derive
from the counts (``{answer}_fraction``, ``{answer}_debiased``, ``{question}_total-votes``) are ignored,
the counts being the data; so does Galaxy Zoo 2's own table for schema ``gz2`` (:data:`_GZ2_TABLE`). A
row with no votes in any question is a galaxy nobody has classified (a cutout ingested without a label,
a galaxy still with the volunteers), left out with a warning. ``split``, where given, is ``train``,
``validation``, ``test`` or empty (see :func:`split_masks`). Images are matched by ``object_id`` in the
tile stores of a tile list and held in memory as uint8 (100,000 galaxies at 128 x 128 px are 1.6 GB), so an epoch
never waits on storage.
Where the labels also say where each image is (``tile`` and ``row`` columns, as ``survey synth``,
``survey ingest`` and ``catalog pick`` write them), the image is taken from there, and a galaxy found
only elsewhere is refused: object ids are unique within a survey, not across surveys (synthetic
surveys all number from 0), so labels given with another survey's tiles would otherwise train on the
wrong images without a word. Where they give ``ra`` and ``dec`` instead, as volunteer tables do, a
galaxy far from its image is refused for the same reason.
"""

from __future__ import annotations

import difflib
import hashlib
import math
import queue
import re
import sys
import threading
from dataclasses import dataclass, replace

import numpy as np

from skymorph.errors import InputError, SchemaError, did_you_mean, first_line
from skymorph.schema import Schema
from skymorph.storage import read_bytes
from skymorph.tiles import object_ids

__all__ = [
    "Labels",
    "positions",
    "load_labels",
    "vote_columns",
    "load_images",
    "split_masks",
    "split_kind",
    "augment",
    "BatchLoader",
]

TRAIN, VALIDATION, TEST = "train", "validation", "test"
_SPLIT_NAMES = {"train": TRAIN, "training": TRAIN, "validation": VALIDATION, "val": VALIDATION, "valid": VALIDATION,
                "test": TEST, "testing": TEST, "holdout": TEST}

_CSV_SUFFIXES = (".csv", ".csv.gz", ".txt")  # labels read as CSV, FITS binary tables as FITS; any other name as Parquet
_FITS_SUFFIXES = (".fits", ".fits.gz", ".fit", ".fit.gz")

_ANSWER_DERIVED = ("fraction", "debiased", "weight", "weighted_fraction", "flag")
"""What Galaxy Zoo's volunteer tables give beside each answer's count, ``{answer}_{derived}``: the share
of the question's volunteers, that share corrected for redshift bias, and (GZ2) the votes and share
weighted by each volunteer's consistency, and a clean-sample flag. Derived, so ignored."""
_QUESTION_DERIVED = ("total_votes",)
"""Beside each question's counts: their sum, ignored (Zoobot recomputes it, as GZ DECaLS DR5's totals are
not always that sum)."""

_GZ2_TABLE = {
    "t01_smooth_or_features_a01_smooth": "smooth_or_featured_smooth",
    "t01_smooth_or_features_a02_features_or_disk": "smooth_or_featured_featured_or_disk",
    "t01_smooth_or_features_a03_star_or_artifact": "smooth_or_featured_artifact",
    "t02_edgeon_a04_yes": "disk_edge_on_yes",
    "t02_edgeon_a05_no": "disk_edge_on_no",
    "t03_bar_a06_bar": "bar_yes",
    "t03_bar_a07_no_bar": "bar_no",
    "t04_spiral_a08_spiral": "has_spiral_arms_yes",
    "t04_spiral_a09_no_spiral": "has_spiral_arms_no",
    "t05_bulge_prominence_a10_no_bulge": "bulge_size_no",
    "t05_bulge_prominence_a11_just_noticeable": "bulge_size_just_noticeable",
    "t05_bulge_prominence_a12_obvious": "bulge_size_obvious",
    "t05_bulge_prominence_a13_dominant": "bulge_size_dominant",
    "t06_odd_a14_yes": "something_odd_yes",
    "t06_odd_a15_no": "something_odd_no",
    "t07_rounded_a16_completely_round": "how_rounded_round",
    "t07_rounded_a17_in_between": "how_rounded_in_between",
    "t07_rounded_a18_cigar_shaped": "how_rounded_cigar",
    "t09_bulge_shape_a25_rounded": "bulge_shape_round",
    "t09_bulge_shape_a26_boxy": "bulge_shape_boxy",
    "t09_bulge_shape_a27_no_bulge": "bulge_shape_no_bulge",
    "t10_arms_winding_a28_tight": "spiral_winding_tight",
    "t10_arms_winding_a29_medium": "spiral_winding_medium",
    "t10_arms_winding_a30_loose": "spiral_winding_loose",
    "t11_arms_number_a31_1": "spiral_arm_count_1",
    "t11_arms_number_a32_2": "spiral_arm_count_2",
    "t11_arms_number_a33_3": "spiral_arm_count_3",
    "t11_arms_number_a34_4": "spiral_arm_count_4",
    "t11_arms_number_a36_more_than_4": "spiral_arm_count_more_than_4",
    "t11_arms_number_a37_cant_tell": "spiral_arm_count_cant_tell",
}
"""Galaxy Zoo 2's own table (Willett et al. 2013, as in SkyServer's zoo2MainSpecz; Hart et al. 2016):
``{task}_{answer}`` -> the answer of schema ``gz2``. Its ``_count`` column is the votes, the others
(:data:`_ANSWER_DERIVED`) are derived; task 08 (the kind of odd feature) is not in the tree."""

MAX_VOTES = 2**24
"""Largest vote count per answer: float32, in which the losses are computed, holds every integer up to
2^24 exactly; Galaxy Zoo asks tens of volunteers per galaxy."""


@dataclass(frozen=True)
class Labels:
    """``object_id`` (n,) int64, ``votes`` (n, A) int64 in schema answer order, optional ``split`` (n,)
    of ``"train"``/``"validation"``/``"test"`` (None where empty), ``source`` (URL) and ``sha256`` of
    the file; optional ``tile`` (n,) tile names (:func:`skymorph.tiles.tile_name`, so that a catalog's
    tile URL, from wherever the survey was copied, and a survey's tile name agree; None where not
    given) and ``row`` (n,) int64 (-1 where not given): where the labels say each image is; optional
    ``ra_dec`` (n, 2) degrees, NaN where not given: where the labels say each galaxy is on the sky."""

    object_id: np.ndarray
    votes: np.ndarray
    split: np.ndarray | None
    source: str
    sha256: str
    tile: np.ndarray | None = None
    row: np.ndarray | None = None
    ra_dec: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.object_id)

    def subset(self, index: np.ndarray) -> Labels:
        pick = lambda a: None if a is None else a[index]  # noqa: E731
        return Labels(self.object_id[index], self.votes[index], pick(self.split), self.source, self.sha256,
                      pick(self.tile), pick(self.row), pick(self.ra_dec))


def _locations(table) -> tuple[np.ndarray | None, np.ndarray | None]:
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


def _sky_positions(url: str, table, *, needed_for: str | None = None) -> np.ndarray | None:
    """``(n, 2)`` (ra, dec) in degrees from the labels' ``ra`` and ``dec`` columns, in either case (NaN where empty), or
    None without both, or (with a warning) where they are not numbers: volunteer tables give them, and
    :func:`load_images` checks them against the tiles'. With ``needed_for`` (what they are needed for), those two
    cases are one-line errors instead."""
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


def _read_table(url: str, storage_options, what: str = "labels"):
    """``(pyarrow table, sha256 of the file)``: CSV (``.csv``, ``.txt``, gzipped ``.csv.gz`` as Galaxy Zoo 2's
    table is published), a FITS binary table (``.fits``, ``.fits.gz``), else Parquet."""
    import gzip
    import zlib

    import pyarrow as pa
    import pyarrow.csv as pacsv
    import pyarrow.parquet as pq

    data = read_bytes(url, storage_options)
    name = url.lower()
    try:
        raw = gzip.decompress(data) if name.endswith(".gz") else data
        # One thread, and ParquetFile rather than pq.read_table, whose pyarrow.dataset scan runs threads
        # that can abort the interpreter at exit once torch is loaded (see storage.read_parquet).
        if name.endswith(_CSV_SUFFIXES):
            table = pacsv.read_csv(pa.BufferReader(raw), read_options=pacsv.ReadOptions(use_threads=False))
        elif name.endswith(_FITS_SUFFIXES):
            table = _read_fits_table(raw)
        else:
            table = pq.ParquetFile(pa.BufferReader(raw)).read(use_threads=False)
        return table, hashlib.sha256(data).hexdigest()
    except (pa.ArrowInvalid, OSError, ValueError, TypeError, EOFError, zlib.error) as err:  # a truncated or corrupt .gz too
        raise InputError(f"{what} {url!r} is not a readable Parquet, CSV or FITS table ({first_line(err, 120)})") from err


def _read_fits_table(data: bytes):
    """The first table of a FITS file as a pyarrow table (astropy: big-endian columns to native, masked cells
    to nulls, text as str, not bytes), without its vector columns."""
    import io

    import pyarrow as pa
    from astropy.table import Table

    table = Table.read(io.BytesIO(data), format="fits", character_as_bytes=False)
    flat = [name for name in table.colnames if table[name].ndim <= 1]  # a vector column is no vote count
    return pa.Table.from_pandas(table[flat].to_pandas(), preserve_index=False)


def labels_schema(url: str, storage_options=None) -> Schema | None:
    """The decision tree a Parquet labels file says its votes are of (``skymorph.schema`` in its metadata,
    as ``survey synth`` and ``survey ingest --label-question`` write it), or None: a CSV, a file written
    by pandas, or an unreadable one (:func:`load_labels` reports that)."""
    import pyarrow.parquet as pq

    from skymorph.storage import filesystem

    import pyarrow as pa

    if str(url).lower().endswith(_CSV_SUFFIXES + _FITS_SUFFIXES):
        return None
    try:
        fs, path = filesystem(str(url), storage_options)
        with fs.open(path, "rb") as fh:
            recorded = (pq.ParquetFile(fh, pre_buffer=False).schema_arrow.metadata or {}).get(b"skymorph.schema")
    except (OSError, pa.ArrowInvalid):
        return None
    return Schema.from_json(recorded.decode(), source=f"labels {url!r} (its skymorph.schema metadata)") if recorded else None


def _check_not_other_labels(url: str, names: list[str], schema: Schema) -> None:
    """Name the likely mistake when the columns are votes of another built-in schema, or a synthetic
    survey's truth table, rather than one misspelt column ("Did you mean" would point the wrong way)."""
    from skymorph.schema import BUILTIN_SCHEMAS

    ours = len(set(names) & set(schema.answer_columns))
    truth = [name for name in names if name.endswith("_true")]
    if truth and not ours:
        raise InputError(f"labels {url!r} look like a synthetic survey's truth table (columns such as {truth[0]!r}); "
                         "give its labels.parquet, which holds the vote counts")
    for other in BUILTIN_SCHEMAS.values():
        theirs = len(set(names) & set(other.answer_columns))
        if other.name != schema.name and theirs > ours and 2 * theirs >= len(other.answer_columns):
            raise SchemaError(f"labels {url!r} hold votes of schema {other.name!r} ({theirs} of its {len(other.answer_columns)} "
                              f"answer columns), not of {schema.name!r}; train with --schema {other.name}, or give labels of {schema.name!r}")


def _check_no_catalog_columns(url: str, names: list[str], schema: Schema) -> None:
    """A one-line error for a catalog's posterior column or a pick's score among the labels: merged in from
    a batch file, it starts like a question and was refused as a misspelt answer ("Did you mean ...").
    Only columns a volunteer export does not have too count (not ``{answer}_fraction``, the volunteers'
    own fraction in Galaxy Zoo tables), and only those refused anyway (``bald_total`` is ignored)."""
    catalog_only = {f"{c}_fraction_{s}" for c in schema.answer_columns for s in ("std", "q05", "q95")}
    catalog_only |= {f"{q}_{kind}" for q in schema.question_names for kind in ("asked", "bald", "asked_bald")}
    found = [name for name in names if name in catalog_only]
    if found:
        raise InputError(
            f"labels {url!r} column {found[0]!r} is a catalog's posterior column or a pick's score, not votes; take "
            "only object_id, tile and row from a batch or catalog file into the labels"
        )


def _spellings(names: list[str], schema: Schema) -> dict[str, tuple[str, ...]]:
    """``{column as the schema spells it: its name(s) in the file}``, in the file's order. Galaxy Zoo's
    volunteer tables and Zoobot spell answers ``has-spiral-arms_yes`` and totals
    ``smooth-or-featured_total-votes``; a column that starts like a question of ``schema`` once its
    hyphens are underscores takes that spelling (only that: ``Bar Length (kpc)`` stays another column).
    An answer may be spelt both ways in one file (labels in the schema's spelling
    with a volunteer table's rows added): :func:`_read_counts` combines the two."""
    prefixes = tuple(f"{q}_" for q in schema.question_names)
    spellings: dict[str, list[str]] = {}
    for name in names:
        ours = _gz2_table_name(name) if schema.name == "gz2" else None
        if ours is None:
            ours = _without_campaign(name.replace("-", "_"), schema)
            ours = ours if ours != name and ours.startswith(prefixes) else name
        spellings.setdefault(ours, []).append(name)
    return {ours: tuple(spelt) for ours, spelt in spellings.items()}


def vote_columns(names: list[str], schema: Schema) -> list[str]:
    """The columns of ``names`` that hold vote counts of ``schema``'s answers, in any spelling
    :func:`load_labels` reads (``bar_strong``, ``bar-strong``, ``bar-dr5_strong``, GZ2's
    ``t03_bar_a06_bar_count``): so that other readers of labels (``catalog pick --exclude``) see the votes
    that ``train`` sees."""
    answers = set(schema.answer_columns)
    return [name for ours, spelt in _spellings(names, schema).items() if ours in answers for name in spelt]


_CAMPAIGNS = {"gz2": ("gz2",), "decals": ("dr5", "dr8")}
"""Zoobot's campaign suffixes (``smooth-or-featured-dr5_smooth``) whose tree is the built-in schema's:
GZ DECaLS DR5 and DR8 asked the decals tree; DR1/2 (``dr12``) asked another."""


def _without_campaign(name: str, schema: Schema) -> str:
    """``name`` without Zoobot's campaign suffix after its question, where the campaign asked ``schema``'s
    tree (:data:`_CAMPAIGNS`): ``smooth_or_featured_dr5_smooth`` -> ``smooth_or_featured_smooth``."""
    for question in schema.question_names:
        for campaign in _CAMPAIGNS.get(schema.name, ()):
            if name.startswith(f"{question}_{campaign}_"):
                return f"{question}_{name[len(question) + len(campaign) + 2:]}"
    return name


def _gz2_table_name(name: str) -> str | None:
    """The schema ``gz2`` name of a column of Galaxy Zoo 2's own table (:data:`_GZ2_TABLE`):
    ``t04_spiral_a08_spiral_count`` -> ``has_spiral_arms_yes``, ``..._debiased`` ->
    ``has_spiral_arms_yes_debiased``; None for any other column."""
    name = name.lower()  # as the FITS release spells them
    for suffix in ("count", *_ANSWER_DERIVED):
        if name.endswith(f"_{suffix}") and (answer := _GZ2_TABLE.get(name[: -len(suffix) - 1])):
            return answer if suffix == "count" else f"{answer}_{suffix}"
    return None


def _read_counts(url: str, table, object_id: np.ndarray, answer: str, spellings: tuple[str, ...]):
    """``(counts, voted)``: one answer's counts as float64, NaN where empty, and per source of its columns
    (:func:`_source`) where that holds a count. An answer spelt two ways is combined row by row: a cell
    empty or 0 in one spelling takes the other's (a concatenation filled with 0 puts 0 where the other
    table had no column); a row with two different non-zero counts of one source is an error (which?)."""
    combined, voted = None, {}
    for name in spellings:
        try:
            values = table.column(name).to_numpy(zero_copy_only=False).astype(np.float64)
        except (TypeError, ValueError) as err:
            raise InputError(f"labels {url!r} column {name!r} must hold vote counts, not text ({err})") from err
        source = _source(name, answer)
        same_source = source in voted  # else a row with both counts is two sources': _check_one_source names it
        voted[source] = voted.get(source, False) | (values > 0)
        if combined is None:
            combined = values
            continue
        both = (combined > 0) & (values > 0) & (combined != values)  # NaN compares False: an empty cell is no count
        if both.any() and same_source:
            raise InputError(
                f"labels {url!r}: object_id {int(object_id[np.argmax(both)])} has counts in both {spellings[0]!r} and "
                f"{name!r}, two spellings of one answer; keep one count per galaxy"
            )
        combined = np.where(np.isnan(combined) | ((combined == 0) & (values > 0)), values, combined)
    return combined, voted


def _source(name: str, answer: str) -> str:
    """Which table a vote column comes from, by its spelling of the question: ``has-spiral-arms`` of
    ``has-spiral-arms_yes``, ``smooth-or-featured-dr5`` of Zoobot's DR5 column, one name for all of Galaxy
    Zoo 2's own table. A galaxy's votes for one question must come from one source (one campaign)."""
    if _gz2_table_name(name):
        return "Galaxy Zoo 2's table"
    return name[: -len(answer) - 1]


def _check_one_source(url: str, object_id: np.ndarray, question: str, voted: dict[str, np.ndarray]) -> None:
    """A one-line error for a galaxy with votes for ``question`` in the columns of two sources: two
    campaigns' votes (Zoobot's ``-dr5`` and ``-dr8`` columns), combined answer by answer, would be
    neither campaign's."""
    if len(voted) < 2:
        return
    both = np.flatnonzero(np.sum(list(voted.values()), axis=0) > 1)
    if len(both):
        row = int(both[0])
        sources = [source for source, mask in voted.items() if mask[row]]
        raise InputError(
            f"labels {url!r}: object_id {int(object_id[row])} has votes for question {question!r} in columns "
            f"{' and '.join(f'{source!r}_...' for source in sources)} ({len(both) - 1} more like it): two tables' or "
            "campaigns' votes for one galaxy, which are not one set of answers; keep one, or add them into one column "
            "per answer if they are"
        )


def _why_not(name: str, schema: Schema) -> str:
    """What a column that starts like a question of ``schema`` but names none of its answers likely is: an
    answer of another built-in tree (whose near-miss answer here would be another answer, not a typo:
    decals' ``bar_weak`` for gz2's ``bar_yes``), Zoobot's spelling with the suffix of a campaign that asked
    another tree (``smooth-or-featured-dr12_smooth`` for decals), or a typo ("Did you mean")."""
    from skymorph.schema import BUILTIN_SCHEMAS

    question = next((q for q in schema.questions if name.startswith(f"{q.name}_")), None)
    for other in BUILTIN_SCHEMAS.values():
        if other.name != schema.name and name in other.answer_columns:
            theirs = f"; {question.name!r} of {schema.name!r} has answers {', '.join(question.answers)}" if question else ""
            return f" It is an answer of schema {other.name!r} (--schema {other.name} if these are its votes){theirs}."
    campaign = re.match(r"^(?P<question>[a-z0-9_]+?)_(?P<campaign>dr\d+|gz2|cd)_(?P<rest>.+)$", name)
    if campaign and f"{campaign['question']}_{campaign['rest']}" in set(schema.answer_columns) | set(_derived_columns(schema)):
        ours = f"{campaign['question']}_{campaign['rest']}"
        if schema.name in _CAMPAIGNS:  # a built-in tree: its own campaigns were read; this one asked another tree
            return (f" It is {ours} with Zoobot's campaign suffix {campaign['campaign']!r}, a campaign that did not ask "
                    f"{schema.name!r}'s tree.")
        return f" It is {ours} with Zoobot's campaign suffix {campaign['campaign']!r}: rename the columns without it."
    if close := did_you_mean(name, schema.answer_columns):
        return close
    if question:
        return f" Question {question.name!r} has answers {', '.join(question.answers)}."
    return f" Its answers: {', '.join(schema.answer_columns)}"


def _no_votes_why(names: list[str], schema: Schema) -> str:
    """Why columns ``names`` hold no vote of ``schema``: Galaxy Zoo 2's own table read without --schema
    gz2, the Kaggle challenge's table (fractions only), or columns not spelt ``{question}_{answer}``."""
    if schema.name != "gz2" and any(_gz2_table_name(name) for name in names):
        return "they are Galaxy Zoo 2's own table (tNN_..._aNN_..._count): train with --schema gz2"
    if any(re.fullmatch(r"Class\d+\.\d+", name) for name in names):
        return ("they are the Kaggle Galaxy Zoo challenge's table (Class1.1, ...), vote fractions without counts; "
                "training needs the counts, which GZ2's own table has (tNN_..._aNN_..._count, with --schema gz2)")
    return f"expected {{question}}_{{answer}} columns such as {schema.answer_columns[0]!r}"


def _derived_columns(schema: Schema) -> dict[str, str]:
    """``{derived column: the question it belongs to}``: :data:`_ANSWER_DERIVED` beside each answer and
    :data:`_QUESTION_DERIVED` beside each question, as Galaxy Zoo's volunteer tables have them."""
    derived = {f"{q}_{kind}": q for q in schema.question_names for kind in _QUESTION_DERIVED}
    for question, answers in zip(schema.question_names, schema.question_slices):
        derived |= {f"{a}_{kind}": question for a in schema.answer_columns[answers] for kind in _ANSWER_DERIVED}
    return derived


def _check_counts_beside_derived(url: str, names: list[str], said: dict, derived: dict, schema: Schema) -> None:
    """A one-line error for a question with Galaxy Zoo's fractions or totals but no counts: ignored like
    every derived column, its votes would be lost without a word, and the losses need counts (a vote
    fraction says nothing of how sure the volunteers were)."""
    counted = {question for question, answers in zip(schema.question_names, schema.question_slices)
               if any(a in names for a in schema.answer_columns[answers])}
    for name in names:
        if name in derived and derived[name] not in counted:
            raise InputError(
                f"labels {url!r} column {said[name]} is derived from vote counts, but question {derived[name]!r} has no "
                f"count columns ({{question}}_{{answer}}); training needs the counts: give them (a fraction times the "
                "question's total votes), or leave the question's columns out"
            )


def load_labels(url: str, schema: Schema, storage_options=None) -> Labels:
    """Read and validate a labels table against ``schema`` (:func:`_labels_of`)."""
    return _labels_of(str(url), *_read_table(str(url), storage_options), schema)


def _labels_of(url: str, table, sha256: str, schema: Schema, *, votes_needed: bool = True) -> Labels:
    """Validate the labels ``table`` (pyarrow, as :func:`_read_table` read it from ``url``) against ``schema``.
    Without ``votes_needed`` (labels that votes are being added to), labels without any vote are fine and
    their rows without votes are left out silently: the caller keeps them as galaxies to classify.

    One-line errors: a column name given twice; a galaxy with two different counts for one answer spelt
    both ways (``bar_no``, ``bar-no``); no ``object_id``, or ids that are not whole numbers; the votes of
    another built-in schema, or a synthetic survey's truth table; no rows; duplicate object ids; a column
    naming an answer the schema lacks ("Did you mean ..."); some answers of a question without the
    others, as columns or as a row's cells (the missing ones would read as no votes); a question with
    Galaxy Zoo's fractions or totals but no counts; one galaxy's votes for a question from two tables or
    campaigns; negative counts; no vote column of the schema at all, or no vote in any of them.
    """
    names = table.column_names
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise InputError(f"labels {url!r} has more than one column named {' and '.join(map(repr, twice))}; keep one of each")
    if "object_id" not in names:
        raise InputError(
            f"labels {url!r} has no object_id column (columns: {', '.join(names[:12])}); give each galaxy the integer id "
            "its tiles hold it by, as object_id (`survey ingest` writes them into its labels.parquet, `catalog pick` into "
            "its batch file, `labels match` into a table with ra and dec)"
        )
    spelt = _spellings(names, schema)  # the schema's name of a column -> the file's name(s)
    said = {ours: " / ".join(map(repr, spellings)) for ours, spellings in spelt.items()}  # for messages
    names = list(spelt)
    answers = set(schema.answer_columns)
    _check_not_other_labels(url, names, schema)
    prefixes = tuple(f"{q}_" for q in schema.question_names)
    _check_no_catalog_columns(url, names, schema)
    derived = _derived_columns(schema)
    for name in names:
        if name in derived:
            continue
        if name not in answers and (name.startswith(prefixes) or difflib.get_close_matches(name, answers, n=1, cutoff=0.85)):
            raise SchemaError(f"labels {url!r} column {said[name]} is not an answer of schema {schema.name!r}." + _why_not(name, schema))
    _check_counts_beside_derived(url, names, said, derived, schema)
    present = [c for c in schema.answer_columns if c in names]
    if not present and votes_needed:
        raise SchemaError(f"labels {url!r} has no vote column of schema {schema.name!r}; {_no_votes_why(names, schema)}")
    for question, answers_of in zip(schema.question_names, schema.question_slices):
        columns = schema.answer_columns[answers_of]
        missing = [c for c in columns if c not in names]
        if missing and len(missing) < len(columns):  # its votes would read as 0 for every galaxy
            raise SchemaError(
                f"labels {url!r} has votes for some answers of question {question!r} but no column {', '.join(map(repr, missing))}; "
                "give every answer's count (0 where no volunteer chose it), or leave the question's columns out"
            )
    if not table.num_rows:  # before the type checks: the columns of a header-only CSV have no type
        raise InputError(f"labels {url!r} has no rows, only a header; give one row of vote counts per galaxy")
    object_id = object_ids(table.column("object_id"), f"labels {url!r}")
    unique, counts = np.unique(object_id, return_counts=True)
    if (counts > 1).any():
        raise InputError(f"labels {url!r} lists object_id {int(unique[counts > 1][0])} more than once")
    votes = np.zeros((len(object_id), schema.n_answers), dtype=np.int64)
    empty = np.zeros((len(object_id), schema.n_answers), dtype=bool)
    question_of = {f"{q.name}_{a}": (q.name, a) for q in schema.questions for a in q.answers}
    voted: dict[str, dict[str, np.ndarray]] = {}  # per question, per source: where it holds a count
    for column in present:
        question, answer = question_of[column]
        values, by_source = _read_counts(url, table, object_id, answer, spelt[column])
        sources = voted.setdefault(question, {})
        for source, mask in by_source.items():
            sources[source] = sources.get(source, False) | mask
        empty[:, schema.answer_columns.index(column)] = np.isnan(values)
        values = np.nan_to_num(values, nan=0.0)
        if (values < 0).any() or (values != np.round(values)).any():
            raise InputError(f"labels {url!r} column {said[column]} must hold non-negative integer vote counts")
        if (values > MAX_VOTES).any():
            raise InputError(f"labels {url!r} column {said[column]} holds a count of {values.max():g} votes; counts above "
                             f"{MAX_VOTES:,} are not volunteer votes (the losses are computed in float32)")
        votes[:, schema.answer_columns.index(column)] = values.astype(np.int64)
    for question, by_source in voted.items():
        _check_one_source(url, object_id, question, by_source)
    _check_whole_questions(url, object_id, empty, schema, said)
    if not votes.any() and votes_needed:  # every loss would be exactly 0 and every metric undefined
        raise InputError(
            f"labels {url!r} hold no votes at all: every count in its {len(present)} answer column(s) of schema "
            f"{schema.name!r} is 0 or empty; give the volunteers' vote counts"
        )
    split = _read_split(url, table) if "split" in names else None
    labels = Labels(object_id, votes, split, str(url), sha256, *_locations(table), _sky_positions(url, table))
    unvoted = ~votes.any(axis=1)
    if unvoted.any() and votes_needed:  # nobody has classified them: no loss, no metric, but counted as labelled
        print(f"skymorph: warning: labels {url!r}: {int(unvoted.sum())} row(s) hold no votes in any question (first: "
              f"object_id {int(object_id[np.argmax(unvoted)])}), galaxies nobody has classified yet, which train and "
              "evaluate leave out", file=sys.stderr)
    if unvoted.any():
        labels = labels.subset(np.flatnonzero(~unvoted))
        if labels.split is not None and (labels.split == None).all():  # noqa: E711 -- only dropped rows were assigned
            labels = replace(labels, split=None)
    return labels


def _read_split(url: str, table) -> np.ndarray | None:
    """The ``split`` column as train/validation/test, None where a cell is empty (such a galaxy takes the
    seed's hash split: rows added to labels that had a split, as the active-learning loop does), or None
    for a column of empty cells only. Any other value is an error: a misspelt ``Validaton`` would
    otherwise keep its galaxies out of both sides."""
    raw = np.array([None if s is None or not str(s).strip() else str(s).strip() for s in table.column("split").to_pylist()],
                   dtype=object)
    split = np.array([None if s is None else _SPLIT_NAMES.get(s.lower()) for s in raw], dtype=object)
    unknown = np.flatnonzero((raw != None) & (split == None))  # noqa: E711
    if len(unknown):
        values = sorted({raw[i] for i in unknown})
        raise InputError(
            f"labels {url!r} column 'split' holds {', '.join(map(repr, values[:3]))} ({len(unknown)} row(s)), which is not "
            "train, validation or test; correct it, or leave the cell empty for the seed's hash split"
        )
    return None if (split == None).all() else split  # noqa: E711 -- a column of empty cells splits nothing


def _check_whole_questions(url: str, object_id: np.ndarray, empty: np.ndarray, schema: Schema, said: dict) -> None:
    """A one-line error for a row with some of a question's answers empty and others not: those cells would
    read as no votes (labels merged from votes without one answer's column lose that answer's votes).
    A question left empty in all its answers is a question nobody was asked there. ``said``: how the file
    spells each column, for the message."""
    for question, answers in zip(schema.question_names, schema.question_slices):
        cells = empty[:, answers]
        partly = np.flatnonzero(cells.any(axis=1) & ~cells.all(axis=1))
        if len(partly):
            row = int(partly[0])
            missing = [said[schema.answer_columns[answers][i]] for i in np.flatnonzero(cells[row])]
            more = f" ({len(partly) - 1} more row(s) like it)" if len(partly) > 1 else ""
            raise InputError(
                f"labels {url!r}: object_id {int(object_id[row])} has counts for question {question!r} but an empty "
                f"{', '.join(missing)}{more}; give every answer's count, 0 where no volunteer chose it (a "
                "pivot or unstack leaves those empty: fill the vote columns with 0), or leave all of the question's "
                "cells empty"
            )


def positions(keys: np.ndarray, ids: np.ndarray) -> np.ndarray:
    """For each of ``ids``, its index in ``keys`` (unique), or -1 where it is not one of them: a sort and a
    binary search, O((n + m) log n), instead of a Python dict lookup per galaxy."""
    keys, ids = np.asarray(keys), np.asarray(ids)
    if not len(keys):
        return np.full(len(ids), -1, dtype=np.int64)
    order = np.argsort(keys, kind="stable")
    ordered = keys[order]
    at = np.searchsorted(ordered, ids).clip(max=len(keys) - 1)
    return np.where(ordered[at] == ids, order[at], -1)


def split_kind(labels: Labels) -> str:
    """``"column"`` if ``labels`` assign galaxies to train and validation, else ``"hash"``: what a
    checkpoint records, so that evaluating or fine-tuning it can tell labels that split otherwise."""
    return "hash" if labels.split is None else "column"


def split_masks(labels: Labels, val_fraction: float, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    """``(train, validation)`` boolean masks.

    With a ``split`` column: its ``train`` and ``validation`` rows (``test`` rows in neither); a row
    whose cell is empty, and every row without the column, takes the hash split: a galaxy is in
    validation when ``u < val_fraction``, with u uniform in [0, 1) from the sha256 of
    ``"{seed}:{object_id}"``: deterministic, and a galaxy keeps its side when labels grow.
    """
    u = np.array(
        [int.from_bytes(hashlib.sha256(f"{seed}:{i}".encode()).digest()[:8], "big") / 2.0**64 for i in labels.object_id]
    )
    validation = u < val_fraction
    if labels.split is None:
        return ~validation, validation
    unassigned = labels.split == None  # noqa: E711
    return (labels.split == TRAIN) | (unassigned & ~validation), (labels.split == VALIDATION) | (unassigned & validation)


def load_images(tile_urls: list[str], labels: Labels, *, drop_unmatched: bool = False, storage_options=None, progress=True):
    """``(images, labels)``: uint8 (n, C, H, W) images of the labelled galaxies, in labels order.

    Reads each tile's object ids first and only the tiles holding labelled galaxies. Where the labels
    say where a galaxy's image is (``tile`` and ``row``), only that image is taken (a galaxy in two
    overlapping tiles has two). A labelled galaxy found in no tile, or only elsewhere than its labels
    say (labels of another survey's images), is a one-line :class:`InputError` naming it, unless
    ``drop_unmatched`` (then it is left out of the returned labels). An object id that is another
    galaxy in two of the tiles (two surveys' galaxies: see :func:`_check_same_galaxy`) and tiles of
    different image shapes are errors.
    """
    from skymorph.progress import progress_bar
    from skymorph.tiles import open_tile, tile_name

    images = None
    found = np.zeros(len(labels), dtype=bool)
    found_in = np.full(len(labels), None, dtype=object)  # per labels row: the tile its image was taken from,
    found_at = np.full((len(labels), 2), np.nan)  # and the galaxy's (ra, dec) there, NaN where a placeholder
    # per labels row: the first tile and row where its image was found but the labels do not put it
    elsewhere_tile, elsewhere_row = np.full(len(labels), None, dtype=object), np.full(len(labels), -1, dtype=np.int64)
    for url in progress_bar(tile_urls, desc="reading tiles", unit="tile", disable=not progress, leave=False):
        tile = open_tile(url, storage_options=storage_options)
        object_id, ra, dec = tile.read_coords()
        at = np.full((len(object_id), 2), np.nan) if tile.placeholder_positions else np.stack([ra, dec], axis=1)
        label_row = positions(labels.object_id, object_id)  # per tile row: its labels row, or -1
        rows = np.flatnonzero(label_row >= 0)
        if len(rows) == 0:
            continue
        if images is None:
            images = np.zeros((len(labels), *tile.shape), dtype=np.uint8)
        elif tuple(tile.shape) != images.shape[1:]:
            raise InputError(f"tile {url!r} holds {tile.shape} images, earlier tiles {images.shape[1:]}; use one image size")
        if labels.tile is not None:
            targets = label_row[rows]
            said_tile, said_row = labels.tile[targets], labels.row[targets]
            name = tile_name(url)
            here = ((said_tile == None) | (said_tile == name)) & ((said_row < 0) | (said_row == rows))  # noqa: E711
            first = elsewhere_row[targets] < 0
            elsewhere_tile[targets[~here & first]] = name
            elsewhere_row[targets[~here & first]] = rows[~here & first]
            rows = rows[here]
        for start, stop, chunk in tile.iter_chunks():
            sel = rows[(rows >= start) & (rows < stop)]
            targets, taken = label_row[sel], chunk[sel - start]
            if found[targets].any():  # an id seen in an earlier tile
                _check_same_galaxy(labels, targets, found[targets], (found_at[targets], at[sel]),
                                   (images[targets], taken), found_in, url)
            images[targets] = taken
            found[targets] = True
            found_in[targets] = url
            found_at[targets] = np.where(np.isnan(at[sel]), found_at[targets], at[sel])  # a placeholder tells nothing
    if labels.ra_dec is not None:
        _check_labelled_positions(labels, found, found_at, found_in)
    misplaced = np.flatnonzero(~found & (elsewhere_row >= 0))
    if len(misplaced) and not drop_unmatched:
        target = int(misplaced[0])
        name, row = elsewhere_tile[target], int(elsewhere_row[target])
        said = ", ".join(part for part in (f"tile {labels.tile[target]!r}" if labels.tile[target] is not None else "",
                                           f"row {int(labels.row[target])}" if labels.row[target] >= 0 else "") if part)
        raise InputError(
            f"labels {labels.source!r} put object_id {int(labels.object_id[target])} at {said}, but the tiles given hold it "
            f"only elsewhere (tile {name!r}, row {row}; {len(misplaced) - 1} more like it): these labels are of another "
            "survey's images (object ids are unique only within a survey), or their tiles are not among those given; give "
            "the tiles they were made from, --drop-unmatched to train without these galaxies, or drop the labels' tile "
            "and row columns if those are out of date"
        )
    if not found.all():
        missing = labels.object_id[~found]
        if not drop_unmatched:
            raise InputError(
                f"labels {labels.source!r}: object_id {int(missing[0])} (and {len(missing) - 1} more) has no image in the "
                f"{len(tile_urls)} tile(s) given; check --tiles, or pass --drop-unmatched to train without them"
            )
        if not found.any():
            raise InputError(f"no labelled galaxy of {labels.source!r} is in the {len(tile_urls)} tile(s) given")
        return images[found], labels.subset(np.flatnonzero(found))
    return images, labels  # every galaxy found: no second copy of the images


_SAME_GALAXY_ARCSEC = 1.0
_LABELLED_POSITION_ARCSEC = 5.0
"""How far a galaxy's image may be from where its labels put it: their positions may come from another
catalog of the same galaxies (an extended galaxy's centre differs by an arcsecond or so), while a
galaxy of another survey that shares its object id lies arcminutes to degrees away."""
_OTHER_UNITS = (("hours", np.array([15.0, 1.0])), ("radians", np.degrees(np.ones(2))))
"""What (ra, dec) given in other units are multiplied by to be degrees: ra in hours, both in radians."""


def _check_labelled_positions(labels: Labels, found, found_at, found_in) -> None:
    """Refuse labels whose ``ra``/``dec`` put a galaxy more than :data:`_LABELLED_POSITION_ARCSEC` from its
    image in the tiles: labels of another survey, whose object ids name other galaxies here (a volunteer
    table has no ``tile`` and ``row`` to tell). Empty positions and tiles with placeholder positions
    (cutouts ingested without coordinates) are not compared."""
    compared = np.flatnonzero(found & np.isfinite(labels.ra_dec).all(axis=1) & np.isfinite(found_at).all(axis=1))
    if not len(compared):
        return
    said, image = labels.ra_dec[compared], found_at[compared]
    arcsec = _arcsec_between(said, image)
    apart = np.flatnonzero(arcsec > _LABELLED_POSITION_ARCSEC)
    if len(apart):
        first = int(compared[apart[0]])
        more = f" ({len(apart) - 1} more like it)" if len(apart) > 1 else ""
        for unit, scale in _OTHER_UNITS:
            if (_arcsec_between(said[apart] * scale, image[apart]) <= _LABELLED_POSITION_ARCSEC).all():
                raise InputError(
                    f"labels {labels.source!r} give ra, dec in {unit}, it seems: read as {unit}, each of the "
                    f"{len(apart)} galaxies far from its image (first: object_id {int(labels.object_id[first])}) is "
                    "at it; give them in degrees"
                )
        raise InputError(
            f"labels {labels.source!r} put object_id {int(labels.object_id[first])} at ra, dec = {said[apart[0], 0]:.6f}, "
            f"{said[apart[0], 1]:.6f}, {_arcsec_text(arcsec[apart[0]])} from the galaxy of that id in tile "
            f"{found_in[first]!r}{more}: these labels are of another survey's galaxies (object ids are unique only "
            "within a survey); give the tiles they were made from"
        )


def _arcsec_between(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Angular separation in arcseconds of the (ra, dec) rows of ``a`` and ``b``, in degrees."""
    from astropy.coordinates import angular_separation

    return np.degrees(angular_separation(*np.radians(a.T), *np.radians(b.T))) * 3600


def _arcsec_text(arcsec: float) -> str:
    """An angle in arcseconds as a person would write it: mas, ", ' or degrees."""
    if arcsec < 0.1:
        return f"{arcsec * 1000:.2g} mas"
    if arcsec < 60:
        return f'{arcsec:.1f}"'
    return f"{arcsec / 60:.1f}'" if arcsec < 3600 else f"{arcsec / 3600:.2f} deg"


def _check_same_galaxy(labels: Labels, targets, found, positions_pair, images_pair, found_in, url: str) -> None:
    """Refuse an object id taken from a second tile where it is another galaxy: more than
    :data:`_SAME_GALAXY_ARCSEC` from where the first tile put it, or, where either tile has placeholder
    positions, with another image. Object ids are unique only within a survey, so these are two surveys'
    galaxies, and the labels would train on whichever tile came last. One galaxy in two overlapping tiles
    of a survey passes: at one position (its two cutouts may differ), or, with placeholder positions,
    as the same pixels."""
    again = np.flatnonzero(found)
    if not len(again):
        return
    (before, now), (taken, image) = (p[again] for p in positions_pair), (i[again] for i in images_pair)
    placeholder = np.isnan(before).any(axis=1) | np.isnan(now).any(axis=1)
    apart = _arcsec_between(before, now) > _SAME_GALAXY_ARCSEC
    other_image = (taken != image).reshape(len(again), -1).any(axis=1)
    differ = again[np.where(placeholder, other_image, apart)]
    if len(differ):
        first = int(targets[differ[0]])
        raise InputError(
            f"labels {labels.source!r}: object_id {int(labels.object_id[first])} is another galaxy in tile {url!r} than "
            f"in {found_in[first]!r}: object ids are unique only within a survey, and these tiles are of two; give the "
            "tiles of the survey the labels are of, or labels with tile and row columns that say where each image is"
        )


def augment(images, generator, *, max_zoom: float = 0.1, max_shift: float = 0.05, brightness: float = 0.02, contrast: float = 0.1):
    """Randomly flip, rotate (any angle), zoom, shift and jitter brightness/contrast a uint8 batch.

    Galaxies have no preferred orientation or handedness, so a flip plus a uniform rotation in
    [0, 2 pi) is a symmetry of the labels; zoom (scale in [1 - max_zoom, 1 + max_zoom]) and shift
    (fraction of the image) mimic different apparent sizes and centring. Pixels are resampled
    bilinearly, with the border padded by reflection so that rotated corners hold sky, not black.
    Photometric jitter: ``x' = (x - mean) * c + mean + b * 255`` with c in [1 - contrast, 1 + contrast]
    and b in [-brightness, brightness] per image; the default offset (a few 8-bit levels) stays below
    the faint outer structure, such as spiral arms, that it would otherwise drown or invent on a sky
    near zero. Returns uint8 of the same shape.
    """
    import torch
    import torch.nn.functional as F

    b = images.shape[0]
    x = images.float()

    def uniform(low, high):
        return torch.rand(b, generator=generator) * (high - low) + low

    angle = uniform(0, 2 * math.pi)
    scale = uniform(1 - max_zoom, 1 + max_zoom)
    flip = torch.where(torch.rand(b, generator=generator) < 0.5, -1.0, 1.0)
    shift = torch.stack([uniform(-max_shift, max_shift), uniform(-max_shift, max_shift)], dim=1) * 2
    cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
    theta = torch.stack(
        [torch.stack([cos * flip, -sin, shift[:, 0]], 1), torch.stack([sin * flip, cos, shift[:, 1]], 1)], dim=1
    )
    grid = F.affine_grid(theta, list(x.shape), align_corners=False)
    x = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
    mean = x.mean(dim=(1, 2, 3), keepdim=True)
    c = uniform(1 - contrast, 1 + contrast).view(b, 1, 1, 1)
    shift_b = uniform(-brightness, brightness).view(b, 1, 1, 1) * 255
    x = (x - mean) * c + mean + shift_b
    return x.round_().clamp_(0, 255).to(torch.uint8)


class BatchLoader:
    """Batches of ``(images uint8 (B, C, H, W), votes int64 (B, A))`` over one epoch.

    The order comes from ``torch.randperm`` seeded with ``seed``; augmentation (if ``augmented``) uses
    a generator seeded from ``seed`` too, so a batch depends only on ``seed`` and the data. A
    background thread prepares up to ``prefetch`` batches ahead while the model trains on the current
    one (torch releases the GIL inside its kernels, so they overlap). ``rows``: batch only these rows of
    ``images`` and ``votes`` (default all), as if they were ``images[rows]`` but without copying them.
    """

    def __init__(
        self, images: np.ndarray, votes: np.ndarray, batch_size: int, *, shuffle: bool, augmented: bool, seed: int,
        prefetch: int = 2, rows: np.ndarray | None = None,
    ):
        import torch

        self.images = torch.from_numpy(images)
        self.votes = torch.from_numpy(votes)
        self.rows = None if rows is None else torch.from_numpy(np.asarray(rows, dtype=np.int64))
        self.batch_size = batch_size
        self.shuffle, self.augmented, self.seed, self.prefetch = shuffle, augmented, seed, prefetch

    def _size(self) -> int:
        return len(self.images) if self.rows is None else len(self.rows)

    def __len__(self) -> int:
        return math.ceil(self._size() / self.batch_size)

    def _batches(self):
        import torch

        generator = torch.Generator().manual_seed(self.seed)
        order = torch.randperm(self._size(), generator=generator) if self.shuffle else torch.arange(self._size())
        if self.rows is not None:
            order = self.rows[order]
        for start in range(0, len(order), self.batch_size):
            index = order[start : start + self.batch_size]
            images = self.images[index]
            if self.augmented:
                images = augment(images, generator)
            yield images, self.votes[index]

    def __iter__(self):
        done = object()
        batches: queue.Queue = queue.Queue(maxsize=self.prefetch)
        stop = threading.Event()

        def produce():
            try:
                for batch in self._batches():
                    if stop.is_set():
                        return
                    batches.put(batch)
            except BaseException as err:  # handed to the consumer, which re-raises it
                batches.put(err)
                return
            batches.put(done)

        thread = threading.Thread(target=produce, name="skymorph-batches", daemon=True)
        thread.start()
        try:
            while (item := batches.get()) is not done:
                if isinstance(item, BaseException):
                    raise item
                yield item
        finally:
            stop.set()
            while thread.is_alive():
                try:
                    batches.get(timeout=0.1)
                except queue.Empty:
                    pass
            thread.join()
