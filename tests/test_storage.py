import errno
import io
import json
import os
import re
import subprocess
import sys
from pathlib import Path

import pyarrow as pa
import pytest

from skymorph import storage
from skymorph.errors import InputError


@pytest.mark.parametrize("where", ["local", "s3"])
def test_atomic_write_and_read_round_trip(where, tmp_path, request):
    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    url = storage.join(root, "sub", "file.bin")
    storage.atomic_write_bytes(url, b"galaxies")
    assert storage.read_bytes(url) == b"galaxies"
    assert storage.exists(url)
    table = pa.table({"object_id": [3, 1, 2]})
    storage.write_parquet(table, storage.join(root, "t.parquet"))
    assert storage.read_parquet(storage.join(root, "t.parquet")).equals(table)
    storage.remove_file(url)
    assert not storage.exists(url)
    storage.remove_file(url)  # already gone: no error


def test_local_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a.txt"
    storage.atomic_write_text(str(target), "one")
    storage.atomic_write_text(str(target), "two")
    assert target.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_a_failed_local_atomic_write_keeps_the_old_file_and_leaves_no_temp(tmp_path):
    """An error inside atomic_output: the old file stays whole and the hidden temp file beside it is
    removed (the test above sees only writes that succeed, where the rename takes the temp away)."""
    target = tmp_path / "a.txt"
    target.write_text("old")
    with pytest.raises(RuntimeError, match="^killed$"):
        with storage.atomic_output(str(target)) as tmp:
            with open(tmp, "w") as fh:
                fh.write("half")
            raise RuntimeError("killed")
    assert target.read_text() == "old"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_local_atomic_write_fsyncs_the_data_before_renaming_it_into_place(tmp_path, monkeypatch):
    """Without the fsync a crash soon after the rename can leave the new name on disk with no data
    (ext4/xfs delayed allocation): an empty or zero-filled part, manifest or model file."""
    events = []
    real_fsync, real_replace = os.fsync, os.replace

    def fsync(fd):
        events.append(("fsync", os.path.basename(os.readlink(f"/proc/self/fd/{fd}")) if os.path.exists("/proc/self/fd") else None))
        real_fsync(fd)

    def replace(src, dst):
        events.append(("replace", os.path.basename(src), os.path.basename(dst)))
        real_replace(src, dst)

    monkeypatch.setattr(os, "fsync", fsync)
    monkeypatch.setattr(os, "replace", replace)
    storage.atomic_write_bytes(str(tmp_path / "a.bin"), b"galaxies")
    assert [e[0] for e in events] == ["fsync", "replace"] and events[1][2] == "a.bin"
    assert events[0][1] in (None, events[1][1])  # the file fsynced is the temp file renamed
    assert (tmp_path / "a.bin").read_bytes() == b"galaxies"


def test_missing_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_bytes(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="not valid JSON"):
        storage.parse_storage_options("{bad")
    with pytest.raises(InputError, match="JSON object"):
        storage.parse_storage_options("[1]")
    # each file a pool of its own, never closed: a run several times slower, with asyncio errors at exit
    with pytest.raises(InputError, match=r'^--storage-options "skip_instance_cache" made each S3 file a connection pool'):
        storage.parse_storage_options('{"skip_instance_cache": true}')
    assert storage.parse_storage_options('{"skip_instance_cache": false, "anon": true}') == {"skip_instance_cache": False, "anon": True}


_READ_ON_THIS_THREAD = """
import os, sys
import torch  # the abort needs torch loaded, as in train and evaluate
from skymorph.storage import read_parquet
from skymorph.tables import read_table


def threads():  # jemalloc's background thread starts on a first allocation and never runs Python
    names = (open(f"/proc/self/task/{task}/comm").read().strip() for task in os.listdir("/proc/self/task"))
    return sum(not name.startswith("jemalloc") for name in names)


before = threads()
assert read_parquet(sys.argv[1]).num_rows == 0
assert read_table(sys.argv[1], None)[0].num_rows == 0
started = threads() - before
assert started == 0, f"reading Parquet started {started} Arrow thread(s)"
"""


