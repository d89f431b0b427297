"""Synthetic survey throughput: galaxies per second, end to end (render, votes, Zarr tiles, Parquet).

    .venv/bin/python benchmarks/synth.py [--tiles 4] [--per-tile 512] [--size 128] [--workers 1,2] [--work DIR] [--out JSON]

For each worker count, writes a survey of ``--tiles`` x ``--per-tile`` galaxies of ``--size`` px into a
fresh local directory (``--work``, default a temporary one, removed afterwards) and reports wall time,
galaxies/s, the tile makers' CPU seconds (so galaxies per CPU second, which a busy shared machine
distorts less than wall time) and bytes written; the load average before each run says how busy the
machine was. Also times the image model alone (render + asinh stretch of one tile in this process).
Prints a table and writes benchmarks/results/synth.json (``--out``).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import tempfile
import time
from pathlib import Path

from _args import add_out, int_list, positive_int
from _provenance import provenance, save


def _render_only(per_tile: int, size: int) -> dict:
    import numpy as np

    from skymorph.survey._galaxy import GalaxyParams, render

    rng = np.random.default_rng(0)
    params = GalaxyParams.draw(rng, per_tile)
    render(params.subset(slice(0, 32)), size, 1.3, rng, stretch=True)  # warm up imports and FFT plans
    wall, cpu = time.perf_counter(), time.process_time()
    render(params, size, 1.3, rng, stretch=True)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    return {"galaxies": per_tile, "seconds": wall, "cpu_seconds": cpu, "galaxies_per_s": per_tile / wall}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--tiles", type=positive_int, default=4)
    parser.add_argument("--per-tile", type=positive_int, default=512)
    parser.add_argument("--size", type=positive_int, default=128)
    parser.add_argument("--workers", type=int_list, default="1,2", help="comma-separated worker counts (default 1,2)")
    parser.add_argument("--work", help="directory for the surveys (default: a temporary one, removed)")
    add_out(parser, "synth.json")
    args = parser.parse_args()
    ran = provenance()  # before the measurements: the load it records is the machine's at the start

    from skymorph import __version__
    from skymorph.survey import synthesize

    root = Path(args.work) if args.work else Path(tempfile.mkdtemp(prefix="skymorph-synth-bench-"))
    runs = []
    try:
        for workers in args.workers:
            load = os.getloadavg()[0]
            summary = synthesize(
                str(root / f"workers{workers}"), n_tiles=args.tiles, per_tile=args.per_tile, size=args.size,
                seed=0, workers=workers, progress=False, overwrite=True,
            )
            runs.append({
                "workers": workers, "galaxies": summary.n_galaxies, "seconds": summary.seconds,
                "galaxies_per_s": summary.galaxies_per_second, "cpu_seconds": summary.cpu_seconds,
                "galaxies_per_cpu_s": summary.n_galaxies / summary.cpu_seconds,
                "bytes_written": summary.bytes_written, "load_average_before": load,
            })
        render_only = _render_only(args.per_tile, args.size)
    finally:
        if not args.work:
            shutil.rmtree(root, ignore_errors=True)

    print(f"synthetic survey: {args.tiles} tiles x {args.per_tile} galaxies, {args.size} px, {os.cpu_count()} cores")
    print(f"{'workers':>7} {'seconds':>8} {'gal/s':>7} {'gal/CPU-s':>9} {'MB':>6} {'load':>5}")
    for r in runs:
        print(f"{r['workers']:>7} {r['seconds']:>8.2f} {r['galaxies_per_s']:>7.0f} {r['galaxies_per_cpu_s']:>9.0f} "
              f"{r['bytes_written'] / 1e6:>6.1f} {r['load_average_before']:>5.1f}")
    print(f"image model alone (1 process): {render_only['galaxies_per_s']:.0f} galaxies/s "
          f"({render_only['galaxies'] / render_only['cpu_seconds']:.0f} per CPU second)")

    result = {
        "benchmark": "synth",
        "config": {"tiles": args.tiles, "per_tile": args.per_tile, "size": args.size},
        "runs": runs,
        "render_only": render_only,
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(), "python": platform.python_version()},
        "skymorph_version": __version__,
        "when": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime()),
        "note": "on a machine doing other work, wall-clock numbers are lower bounds; see load_average_before",
    }
    result["provenance"] = ran
    print(f"wrote {save(args.out, result)}")


if __name__ == "__main__":
    main()
