"""One driver per catalog: ``CATALOG/_skymorph/driver.lock``, a lease kept alive by a heartbeat (and
one writer per survey, ``OUT/.skymorph-writer.lock``: :mod:`skymorph.survey._output`).

Two ``skymorph run`` drivers on one ``--out`` would both journal and compact the manifest and finish
the catalog, each over the other's ranges. :class:`DriverLock` refuses the second one: the lock file
names its holder (host, pid, session, heartbeat time), is created only where none exists (a hard
link locally, a conditional PUT on S3: of two drivers started at once, one wins), and a background
thread rewrites the heartbeat every ``heartbeat_s``. A lock is stale, and taken over, when its
heartbeat is older than ``stale_after_s`` (the holder died or lost the bucket) or when its holder ran
on this host, in this PID namespace, and that pid is gone (a killed local driver does not block its
own rerun). Taking over
is remove-then-create, which is not exclusive: a driver that took over reads the lock again after a
moment and gives way unless it is still its own, but one that created the lock in the instant
between another's remove and create may go on beside it. Drivers therefore read the lock before
they write (below), and all but the one it names stop.

A driver that is alive but paused past ``stale_after_s`` (swapped out, its host partitioned) comes
back to a lock taken over. Its heartbeat reads the lock before rewriting it, and rewrites only the
version it read (a conditional PUT on S3; locally, the file compared just before the rename), so that
a beat delayed in flight does not land on the new holder's lock; and the driver reads it
before removing a catalog for ``--overwrite``, writing a manifest and each journal write, so
whichever driver's record the lock holds goes on and the other stops (:meth:`DriverLock.check_held`).
Tasks, the killed driver's included, call :func:`check_session` before writing a part, so a task of
a driver that lost its lock writes nothing, except one that passed the check and was paused before
its write. Staleness compares the holder's clock with the
reader's: hosts must agree on the time to well within ``stale_after_s`` (NTP does).
"""

from __future__ import annotations

import json
import os
import socket
import sys
import threading
import time
import uuid
from dataclasses import asdict, dataclass

from skymorph.catalog import layout
from skymorph.errors import CatalogError, InputError, first_line
from skymorph.storage import create_exclusive_bytes, is_remote, read_text, read_versioned, remove_file, replace_if_version

__all__ = ["DriverLock", "LockHolder", "check_session"]


@dataclass(frozen=True)
class LockHolder:
    host: str
    pid: int
    session: str
    started: float
    heartbeat: float
    pid_namespace: int | None = None  # None: a lock of an older skymorph, or not Linux
    writer: str | None = None  # the command holding it, e.g. "skymorph run"; None: a lock of an older skymorph

    def is_stale(self, now: float, stale_after_s: float) -> bool:
        if now - self.heartbeat > stale_after_s:
            return True
        # its pid says something only where it is this process's namespace's: containers sharing the host's
        # name (host networking) each have their own, where a live driver's pid reads as gone
        same_pids = self.pid_namespace is None or self.pid_namespace == _pid_namespace()
        return self.host == socket.gethostname() and same_pids and not _pid_alive(self.pid)


def _pid_namespace() -> int | None:
    """This process's PID namespace (the inode of ``/proc/self/ns/pid``), None where there is none to read."""
    try:
        return os.stat("/proc/self/ns/pid").st_ino
    except OSError:
        return None


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # alive, another user's
        return True
    return True


def _read_holder(url: str, storage_options: dict | None) -> LockHolder | None:
    try:
        return _parse_holder(read_text(url, storage_options))
    except FileNotFoundError:
        return None


def _parse_holder(text: str | bytes) -> LockHolder | None:
    try:
        data = json.loads(text)
        namespace, writer = data.get("pid_namespace"), data.get("writer")
        return LockHolder(str(data["host"]), int(data["pid"]), str(data["session"]), float(data["started"]), float(data["heartbeat"]),
                          None if namespace is None else int(namespace), None if writer is None else str(writer))
    except (ValueError, KeyError, TypeError):
        return None  # unreadable: no lock (a live driver's lock is read whole, except for an instant after its create on a
        # filesystem without hard links; a driver that took it over then is stopped by check_held's next read)


