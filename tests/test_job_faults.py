"""The survey job behind a fault-injecting proxy: S3 answers 503 SlowDown or drops the connection for a
share of requests, and the catalog must still be exact."""

from __future__ import annotations

import http.client
import re
from urllib.parse import urlsplit

import pytest
from jobhelpers import assert_exact, make_tiles

from skymorph.errors import InputError
from skymorph.testing.faulty_proxy import FaultyProxy


def test_proxy_injects_its_share_of_faults(s3, s3_bucket):
    with FaultyProxy(s3.endpoint_url, p_503=0.3, p_drop=0.2, seed=1) as proxy:
        host, port = urlsplit(proxy.url).hostname, urlsplit(proxy.url).port
        statuses = []
        for _ in range(200):
            conn = http.client.HTTPConnection(host, port, timeout=10)
            try:
                conn.request("GET", f"/{s3_bucket[5:]}")
                statuses.append(conn.getresponse().status)
            except (http.client.RemoteDisconnected, ConnectionError):
                statuses.append("dropped")
            finally:
                conn.close()
    assert proxy.counts.total == 200
    assert statuses.count(503) == proxy.counts.slow_down and statuses.count("dropped") == proxy.counts.dropped
    assert 40 <= proxy.counts.slow_down <= 80 and 20 <= proxy.counts.dropped <= 60
    assert all(s == 200 for s in statuses if s not in (503, "dropped"))


def test_the_proxy_answers_head_as_s3_does(s3, s3_bucket):
    """A forwarded HEAD reported size 0, so every object read through the proxy was empty, and an injected
    503 or 403 to a HEAD carried a body, which the client read as the start of its next reply."""
    from skymorph import storage

    storage.atomic_write_bytes(f"{s3_bucket}/f.bin", b"x" * 1000)
    with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0) as proxy:
        fs, path = storage.filesystem(f"{s3_bucket}/f.bin", {"endpoint_url": proxy.url, "skip_instance_cache": True})
        assert fs.info(path)["size"] == 1000 and fs.cat_file(path) == b"x" * 1000
        host, port = urlsplit(proxy.url).hostname, urlsplit(proxy.url).port
        conn = http.client.HTTPConnection(host, port, timeout=10)
        try:
            conn.request("GET", f"/{s3_bucket[5:]}/f.bin")
            reply = conn.getresponse()
            reply.read()
        finally:
            conn.close()
        names = [name.lower() for name, _ in reply.getheaders()]
        assert names.count("server") == names.count("date") == 1  # not the proxy's and S3's both: strict parsers refuse
    for kind in ({"p_503": 1.0}, {"deny": "."}):
        with FaultyProxy(s3.endpoint_url, **{"p_503": 0, "p_drop": 0, **kind}) as proxy:
            host, port = urlsplit(proxy.url).hostname, urlsplit(proxy.url).port
            conn = http.client.HTTPConnection(host, port, timeout=10)
            try:
                statuses = []
                for _ in range(2):  # on one connection: a stray body would be read as the second status line
                    conn.request("HEAD", f"/{s3_bucket[5:]}/f.bin")
                    reply = conn.getresponse()
                    reply.read()
                    statuses.append(reply.status)
            finally:
                conn.close()
        assert statuses == [503, 503] if "p_503" in kind else statuses == [403, 403]


def test_proxy_checks_its_arguments():
    with pytest.raises(InputError, match="summing to at most 1"):
        FaultyProxy("http://127.0.0.1:1", p_503=0.8, p_drop=0.5)
    with pytest.raises(InputError, match="http://host:port"):
        FaultyProxy("s3://bucket")


@pytest.mark.slow
def test_exact_catalog_through_a_faulty_s3(s3, s3_bucket, tiny_model, monkeypatch):
    from skymorph.inference.job import RunConfig, run_survey

    tiles = make_tiles(s3_bucket, n_tiles=2, per_tile=96)
    with FaultyProxy(s3.endpoint_url, p_503=0.1, p_drop=0.05, seed=0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the driver and the workers it starts
        report = run_survey(RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=f"{s3_bucket}/catalog",
                                      workers=1, rows_per_task=64, batch_size=32, catalog_order=3, progress=False))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    assert proxy.counts.slow_down > 0 and proxy.counts.dropped > 0
    assert report.ok, report.failures
    assert report.total_rows == 2 * 96
    assert_exact(f"{s3_bucket}/catalog", tiny_model, tiles)