@pytest.mark.skipif(not Path("/proc/self/task").is_dir(), reason="counts threads in /proc/self/task (Linux)")
def test_parquet_is_read_without_arrow_threads_and_the_process_exits_cleanly(tmp_path):
    """With torch loaded, an Arrow thread still calling into Python at exit aborts the interpreter (status
    134, "terminate called without an active exception"; up to a third of runs on a busy machine, rarely
    on an idle one). pq.read_table and ParquetFile's pre-buffering both start such threads; the reads
    must not, which a thread count shows deterministically."""

    import pyarrow.parquet as pq

    path = tmp_path / "failures.parquet"  # empty, like a catalog's failures table after a clean run
    schema = pa.schema([("tile", pa.string()), ("start", pa.int64()), ("stop", pa.int64()), ("stage", pa.string()), ("reason", pa.string())])
    pq.write_table(schema.empty_table(), path)
    run = subprocess.run([sys.executable, "-c", _READ_ON_THIS_THREAD, str(path)], capture_output=True, text=True)
    assert run.returncode == 0, run.stderr
    assert "terminate called" not in run.stderr


# ---- endpoints -----------------------------------------------------------------------------------


@pytest.mark.parametrize("endpoint", ["not a url", "127.0.0.1:9000", "http://", "http://127.0.0.1:port", "ftp://h", 9000])
def test_malformed_endpoint_is_an_input_error_naming_its_source(endpoint, monkeypatch):
    with pytest.raises(InputError, match="--storage-options endpoint_url must be an http:// or https:// URL with a host"):
        storage.parse_storage_options(json.dumps({"endpoint_url": endpoint}))
    with pytest.raises(InputError, match="storage option endpoint_url must be"):
        storage.filesystem("s3://bucket/x", {"endpoint_url": endpoint})
    if isinstance(endpoint, str):
        monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
        for url in ("s3://bucket/x", "s3a://bucket/x"):  # s3a: botocore's "Invalid endpoint" traceback
            with pytest.raises(InputError, match="AWS_ENDPOINT_URL must be"):
                storage.filesystem(url)


def test_good_endpoints_pass(monkeypatch):
    for endpoint in ("http://127.0.0.1:9000", "https://s3.example.org", "http://[::1]:9000/"):
        assert storage.parse_storage_options(json.dumps({"endpoint_url": endpoint})) == {"endpoint_url": endpoint}
    monkeypatch.setenv("AWS_ENDPOINT_URL", "not a url")  # not used: not S3, or named explicitly
    assert storage.storage_options_for("/local/path") == {}
    assert storage.storage_options_for("s3://b/x", {"endpoint_url": "http://127.0.0.1:1"})["endpoint_url"] == "http://127.0.0.1:1"


@pytest.mark.parametrize("options, arguments", [
    ({}, {}),
    ({"key": "k", "secret": "s", "token": "t"}, {"access_key": "k", "secret_key": "s", "session_token": "t"}),
    ({"anon": True, "use_listings_cache": False}, {"anonymous": True}),
    ({"endpoint_url": "http://127.0.0.1:9000"}, {"scheme": "http", "endpoint_override": "127.0.0.1:9000"}),
    ({"client_kwargs": {"endpoint_url": "https://s3.example.org/", "region_name": "eu-west-2"}},
     {"scheme": "https", "endpoint_override": "s3.example.org", "region": "eu-west-2"}),
    ({"endpoint_url": "http://a:1", "client_kwargs": {"endpoint_url": "http://b:2"}}, {"scheme": "http", "endpoint_override": "a:1"}),
    ({"profile": "survey"}, None),
    ({"config_kwargs": {"connect_timeout": 5}}, None),
    ({"client_kwargs": {"verify": False}}, None),
    ({"endpoint_url": "http://127.0.0.1:9000/prefix"}, None),
], ids=["none", "credentials", "anonymous", "endpoint", "client_kwargs", "s3fs precedence", "profile", "config_kwargs",
        "verify", "endpoint path"])
