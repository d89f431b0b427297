"""What recording progress costs the driver: the whole manifest rewritten vs one journal segment.

    .venv/bin/python benchmarks/manifest.py [--ranges 500000] [--per-second 1000] [--segments 1000]

Builds a manifest of ``--ranges`` finished tile ranges (500,000 ranges of 4,096 rows are 2 x 10^9
galaxies, a tenth of Rubin's 4.9 x 10^6 ranges at the default --rows-per-task), then times on the local disk:

- ``write_manifest``: the whole manifest, which is what the driver paid every second before the
  journal, and now pays at each compaction (every ``--segments`` segments) and at the finish;
- ``ManifestJournal.flush`` of ``--per-second`` new ranges: what the driver pays each second now;
- ``read_manifest`` of the compacted manifest plus ``--segments`` journal segments: a resume;

and measures (tracemalloc) the driver's memory per finished range: the manifest it holds while it
runs, the manifest a resume reads back, and the index of finished ranges per tile it builds beside it.

Writes benchmarks/results/manifest.json.
"""

from __future__ import annotations

import argparse
import os
import platform
import sys
import tempfile
import time

from _args import add_out, positive_int
from _provenance import provenance, save


def _record(i: int, tiles: list[str] | None = None):
    from skymorph.catalog.writer import RangeRecord

    tile, part = divmod(i, 16)
    digest = f"{i:016x}"
    url = tiles[tile] if tiles and tile < len(tiles) else f"s3://survey/tiles/tile-{tile:07d}.zarr"
    return RangeRecord(url, 4096 * part, 4096 * (part + 1), 65536, 512, ((i % 49152, f"part-{digest}.parquet", 4096),))


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--ranges", type=positive_int, default=500_000)
    parser.add_argument("--per-second", type=positive_int, default=1000, help="ranges finished per second (one flush)")
    parser.add_argument("--segments", type=positive_int, default=1000, help="journal segments before a compaction")
    add_out(parser, "manifest.json")
    args = parser.parse_args()
    ran = provenance()  # before the measurements: the load it records is the machine's at the start

    import tracemalloc

    from skymorph.catalog import layout
    from skymorph.catalog.writer import Manifest, ManifestJournal, read_manifest, write_manifest
    from skymorph.inference.job import _Plan

    with tempfile.TemporaryDirectory() as work:
        catalog = os.path.join(work, "catalog")
        tiles = sorted({_record(i).tile for i in range(0, args.ranges, 16)})  # the tile list's strings, which records share
        tracemalloc.start()
        manifest = Manifest(model_sha256="ab" * 32, order=6, ranges={}, n_volunteers=40)
        for i in range(args.ranges):
            manifest.add(_record(i, tiles))
        held = tracemalloc.get_traced_memory()[0]
        plan = _Plan(tiles, manifest, rows_per_task=4096)
        resume_index = tracemalloc.get_traced_memory()[0] - held
        del plan
        tracemalloc.stop()

        t = time.perf_counter()
        write_manifest(catalog, manifest)
        whole_s = time.perf_counter() - t
        whole_mb = os.path.getsize(layout.manifest_url(catalog)) / 1e6

        journal = ManifestJournal(catalog, manifest, compact_every=args.segments + 1)
        flushes = []
        next_id = args.ranges
        for _ in range(args.segments):
            for i in range(next_id, next_id + args.per_second):
                journal.add(_record(i))
            next_id += args.per_second
            t = time.perf_counter()
            journal.flush()
            flushes.append(time.perf_counter() - t)

        t = time.perf_counter()
        resumed = read_manifest(catalog)
        read_s = time.perf_counter() - t
        assert len(resumed.ranges) == next_id, (len(resumed.ranges), next_id)
        del resumed
        tracemalloc.start()  # again, untimed: what a resumed driver's manifest holds
        resumed = read_manifest(catalog)
        read_back = tracemalloc.get_traced_memory()[0] / len(resumed.ranges)
        tracemalloc.stop()
        del resumed

    flushes.sort()
    result = {
        "ranges": args.ranges,
        "whole_manifest_write_s": whole_s,
        "whole_manifest_mb": whole_mb,
        "journal_flush_ranges": args.per_second,
        "journal_flush_median_s": flushes[len(flushes) // 2],
        "journal_flush_p99_s": flushes[int(0.99 * (len(flushes) - 1))],
        "resume_read_s": read_s,
        "resume_ranges": next_id,
        "resume_segments": args.segments,
        "driver_bytes_per_range": held / args.ranges,
        "resume_index_bytes_per_range": resume_index / args.ranges,
        "resumed_manifest_bytes_per_range": read_back,
        "machine": f"{platform.processor() or platform.machine()}, {os.cpu_count()} cpus, load {os.getloadavg()[0]:.1f}",
    }
    print(f"whole manifest, {args.ranges:,} ranges: {whole_s:.2f} s, {whole_mb:.0f} MB")
    print(f"journal flush of {args.per_second:,} ranges: median {result['journal_flush_median_s'] * 1e3:.1f} ms, "
          f"p99 {result['journal_flush_p99_s'] * 1e3:.1f} ms")
    print(f"resume: read {next_id:,} ranges from the manifest + {args.segments} segments in {read_s:.2f} s")
    print(f"driver memory: {held / args.ranges:.0f} B per finished range held, {read_back:.0f} B read back by a resume, "
          f"and {resume_index / args.ranges:.0f} B more per range in a resume's index")
    result["provenance"] = ran
    print(f"-> {save(args.out, result)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
