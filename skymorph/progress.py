"""Progress bars that suit where the output goes.

On a terminal, and in Jupyter, a live tqdm bar. Anywhere else (a SLURM log, ``kubectl logs``, a CI job,
a pipe) a bar redrawn in place ten times a second becomes one endless line of carriage returns, for
hours on a survey run; there each redraw is written as a line of its own, at most every
:data:`LOG_INTERVAL_S` seconds, and a bar that finishes sooner than that prints nothing.
"""

from __future__ import annotations

import sys

__all__ = ["progress_bar", "LOG_INTERVAL_S"]

LOG_INTERVAL_S = 30.0
"""Seconds between progress lines when stderr is not a terminal."""


class _Lines:
    """A tqdm ``file`` for logs: each redraw (``"\\r" + status + padding``) becomes one line; the
    cursor-up codes tqdm moves between stacked bars with are dropped."""

    def __init__(self, stream) -> None:
        self._stream = stream

    def write(self, text: str) -> int:
        line = text.replace("\r", "").replace("\x1b[A", "").rstrip()
        if line:
            self._stream.write(line + "\n")
        return len(text)

    def flush(self) -> None:
        self._stream.flush()


def progress_bar(iterable=None, **kwargs):
    """A tqdm bar on stderr over ``iterable`` (keyword arguments as tqdm's), live on a terminal or in
    Jupyter, a line every :data:`LOG_INTERVAL_S` seconds elsewhere (module docstring)."""
    stream = sys.stderr
    if stream.isatty() or "ipykernel" in sys.modules or kwargs.get("disable"):
        from tqdm.auto import tqdm

        return tqdm(iterable, file=stream, dynamic_ncols=True, **kwargs)
    from tqdm import tqdm

    # miniters=0: print by time alone. tqdm's default adapts a minimum count of iterations between prints
    # to the first ones' pace, which would silence a bar updated often by 0 (a job's postfix) but
    # advanced rarely (one tile in minutes).
    return tqdm(iterable, file=_Lines(stream), mininterval=LOG_INTERVAL_S, maxinterval=max(LOG_INTERVAL_S, 10.0),
                miniters=0, delay=LOG_INTERVAL_S, ncols=100, **kwargs)