def test_arrow_s3_arguments_mean_what_the_s3fs_options_mean(options, arguments):
    """Options without an Arrow equivalent give None (queries then read through s3fs), never a guess."""
    assert storage.arrow_s3_arguments(options) == arguments


def test_arrow_filesystem_reaches_what_s3fs_reaches(s3_bucket, s3, monkeypatch, tmp_path):
    storage.atomic_write_bytes(f"{s3_bucket}/a/b.bin", b"skymorph")
    for options in (None, s3.storage_options):
        fs, path = storage.arrow_filesystem(f"{s3_bucket}/a/b.bin", options)
        with fs.open_input_file(path) as fh:
            assert fh.read() == b"skymorph"
    monkeypatch.setenv("AWS_REGION", "eu-west-2")  # read by the AWS SDKs of Arrow and boto3, not by botocore
    monkeypatch.setenv("AWS_DEFAULT_REGION", "eu-west-3")
    assert storage.arrow_filesystem(f"{s3_bucket}/a/b.bin")[0].region == "eu-west-3"  # signed as s3fs signs
    config = tmp_path / "config"
    config.write_text("[default]\nendpoint_url = http://127.0.0.1:1\n")
    monkeypatch.setenv("AWS_CONFIG_FILE", str(config))
    assert storage.arrow_filesystem(f"{s3_bucket}/a/b.bin") is not None  # AWS_ENDPOINT_URL comes first
    monkeypatch.delenv("AWS_ENDPOINT_URL")
    assert storage.arrow_filesystem(f"{s3_bucket}/a/b.bin") is None  # Arrow would not read the file's endpoint
    assert storage.arrow_filesystem(f"{s3_bucket}/a/b.bin", {"profile": "survey"}) is None
    assert storage.arrow_filesystem(f"{s3_bucket}/a/b.bin", {"key": "k"}) is None  # s3fs names what is missing
    assert storage.arrow_filesystem("/local/path") is None


def test_remote_error_message():
    from botocore.exceptions import EndpointConnectionError, NoCredentialsError, ParamValidationError

    message = storage.remote_error_message(EndpointConnectionError(endpoint_url="http://127.0.0.1:9/bucket/key"))
    assert message.startswith("cannot reach the S3 endpoint http://127.0.0.1:9 (Could not connect")
    assert "AWS_ENDPOINT_URL" in message and "\n" not in message
    assert "credentials" in storage.remote_error_message(NoCredentialsError())
    other = storage.remote_error_message(ParamValidationError(report="bad"), {"endpoint_url": "http://127.0.0.1:7/x"})
    assert other.startswith("S3 request to http://127.0.0.1:7 failed")
    from botocore.parsers import ResponseParserError

    garbage = storage.remote_error_message(ResponseParserError("Unable to parse"), {"endpoint_url": "http://127.0.0.1:7"})
    assert garbage.startswith("the S3 endpoint http://127.0.0.1:7 answered with something that is not S3")
    assert storage.remote_error_message(ValueError("x")) is None
    assert storage.remote_error_message(OSError("x")) is None


def test_check_bucket(s3_bucket, refused_port, count_connects, monkeypatch):
    storage.check_bucket(f"{s3_bucket}/prefix", "--out")  # exists: nothing
    storage.check_bucket(f"{s3_bucket}/prefix", "--out", {"skip_instance_cache": True})  # an fsspec option skymorph accepts
    storage.check_bucket("/local/path", "--out")  # not S3: nothing
    with pytest.raises(InputError, match="--out 's3://no-such-bucket-x/p': bucket 'no-such-bucket-x' does not exist"):
        storage.check_bucket("s3://no-such-bucket-x/p", "--out")
    monkeypatch.setenv("AWS_ENDPOINT_URL", f"http://127.0.0.1:{refused_port}")
    with count_connects("127.0.0.1", refused_port) as connects:
        with pytest.raises(InputError, match=rf"--out 's3://b/p': cannot reach the S3 endpoint http://127\.0\.0\.1:{refused_port} "):
            storage.check_bucket("s3://b/p", "--out")
    assert connects.count == 1  # one request, no retries (botocore's would make 5 attempts)


