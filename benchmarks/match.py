"""``labels match`` at survey scale: a volunteer table matched by position against many tile galaxies.

    .venv/bin/python benchmarks/match.py [--galaxies 1000000] [--tiles 10] [--rows 300000]

Writes ``--tiles`` tile stores of ``--galaxies`` galaxies in all (8 x 8 px images: the match reads only
the positions) at uniform positions on a 10 x 10 degree patch, and a Galaxy Zoo-style table (``iauname``,
``ra``, ``dec``, one vote column) of ``--rows`` of them, each moved 0.2" in a random direction, plus 1%
of rows off the tiles. Runs :func:`skymorph.trainer.match_labels` in a subprocess that reports its wall
time and peak RSS (``getrusage(RUSAGE_SELF).ru_maxrss``), and checks every matched id: a row whose
galaxy has a neighbour nearer than its shift gets the neighbour, as any nearest match would, and is
counted apart (``other_ids_nearer``). The tiles are
read one at a time, so the peak should follow the table and one tile, not the survey.
Prints a table and writes benchmarks/results/match.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _args import add_out, positive_int
from _provenance import provenance, save


def _make(work: Path, galaxies: int, tiles: int, rows: int) -> None:
    import numpy as np
    import pandas as pd

    from skymorph.tiles import write_tile, write_tile_list

    rng = np.random.default_rng(0)
    ra = 150 + 10 * rng.random(galaxies)
    dec = np.degrees(np.arcsin(rng.uniform(np.sin(np.radians(-3)), np.sin(np.radians(7)), galaxies)))  # uniform on the sphere
    order = np.argsort(ra)  # tiles as strips of ra, as HEALPix tiles are compact patches
    urls = []
    for t, part in enumerate(np.array_split(order, tiles)):
        url = str(work / "tiles" / f"t{t:03d}.zarr")
        write_tile(url, np.zeros((len(part), 1, 8, 8), np.uint8), part.astype(np.int64), ra[part], dec[part], survey="bench",
                   bands=["grey"], pixel_scale_arcsec=1.0, stretch="none", resize="none")
        urls.append(url)
    write_tile_list(str(work / "tiles.txt"), urls)
    picked = rng.choice(galaxies, rows, replace=False)
    angle, shift = rng.uniform(0, 2 * np.pi, rows), 0.2 / 3600
    table = pd.DataFrame({
        "iauname": [f"J{i:09d}" for i in picked],
        "ra": ra[picked] + shift * np.cos(angle) / np.cos(np.radians(dec[picked])),
        "dec": dec[picked] + shift * np.sin(angle),
        "smooth-or-featured_smooth": rng.integers(0, 40, rows),
        "true_ra": ra[picked], "true_dec": dec[picked],
    })
    off = rng.random(rows) < 0.01
    table.loc[off, "dec"] += 20.0  # off the tiles
    table.to_parquet(work / "gz.parquet")


def _child(work: Path) -> dict:
    import pandas as pd

    from skymorph.trainer import match_labels

    start = time.perf_counter()
    matched = match_labels(str(work / "gz.parquet"), str(work / "tiles.txt"), str(work / "matched.parquet"), overwrite=True,
                           progress=False)
    seconds = time.perf_counter() - start
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    from skymorph.tables import arcsec_between

    out = pd.read_parquet(work / "matched.parquet")
    wrong = (out.iauname != out.object_id.map(lambda i: f"J{i:09d}")).to_numpy()
    to_true = arcsec_between(out[["ra", "dec"]].to_numpy()[wrong], out[["true_ra", "true_dec"]].to_numpy()[wrong])
    return {"seconds": round(seconds, 2), "peak_rss_mib": round(peak), "matched": matched.matched,
            "unmatched": matched.unmatched, "duplicates": matched.duplicates, "correct_ids": int((~wrong).sum()),
            # a galaxy with a neighbour nearer than its shifted position is matched to the neighbour, as any
            # nearest match would: wrong ids whose own galaxy is farther than the one matched
            "other_ids_nearer": int((out.match_arcsec.to_numpy()[wrong] <= to_true).sum()),
            "median_arcsec": round(matched.median_arcsec, 3)}


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--galaxies", type=positive_int, default=1_000_000)
    parser.add_argument("--tiles", type=positive_int, default=10)
    parser.add_argument("--rows", type=positive_int, default=300_000)
    parser.add_argument("--child", help=argparse.SUPPRESS)
    add_out(parser, "match.json")
    args = parser.parse_args()
    ran = provenance()  # before the measurements: the load it records is the machine's at the start
    if args.child:
        print(json.dumps(_child(Path(args.child))))
        return 0
    with tempfile.TemporaryDirectory(prefix="skymorph-bench-match-") as tmp:
        work = Path(tmp)
        start = time.perf_counter()
        _make(work, args.galaxies, args.tiles, args.rows)
        made = time.perf_counter() - start
        run = subprocess.run([sys.executable, __file__, "--child", str(work)], capture_output=True, text=True, check=False)
        if run.returncode:
            print(run.stderr, file=sys.stderr)
            return run.returncode
        result = json.loads(run.stdout.strip().splitlines()[-1])
    record = {"galaxies": args.galaxies, "tiles": args.tiles, "rows": args.rows, "setup_seconds": round(made, 1), **result,
              "cpus": os.cpu_count(), "python": platform.python_version()}
    print(f"{'galaxies':>10} {'tiles':>6} {'rows':>8} {'seconds':>8} {'peak MiB':>9} {'matched':>8} {'correct':>8} {'nearer':>7}")
    print(f"{args.galaxies:>10} {args.tiles:>6} {args.rows:>8} {result['seconds']:>8} {result['peak_rss_mib']:>9} "
          f"{result['matched']:>8} {result['correct_ids']:>8} {result['other_ids_nearer']:>7}")
    record["provenance"] = ran
    print(f"-> {save(args.out, record)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
