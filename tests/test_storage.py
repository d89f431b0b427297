import os

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