def test_check_bucket_asks_a_busy_endpoint_again(s3, s3_bucket, monkeypatch):
    """One 503 SlowDown on the check's one request stopped a run before it began, "cannot be used": a
    throttled endpoint is up. Busy answers are asked again twice, then said to be passing."""
    from skymorph.testing.faulty_proxy import FaultyProxy

    with FaultyProxy(s3.endpoint_url, p_503=1.0, p_drop=0) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with pytest.raises(InputError, match=r"cannot be used \(.*\); the endpoint answered three times that it is busy or "
                                             "down for the moment: run again later$"):
            storage.check_bucket(f"{s3_bucket}/p", "--out")
        assert proxy.counts.slow_down == 3
        proxy.p_503 = 0.0
        storage.check_bucket(f"{s3_bucket}/p", "--out")


def test_check_bucket_closes_its_connection_on_its_own_loop(s3, s3_bucket, monkeypatch):
    """check_bucket's S3 filesystem was left to the garbage collector, which frees fsspec's instances (in
    reference cycles) on whichever thread collects; on one running another event loop (the Dask client's),
    s3fs closed a kept-alive connection there, and every `skymorph run` through such an endpoint printed
    "Task exception was never retrieved ... attached to a different loop"."""
    import asyncio
    import gc
    import threading

    from skymorph.testing.faulty_proxy import FaultyProxy

    reported = []

    async def collect() -> None:
        asyncio.get_running_loop().set_exception_handler(lambda loop, context: reported.append(context["message"]))
        gc.collect()
        await asyncio.sleep(0.2)  # a close scheduled on this loop runs and fails here

    with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0) as proxy:  # keeps connections alive, as S3 does
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        gc.disable()
        try:
            storage.check_bucket(f"{s3_bucket}/p", "--out")
            thread = threading.Thread(target=asyncio.run, args=(collect(),))
            thread.start()
            thread.join()
        finally:
            gc.enable()
        gc.collect()  # the failed task, if any, is reported when it is freed
    assert reported == []


_PREFIX_ONLY_USER = """
import json, os
import boto3
from skymorph import storage
from skymorph.testing.s3 import LocalS3

with LocalS3() as s3:
    s3.apply_env()
    endpoint = dict(endpoint_url=s3.endpoint_url, region_name="us-east-1")
    boto3.client("s3", **endpoint).create_bucket(Bucket="shared")
    iam = boto3.client("iam", **endpoint)
    iam.create_user(UserName="me")
    key = iam.create_access_key(UserName="me")["AccessKey"]
    iam.put_user_policy(UserName="me", PolicyName="prefix", PolicyDocument=json.dumps({"Version": "2012-10-17", "Statement": [
        {"Effect": "Allow", "Action": ["s3:PutObject", "s3:GetObject"], "Resource": "arn:aws:s3:::shared/me/*"}]}))
    os.environ["AWS_ACCESS_KEY_ID"], os.environ["AWS_SECRET_ACCESS_KEY"] = key["AccessKeyId"], key["SecretAccessKey"]
    storage.check_bucket("s3://shared/me/model.onnx", "--out")
    storage.atomic_write_text("s3://shared/me/model.onnx", "written")
    print(storage.read_text("s3://shared/me/model.onnx"))
"""


def test_check_bucket_passes_a_user_allowed_only_a_prefix():
    """HEAD on the bucket needs s3:ListBucket on all of it: refusing on a denial refused users who may
    write under their prefix. moto checks IAM policies after the first requests (the setup's) here,
    in a process of its own because the setting is read once per process."""
    env = {**os.environ, "INITIAL_NO_AUTH_ACTION_COUNT": "4"}
    run = subprocess.run([sys.executable, "-c", _PREFIX_ONLY_USER], capture_output=True, text=True, env=env, timeout=120)
    assert run.returncode == 0, run.stderr[-2000:]
    assert run.stdout.strip() == "written"


# ---- Parquet that is not ---------------------------------------------------------------------------


