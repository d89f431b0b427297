"""Vote labels: reading and validating a table of volunteers' vote counts, and the train/validation split.

Labels are a Parquet, CSV or FITS table with ``object_id`` and one integer vote-count column per answer,
``{question}_{answer}``; a missing answer column means nobody gave that answer; a question whose
cells in a row are all empty (null) has no votes there (nobody was asked it), and a row with some of a
question's cells empty is an error (a merge that lost one answer's votes). A column that starts like a
question of the schema (``{question}_``) but names none of its answers, or that is a near miss of an
answer column, is an error (a typo or another schema). Other columns (``iauname``, ...) are ignored,
except ``tile`` and ``row``, or ``ra`` and ``dec``: where each galaxy's image is, which
:func:`skymorph.trainer.data.load_images` checks against the tiles. Galaxy Zoo's own volunteer tables
read as they are: their spelling (``has-spiral-arms_yes``) reads as the schema's, hyphens as
underscores, and the quantities they derive from the counts (``{answer}_fraction``,
``{answer}_debiased``, ``{question}_total-votes``) are ignored, the counts being the data; so does
Galaxy Zoo 2's own table for schema ``gz2`` (:mod:`skymorph.gz_tables`). A row with no votes in any question
is a galaxy nobody has classified (a cutout ingested without a label, a galaxy still with the
volunteers), left out with a warning. ``split``, where given, is ``train``, ``validation``, ``test`` or
empty (see :func:`split_masks`).
"""

from __future__ import annotations

import difflib
import hashlib
import re
import sys
from dataclasses import dataclass, replace

import numpy as np

from skymorph.errors import InputError, SchemaError, did_you_mean
from skymorph.gz_tables import (
    ANSWER_DERIVED,
    CAMPAIGNS,
    QUESTION_DERIVED,
    gz2_table_name,
    spellings_of,
)
from skymorph.schema import Schema
from skymorph.storage import FITS_SUFFIXES
from skymorph.tables import (
    CSV_SUFFIXES,
    TRAIN,
    VALIDATION,
    check_unique_columns,
    locations,
    read_split,
    read_table,
    sky_positions,
)
from skymorph.tiles import object_ids

__all__ = ["Labels", "labels_from_table", "labels_schema", "load_labels", "split_kind", "split_masks"]

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



def labels_schema(url: str, storage_options=None) -> Schema | None:
    """The decision tree a Parquet labels file says its votes are of (``skymorph.schema`` in its metadata,
    as ``survey synth`` and ``survey ingest --label-question`` write it), or None: a CSV, a file written
    by pandas, or an unreadable one (:func:`load_labels` reports that)."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from skymorph.storage import filesystem

    if str(url).lower().endswith(CSV_SUFFIXES + FITS_SUFFIXES):
        return None
    try:
        fs, path = filesystem(str(url), storage_options)
        with fs.open(path, "rb") as fh:
            recorded = (pq.ParquetFile(fh, pre_buffer=False).schema_arrow.metadata or {}).get(b"skymorph.schema")
    except (OSError, pa.ArrowInvalid):
        return None
    return Schema.from_json(recorded.decode(), source=f"labels {url!r} (its skymorph.schema metadata)") if recorded else None


def _check_not_other_labels(url: str, names: list[str], schema: Schema, schema_from: str | None = None) -> None:
    """Name the likely mistake when the columns are votes of another built-in schema, or a synthetic
    survey's truth table, rather than one misspelt column ("Did you mean" would point the wrong way).
    ``schema_from``: what fixed ``schema`` (a checkpoint), which ``--schema`` cannot change."""
    from skymorph.schema import BUILTIN_SCHEMAS

    ours = len(set(names) & set(schema.answer_columns))
    truth = [name for name in names if name.endswith("_true")]
    if truth and not ours:
        raise InputError(f"labels {url!r} look like a synthetic survey's truth table (columns such as {truth[0]!r}); "
                         "give its labels.parquet, which holds the vote counts")
    for other in BUILTIN_SCHEMAS.values():
        theirs = len(set(names) & set(other.answer_columns))
        if other.name != schema.name and theirs > ours and 2 * theirs >= len(other.answer_columns):
            remedy = (f"give labels of {schema.name!r}, or use a model of {other.name!r} (train one with --schema {other.name})"
                      if schema_from else f"train with --schema {other.name}, or give labels of {schema.name!r}")
            raise SchemaError(f"labels {url!r} hold votes of schema {other.name!r} ({theirs} of its {len(other.answer_columns)} "
                              f"answer columns), not of {schema.name!r}" + (f", the tree of {schema_from}" if schema_from else "")
                              + f"; {remedy}")


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


def _read_counts(url: str, table, object_id: np.ndarray, answer: str, spellings: tuple[str, ...]):
    """``(counts, voted)``: one answer's counts as float64, NaN where empty, and per source of its columns
    (:func:`_source`) where that holds a count. An answer spelt two ways is combined row by row: a cell
    empty or 0 in one spelling takes the other's (a concatenation filled with 0 puts 0 where the other
    table had no column); a row with two different non-zero counts of one source is an error (which?)."""
    import pyarrow as pa

    combined, voted = None, {}
    for name in spellings:
        column = table.column(name)
        kind = column.type.value_type if pa.types.is_dictionary(column.type) else column.type
        # numbers only: integers, floats, decimals (SQL exports) and nulls; a boolean read as 0 and 1, text of
        # digits as its numbers and a timestamp as its ticks, whatever the column held
        if not any(check(kind) for check in (pa.types.is_integer, pa.types.is_floating, pa.types.is_decimal, pa.types.is_null)):
            said = "bool" if pa.types.is_boolean(kind) else "text" if pa.types.is_string(kind) or pa.types.is_large_string(kind) else kind
            raise InputError(f"labels {url!r} column {name!r} must hold vote counts, not {said}")
        values = column.to_numpy(zero_copy_only=False).astype(np.float64)
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
    if gz2_table_name(name):
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
        if schema.name in CAMPAIGNS:  # a built-in tree: its own campaigns were read; this one asked another tree
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
    gz2, the Kaggle challenge's table (fractions only), hard labels, or columns not spelt ``{question}_{answer}``."""
    if schema.name != "gz2" and any(gz2_table_name(name) for name in names):
        return "they are Galaxy Zoo 2's own table (tNN_..._aNN_..._count): train with --schema gz2"
    if any(re.fullmatch(r"Class\d+\.\d+", name) for name in names):
        return ("they are the Kaggle Galaxy Zoo challenge's table (Class1.1, ...), vote fractions without counts; "
                "training needs the counts, which GZ2's own table has (tNN_..._aNN_..._count, with --schema gz2)")
    if "label" in names:  # a catalog of hard labels, as the GZ2 subset's labels.csv
        return ("its 'label' column is a hard label, not votes: `skymorph survey ingest --label-question Q --label-map "
                "LABEL=ANSWER,...` turns labels into one vote each in the labels.parquet it writes")
    return f"expected {{question}}_{{answer}} columns such as {schema.answer_columns[0]!r}"


