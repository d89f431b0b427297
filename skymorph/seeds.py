"""The one seed range of skymorph: every ``--seed`` (synth, train, evaluate, export, pick) takes the
unsigned 64-bit integers, [0, 2**64).

That is exactly what each consumer accepts: torch's ``Generator.manual_seed`` (dropout masks, initial
weights), numpy's ``default_rng``/``SeedSequence`` (synthetic surveys, the exporter's self-check batch;
numpy refuses negative seeds) and the splitmix64 key of ``pick --strategy power`` (a uint64).
"""

from __future__ import annotations

import numbers

from skymorph.errors import InputError

__all__ = ["check_seed"]


def check_seed(seed, flag: str = "--seed", error: type[Exception] = InputError) -> int:
    """``seed`` as an int in [0, 2**64), else a one-line ``error`` naming ``flag`` (an option, or what holds
    the seed)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        example = f"; give e.g. {flag} 0" if flag.startswith("--") else ""
        raise error(f"{flag} must be a non-negative integer below 2**64, got {seed!r}{example}")
    return int(seed)
