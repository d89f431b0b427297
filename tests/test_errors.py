"""skymorph.errors: the helpers that keep every message one line."""

from __future__ import annotations

from skymorph.errors import did_you_mean, first_line, some_names


def test_first_line_of_an_error():
    assert first_line(ValueError("\n  first\nsecond")) == "first"
    assert first_line(EOFError()) == "EOFError"
    assert first_line(ValueError("x" * 500), 10) == "x" * 7 + "..."
    assert first_line(ValueError("the file ends (If you trust it, load it)"), 26) == "the file ends (If you..."
    path = "Load model from /scratch/project/skymorph/models/gz-decals-w20-dirichlet-T30-seed0.onnx failed"
    assert first_line(ValueError(path), 60) == path[:57] + "..."  # the long path kept in part, not dropped at its space
    assert first_line(ValueError("short"), 5) == "short"
    assert first_line(ValueError("load failed, \x1b[1mdo those steps\x1b[0m only")) == "load failed, do those steps only"


def test_did_you_mean():
    assert did_you_mean("bald_totl", ["bald_total", "ra"]) == " Did you mean 'bald_total'?"
    assert did_you_mean("zzz", ["bald_total", "ra"]) == ""
    # case is ignored: "RA" found nothing (too short for difflib), and the choice is named as spelt
    assert did_you_mean("RA", ["object_id", "ra", "dec"]) == " Did you mean 'ra'?"
    assert did_you_mean("Bald_Totl", ["bald_total", "ra"]) == " Did you mean 'bald_total'?"


def test_some_names():
    assert some_names(["a", "b"]) == "'a', 'b'"
    assert some_names(["a", "b", "c", "d", "e"]) == "'a', 'b', 'c' and 2 more"