def check_session(catalog: str, session: str, storage_options: dict | None = None) -> None:
    """Raise :class:`CatalogError` unless driver ``session`` holds ``catalog``'s lock: a task of a
    driver that was killed, or whose lock was taken over or replaced by an ``--overwrite`` run, must not
    write a part (under a name the new run may own) into that catalog."""
    holder = _read_holder(layout.driver_lock_url(catalog), storage_options)
    if holder is None or holder.session != session:
        why = "held by another run" if holder is not None else "gone, or not visible from this worker: workers must see --out"
        raise CatalogError(f"the run that sent this task no longer holds {catalog!r} (its lock is {why}); writing nothing")


class DriverLock:
    """``check()`` before touching the catalog, ``acquire()`` before writing it, ``release()`` at the end."""

    def __init__(self, catalog: str, storage_options: dict | None = None, heartbeat_s: float = 30.0, stale_after_s: float = 300.0,
                 *, url: str | None = None, writer: str = "skymorph run") -> None:
        """``url``: the lock file, by default the catalog's; ``writer``: the command taking it, recorded in
        the lock for the messages of others that find it held."""
        if not 0 < heartbeat_s < stale_after_s / 2:  # a run stops once half of stale_after_s passes without a beat
            raise InputError(f"need 0 < heartbeat_s < stale_after_s / 2, got {heartbeat_s} and {stale_after_s}")
        self.url = url or layout.driver_lock_url(catalog)
        self.writer = writer
        self.catalog, self.storage_options = catalog, storage_options
        self.heartbeat_s, self.stale_after_s = heartbeat_s, stale_after_s
        self.session = uuid.uuid4().hex
        self._started = time.time()
        self._stop = threading.Event()
        self._lost = threading.Event()
        self._taken_by: LockHolder | None = None
        self._thread: threading.Thread | None = None
        self._renewed: float | None = None  # time.monotonic() of the last write of this driver's record
        self._beat_error: Exception | None = None

    def holder(self) -> LockHolder | None:
        return _read_holder(self.url, self.storage_options)

    def check(self) -> None:
        """Raise :class:`CatalogError` if another live driver holds the catalog."""
        holder = self.holder()
        if holder is not None and holder.session != self.session and not holder.is_stale(time.time(), self.stale_after_s):
            raise CatalogError(self._held_by(holder))

    def acquire(self) -> None:
        """Create the lock (taking over a stale one), and keep its heartbeat going until :meth:`release`.

        Taking over is remove-then-create, so drivers rerun together after a crash can each remove
        another's fresh lock; each that took over reads the lock again after a moment and gives way
        unless it is still its own, so one of them goes on."""
        took_over = False
        for _ in range(2):
            try:
                create_exclusive_bytes(self.url, self._record(), self.storage_options)
                break
            except FileExistsError:
                holder = self.holder()
                if holder is not None and holder.session == self.session:
                    break  # this driver's own create, answered after all (a reply lost, the request retried)
                if holder is not None and not holder.is_stale(time.time(), self.stale_after_s):
                    raise CatalogError(self._held_by(holder)) from None
                remove_file(self.url, self.storage_options)  # stale or unreadable (never half-written)
                took_over = True
        else:
            raise CatalogError(self._held_by(self.holder()))  # another driver took the stale lock first
        if took_over:
            time.sleep(min(2.0, self.heartbeat_s))  # longer than another taker's read-remove-create
            holder = self.holder()
            if holder is None or holder.session != self.session:
                raise CatalogError(self._held_by(holder))
        if is_remote(self.url):
            self._probe_exclusive_create()
        self._renewed = time.monotonic()
        self._thread = threading.Thread(target=self._beat, name="skymorph-driver-lock", daemon=True)
        self._thread.start()

    def _probe_exclusive_create(self) -> None:
        """Warn if the store ignores If-None-Match: creating the lock again must fail. On such a store (GCS's
        S3 interoperability ignores it on writes) two drivers started together both create the lock, and
        are kept apart only by each reading it before it writes. One request a run."""
        try:
            create_exclusive_bytes(self.url, self._record(), self.storage_options)
        except FileExistsError:
            return
        print(f"skymorph: warning: the store of {self.url} ignores If-None-Match (an exclusive create of the existing lock "
              f"succeeded): of two runs started together on {self.catalog!r}, the one the lock does not name stops only when it "
              "next reads the lock", file=sys.stderr, flush=True)

    @property
    def held(self) -> bool:
        """False once this driver has found its lock taken over or removed."""
        return not self._lost.is_set()

    def confirm(self) -> bool:
        """Whether the lock file names this driver, read now (False from then on once it does not); a
        read that fails keeps the last answer."""
        if self._lost.is_set():
            return False
        try:
            holder = self.holder()
        except Exception:  # noqa: BLE001 -- storage down for a moment: the heartbeat's verdict stands
            return True
        return self._still_mine(holder)

    def _still_mine(self, holder: LockHolder | None) -> bool:
        """Whether ``holder``, just read, is this driver; if not, the lock is lost from now on."""
        if holder is None or holder.session != self.session:
            self._taken_by = holder
            self._lost.set()
        return self.held

    def check_held(self, read: bool = False) -> None:
        """Raise :class:`CatalogError` if this driver's lock was found taken over or removed (by the
        heartbeat, or with ``read``, by reading it now)."""
        if self.confirm() if read else self.held:
            unrenewed = time.monotonic() - self._renewed if self._renewed is not None else 0.0
            if unrenewed > self.stale_after_s / 2:  # heartbeats failing: stop before another run may take the lock
                why = (first_line(self._beat_error) if self._beat_error is not None else
                       "the store refused each heartbeat's conditional overwrite, If-Match")
                raise CatalogError(
                    f"this run's lock on {self.catalog!r} has not been renewed for {unrenewed:.0f} s ({why}); stopped before "
                    f"it goes stale ({self.stale_after_s:.0f} s) and another run may take it over: check that the store "
                    f"lets this driver overwrite {self.url}, then rerun"
                )
            return
        holder = self._taken_by
        by = "removed" if holder is None else f"taken over by host {holder.host}, pid {holder.pid}"
        raise CatalogError(
            f"this run's lock on {self.catalog!r} was {by} (a heartbeat missed for {self.stale_after_s:.0f} s makes "
            "it stale); stopped so that two runs do not write it at once: rerun once the other run has finished"
        )

    def release(self) -> None:
        """Stop the heartbeat and remove the lock if it is still this driver's."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        holder = self.holder()
        if holder is not None and holder.session == self.session:
            remove_file(self.url, self.storage_options)

    def _held_by(self, holder: LockHolder | None) -> str:
        if holder is None:
            return f"{self.catalog!r} is being written by another {self.writer}; wait for it to finish, or remove {self.url}"
        started = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(holder.started))
        return (
            f"{self.catalog!r} is being written by another {holder.writer or self.writer} (host {holder.host}, pid {holder.pid}, "
            f"started {started} UTC, heartbeat {time.time() - holder.heartbeat:.0f} s ago); wait for it to finish, or if it "
            f"is dead, remove {self.url} (it goes stale {self.stale_after_s:.0f} s after the last heartbeat)"
        )

    def _record(self) -> bytes:
        holder = LockHolder(socket.gethostname(), os.getpid(), self.session, self._started, time.time(), _pid_namespace(), self.writer)
        return json.dumps(asdict(holder)).encode()

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_s):
            try:
                try:
                    text, version = read_versioned(self.url, self.storage_options)
                except FileNotFoundError:
                    text, version = b"", None
                if not self._still_mine(_parse_holder(text) if text else None):
                    return
                # only over the version just read: a beat delayed past stale_after_s (a paused driver, a PUT held
                # in flight) landed on the lock of the driver that took over, and put this one's record back
                if replace_if_version(self.url, self._record(), version, self.storage_options):
                    self._renewed, self._beat_error = time.monotonic(), None
                else:
                    self._still_mine(self.holder())
            except Exception as err:  # noqa: BLE001 -- retried on the next beat; check_held stops a run whose beats keep failing
                self._beat_error = err

    def __enter__(self) -> DriverLock:
        self.acquire()
        return self

    def __exit__(self, kind, error, traceback) -> None:
        try:
            self.release()
        except Exception:
            if error is None:
                raise
            # storage down (botocore's errors are no OSError) is likely what stopped the run: its error, with its
            # advice, is the one to see; the lock left behind goes stale, or a rerun on this host takes it over

