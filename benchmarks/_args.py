"""Argument types shared by the benchmark scripts, so that a bad value is refused in one line by argparse
(exit 2) before any work, not a traceback minutes into a run; and the ``--out`` option of a results file."""

from __future__ import annotations

import argparse
from pathlib import Path

RESULTS = Path(__file__).parent / "results"


def positive_int(text: str) -> int:
    """An integer >= 1."""
    return _int_at_least(text, 1)


def nonnegative_int(text: str) -> int:
    """An integer >= 0."""
    return _int_at_least(text, 0)


def positive_float(text: str) -> float:
    """A finite number > 0."""
    value = _float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be a number > 0, got {text!r}")
    return value


def unit_fraction(text: str) -> float:
    """A number in (0, 1]."""
    value = _float(text)
    if not 0 < value <= 1:
        raise argparse.ArgumentTypeError(f"must be a number in (0, 1], got {text!r}")
    return value


def int_list(text: str) -> list[int]:
    """Comma-separated integers >= 1: ``1,2,4``."""
    return [positive_int(part.strip()) for part in text.split(",")]


def results_file(text: str) -> Path:
    """A results file's path: not a directory, and under one that exists or can be made (checked before
    the work, not after it)."""
    path = Path(text)
    if path.is_dir():
        raise argparse.ArgumentTypeError(f"{text!r} is a directory; give the results file's name, e.g. {str(path / 'results.json')!r}")
    parent = next((p for p in path.absolute().parents if p.exists()), None)
    if parent is None or not parent.is_dir():
        raise argparse.ArgumentTypeError(f"cannot make a directory for {text!r}: {parent} is a file")
    return path


def add_out(parser: argparse.ArgumentParser, name: str) -> None:
    """``--out PATH``: where the results JSON goes, by default ``benchmarks/results/<name>``."""
    parser.add_argument("--out", type=results_file, default=RESULTS / name, help=f"results JSON (default: benchmarks/results/{name})")


def _int_at_least(text: str, minimum: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}") from None
    if value < minimum:
        raise argparse.ArgumentTypeError(f"must be an integer >= {minimum}, got {text!r}")
    return value


def _float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"must be a number, got {text!r}") from None
    if value != value or value in (float("inf"), float("-inf")):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text!r}")
    return value
