"""skymorph's errors.

Every error skymorph raises on bad input derives from :class:`SkymorphError` and also from the built-in
a caller would catch (``ValueError``, ``FileNotFoundError``, ``ImportError``). Messages are one line:
what was wrong, with which input, and what to do next. The command line prints exactly that line.
"""

from __future__ import annotations

__all__ = [
    "SkymorphError",
    "InputError",
    "SchemaError",
    "TileError",
    "TileNotFoundError",
    "ModelError",
    "CatalogError",
    "ClusterError",
    "MissingDependencyError",
    "check_int",
    "did_you_mean",
    "error_text",
    "first_line",
    "some_names",
]


class SkymorphError(Exception):
    """Base of every skymorph error; the CLI turns it into a one-line message and exit code 2."""


class InputError(SkymorphError, ValueError):
    """A user-supplied argument, file or table is invalid."""


class SchemaError(SkymorphError, ValueError):
    """A Galaxy Zoo decision tree (schema) is malformed or does not match the data."""


class TileError(SkymorphError, ValueError):
    """A tile store is malformed: wrong dtype, shape, missing array, not a skymorph store."""


class TileNotFoundError(TileError, FileNotFoundError):
    """A tile store does not exist at the given URL."""


class ModelError(SkymorphError, ValueError):
    """A checkpoint, ONNX model or TensorRT plan is unreadable, lacks metadata or does not fit."""


class CatalogError(SkymorphError, ValueError):
    """A catalog is missing, malformed, or a query against it is invalid."""


class ClusterError(SkymorphError, ConnectionError):
    """The Dask scheduler went away while a job ran on it."""


class MissingDependencyError(SkymorphError, ImportError):
    """An optional dependency is needed for this feature; the message says what to install."""


def check_int(name: str, flag: str, value, minimum: int, maximum: int | None = None, why: str = "") -> int:
    """``value`` as an int if it is a whole number (not a bool) of at least ``minimum`` (and at most
    ``maximum``), else an :class:`InputError` naming the argument both ways: ``size (--size) must be an
    integer >= 8, got 4``; ``why`` follows the message of a value above ``maximum``."""
    import numbers

    if isinstance(value, bool) or not isinstance(value, numbers.Integral) or value < minimum:
        raise InputError(f"{name} ({flag}) must be an integer >= {minimum}, got {value!r}")
    if maximum is not None and value > maximum:
        raise InputError(f"{name} ({flag}) must be at most {maximum}, got {value}{why}")
    return int(value)


def did_you_mean(name: str, choices) -> str:
    """Return ``" Did you mean 'x'?"`` for the closest of ``choices`` to ``name``, or ``""``; case is
    ignored in the comparison (``RA`` finds ``ra``: difflib alone finds nothing that short)."""
    import difflib

    by_folded: dict[str, str] = {}
    for choice in choices:
        by_folded.setdefault(str(choice).casefold(), choice)
    close = difflib.get_close_matches(str(name).casefold(), list(by_folded), n=1)
    return f" Did you mean {by_folded[close[0]]!r}?" if close else ""


def some_names(names, shown: int = 3) -> str:
    """``'a', 'b', 'c' and 2 more``: the first ``shown`` of ``names``, quoted, for a one-line message."""
    names = list(names)
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(repr(name) for name in names[:shown]) + more


def error_text(err: BaseException, limit: int = 500) -> str:
    """``"KilledWorker: the first line of its message"``, or the type alone for an error without one: how a
    failure is recorded (a failures table's ``reason``)."""
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return f"{type(err).__name__}: {lines[0]}"[:limit] if lines else type(err).__name__


def first_line(err: BaseException, limit: int = 200) -> str:
    """The first non-blank line of ``err``'s message, at most ``limit`` characters, without terminal
    colour codes (torch's bold text); the exception's type name when the message is empty (a truncated
    file can raise an error with no message). A longer line is cut, and "..." says so: after its last
    whole word if that ends near the limit (a cut mid-word read as a typo), else mid-word (a long path or
    URL at the end is kept in part, not dropped)."""
    import re

    text = re.sub(r"\x1b\[[0-9;]*m", "", str(err))
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    line = lines[0] if lines else type(err).__name__
    if len(line) <= limit:
        return line
    cut = line[: max(limit - 3, 0)]
    space = cut.rfind(" ")
    if space > 0 and space >= len(cut) - 20:  # a whole word, if that loses at most 20 characters
        cut = cut[:space].rstrip(" ,;:(")
    return cut + "..."
