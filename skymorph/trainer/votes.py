"""Add the votes volunteers gave a picked batch to the labels: the active-learning loop's return leg.

``catalog pick`` writes a batch (``object_id``, ``tile``, ``row``, ``ra``, ``dec``, score); volunteers
classify it; their vote counts come back as a table in any form :func:`~skymorph.trainer.labels.load_labels`
reads (skymorph's spelling, a Galaxy Zoo export, GZ2's own table). :func:`add_votes` checks the votes
against the batch (each voted galaxy is one of the batch's, at the batch's position), adds them, with
the batch's ``tile`` and ``row`` (where each image is), to the labels so far (into a galaxy's own row
where the labels list it without votes, as ``survey ingest`` lists an unlabelled cutout; as a new row
otherwise), and writes new labels that record their decision tree and where every added vote came from
(``skymorph.votes_added``): which votes file and which batch, by URL and sha256.
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass

import numpy as np

from skymorph.errors import InputError, first_line
from skymorph.schema import Schema, get_schema
from skymorph.storage import exists
from skymorph.tiles import object_ids

__all__ = ["VotesAdded", "add_votes"]

VOTES_ADDED_KEY = "skymorph.votes_added"


@dataclass(frozen=True)
class VotesAdded:
    """What :func:`add_votes` wrote: ``added`` galaxies' votes, ``total`` labelled galaxies (rows with votes)
    in ``out``, and ``unvoted``, the batch's galaxies without votes yet (still with the volunteers)."""

    out: str
    added: int
    total: int
    unvoted: int

    def summary(self) -> str:
        waiting = (f"; {self.unvoted} of the batch's galaxies have no votes yet: give the batch to `catalog pick "
                   "--exclude` beside the labels until they do" if self.unvoted else "")
        return f"added {self.added} galaxies' votes: {self.total} labelled galaxies -> {self.out}{waiting}"


def add_votes(votes: str, batch: str, out: str, labels: str | None = None, schema: str | Schema | None = None,
              overwrite: bool = False, storage_options=None) -> VotesAdded:
    """Write ``out``: the ``labels`` so far (none: a first round) with each galaxy of ``votes`` given the
    ``tile`` and ``row`` the ``batch`` gives it and its vote counts in ``schema``'s spelling: in its own row
    where ``labels`` list it without votes (a galaxy nobody had classified), whose other cells (``split``,
    a catalog's ``file``) stay; else in a new row with an empty ``split`` (the seed's hash split).
    ``schema``: given, or the tree ``labels`` record. ``total`` counts the rows with votes, ``unvoted`` the
    batch's galaxies with votes neither here nor in ``labels``. A ``split`` column in the votes is not
    read (a warning says so). One-line errors: no tree to read the votes by; votes for a
    galaxy the batch lacks, or at another position than the batch's (more than 5"); a galaxy labelled
    before (add to its old row instead); labels that record another tree; an ``out`` that is not
    ``.parquet``, or exists unless ``overwrite``.
    """
    import pyarrow as pa

    from skymorph.storage import check_new, write_parquet
    from skymorph.tables import (
        LABELLED_POSITION_ARCSEC,
        arcsec_between,
        carried_metadata,
        index_in,
        locations,
        plain,
        read_table,
        sky_positions,
    )
    from skymorph.trainer.labels import labels_from_table

    if not str(out).lower().endswith((".parquet", ".pq")):
        raise InputError(f"--out {out!r}: labels ingest writes Parquet; give a .parquet file")
    check_new(out, "--out", overwrite, storage_options)
    tree = _tree(schema, labels, storage_options)
    read, votes_sha256 = read_table(str(votes), storage_options)
    if "split" in read.column_names:  # a fine-tuned model keeps validating on its hash split only if new rows join it
        print(f"skymorph: warning: votes {votes!r} have a split column, which is not used: new rows take the seed's hash "
              "split, as a model fine-tuned on them validates by; to hold galaxies out, set their cells of the new "
              "labels' split column", file=sys.stderr)
        read = read.drop_columns(["split"])
    voted = labels_from_table(str(votes), read, votes_sha256, tree)

    table, batch_sha256 = read_table(str(batch), storage_options, what="batch")
    if "object_id" not in table.column_names:
        raise InputError(f"batch {batch!r} has no object_id column; give the file `catalog pick` wrote")
    batch_ids = object_ids(table.column("object_id"), f"batch {batch!r}")
    tile, row = locations(table)
    if tile is None:
        raise InputError(f"batch {batch!r} does not say where each image is (tile and row columns); give the file "
                         "`catalog pick` wrote")
    at = index_in(batch_ids, voted.object_id)
    if (at < 0).any():
        raise InputError(
            f"votes {votes!r} are for object_id {int(voted.object_id[np.argmax(at < 0)])} ({int((at < 0).sum())} galaxies "
            f"in all), which batch {batch!r} does not hold; give the batch these galaxies were picked in"
        )
    batch_at = sky_positions(batch, table)
    if voted.ra_dec is not None and batch_at is not None:
        apart = arcsec_between(voted.ra_dec, batch_at[at]) > LABELLED_POSITION_ARCSEC  # NaN: not compared
        if apart.any():
            raise InputError(
                f"votes {votes!r} put object_id {int(voted.object_id[np.argmax(apart)])} more than "
                f"{LABELLED_POSITION_ARCSEC:g}\" from where batch {batch!r} has it: the votes are for another survey's "
                "galaxy of that id"
            )

    asked = [q for q, answers in zip(tree.questions, tree.question_slices) if voted.votes[:, answers].any()]
    columns = {"object_id": pa.array(voted.object_id, pa.int64()), "tile": pa.array(tile[at], pa.string()),
               "row": pa.array(row[at], pa.int64()), "split": pa.nulls(len(voted), pa.string())}
    for question in asked:
        for answer in question.answers:
            columns[f"{question.name}_{answer}"] = pa.array(voted.votes[:, tree.answer_index(question.name, answer)])
    new = pa.table(columns)

    history, old_metadata, already = [], {}, np.empty(0, np.int64)
    if labels is not None:
        old, sha256 = read_table(str(labels), storage_options)
        before = labels_from_table(str(labels), old, sha256, tree, votes_needed=False)  # a first round: none yet
        already = before.object_id  # its rows with votes: the others are galaxies to classify
        again = np.isin(voted.object_id, already)
        if again.any():
            raise InputError(
                f"object_id {int(voted.object_id[np.argmax(again)])} ({int(again.sum())} galaxies in all) is labelled in "
                f"{labels!r} already; add the new votes to its old row instead"
            )
        old = plain(old)
        # pandas' and astropy's keys describe the old columns only; the tree and the history carry over
        old_metadata = carried_metadata(old)
        history = json.loads(old_metadata.get(VOTES_ADDED_KEY.encode(), b"[]"))
        # a galaxy with a row but no votes (ingested without a label, or still with the volunteers) gets its
        # votes in that row, which keeps its other cells: its split above all, so validation stays validation
        voted_row = index_in(voted.object_id, object_ids(old.column("object_id"), f"labels {labels!r}"))
        try:
            old = _fill_rows(old.replace_schema_metadata(None), voted_row, columns)
            fresh = pa.array(~np.isin(np.arange(len(voted)), voted_row))
            new = pa.concat_tables([old, new.filter(fresh)], promote_options="permissive")
        except (pa.ArrowTypeError, pa.ArrowInvalid, pa.ArrowNotImplementedError) as err:
            raise InputError(f"labels {labels!r} cannot take the new rows ({first_line(err, 160)}); give its object_id, "
                             "tile, row, split and vote counts as numbers and text") from None
    history.append({"votes": str(votes), "votes_sha256": voted.sha256, "batch": str(batch),
                    "batch_sha256": batch_sha256, "galaxies": len(voted)})
    metadata = {**old_metadata, b"skymorph.schema": tree.to_json().encode(), VOTES_ADDED_KEY.encode(): json.dumps(history).encode()}
    write_parquet(new.replace_schema_metadata(metadata), out, storage_options)
    unvoted = ~np.isin(batch_ids, np.concatenate([voted.object_id, already]))  # votes of an earlier round count too
    return VotesAdded(out=str(out), added=len(voted), total=len(already) + len(voted), unvoted=int(unvoted.sum()))


