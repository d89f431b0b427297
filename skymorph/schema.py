"""Galaxy Zoo decision trees: questions, their answers, and which answer asks which question.

A :class:`Schema` is an ordered list of :class:`Question`. Its answers, flattened in question order, are
the A output columns of every model and the ``{question}_{answer}`` vote-count columns of every labels
table. A question with ``asked_by=None`` is asked of every galaxy (a root); otherwise it is asked only of
galaxies whose volunteers gave ``asked_by = (question, answer)``.

Built in: ``gz2`` (Galaxy Zoo 2, Willett et al. 2013) and ``decals`` (GZ DECaLS DR5, Walmsley et al.
2022), with the questions and dependencies Zoobot uses. A custom tree comes from a JSON file in the same
form as :meth:`Schema.to_dict`.
"""

from __future__ import annotations

import json
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from functools import cached_property
from pathlib import Path
from types import MappingProxyType

import numpy as np

from skymorph.errors import SchemaError, did_you_mean

__all__ = ["Question", "Schema", "get_schema", "BUILTIN_SCHEMAS"]

_NAME = re.compile(r"^[a-z0-9][a-z0-9_]*$")


@dataclass(frozen=True)
class Question:
    """One question of the tree: its snake_case ``name``, its ``answers`` in output order, and the
    ``(question, answer)`` that leads to it (``None`` for a question every galaxy is asked)."""

    name: str
    answers: tuple[str, ...]
    asked_by: tuple[str, str] | None = None

    def __post_init__(self) -> None:
        if not isinstance(self.answers, (list, tuple)) or not all(isinstance(a, str) for a in self.answers):
            raise SchemaError(f"question {self.name!r}: 'answers' must be a list of strings like [\"yes\", \"no\"], "
                              f"got {self.answers!r}")
        object.__setattr__(self, "answers", tuple(self.answers))
        if self.asked_by is not None:
            if (not isinstance(self.asked_by, (list, tuple)) or len(self.asked_by) != 2
                    or not all(isinstance(part, str) for part in self.asked_by)):
                raise SchemaError(f"question {self.name!r}: 'asked_by' must be [question, answer] like [\"bar\", \"yes\"] "
                                  f"or null, got {self.asked_by!r}")
            object.__setattr__(self, "asked_by", tuple(self.asked_by))
        if not isinstance(self.name, str) or not _NAME.match(self.name):
            raise SchemaError(f"question name {self.name!r} is not snake_case (lower case letters, digits, _)")
        if len(self.answers) < 2:
            raise SchemaError(f"question {self.name!r} has {len(self.answers)} answer(s); a question needs at least 2")
        for answer in self.answers:
            if not isinstance(answer, str) or not _NAME.match(answer):
                raise SchemaError(f"answer {answer!r} of question {self.name!r} is not snake_case")
        duplicates = sorted({a for a in self.answers if self.answers.count(a) > 1})
        if duplicates:
            raise SchemaError(f"question {self.name!r} lists answer(s) {duplicates} more than once")


LABEL_COLUMNS = ("object_id", "tile", "row", "ra", "dec", "split", "match_arcsec", "position_is_placeholder")
"""The columns of a labels table that are not vote counts (``{question}_{answer}``): a galaxy's id and
place, its split, and what ``labels match`` and ``survey ingest`` add."""

_QUESTION_KEYS = ("name", "answers", "asked_by")