@pytest.mark.parametrize("content, reason", [
    (b"", "Parquet file size is 0 bytes"),
    (b"PAR1 and then nothing", "magic bytes not found"),
    (b"object_id\n1\n", "magic bytes not found"),
])
def test_read_parquet_of_a_file_that_is_not_parquet(content, reason, tmp_path):
    path = tmp_path / "t.parquet"
    path.write_bytes(content)
    with pytest.raises(InputError, match=f"^{re.escape(repr(str(path)))} is not a readable Parquet file \\(.*{reason}"):
        storage.read_parquet(str(path))


def test_read_parquet_of_a_truncated_file_on_s3(s3_bucket):
    import pyarrow.parquet as pq

    buffer = io.BytesIO()
    pq.write_table(pa.table({"object_id": list(range(100))}), buffer)
    url = storage.join(s3_bucket, "t.parquet")
    storage.atomic_write_bytes(url, buffer.getvalue()[:-20])
    with pytest.raises(InputError, match=f"^{re.escape(repr(url))} is not a readable Parquet file"):
        storage.read_parquet(url)


def test_read_parquet_missing_directory_and_columns(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_parquet(str(tmp_path / "nope.parquet"))
    with pytest.raises(InputError, match="is a directory, not a Parquet file"):
        storage.read_parquet(str(tmp_path))
    storage.write_parquet(pa.table({"object_id": [1], "ra": [2.0]}), str(tmp_path / "t.parquet"))
    assert storage.read_parquet(str(tmp_path / "t.parquet"), columns=["ra"]).column_names == ["ra"]
    with pytest.raises(InputError, match=r"has no column 'dec' \(columns: object_id, ra\)"):
        storage.read_parquet(str(tmp_path / "t.parquet"), columns=["ra", "dec"])


def test_an_error_whose_type_takes_no_errno_keeps_its_type():
    """botocore's timeouts are OSErrors whose constructors take keywords only: naming the object raised a
    TypeError instead, and the CLI called a read timeout an internal error."""
    from botocore.exceptions import ReadTimeoutError

    with pytest.raises(ReadTimeoutError, match=r"Read timeout on endpoint URL: \"http://127.0.0.1:1/b/a%20b\""):
        with storage._naming("s3://b/a b"):
            raise ReadTimeoutError(endpoint_url="http://127.0.0.1:1/b/a%20b")
    with pytest.raises(PermissionError) as info:
        with storage._naming("s3://b/k"):
            raise PermissionError("Access Denied")  # s3fs's, with no botocore cause: the original stays the cause
    assert str(info.value) == "[Errno 13] Access Denied: 's3://b/k'" and isinstance(info.value.__cause__, PermissionError)
    with pytest.raises(PermissionError) as info:
        with storage._naming("s3://b/k"):
            raise PermissionError("Access Denied to b/k2")  # another object: this one is still unnamed
    assert str(info.value) == "[Errno 13] Access Denied to b/k2: 's3://b/k'"
    with pytest.raises(PermissionError) as info:
        with storage._naming("s3://b/k"):
            raise PermissionError("Access Denied to 'b/k'")
    assert str(info.value) == "Access Denied to 'b/k'"


def test_exists_sees_what_another_process_wrote_or_removed_after_a_listing(s3, s3_bucket):
    """s3fs answered from the listing it had cached, which never expires: `check_new` let an output another
    run had just written be overwritten, and a file removed since read as there."""
    import boto3

    storage.atomic_write_text(f"{s3_bucket}/d/a.txt", "a")
    fs, path = storage.filesystem(f"{s3_bucket}/d")
    assert list(storage.list_dir(fs, path)) == ["a.txt"]
    other = boto3.client("s3", endpoint_url=s3.endpoint_url)
    bucket = s3_bucket.removeprefix("s3://")
    other.put_object(Bucket=bucket, Key="d/b.txt", Body=b"b")
    other.delete_object(Bucket=bucket, Key="d/a.txt")
    assert storage.exists(f"{s3_bucket}/d/b.txt") and not storage.exists(f"{s3_bucket}/d/a.txt")


def test_an_object_s3_refuses_is_named_by_its_error(s3, s3_bucket, monkeypatch):
    """s3fs raises PermissionError("Access Denied"), naming nothing: a run whose part files a bucket policy
    refused said so of every S3 URL on its command line, and its failures table of no object at all."""
    from skymorph.testing.faulty_proxy import FaultyProxy

    table = pa.table({"object_id": [1, 2]})
    storage.write_parquet(table, f"{s3_bucket}/readable/t.parquet")
    storage.write_parquet(table, f"{s3_bucket}/secret/t.parquet")
    with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0, deny="secret") as proxy:
        options = {"endpoint_url": proxy.url, "skip_instance_cache": True}
        assert storage.read_parquet(f"{s3_bucket}/readable/t.parquet", options).equals(table)
        calls = [lambda url: storage.read_bytes(url, options), lambda url: storage.read_parquet(url, options),
                 lambda url: storage.atomic_write_bytes(url, b"x", options),
                 lambda url: storage.create_exclusive_bytes(url, b"x", options),
                 lambda url: storage.read_versioned(url, options)]
        for call in calls:
            url = f"{s3_bucket}/secret/t.parquet"
            with pytest.raises(PermissionError) as info:
                call(url)
            err = info.value
            assert (err.errno, err.filename) == (errno.EACCES, url)
            assert err.strerror in ("Access Denied", "Forbidden")  # a HEAD's answer has no body to say which
            assert str(err) == f"[Errno 13] {err.strerror}: {url!r}"
            assert err.__cause__.response["ResponseMetadata"]["HTTPStatusCode"] == 403  # botocore's, read by is_transient
    assert proxy.counts.denied == len(calls)