def _fill_rows(old, at, columns: dict):
    """``old`` (pyarrow) with its rows ``at >= 0`` (per old row, the index of its galaxy in the new rows' ``columns``)
    given the new rows' cells of every column but ``object_id`` and ``split``, in place: the row's other cells
    stay. A column the old table lacks is added, empty elsewhere."""
    import pyarrow as pa
    import pyarrow.compute as pc

    if not (at >= 0).any():
        return old
    mask, take = pa.array(at >= 0), pa.array(np.maximum(at, 0))
    for name, values in columns.items():
        if name in ("object_id", "split"):
            continue
        filled = values.take(take)  # every old row's would-be cell; only those in ``mask`` are used
        if name in old.column_names and pa.types.is_null(old.column(name).type):  # all empty: no type to keep
            old = old.drop_columns([name])
        if name in old.column_names:
            current = old.column(name)
            old = old.set_column(old.column_names.index(name), name, pc.if_else(mask, filled.cast(current.type), current))
        else:
            old = old.append_column(name, pc.if_else(mask, filled, pa.nulls(len(old), filled.type)))
    return old


def _tree(schema: str | Schema | None, labels: str | None, storage_options) -> Schema:
    """The decision tree to read the votes by: ``schema``, which must agree with the one ``labels``
    record, else the one they record."""
    from skymorph.trainer.labels import labels_schema

    recorded = labels_schema(labels, storage_options) if labels is not None else None
    tree = get_schema(schema) if schema is not None else None
    if tree is None:
        if recorded is None and labels is not None and not exists(str(labels), storage_options):
            raise InputError(f"labels {labels!r} does not exist; check --labels")  # not "give --schema" first
        if recorded is None:
            raise InputError("give --schema: the tree the votes are of (the labels so far record none)")
        return recorded
    if recorded is not None and not recorded.same_tree(tree):
        raise InputError(f"labels {labels!r} record votes of {recorded.name!r}, not of --schema {tree.name!r}; give "
                         "votes of one tree")
    return tree
