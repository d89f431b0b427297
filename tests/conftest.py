"""Shared fixtures: a real S3 endpoint on 127.0.0.1, a fresh bucket per test, and a tiny exported model."""

from __future__ import annotations

import uuid

import pytest

from skymorph.testing import LocalS3


@pytest.fixture(scope="session")
def s3_server():
    """One moto S3 server for the session, on a free loopback port."""
    with LocalS3() as server:
        yield server


@pytest.fixture
def s3(s3_server, monkeypatch):
    """The server with its environment applied (so s3fs, zarr and child processes find it)."""
    for key, value in s3_server.env.items():
        monkeypatch.setenv(key, value)
    return s3_server


@pytest.fixture
def s3_bucket(s3) -> str:
    """``s3://<fresh bucket>`` on the local endpoint."""
    return s3.create_bucket(f"skymorph-{uuid.uuid4().hex[:12]}")


@pytest.fixture
def torch_one_thread():
    """Torch on one thread for the test: the suite shares two cores with Dask workers and S3 servers."""
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A w20 at 32 px, T=4 frozen masks, exported to ONNX (local file, read by every worker)."""
    import torch

    from skymorph.exporter import export_onnx_model
    from skymorph.model_metadata import InputSpec
    from skymorph.schema import get_schema
    from skymorph.trainer.models import build_model

    torch.manual_seed(0)
    torch.set_num_threads(1)
    net = build_model("w20", get_schema("gz2"), InputSpec(1, 32, 32), "multinomial", dense=16)
    path = str(tmp_path_factory.mktemp("model") / "tiny.onnx")
    export_onnx_model(net, path, samples=4, seed=3)
    return path
