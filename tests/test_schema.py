import json
from pathlib import Path

import numpy as np
import pytest

from skymorph.errors import SchemaError
from skymorph.schema import DECALS, GZ2, Question, Schema, get_schema


def test_builtin_sizes_and_columns():
    assert DECALS.n_answers == 34
    assert GZ2.n_answers == 30
    assert DECALS.answer_columns[:3] == ("smooth_or_featured_smooth", "smooth_or_featured_featured_or_disk",
                                         "smooth_or_featured_artifact")
    assert len(set(DECALS.answer_columns)) == 34
    assert GZ2.answer_index("has_spiral_arms", "yes") == GZ2.answer_columns.index("has_spiral_arms_yes")


def test_question_slices_cover_answers_in_order():
    for schema in (GZ2, DECALS):
        covered = np.concatenate([np.arange(s.start, s.stop) for s in schema.question_slices])
        np.testing.assert_array_equal(covered, np.arange(schema.n_answers))
        for qi, s in enumerate(schema.question_slices):
            assert (schema.answer_question[s] == qi).all()


def test_ancestry_follows_the_tree():
    spiral = DECALS.question_index("spiral_winding")
    path = [DECALS.answer_columns[i] for i in DECALS.ancestry[spiral]]
    assert path == ["smooth_or_featured_featured_or_disk", "disk_edge_on_no", "has_spiral_arms_yes"]
    assert DECALS.ancestry[DECALS.question_index("merging")] == ()


def test_json_round_trip(tmp_path):
    path = tmp_path / "tree.json"
    path.write_text(json.dumps(DECALS.to_dict()))
    assert get_schema(str(path)) == DECALS
    assert Schema.from_json(GZ2.to_json()) == GZ2


@pytest.mark.parametrize(
    "questions, message",
    [
        ([Question("a", ("x", "y")), Question("b", ("x", "y"), ("zz", "x"))], "unknown question 'zz'"),
        ([Question("a", ("x", "y")), Question("b", ("x", "y"), ("a", "nope"))], "asked by answer 'nope'"),
        ([Question("a", ("x", "y")), Question("a", ("x", "y"))], "more than once"),
        ([Question("a", ("x", "y"), ("b", "x")), Question("b", ("x", "y"), ("a", "x"))], "cycle"),
        ([Question("a_b", ("c", "d")), Question("a", ("b_c", "e"))], "ambiguous"),
    ],
)
def test_invalid_trees_name_the_problem(questions, message):
    with pytest.raises(SchemaError, match=message):
        Schema("bad", tuple(questions))


def test_bad_names_and_lookups():
    with pytest.raises(SchemaError, match="snake_case"):
        Question("Has Bar", ("yes", "no"))
    with pytest.raises(SchemaError, match="at least 2"):
        Question("bar", ("yes",))
    with pytest.raises(SchemaError, match="Did you mean 'bar'"):
        DECALS.question("barr")
    with pytest.raises(SchemaError, match="Did you mean 'decals'"):
        get_schema("decal")


def test_same_tree_ignores_the_schema_name_only():
    renamed = Schema("my_decals", DECALS.questions)
    assert renamed.same_tree(DECALS) and not GZ2.same_tree(DECALS)
    reordered = Schema("r", (DECALS.questions[1], DECALS.questions[0]) + DECALS.questions[2:])
    assert not reordered.same_tree(DECALS)


@pytest.mark.parametrize(
    "question, message",
    [
        ({"name": "q", "answers": 5}, r"question 'q': 'answers' must be a list of strings .*got 5$"),
        ({"name": "q", "answers": "yes"}, r"question 'q': 'answers' must be a list of strings .*got 'yes'$"),
        ({"name": "q", "answers": ["a", 2]}, r"question 'q': 'answers' must be a list of strings"),
        ({"name": 7, "answers": ["a", "b"]}, r"question 1: 'name' must be a string, got 7$"),
        ({"name": "q", "answers": ["a", "b"], "asked_by": [1, [2]]}, r"question 'q': 'asked_by' must be \[question, answer\].*got \[1, \[2\]\]$"),
        ({"name": "q", "answers": ["a", "b"], "asked_by": "r2"}, r"question 'q': 'asked_by' must be \[question, answer\].*got 'r2'$"),
        ({"name": "q", "answers": ["a", "b"], "asked_by": ["r"]}, r"'asked_by' must be \[question, answer\]"),
    ],
)
def test_schema_json_with_wrong_types_is_one_line_naming_file_and_question(tmp_path, question, message):
    path = tmp_path / "tree.json"
    path.write_text(json.dumps({"name": "x", "questions": [{"name": "r", "answers": ["y", "n"]}, question]}))
    with pytest.raises(SchemaError, match=message) as info:
        get_schema(str(path))
    assert str(info.value).startswith(f"{path}: ") and "\n" not in str(info.value)


