"""Ingest of real cutouts: throughput and peak memory, against the bytes of the survey it writes.

    .venv/bin/python benchmarks/ingest.py [--data /work/shared/data/gz2_spirals] [--size 256] [--tile-size 256] [--out JSON]

Ingests the 2,000 GZ2 JPEGs (424 px RGB) at ``--size`` px, bands kept, into tiles of ``--tile-size``,
in a fresh process each time (``--repeat``), so that its peak resident memory (``ru_maxrss``) is the
ingest's own. Ingest streams (a tile is written as it fills), so the peak should stay near the
interpreter's baseline plus one open tile, however many cutouts there are; the survey's own bytes
(``n x 3 x size^2``) are printed beside it. Writes benchmarks/results/ingest.json (``--out``).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
from pathlib import Path

from _args import add_out, positive_int
from _provenance import provenance, save

ROOT = Path(__file__).resolve().parents[1]

_CHILD = """
import json, resource, sys, time
from skymorph.survey import ingest
catalog, out, size, tile_size = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
baseline = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss  # skymorph.survey and its imports loaded
started = time.perf_counter()
summary = ingest(catalog, out, size, bands="keep", tile_size=tile_size, id_column="galaxy_id", progress=False)
seconds = time.perf_counter() - started
print(json.dumps({"galaxies": summary.n_galaxies, "tiles": len(summary.tiles), "seconds": seconds,
                  "baseline_rss_mb": baseline / 1024, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024}))
"""


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--data", default=str(ROOT.parent / "shared" / "data" / "gz2_spirals"))
    parser.add_argument("--size", type=positive_int, default=256, help="tile cutout size (px)")
    parser.add_argument("--tile-size", type=positive_int, default=256, help="cutouts per tile")
    parser.add_argument("--repeat", type=positive_int, default=2)
    add_out(parser, "ingest.json")
    args = parser.parse_args()
    ran = provenance()
    catalog = os.path.join(args.data, "labels.csv")
    if not os.path.isfile(catalog):
        sys.exit(f"benchmarks/ingest.py: no catalog at {catalog}; give --data, the gz2_spirals directory")

    runs = []
    env = {**os.environ, "PYTHONPATH": os.pathsep.join(filter(None, [str(ROOT), os.environ.get("PYTHONPATH")]))}
    for _ in range(args.repeat):
        with tempfile.TemporaryDirectory(prefix="skymorph-ingest-bench-") as work:
            load = os.getloadavg()[0]
            child = subprocess.run([sys.executable, "-c", _CHILD, catalog, os.path.join(work, "survey"), str(args.size),
                                    str(args.tile_size)], env=env, capture_output=True, text=True, check=False)
            if child.returncode:
                sys.exit(f"benchmarks/ingest.py: the ingest failed: {child.stderr.strip().splitlines()[-1]}")
            run = json.loads(child.stdout.strip().splitlines()[-1])
            runs.append({**run, "galaxies_per_s": run["galaxies"] / run["seconds"], "load_average_before": load})

    survey_mb = runs[0]["galaxies"] * 3 * args.size**2 / 2**20
    tile_mb = min(args.tile_size, runs[0]["galaxies"]) * 3 * args.size**2 / 2**20
    print(f"ingest of {runs[0]['galaxies']} GZ2 JPEGs at {args.size} px RGB, tiles of {args.tile_size}: the survey's pixels "
          f"{survey_mb:.0f} MiB, one tile's {tile_mb:.0f} MiB")
    print(f"{'seconds':>8} {'gal/s':>6} {'baseline MiB':>12} {'peak MiB':>9} {'load':>5}")
    for r in runs:
        print(f"{r['seconds']:>8.1f} {r['galaxies_per_s']:>6.0f} {r['baseline_rss_mb']:>12.0f} {r['peak_rss_mb']:>9.0f} "
              f"{r['load_average_before']:>5.1f}")
    result = {
        "benchmark": "ingest",
        "config": {"data": args.data, "size": args.size, "tile_size": args.tile_size, "bands": "keep"},
        "survey_pixels_mib": survey_mb,
        "tile_pixels_mib": tile_mb,
        "runs": runs,
        "note": "peak_rss_mb is the ingest process's own high-water mark; baseline_rss_mb is after its imports",
        "provenance": ran,
    }
    print(f"wrote {save(args.out, result)}")


if __name__ == "__main__":
    main()