def _derived_columns(schema: Schema) -> dict[str, str]:
    """``{derived column: the question it belongs to}``: :data:`ANSWER_DERIVED` beside each answer and
    :data:`QUESTION_DERIVED` beside each question, as Galaxy Zoo's volunteer tables have them."""
    derived = {f"{q}_{kind}": q for q in schema.question_names for kind in QUESTION_DERIVED}
    for question, answers in zip(schema.question_names, schema.question_slices):
        derived |= {f"{a}_{kind}": question for a in schema.answer_columns[answers] for kind in ANSWER_DERIVED}
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


def load_labels(url: str, schema: Schema, storage_options=None, *, schema_from: str | None = None) -> Labels:
    """Read and validate a labels table against ``schema`` (:func:`labels_from_table`)."""
    return labels_from_table(str(url), *read_table(str(url), storage_options), schema, schema_from=schema_from)


def labels_from_table(url: str, table, sha256: str, schema: Schema, *, votes_needed: bool = True,
                      schema_from: str | None = None) -> Labels:
    """Validate the labels ``table`` (pyarrow, as :func:`~skymorph.tables.read_table` read it from
    ``url``) against ``schema``. Without ``votes_needed`` (labels that votes are being added to), labels
    without any vote are fine and their rows without votes are left out silently: the caller keeps them
    as galaxies to classify.

    One-line errors: a column name given twice; a galaxy with two different counts for one answer spelt
    both ways (``bar_no``, ``bar-no``); no ``object_id``, or ids that are not whole numbers; the votes of
    another built-in schema (``schema_from``: what fixed ``schema``, for the advice), or a synthetic
    survey's truth table; no rows; duplicate object ids; a column
    naming an answer the schema lacks ("Did you mean ..."); some answers of a question without the
    others, as columns or as a row's cells (the missing ones would read as no votes); a question with
    Galaxy Zoo's fractions or totals but no counts; one galaxy's votes for a question from two tables or
    campaigns; negative counts; no vote column of the schema at all, or no vote in any of them.
    """
    names = table.column_names
    check_unique_columns(url, names)
    if "object_id" not in names:
        raise InputError(
            f"labels {url!r} has no object_id column (columns: {', '.join(names[:12])}); give each galaxy the integer id "
            "its tiles hold it by, as object_id (`survey ingest` writes them into its labels.parquet, `catalog pick` into "
            "its batch file, `labels match` into a table with ra and dec)" + did_you_mean("object_id", names)
        )
    spelt = spellings_of(names, schema)  # the schema's name of a column -> the file's name(s)
    said = {ours: " / ".join(map(repr, spellings)) for ours, spellings in spelt.items()}  # for messages
    names = list(spelt)
    answers = set(schema.answer_columns)
    _check_not_other_labels(url, names, schema, schema_from)
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
        values = np.where(np.isnan(values), 0.0, values)  # not nan_to_num: it made an infinite count 1.8e308
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
    split = read_split(url, table.column("split").to_pylist()) if "split" in names else None
    labels = Labels(object_id, votes, split, str(url), sha256, *locations(table), sky_positions(url, table))
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