# ---- outputs that cannot be written ------------------------------------------------------------------


def test_check_writable(tmp_path):
    (tmp_path / "regular").write_text("x")
    (tmp_path / "adir").mkdir()
    storage.check_writable(str(tmp_path / "new" / "deeper" / "model.pt"), "--out")
    storage.check_writable(str(tmp_path / "regular"), "--out")  # replaced atomically
    storage.check_writable(str(tmp_path / "adir"), "--out", directory=True)
    storage.check_writable(str(tmp_path / "newdir"), "--out", directory=True)
    storage.check_writable("s3://bucket/x.pt", "--out")  # remote: not checked here
    assert sorted(os.listdir(tmp_path)) == ["adir", "regular"]  # no probe file, no directory left behind
    cases = [
        (tmp_path / "regular" / "sub.pt", {}, f"{str(tmp_path / 'regular')!r} is a file, not a directory"),
        (tmp_path / "regular" / "a" / "b.pt", {}, f"{str(tmp_path / 'regular')!r} is a file, not a directory"),
        (tmp_path / "adir", {}, "it is a directory; give a file path"),
        (tmp_path / "regular", {"directory": True}, "it is a file, not a directory"),
        ("/proc/x.pt", {}, "cannot create files in '/proc'"),
        ("/proc/a/b", {"directory": True}, "cannot create files in '/proc'"),
    ]
    for target, kwargs, reason in cases:
        with pytest.raises(InputError) as info:
            storage.check_writable(str(target), "--out", **kwargs)
        assert str(info.value).startswith(f"cannot write to --out {str(target)!r}: ")
        assert reason in str(info.value)


@pytest.mark.parametrize("url, message", [
    ("s3:/bucket/cat", r"'s3:/bucket/cat' is not a URL: write s3://bucket/cat"),
    ("S3:bucket/cat", r"is not a URL: write s3://bucket/cat"),
    ("s3://", r"'s3://' names no bucket or path"),
    ("s3:", r"names no bucket or path"),
])
def test_a_misspelt_s3_url_is_refused_not_written_as_a_local_directory(tmp_path, monkeypatch, url, message):
    """`--out s3:/bucket/x` wrote ./s3:/bucket/x on the local disk and reported success."""
    from skymorph.storage import check_writable

    monkeypatch.chdir(tmp_path)
    with pytest.raises(InputError, match=message):
        check_writable(url, "--out")
    with pytest.raises(InputError, match=message):
        storage.filesystem(url)
    assert os.listdir(tmp_path) == []
    storage.check_url("s3://bucket/cat")
    storage.check_url("relative/s3x:/name")


