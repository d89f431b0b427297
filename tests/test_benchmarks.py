"""The benchmark scripts' shared argument types and results writer, and one script end to end on a tiny
input: a bad argument is refused before any work, and the results JSON carries its provenance."""

from __future__ import annotations

import argparse
import importlib.util
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parents[1] / "benchmarks"


def _load(name: str):
    """A helper module of benchmarks/, which is not a package (its scripts import each other by name)."""
    spec = importlib.util.spec_from_file_location(f"benchmarks_{name}", BENCHMARKS / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


_args = _load("_args")
save = _load("_provenance").save


@pytest.mark.parametrize(("convert", "text", "expected"), [
    (_args.positive_int, "3", 3), (_args.nonnegative_int, "0", 0), (_args.positive_float, "0.5", 0.5),
    (_args.unit_fraction, "1", 1.0), (_args.int_list, "1, 2,4", [1, 2, 4]),
])
def test_argument_types_accept(convert, text, expected):
    assert convert(text) == expected


@pytest.mark.parametrize(("convert", "text", "named"), [
    (_args.positive_int, "0", "'0'"), (_args.positive_int, "1.5", "'1.5'"), (_args.nonnegative_int, "-1", "'-1'"),
    (_args.positive_float, "0", "'0'"), (_args.positive_float, "nan", "'nan'"), (_args.positive_float, "inf", "'inf'"),
    (_args.unit_fraction, "0", "'0'"), (_args.unit_fraction, "1.01", "'1.01'"), (_args.int_list, "1,,2", "''"),
    (_args.int_list, "1,0", "'0'"),
])
def test_argument_types_refuse_naming_the_value(convert, text, named):
    with pytest.raises(argparse.ArgumentTypeError, match=f"got {named}$"):
        convert(text)


def test_save_replaces_whole_file_and_leaves_no_temporary(tmp_path):
    out = tmp_path / "results" / "x.json"
    save(out, {"a": 1})
    save(out, {"b": [1, 2]})
    assert json.loads(out.read_text()) == {"b": [1, 2]}
    assert os.listdir(out.parent) == ["x.json"]


def _bench(*argv, cwd):
    return subprocess.run([sys.executable, str(BENCHMARKS / "posterior.py"), *argv], cwd=cwd, capture_output=True, text=True, timeout=300)


def test_posterior_benchmark_writes_results_with_provenance(tmp_path):
    out = tmp_path / "posterior.json"
    run = _bench("--galaxies", "16", "--samples", "4", "--repeats", "1", "--out", str(out), cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    result = json.loads(out.read_text())
    assert [row["likelihood"] for row in result["results"]] == ["multinomial", "dirichlet_multinomial"]
    assert all(row["galaxies"] == 16 and row["galaxies_per_s"] > 0 for row in result["results"])
    assert result["provenance"]["command"][-2:] == ["--out", str(out)]
    assert "numpy" in result["provenance"]["versions"]


def test_save_leaves_no_temporary_file_when_it_fails(tmp_path):
    (tmp_path / "taken").mkdir()
    with pytest.raises(OSError):
        save(tmp_path / "taken", {"a": 1})
    assert os.listdir(tmp_path) == ["taken"]


@pytest.mark.parametrize(("make", "message"), [
    (lambda root: (root / "adir").mkdir() or root / "adir", "is a directory; give the results file's name"),
    (lambda root: (root / "afile").write_text("x") and root / "afile" / "r.json", "is a file"),
])
def test_a_results_path_that_cannot_be_written_is_refused_before_the_work(tmp_path, make, message):
    with pytest.raises(argparse.ArgumentTypeError, match=message):
        _args.results_file(str(make(tmp_path)))
    assert _args.results_file(str(tmp_path / "new" / "r.json")) == tmp_path / "new" / "r.json"


def test_benchmark_refuses_a_bad_argument_in_one_line(tmp_path):
    run = _bench("--galaxies", "0", "--out", str(tmp_path / "never.json"), cwd=tmp_path)
    assert run.returncode == 2
    assert run.stderr.strip().splitlines()[-1] == "posterior.py: error: argument --galaxies: must be an integer >= 1, got '0'"
    assert "Traceback" not in run.stderr
    assert not (tmp_path / "never.json").exists()
