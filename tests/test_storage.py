import os
import subprocess
import sys

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


def test_local_atomic_write_leaves_no_temp_files(tmp_path):
    target = tmp_path / "a.txt"
    storage.atomic_write_text(str(target), "one")
    storage.atomic_write_text(str(target), "two")
    assert target.read_text() == "two"
    assert os.listdir(tmp_path) == ["a.txt"]


def test_missing_and_bad_options(tmp_path):
    with pytest.raises(FileNotFoundError, match="does not exist"):
        storage.read_bytes(str(tmp_path / "nope"))
    with pytest.raises(InputError, match="not valid JSON"):
        storage.parse_storage_options("{bad")
    with pytest.raises(InputError, match="JSON object"):
        storage.parse_storage_options("[1]")


def test_a_process_that_read_parquet_exits_cleanly(tmp_path):
    """pyarrow's threads reading a Python file object could abort the interpreter at exit (status 134,
    "terminate called without an active exception", in about half the runs before the fix)."""

    import pyarrow as pa
    import pyarrow.parquet as pq

    path = tmp_path / "failures.parquet"  # empty, like a catalog's failures table after a clean run
    schema = pa.schema([("tile", pa.string()), ("start", pa.int64()), ("stop", pa.int64()), ("stage", pa.string()), ("reason", pa.string())])
    pq.write_table(schema.empty_table(), path)
    code = f"from skymorph.storage import read_parquet; assert read_parquet({str(path)!r}).num_rows == 0"
    runs = [subprocess.run([sys.executable, "-c", code], capture_output=True, text=True) for _ in range(8)]
    assert [r.returncode for r in runs] == [0] * 8, next(r.stderr for r in runs if r.returncode)
