"""The one seed range of skymorph: every ``--seed`` (synth, train, evaluate, export, pick) takes the
unsigned 64-bit integers, [0, 2**64).

numpy's ``default_rng``/``SeedSequence`` (synthetic surveys, the exporter's self-check batch; numpy
refuses negative seeds) and the splitmix64 key of ``pick --strategy power`` (a uint64) use all 64 bits.
torch's CPU generator (dropout masks, initial weights, the batch order) takes the same range but keeps
only the low 32 bits, so it is given :func:`torch_seed` instead of the seed.
"""

from __future__ import annotations

import numbers

from skymorph.errors import InputError

__all__ = ["check_seed", "torch_seed"]


def check_seed(seed, flag: str = "--seed", error: type[Exception] = InputError) -> int:
    """``seed`` as an int in [0, 2**64), else a one-line ``error`` naming ``flag`` (an option, or what holds
    the seed)."""
    if isinstance(seed, bool) or not isinstance(seed, numbers.Integral) or not 0 <= seed < 2**64:
        example = f"; give e.g. {flag} 0" if flag.startswith("--") else ""
        raise error(f"{flag} must be a non-negative integer below 2**64, got {seed!r}{example}")
    return int(seed)


def torch_seed(seed: int) -> int:
    """The seed to give torch's CPU generator for ``seed``: below 2**32 ``seed`` itself, else the 32 bits
    of ``numpy.random.SeedSequence(seed)``'s first state word.

    The generator (mt19937) keeps only the low 32 bits of what ``manual_seed`` is given: seeds s and
    s + 2**32 drew the same dropout masks, under different recorded seeds. Folding all 64 bits ends that
    pattern; seeds below 2**32 keep their masks and weights. 32 bits hold only 2**32 streams, so two
    seeds can still meet, by chance (about 1 pair in 4 billion)."""
    seed = check_seed(seed)
    if seed < 2**32:
        return seed
    import numpy as np

    return int(np.random.SeedSequence(seed).generate_state(1, np.uint32)[0])