def test_question_refuses_a_string_for_answers_or_asked_by():
    with pytest.raises(SchemaError, match="'answers' must be a list of strings"):
        Question("q", "yes")
    with pytest.raises(SchemaError, match="'asked_by' must be \\[question, answer\\]"):
        Question("q", ("a", "b"), "r2")


def test_schema_file_that_is_not_utf8_is_one_line(tmp_path):
    path = tmp_path / "tree.json"
    path.write_bytes(b"\xff\xfe{}")
    with pytest.raises(SchemaError, match=r"^schema file '.*tree.json' is not UTF-8 text \(invalid start byte at byte 0\)"):
        get_schema(str(path))


@pytest.mark.parametrize(("question", "column"), [("object", "object_id"), ("match", "match_arcsec"), ("position", "position_is_placeholder")])
def test_a_question_named_like_a_labels_column_is_refused(question, column):
    """A question 'object' read every labels file's object_id as one of its answers (answer 'id': the galaxy
    ids became vote counts) or refused every labels file, the one `survey synth` wrote for it included."""
    with pytest.raises(SchemaError, match=rf"^schema 'x': question '{question}' would take the labels' '{column}' column for one "
                                          "of its answers; rename the question$"):
        Schema("x", (Question(question, ("id", "no")),))


@pytest.mark.parametrize(("tree", "message"), [
    ({"name": "t", "questions": [{"name": "q", "answers": ["a", "b"]}, {"name": "r", "answers": ["a", "b"], "asked-by": ["q", "a"]}]},
     r"^tree.json: question 1 \('r'\) has unknown key 'asked-by'; a question has only name, answers, asked_by\. Did you mean 'asked_by'\?$"),
    ({"nmae": "t", "questions": [{"name": "q", "answers": ["a", "b"]}]},
     r"^tree.json has unknown key 'nmae'; a tree has only name, questions\. Did you mean 'name'\?$"),
])
def test_a_misspelt_key_is_refused_not_ignored(tmp_path, monkeypatch, tree, message):
    """A misspelt asked_by made the question a root: its asked fraction 1 and bald_total wrong in every catalog."""
    monkeypatch.chdir(tmp_path)
    Path("tree.json").write_text(json.dumps(tree))
    with pytest.raises(SchemaError, match=message):
        get_schema("tree.json")


def test_a_tree_without_a_name_is_named_after_its_file_not_the_path_as_typed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    Path("mine.json").write_text(json.dumps({"questions": [{"name": "q", "answers": ["a", "b"]}]}))
    assert get_schema("mine.json").name == get_schema(str(tmp_path / "mine.json")).name == "mine"


def test_a_tree_file_may_take_a_built_in_name_only_for_the_built_in_tree(tmp_path):
    """trees/decals.json without a name was named decals, and Galaxy Zoo's DECaLS column names were then read
    as its votes."""
    (tmp_path / "decals.json").write_text(json.dumps({"questions": [{"name": "q", "answers": ["a", "b"]}]}))
    with pytest.raises(SchemaError, match=r"decals.json' names its tree 'decals', a built-in tree's name, but its questions "
                                          "differ from decals's; give it a name of its own$"):
        get_schema(str(tmp_path / "decals.json"))
    (tmp_path / "gz2.json").write_text(json.dumps({"questions": GZ2.to_dict()["questions"]}))
    assert get_schema(str(tmp_path / "gz2.json")) == GZ2