@dataclass(frozen=True)
class Schema:
    """A validated decision tree. ``questions`` are in output order; answers flatten to A columns."""

    name: str
    questions: tuple[Question, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        object.__setattr__(self, "questions", tuple(self.questions))
        if not self.questions:
            raise SchemaError(f"schema {self.name!r} has no questions")
        names = [q.name for q in self.questions]
        duplicates = sorted({n for n in names if names.count(n) > 1})
        if duplicates:
            raise SchemaError(f"schema {self.name!r} lists question(s) {duplicates} more than once")
        by_name = {q.name: q for q in self.questions}
        for q in self.questions:
            if q.asked_by is None:
                continue
            parent, answer = q.asked_by
            if parent not in by_name:
                raise SchemaError(
                    f"schema {self.name!r}: question {q.name!r} is asked by unknown question {parent!r}."
                    + did_you_mean(parent, by_name)
                )
            if answer not in by_name[parent].answers:
                raise SchemaError(
                    f"schema {self.name!r}: question {q.name!r} is asked by answer {answer!r}, "
                    f"which question {parent!r} does not have (it has {list(by_name[parent].answers)})"
                )
        for q in self.questions:
            seen = [q.name]
            parent = q.asked_by
            while parent is not None:
                if parent[0] in seen:
                    raise SchemaError(f"schema {self.name!r}: the questions {seen + [parent[0]]} ask each other in a cycle")
                seen.append(parent[0])
                parent = by_name[parent[0]].asked_by
        columns = [f"{q.name}_{a}" for q in self.questions for a in q.answers]
        clashes = sorted({c for c in columns if columns.count(c) > 1})
        if clashes:
            raise SchemaError(f"schema {self.name!r}: answer columns {clashes} are ambiguous; rename a question or answer")
        for q in self.questions:  # a labels table's other columns would read as its answers, or be refused as unknown ones
            taken = [column for column in LABEL_COLUMNS if column.startswith(f"{q.name}_")]
            if taken:
                raise SchemaError(f"schema {self.name!r}: question {q.name!r} would take the labels' {taken[0]!r} column "
                                  "for one of its answers; rename the question")

    # -- lookups ---------------------------------------------------------------------------------

    @property
    def n_answers(self) -> int:
        """A, the number of answers over all questions (the model's output width)."""
        return sum(len(q.answers) for q in self.questions)

    @property
    def question_names(self) -> tuple[str, ...]:
        return tuple(q.name for q in self.questions)

    @cached_property
    def answer_columns(self) -> tuple[str, ...]:
        """``{question}_{answer}`` for every answer, in output order (the labels' vote-count columns)."""
        return tuple(f"{q.name}_{a}" for q in self.questions for a in q.answers)

    @cached_property
    def question_slices(self) -> tuple[slice, ...]:
        """For each question, the slice of its answers in the A output columns."""
        slices, start = [], 0
        for q in self.questions:
            slices.append(slice(start, start + len(q.answers)))
            start += len(q.answers)
        return tuple(slices)

    @cached_property
    def answer_question(self) -> np.ndarray:
        """(A,) int: the index of the question each answer belongs to."""
        return np.repeat(np.arange(len(self.questions)), [len(q.answers) for q in self.questions])

    @cached_property
    def ancestry(self) -> tuple[tuple[int, ...], ...]:
        """For each question, the answer indices (in output order) that lead to it, root first.

        A question's ``asked`` fraction is the product of the predicted fractions at these indices
        (an empty product, 1, for a root question).
        """
        by_name = {q.name: q for q in self.questions}
        paths = []
        for q in self.questions:
            path = []
            parent = q.asked_by
            while parent is not None:
                path.append(self.answer_index(*parent))
                parent = by_name[parent[0]].asked_by
            paths.append(tuple(reversed(path)))
        return tuple(paths)

    def same_tree(self, other: Schema) -> bool:
        """Whether ``other`` has the same questions, answers and dependencies in the same order (names of
        the schemas themselves may differ): then model outputs and catalog columns line up."""
        return self.questions == other.questions

    def question(self, name: str) -> Question:
        """The question called ``name``; a one-line error naming the valid ones otherwise."""
        for q in self.questions:
            if q.name == name:
                return q
        raise SchemaError(
            f"schema {self.name!r} has no question {name!r}."
            + (did_you_mean(name, self.question_names) or f" Its questions: {', '.join(self.question_names)}")
        )

    def question_index(self, name: str) -> int:
        return self.question_names.index(self.question(name).name)

    def answer_index(self, question: str, answer: str) -> int:
        """The output column of ``answer`` of ``question``."""
        q = self.question(question)
        if answer not in q.answers:
            raise SchemaError(f"question {question!r} of schema {self.name!r} has no answer {answer!r}; it has {list(q.answers)}")
        return self.question_slices[self.question_index(question)].start + q.answers.index(answer)

    # -- (de)serialisation -------------------------------------------------------------------------

    def to_dict(self) -> dict:
        """``{"name", "questions": [{"name", "answers", "asked_by"}]}``: DESIGN's ``skymorph.schema``."""
        return {
            "name": self.name,
            "questions": [
                {"name": q.name, "answers": list(q.answers), "asked_by": list(q.asked_by) if q.asked_by else None}
                for q in self.questions
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), separators=(",", ":"))

    @classmethod
    def from_dict(cls, data: dict, source: str = "schema", default_name: str | None = None) -> Schema:
        """From :meth:`to_dict`'s form; every type is checked, and a key it does not have refused (a
        misspelt ``asked_by`` made a root question), so a malformed tree is one :class:`SchemaError` line
        naming ``source``, the question and the field. ``default_name`` (else ``source``) names a tree
        without ``name``."""
        if not isinstance(data, dict) or not isinstance(data.get("questions"), list):
            raise SchemaError(f"{source}: expected an object with 'name' and a list 'questions'")
        _check_keys(data, ("name", "questions"), source)
        name = data.get("name", default_name or source)
        if not isinstance(name, str) or not name.strip():
            raise SchemaError(f"{source}: 'name' must be a non-empty string, got {name!r}")
        questions = []
        for i, q in enumerate(data["questions"]):
            if not isinstance(q, dict) or "name" not in q or "answers" not in q:
                raise SchemaError(f"{source}: question {i} needs 'name' and 'answers'")
            if not isinstance(q["name"], str):
                raise SchemaError(f"{source}: question {i}: 'name' must be a string, got {q['name']!r}")
            _check_keys(q, _QUESTION_KEYS, f"{source}: question {i} ({q['name']!r})")
            try:  # Question checks the other fields' types and values
                questions.append(Question(q["name"], q["answers"], q.get("asked_by")))
            except SchemaError as err:
                raise SchemaError(f"{source}: {err}") from None
        try:
            return cls(name, tuple(questions))
        except SchemaError as err:
            raise SchemaError(f"{source}: {err}") from None

    @classmethod
    def from_json(cls, text: str, source: str = "schema", default_name: str | None = None) -> Schema:
        try:
            data = json.loads(text)
        except json.JSONDecodeError as err:
            raise SchemaError(f"{source} is not valid JSON: {err.msg} at line {err.lineno}") from err
        return cls.from_dict(data, source, default_name)


def _check_keys(data: dict, keys: tuple[str, ...], where: str) -> None:
    unknown = [key for key in data if key not in keys]
    if unknown:
        kind = "a question" if keys == _QUESTION_KEYS else "a tree"
        raise SchemaError(f"{where} has unknown key {unknown[0]!r}; {kind} has only {', '.join(keys)}."
                          + did_you_mean(str(unknown[0]), keys))


def _tree(name: str, spec: list[tuple[str, list[str], str | None]]) -> Schema:
    questions = []
    for qname, answers, asked_by in spec:
        questions.append(Question(qname, tuple(answers), tuple(asked_by.rsplit(":", 1)) if asked_by else None))
    return Schema(name, tuple(questions))


GZ2 = _tree(
    "gz2",
    [
        ("smooth_or_featured", ["smooth", "featured_or_disk", "artifact"], None),
        ("disk_edge_on", ["yes", "no"], "smooth_or_featured:featured_or_disk"),
        ("has_spiral_arms", ["yes", "no"], "disk_edge_on:no"),
        ("bar", ["yes", "no"], "disk_edge_on:no"),
        ("bulge_size", ["dominant", "obvious", "just_noticeable", "no"], "disk_edge_on:no"),
        ("something_odd", ["yes", "no"], None),
        ("how_rounded", ["round", "in_between", "cigar"], "smooth_or_featured:smooth"),
        ("bulge_shape", ["round", "boxy", "no_bulge"], "disk_edge_on:yes"),
        ("spiral_winding", ["tight", "medium", "loose"], "has_spiral_arms:yes"),
        ("spiral_arm_count", ["1", "2", "3", "4", "more_than_4", "cant_tell"], "has_spiral_arms:yes"),
    ],
)

DECALS = _tree(
    "decals",
    [
        ("smooth_or_featured", ["smooth", "featured_or_disk", "artifact"], None),
        ("disk_edge_on", ["yes", "no"], "smooth_or_featured:featured_or_disk"),
        ("has_spiral_arms", ["yes", "no"], "disk_edge_on:no"),
        ("bar", ["strong", "weak", "no"], "disk_edge_on:no"),
        ("bulge_size", ["dominant", "large", "moderate", "small", "none"], "disk_edge_on:no"),
        ("how_rounded", ["round", "in_between", "cigar_shaped"], "smooth_or_featured:smooth"),
        ("edge_on_bulge", ["boxy", "none", "rounded"], "disk_edge_on:yes"),
        ("spiral_winding", ["tight", "medium", "loose"], "has_spiral_arms:yes"),
        ("spiral_arm_count", ["1", "2", "3", "4", "more_than_4", "cant_tell"], "has_spiral_arms:yes"),
        ("merging", ["none", "minor_disturbance", "major_disturbance", "merger"], None),
    ],
)

BUILTIN_SCHEMAS: Mapping[str, Schema] = MappingProxyType({"gz2": GZ2, "decals": DECALS})


def get_schema(name_or_path: str | Schema) -> Schema:
    """A built-in schema by name (``gz2``, ``decals``), or a custom one from a JSON file path."""
    if isinstance(name_or_path, Schema):
        return name_or_path
    if name_or_path in BUILTIN_SCHEMAS:
        return BUILTIN_SCHEMAS[name_or_path]
    path = Path(name_or_path)
    if path.suffix.lower() == ".json" or path.exists():
        if not path.is_file():
            raise SchemaError(f"schema file {str(path)!r} does not exist; give gz2, decals or a JSON file")
        try:
            text = path.read_bytes().decode("utf-8")
        except UnicodeDecodeError as err:
            raise SchemaError(f"schema file {str(path)!r} is not UTF-8 text ({err.reason} at byte {err.start}); "
                              "give a JSON file") from None
        except OSError as err:
            raise SchemaError(f"cannot read schema file {str(path)!r} ({err.strerror or err})") from None
        tree = Schema.from_json(text, source=str(path), default_name=path.stem)  # not the path as typed: it is recorded
        if tree.name in BUILTIN_SCHEMAS and not tree.same_tree(BUILTIN_SCHEMAS[tree.name]):
            # what is known of the built-in (Galaxy Zoo's column names for it) would be taken for this tree's
            raise SchemaError(f"schema file {str(path)!r} names its tree {tree.name!r}, a built-in tree's name, but its "
                              f"questions differ from {tree.name}'s; give it a name of its own")
        return tree
    raise SchemaError(
        f"unknown schema {name_or_path!r}: give one of {', '.join(BUILTIN_SCHEMAS)} or a JSON file path."
        + did_you_mean(str(name_or_path), BUILTIN_SCHEMAS)
    )