def test_create_exclusive_bytes_wins_once_and_its_own_error_is_the_one_raised(tmp_path):
    """The temporary file's clean-up raised in place of the error that stopped its creation."""
    url = str(tmp_path / "lock")
    storage.create_exclusive_bytes(url, b"first")
    with pytest.raises(FileExistsError):
        storage.create_exclusive_bytes(url, b"second")
    assert Path(url).read_bytes() == b"first" and os.listdir(tmp_path) == ["lock"]  # no temporary file left
    # a name too long: the link's error, with no temporary file left and none from its clean-up
    with pytest.raises(OSError) as info:
        storage.create_exclusive_bytes(str(tmp_path / ("x" * 300)), b"x")
    assert info.value.errno == errno.ENAMETOOLONG and info.value.__context__ is None
    assert os.listdir(tmp_path) == ["lock"]
    # a name that fits where a temporary name 38 characters longer would not: it was refused, naming the
    # hidden temporary file
    for write in (storage.create_exclusive_bytes, storage.atomic_write_bytes):
        long_name = tmp_path / (write.__name__[:6] + "y" * 244)
        write(str(long_name), b"y")
        assert long_name.read_bytes() == b"y"


def test_a_delete_s3_refuses_per_key_is_an_error_naming_the_key(s3, s3_bucket):
    """DeleteObjects answers a key a bucket policy keeps with 200 and an <Error> for it, which s3fs ignores:
    finish left stale parts in a catalog its queries read, and --overwrite left the old catalog."""
    for name in ("keep/a.txt", "keep/sub/b.txt", "free/c.txt"):
        storage.atomic_write_text(f"{s3_bucket}/{name}", name)
    s3.deny_deletes(f"{s3_bucket}/keep/")
    fs, _ = storage.filesystem(s3_bucket)
    root = s3_bucket.removeprefix("s3://")
    with pytest.raises(PermissionError) as info:
        storage.remove_paths(fs, [f"{root}/keep", f"{root}/free"], recursive=True)
    # objects only: the "folder" keep/sub between them is no object, and was named as one kept
    assert info.value.errno == errno.EACCES and info.value.filename in (f"{s3_bucket}/keep/a.txt", f"{s3_bucket}/keep/sub/b.txt")
    assert "S3 did not delete this object (AccessDenied: Access Denied), nor 1 more: 's3://" in str(info.value)
    assert not storage.exists(f"{s3_bucket}/free/c.txt") and storage.exists(f"{s3_bucket}/keep/a.txt")
    with pytest.raises(PermissionError, match=r"\(AccessDenied: Access Denied\): 's3://.*/keep/a.txt'$"):
        storage.remove_file(f"{s3_bucket}/keep/a.txt")
    storage.remove_file(f"{s3_bucket}/free/gone.txt")  # already gone: no error


def test_conditional_writes_are_single_puts(s3, s3_bucket, monkeypatch):
    """S3 takes no condition on a multipart upload, and s3fs passes none to one: a conditional write over
    s3fs's multipart threshold (100 MiB) replaced an object that had changed since it was read."""
    url = f"{s3_bucket}/big"
    big = b"x" * (100 * 2**20 + 1)
    storage.create_exclusive_bytes(url, big)
    _, version = storage.read_versioned(url)
    storage.atomic_write_bytes(url, b"another writer's")
    assert not storage.replace_if_version(url, big, version) and storage.read_bytes(url) == b"another writer's"
    _, version = storage.read_versioned(url)
    assert storage.replace_if_version(url, big, version) and storage.read_bytes(url) == big
    monkeypatch.setattr(storage, "_MAX_PUT_BYTES", 1000)  # the 5 GiB limit of one PUT, scaled down
    with pytest.raises(InputError, match=r"conditional write of 1000 bytes is over S3's single-PUT limit"):
        storage.create_exclusive_bytes(f"{s3_bucket}/over", b"x" * 1000)


