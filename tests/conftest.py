"""Shared fixtures: a real S3 endpoint on 127.0.0.1, a fresh bucket per test, a tiny exported model, a
loopback port nothing listens on, and torch on one thread."""

from __future__ import annotations

import socket
import sys
import uuid
from contextlib import contextmanager

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


def free_port() -> int:
    """A loopback TCP port that nothing listens on: bound to port 0, read, and closed, so a connection to
    it is refused at once (unlike a fixed port such as 9, which a machine may serve)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def refused_port() -> int:
    """A port on 127.0.0.1 where connections are refused (see :func:`free_port`)."""
    return free_port()


class ConnectCounter:
    """Counts this process's attempts to connect to one ``(host, port)``, from any thread (s3fs runs its
    requests on its own event-loop thread), through the ``socket.connect`` audit event."""

    _active: list[ConnectCounter] = []
    _hooked = False

    def __init__(self, host: str, port: int):
        self.address = (host, port)
        self.count = 0

    @classmethod
    def _hook(cls, event: str, args) -> None:
        if event == "socket.connect" and cls._active:
            address = args[1]
            for counter in cls._active:
                if isinstance(address, tuple) and tuple(address[:2]) == counter.address:
                    counter.count += 1

    @classmethod
    @contextmanager
    def on(cls, host: str, port: int):
        if not cls._hooked:  # an audit hook cannot be removed: one for the session, idle outside ``on``
            sys.addaudithook(cls._hook)
            cls._hooked = True
        counter = cls(host, port)
        cls._active.append(counter)
        try:
            yield counter
        finally:
            cls._active.remove(counter)


@pytest.fixture
def count_connects():
    """``with count_connects(host, port) as c: ...`` then ``c.count``: connection attempts made meanwhile."""
    return ConnectCounter.on


@contextmanager
def _torch_threads(n: int):
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def torch_one_thread_module():
    """Torch on one thread from a module's first use to its end, restored after: for module-scoped
    fixtures that build or run models (request it from them; higher-scoped fixtures are set up before
    any function-scoped one). The suite shares two cores with Dask workers and S3 servers."""
    with _torch_threads(1):
        yield


@pytest.fixture
def torch_one_thread(torch_one_thread_module):
    """Torch on one thread for the test, restored after it (code under test may set its own count):
    ``pytestmark = pytest.mark.usefixtures("torch_one_thread")``, not ``torch.set_num_threads(1)`` at
    import, which would change the whole session as a side effect of collecting the module."""
    with _torch_threads(1):
        yield


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> str:
    """A w20 at 32 px, T=4 frozen masks, exported to ONNX (local file, read by every worker)."""
    import torch

    from skymorph.exporter import export_onnx_model
    from skymorph.model_metadata import InputSpec
    from skymorph.schema import get_schema
    from skymorph.trainer.models import build_model

    torch.manual_seed(0)
    with _torch_threads(1):
        net = build_model("w20", get_schema("gz2"), InputSpec(1, 32, 32), "multinomial", dense=16)
        path = str(tmp_path_factory.mktemp("model") / "tiny.onnx")
        export_onnx_model(net, path, samples=4, seed=3)
    return path