def test_a_part_file_s3_refuses_is_named_in_the_failures(s3, s3_bucket, tiny_model, monkeypatch):
    """A bucket policy refusing the part files: each failure's reason said only "PermissionError: Access
    Denied", naming neither the object nor the bucket."""
    from skymorph.inference.job import RunConfig, run_survey

    make_tiles(s3_bucket, n_tiles=2, per_tile=32, compact=True)
    with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0, deny=r"^PUT \S*Npix") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        report = run_survey(RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=tiny_model, out=f"{s3_bucket}/catalog",
                                      workers=1, progress=False))
    monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
    assert [f["stage"] for f in report.failures] == ["write", "write"]
    for failure in report.failures:
        assert re.fullmatch(rf"PermissionError: \[Errno 13\] Access Denied: '{s3_bucket}/catalog/dataset/Norder=\d+/Dir=\d+/"
                            r"Npix=\d+/part-\w+\.parquet'", failure["reason"]), failure["reason"]


def test_workers_that_cannot_load_the_model_stop_the_run_before_the_catalog_is_touched(s3, s3_bucket, tiny_model,
                                                                                          tmp_path, monkeypatch):
    """The driver read the model, its workers could not (here S3 refuses it to them; or a laptop path given to a
    remote cluster): the driver said "Access Denied" or "No such file" of a file it had just read, the workers
    logged 25-line tracebacks, and --out was left holding a manifest that tied it to that model."""
    from skymorph.errors import ModelError
    from skymorph.inference.job import RunConfig, run_survey
    from skymorph.storage import atomic_write_bytes, filesystem
    from skymorph.testing.dask_processes import dask_processes

    make_tiles(s3_bucket, n_tiles=1, per_tile=32, compact=True)
    model = f"{s3_bucket}/models/tiny.onnx"
    with open(tiny_model, "rb") as fh:
        atomic_write_bytes(model, fh.read())
    with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0, deny="tiny.onnx") as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)  # the workers', not the driver's
        with dask_processes(str(tmp_path), [["--nthreads", "1"]]) as procs:
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
            with pytest.raises(ModelError) as info:
                run_survey(RunConfig(tiles=f"{s3_bucket}/tiles.txt", model=model, out=f"{s3_bucket}/catalog",
                                     scheduler=procs.address, progress=False))
    assert proxy.counts.denied >= 1
    assert re.fullmatch(rf"the Dask worker at tcp://127\.0\.0\.1:\d+ cannot load the model \(PermissionError: \[Errno 13\] "
                        rf"(Access Denied|Forbidden): '{model}'\); every worker must be able to read it \(an s3:// URL, or a path on a "
                        r"filesystem they share\)", str(info.value)), str(info.value)
    fs, path = filesystem(f"{s3_bucket}/catalog")
    fs.invalidate_cache()
    assert fs.find(path) == []  # no manifest, no lock: a run with another model may have --out


def test_only_storage_hiccups_count_as_transient():
    from skymorph.errors import TileError
    from skymorph.inference.task import is_transient

    assert is_transient(OSError("An error occurred (SlowDown) when calling the PutObject operation: Reduce your rate"))
    assert is_transient(OSError("An error occurred (503) when calling the HeadObject operation: Service Unavailable"))
    assert is_transient(ConnectionResetError("connection reset by peer"))
    wrapped = RuntimeError("read failed")
    wrapped.__cause__ = TimeoutError("read timed out")
    assert is_transient(wrapped)
    # a chunk key or tile name that happens to contain 503 is not an HTTP status
    assert not is_transient(ValueError("corrupt chunk images/c/503/0/0/0 of hpx5_01503"))
    assert not is_transient(OSError("cannot decode chunk images/c/503/0/0/0"))
    assert not is_transient(TileError("tile 'x' has float64 images"))
    assert not is_transient(FileNotFoundError("s3://bucket/missing.zarr"))


def test_a_storage_outage_mid_run_stops_the_run_after_a_streak_of_transient_failures():
    """Storage going down once rows had been written was never judged systemic: each remaining range failed
    after minutes of retries, the whole survey in turn. A streak of SYSTEMIC_FAILURES transient failures,
    with no success between them, now stops the run, rows written or not; any other failure or a success
    ends the streak."""
    from skymorph.errors import ClusterError
    from skymorph.inference.driver import SYSTEMIC_FAILURES, Tally, stop_if_storage_down

    tally = Tally(rows_written=5000)
    reason = "OSError: [Errno 16] Service Unavailable"
    for i in range(SYSTEMIC_FAILURES - 1):
        tally.failures.append({"tile": f"t{i}", "start": 0, "stop": 64, "stage": "read", "reason": reason})
        tally.transient_streak += 1
        stop_if_storage_down(tally)
    tally.transient_streak = 0  # a success, or a failure of another kind, between them
    stop_if_storage_down(tally)
    tally.transient_streak = SYSTEMIC_FAILURES
    with pytest.raises(ClusterError, match=rf"^the last {SYSTEMIC_FAILURES} tile ranges all failed on storage that did not "
                                           rf"answer in time \(the last: read: {re.escape(reason)}\); stopped, the catalog "
                                           "left unfinished with its finished tile ranges kept: run the same command again"):
        stop_if_storage_down(tally)
