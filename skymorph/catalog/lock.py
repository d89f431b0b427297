"""One driver per catalog: ``CATALOG/_skymorph/driver.lock``, a lease kept alive by a heartbeat.

Two ``skymorph run`` drivers on one ``--out`` would both journal and compact the manifest and finish
the catalog, each over the other's ranges. :class:`DriverLock` refuses the second one: the lock file
names its holder (host, pid, session, heartbeat time) and a background thread rewrites the heartbeat
every ``heartbeat_s``. A lock is stale, and taken over, when its heartbeat is older than
``stale_after_s`` (the holder died or lost the bucket) or when its holder ran on this host and that
pid is gone (a killed local driver does not block its own rerun).

S3 has no create-if-absent in s3fs, so check-then-write leaves a window of one round trip in which
two drivers started at the same instant both win; the lease is there for the common mistake of a
second job launched on a live catalog, not as a consensus protocol.
"""

from __future__ import annotations

import json
import os
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from skymorph.catalog import layout
from skymorph.errors import CatalogError
from skymorph.storage import atomic_write_text, filesystem, read_text

__all__ = ["DriverLock", "LockHolder"]


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    session: str
    started: float
    heartbeat: float

    def is_stale(self, now: float, stale_after_s: float) -> bool:
        if now - self.heartbeat > stale_after_s:
            return True
        return self.host == socket.gethostname() and not _pid_alive(self.pid)


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


class DriverLock:
    """``check()`` before touching the catalog, ``acquire()`` before writing it, ``release()`` at the end."""

    def __init__(self, catalog: str, storage_options: dict | None = None, heartbeat_s: float = 30.0, stale_after_s: float = 300.0) -> None:
        if not 0 < heartbeat_s < stale_after_s:
            raise ValueError(f"need 0 < heartbeat_s < stale_after_s, got {heartbeat_s} and {stale_after_s}")
        self.url = layout.driver_lock_url(catalog)
        self.catalog, self.storage_options = catalog, storage_options
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.session = uuid.uuid4().hex
        self._started = time.time()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def holder(self) -> LockHolder | None:
        try:
            data = json.loads(read_text(self.url, self.storage_options))
            return LockHolder(str(data["host"]), int(data["pid"]), str(data["session"]), float(data["started"]), float(data["heartbeat"]))
        except FileNotFoundError:
            return None
        except (ValueError, KeyError, TypeError):
            return None  # unreadable: treat as no lock (writes are atomic, so no live driver left it so)

    def check(self) -> None:
        """Raise :class:`CatalogError` if another live driver holds the catalog."""
        holder = self.holder()
        now = time.time()
        if holder is not None and holder.session != self.session and not holder.is_stale(now, self.stale_after_s):
            started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(holder.started))
            raise CatalogError(
                f"{self.catalog!r} is being written by another skymorph run (host {holder.host}, pid {holder.pid}, "
                f"started {started} UTC, heartbeat {now - holder.heartbeat:.0f} s ago); wait for it to finish, or if it "
                f"is dead, remove {self.url} (it goes stale {self.stale_after_s:.0f} s after the last heartbeat)"
            )

    def acquire(self) -> None:
        """Check, write the lock, and keep its heartbeat going until :meth:`release`."""
        self.check()
        self._write()
        self._thread = threading.Thread(target=self._beat, name="skymorph-driver-lock", daemon=True)
        self._thread.start()

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self.holder()
        if holder is not None and holder.session == self.session:
            fs, path = filesystem(self.url, self.storage_options)
            fs.rm(path)

    def _write(self) -> None:
        holder = LockHolder(socket.gethostname(), os.getpid(), self.session, self._started, time.time())
        atomic_write_text(self.url, json.dumps(asdict(holder)), self.storage_options)

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                self._write()
            except Exception:  # a missed heartbeat is retried on the next beat; stale only after many
                continue

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, *exc) -> None:
        self.release()
