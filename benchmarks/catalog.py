"""Catalog tools at scale: pick (top, power), a 1-degree cone query and a large export on a generated catalog.

    .venv/bin/python benchmarks/catalog.py --rows 10000000 [--catalog DIR] [--keep] [--s3]

Generates a catalog of ``--rows`` rows in DESIGN's layout with the full DECaLS column set (34 answers
x 4 + 2 x 10 + 1 posterior columns, float32; skymorph.testing.catalogs, written by the catalog
writer) into ``--catalog`` (default: a temporary directory, removed afterwards unless ``--keep``;
an existing catalog there is reused). Each measurement then runs in its own subprocess, which reports
its wall time and its peak RSS (``VmHWM``, DuckDB's threads included; not ``ru_maxrss``, which a child
started by fork and exec inherits from its parent: with ``--s3`` that holds the whole catalog).
The export writes every column of the rows with ``bald_total`` above its 75th percentile (a quarter of
the catalog) to Parquet twice: streamed batch by batch as ``catalog query --out`` does, and through
an in-memory table (``query`` then ``export_table``) for comparison.
With ``--s3`` the catalog is copied to a local S3 endpoint (moto, in this process, on 127.0.0.1) and
every task reads it from there, as through pyarrow's S3 filesystem; ``pick_top_s3fs`` repeats
``pick_top`` with a storage option that Arrow has no equivalent of (``config_kwargs``), which reads
whole parts through s3fs (skymorph.catalog.query._RemoteParts). Loopback has no network latency or
bandwidth limit, so S3 costs more than these seconds; the bytes not read are what pushdown saves.
Prints a table and writes benchmarks/results/catalog.json (catalog_s3.json with ``--s3``).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _args import RESULTS, positive_int, results_file
from _provenance import provenance, save

CENTRE = (150.0, 2.0)
EXPORT_WHERE = "bald_total > {threshold!r}"
CONE_RADIUS_ARCSEC = 3600.0
PICK_N = 1000
TASKS = ("pick_top", "pick_power", "cone", "export_streamed", "export_in_memory")
S3FS_ONLY_OPTIONS = {"config_kwargs": {"connect_timeout": 60}}


def _child(task: str, catalog: str, where: str) -> dict:
    from skymorph.catalog import open_catalog, pick, query
    from skymorph.catalog.query import Cone, plan_query

    start = time.perf_counter()
    result: dict = {}
    if task == "pick_top":
        result["rows"] = pick(catalog, PICK_N, strategy="top").num_rows
    elif task == "pick_top_s3fs":
        result["rows"] = pick(catalog, PICK_N, strategy="top", storage_options=S3FS_ONLY_OPTIONS).num_rows
    elif task == "pick_power":
        result["rows"] = pick(catalog, PICK_N, strategy="power", seed=0).num_rows
    elif task == "cone":
        cone = Cone(*CENTRE, CONE_RADIUS_ARCSEC)
        plan = plan_query(open_catalog(catalog), cone=cone)
        result["rows"] = query(catalog, cone=cone).num_rows
        result["partitions_read"] = len(plan.pixels)
        result["partitions_total"] = plan.total_pixels
    elif task in ("export_streamed", "export_in_memory"):
        import tempfile

        from skymorph.catalog import export_table
        from skymorph.catalog.export import export_reader
        from skymorph.catalog.query import query_reader

        with tempfile.TemporaryDirectory() as work:
            out = os.path.join(work, "export.parquet")
            if task == "export_streamed":
                with query_reader(catalog, where=where) as reader:
                    result["rows"] = export_reader(reader, out)[1]
            else:
                table = query(catalog, where=where)
                export_table(table, out)
                result["rows"] = table.num_rows
            result["bytes_written"] = os.path.getsize(out)
    else:
        raise SystemExit(f"unknown task {task!r}")
    result["seconds"] = time.perf_counter() - start
    result["peak_rss_mib"] = _peak_rss_mib()
    return result


def _peak_rss_mib() -> float:
    """This process's peak resident memory: Linux's ``VmHWM``, else ``ru_maxrss`` (KiB on Linux, bytes on macOS)."""
    try:
        with open("/proc/self/status") as status:
            return next(int(line.split()[1]) for line in status if line.startswith("VmHWM:")) / 1024
    except (OSError, StopIteration):
        return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / (1024 * 1024 if sys.platform == "darwin" else 1024)


def _run_child(task: str, catalog: str, where: str) -> dict:
    out = subprocess.run([sys.executable, __file__, "--child", task, "--catalog", catalog, "--where", where],
                         capture_output=True, text=True)
    if out.returncode != 0:
        raise SystemExit(f"benchmark task {task} failed (exit {out.returncode}):\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=positive_int, default=10_000_000)
    parser.add_argument("--per-tile", type=positive_int, default=8192)
    parser.add_argument("--catalog", help="where to generate (or reuse) the catalog")
    parser.add_argument("--keep", action="store_true", help="keep a generated catalog")
    parser.add_argument("--s3", action="store_true", help="read the catalog from a local S3 endpoint (moto)")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--where", help=argparse.SUPPRESS)
    parser.add_argument("--out", type=results_file, help="results JSON (default: benchmarks/results/catalog.json, catalog_s3.json with --s3)")
    args = parser.parse_args()
    ran = provenance()  # before the measurements: the load it records is the machine's at the start
    args.out = args.out or RESULTS / ("catalog_s3.json" if args.s3 else "catalog.json")
    if args.child:
        print(json.dumps(_child(args.child, args.catalog, args.where)))
        return

    from skymorph.catalog import info
    from skymorph.testing.catalogs import write_synthetic_catalog

    temporary = args.catalog is None
    catalog = args.catalog or tempfile.mkdtemp(prefix="skymorph-bench-catalog-")
    results: dict = {"rows_requested": args.rows, "machine": f"{platform.node()} {os.cpu_count()} cpus",
                     "load_average_1min_at_start": os.getloadavg()[0], "read_from": "local S3 (moto)" if args.s3 else "local disk"}
    tasks = (*TASKS, "pick_top_s3fs") if args.s3 else TASKS
    s3 = None
    try:
        if os.path.exists(os.path.join(catalog, "hats.properties")):
            results["generate_seconds"] = None
        else:
            start = time.perf_counter()
            write_synthetic_catalog(catalog, args.rows, per_tile=args.per_tile, centre=CENTRE, progress=True)
            results["generate_seconds"] = time.perf_counter() - start
        summary = info(catalog)
        size = sum(f.stat().st_size for f in Path(catalog).rglob("*.parquet"))
        results.update(rows=summary.rows, columns=len(summary.columns), partitions=summary.partitions,
                       parts=sum(1 for _ in Path(catalog).rglob("part-*.parquet")), bytes_on_disk=size)
        # info's quantiles are approximate and may differ between calls: both exports get the same cut
        where = EXPORT_WHERE.format(threshold=float(summary.bald_quantiles[0.75]))
        results["export_where"] = where
        read_from = catalog
        if args.s3:
            from skymorph.storage import filesystem
            from skymorph.testing import LocalS3

            s3 = LocalS3().start()
            s3.apply_env()  # the children inherit it
            read_from = f"{s3.create_bucket('skymorph-bench')}/catalog"
            fs, path = filesystem(read_from)
            start = time.perf_counter()
            fs.put(catalog, path, recursive=True)
            results["upload_seconds"] = time.perf_counter() - start
        for task in tasks:
            results[task] = _run_child(task, read_from, where)
        results["load_average_1min_at_end"] = os.getloadavg()[0]
    finally:
        if s3 is not None:
            s3.stop()
        if temporary and not args.keep:
            shutil.rmtree(catalog, ignore_errors=True)

    results["provenance"] = ran
    save(args.out, results)
    print(f"catalog: {results['rows']:,} rows x {results['columns']} columns, {results['partitions']} partitions, "
          f"{results['parts']} part files, {results['bytes_on_disk'] / 2**30:.2f} GiB; generated in "
          f"{results['generate_seconds'] or 0:.0f} s")
    print(f"{'task':<18}{'seconds':>10}{'peak RSS MiB':>14}{'rows':>10}  partitions read")
    for task in tasks:
        r = results[task]
        parts = f"{r['partitions_read']} of {r['partitions_total']}" if "partitions_read" in r else "all"
        print(f"{task:<18}{r['seconds']:>10.2f}{r['peak_rss_mib']:>14.0f}{r['rows']:>10}  {parts}")


if __name__ == "__main__":
    main()