def test_a_botocore_without_conditional_writes_is_refused(s3, s3_bucket, monkeypatch):
    """s3fs passes botocore only the parameters its S3 model knows: with one from before 2024-11 the
    If-Match was dropped without a word, and two runs could both hold one lock."""
    monkeypatch.setattr(storage, "_put_object_parameters", lambda: frozenset({"Bucket", "Key", "Body", "IfNoneMatch"}))
    with pytest.raises(InputError, match=r"predates S3's conditional writes \(IfMatch unknown\), so the write to '.*/lock' cannot be "
                                         r"made only if it is unchanged; upgrade botocore"):
        storage.replace_if_version(f"{s3_bucket}/lock", b"x", '"etag"')
    assert not storage.exists(f"{s3_bucket}/lock")
    storage.create_exclusive_bytes(f"{s3_bucket}/model.onnx", b"x")  # needs only IfNoneMatch, which it knows


def test_a_bucket_s_region_is_looked_up_once_per_process(monkeypatch):
    """Without an endpoint (AWS itself) every Arrow filesystem asked us-east-1 for the bucket's region:
    6 s a query where that endpoint is unreachable. No request leaves: the lookup is counted, not made."""
    import pyarrow.fs

    for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_CONFIG_FILE", "AWS_PROFILE"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("AWS_CONFIG_FILE", "/nonexistent")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "k")
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", "s")
    asked = []

    def resolve(bucket):
        asked.append(bucket)
        if bucket == "unreachable":
            raise OSError("Could not resolve host")
        return "eu-west-2"

    monkeypatch.setattr(pyarrow.fs, "resolve_s3_region", resolve)
    storage._bucket_region.cache_clear()
    for _ in range(3):
        fs, path = storage.arrow_filesystem("s3://survey-bucket/catalog/part.parquet")
        assert fs.region == "eu-west-2" and path == "survey-bucket/catalog/part.parquet"
        assert storage.arrow_filesystem("s3://unreachable/x") is None
    assert asked == ["survey-bucket", "unreachable", "unreachable", "unreachable"]  # a failure is asked again
    storage._bucket_region.cache_clear()


def test_within_resolves_local_paths_and_compares_urls_under_one_protocol_name(tmp_path):
    (tmp_path / "cat").mkdir()
    os.symlink(tmp_path / "cat", tmp_path / "link")
    assert storage.within(tmp_path / "link" / "dataset" / "x.parquet", tmp_path / "cat")
    assert storage.within(f"file://{tmp_path}/cat/sub/../x.csv", str(tmp_path / "cat") + "/")
    assert storage.within(tmp_path / "cat", tmp_path / "link")
    assert not storage.within(tmp_path / "catalog2" / "x.csv", tmp_path / "cat")  # a name that starts alike
    assert storage.within("s3://b/cat/dataset/x.parquet", "s3://b/cat/")
    assert not storage.within("s3://b/cat2/x.parquet", "s3://b/cat")
    assert not storage.within(tmp_path / "cat" / "x", "s3://b/cat")
    # s3fs opens one object under s3:// and s3a://: an output there lies in the catalog all the same
    assert storage.within("s3a://b/cat/x.csv", "s3://b/cat") and storage.within("s3://b/cat/x.csv", "s3a://b/cat/")
    assert storage.same_location("s3a://b/model.onnx", "s3://b/model.onnx")
    assert not storage.same_location("s3a://b/model.onnx", "s3://c/model.onnx")
    assert storage.same_location("nosuchscheme://b/x/", "nosuchscheme://b/x")  # unknown to fsspec: as written


def test_an_empty_segment_is_refused_in_s3_urls_only():
    """S3 keeps '//' in a key (s3://bkt//survey wrote a survey its tile list could not find); other URLs
    spell things so: fsspec's memory:///x, a query string holding a URL."""
    for url in ("s3://bkt//survey", "s3a://bkt/a//b/", "s3:///x.zarr"):
        with pytest.raises(InputError, match=r"has an empty path segment \('//'\); write s3a?://"):
            storage.check_url(url)
    for url in ("s3://bkt", "s3://bkt/", "s3://bkt/a/b/", "s3://bkt/a?versionId=x//y", "memory:///x", "https://h/a?u=https://x"):
        storage.check_url(url)
