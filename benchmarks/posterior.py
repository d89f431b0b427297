"""Benchmark skymorph.posterior.summarize: galaxies per second on ONE CPU core.

DECaLS schema (34 answers), T = 30 samples, N = 40 volunteers, float32 samples as an engine gives
them, both likelihoods; best of several repeats over a batch of galaxies. Run from the repo root:

    .venv/bin/python benchmarks/posterior.py [--galaxies 4096] [--repeats 5]

The BLAS and OpenMP pools are limited to one thread before numpy is imported, so the number is a
single-core throughput. On a machine shared with other work the wall-clock rate is a lower bound; the
rate per CPU-second of this process is reported beside it.
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse  # noqa: E402
import platform  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402

import numpy as np  # noqa: E402
import scipy  # noqa: E402
from _args import add_out, positive_int  # noqa: E402
from _provenance import provenance, save  # noqa: E402

from skymorph.posterior import LIKELIHOODS, summarize  # noqa: E402
from skymorph.schema import DECALS  # noqa: E402


def make_samples(likelihood: str, galaxies: int, samples: int, seed: int = 0) -> np.ndarray:
    """float32 (galaxies, samples, 34): softmaxed probabilities or concentrations in [0.1, 100]."""
    rng = np.random.default_rng(seed)
    logits = rng.normal(scale=1.5, size=(galaxies, samples, DECALS.n_answers))
    if likelihood == "dirichlet_multinomial":
        return np.exp(np.clip(logits, np.log(0.1), np.log(100.0))).astype(np.float32)
    p = np.empty_like(logits)
    for s in DECALS.question_slices:
        e = np.exp(logits[..., s])
        p[..., s] = e / e.sum(axis=-1, keepdims=True)
    return p.astype(np.float32)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--galaxies", type=positive_int, default=4096)
    parser.add_argument("--samples", type=positive_int, default=30)
    parser.add_argument("--volunteers", type=positive_int, default=40)
    parser.add_argument("--repeats", type=positive_int, default=5)
    add_out(parser, "posterior.json")
    args = parser.parse_args()
    ran = provenance()  # before the measurements: the load it records is the machine's at the start

    load_at_start = os.getloadavg()[0]
    rows = []
    for likelihood in LIKELIHOODS:
        samples = make_samples(likelihood, args.galaxies, args.samples)
        summarize(samples[:64], DECALS, likelihood, args.volunteers)  # warm-up
        wall, cpu = [], []
        for _ in range(args.repeats):
            start, start_cpu = time.perf_counter(), time.process_time()
            summarize(samples, DECALS, likelihood, args.volunteers)
            wall.append(time.perf_counter() - start)
            cpu.append(time.process_time() - start_cpu)
        best = min(wall)
        rows.append({
            "likelihood": likelihood,
            "galaxies": args.galaxies,
            "best_wall_s": best,
            "median_wall_s": float(np.median(wall)),
            "best_cpu_s": min(cpu),
            "galaxies_per_s": args.galaxies / best,
            "galaxies_per_cpu_s": args.galaxies / min(cpu),
            "us_per_galaxy": best / args.galaxies * 1e6,
        })

    print(f"summarize, DECaLS ({DECALS.n_answers} answers), T={args.samples}, N={args.volunteers}, "
          f"{args.galaxies} galaxies, best of {args.repeats}, 1 thread")
    print(f"{'likelihood':<24}{'best s':>9}{'median s':>10}{'galaxies/s':>12}{'us/galaxy':>11}{'galaxies/cpu-s':>16}")
    for row in rows:
        print(f"{row['likelihood']:<24}{row['best_wall_s']:>9.3f}{row['median_wall_s']:>10.3f}"
              f"{row['galaxies_per_s']:>12.0f}{row['us_per_galaxy']:>11.1f}{row['galaxies_per_cpu_s']:>16.0f}")
    print("galaxies/s is wall clock (best repeat); galaxies/cpu-s divides by this process's CPU time, which\n"
          "excludes time the shared machine gave to other processes.")

    result = {
        "benchmark": "posterior.summarize",
        "command": "python " + " ".join(sys.argv),
        "schema": DECALS.name,
        "answers": DECALS.n_answers,
        "samples": args.samples,
        "n_volunteers": args.volunteers,
        "repeats": args.repeats,
        "threads": 1,
        "results": rows,
        "machine": {
            "cpu_count": os.cpu_count(),
            "processor": platform.processor() or platform.machine(),
            "load_average_1min_at_start": load_at_start,
            "load_average_1min_at_end": os.getloadavg()[0],
            "python": platform.python_version(),
            "numpy": np.__version__,
            "scipy": scipy.__version__,
            "note": "wall-clock rates are lower bounds when other work runs; see the load averages",
        },
        "time_utc": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
    }
    result["provenance"] = ran
    print(f"wrote {save(args.out, result)}")


if __name__ == "__main__":
    main()
