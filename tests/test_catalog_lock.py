"""skymorph.catalog.lock: one driver per catalog (lease with heartbeat), locally and on S3."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time

import pytest

from skymorph.catalog import layout
from skymorph.catalog.lock import DriverLock
from skymorph.errors import CatalogError, InputError
from skymorph.storage import atomic_write_text, exists, read_text


def _holder(catalog: str, **fields) -> None:
    now = time.time()
    data = {"host": socket.gethostname(), "pid": 1, "session": "other", "started": now - 60, "heartbeat": now, **fields}
    atomic_write_text(layout.driver_lock_url(catalog), json.dumps(data))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_second_driver_is_refused_while_the_first_holds_the_lock(tmp_path, where, request):
    catalog = str(tmp_path / "cat") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/cat"
    first = DriverLock(catalog, heartbeat_s=0.2, stale_after_s=30)
    first.acquire()
    try:
        holder = first.holder()
        assert holder.session == first.session and holder.host == socket.gethostname()
        second = DriverLock(catalog)
        with pytest.raises(CatalogError) as err:
            second.acquire()
        message = str(err.value)
        assert "\n" not in message and "being written by another skymorph run" in message and f"pid {holder.pid}" in message
        assert layout.driver_lock_url(catalog) in message
        beat = holder.heartbeat
        deadline = time.monotonic() + 10
        while first.holder().heartbeat == beat and time.monotonic() < deadline:
            time.sleep(0.05)
        assert first.holder().heartbeat > beat  # the heartbeat thread keeps the lease fresh
    finally:
        first.release()
    assert not exists(layout.driver_lock_url(catalog))
    DriverLock(catalog).check()  # free again


def test_stale_locks_are_taken_over(tmp_path):
    catalog = str(tmp_path / "cat")
    dead = subprocess.Popen([sys.executable, "-c", "pass"])
    dead.wait()
    _holder(catalog, pid=dead.pid)  # this host, pid gone: a killed local driver
    lock = DriverLock(catalog)
    lock.acquire()
    try:
        holder = lock.holder()
        assert (holder.session, holder.pid) == (lock.session, os.getpid()), "the new driver owns the lock"
    finally:
        lock.release()
    _holder(catalog, host="elsewhere.example", heartbeat=time.time() - 600)  # another host, silent for 10 min
    DriverLock(catalog, stale_after_s=300).check()
    with DriverLock(catalog, stale_after_s=300) as taken:
        assert taken.holder().session == taken.session
    _holder(catalog, host="elsewhere.example", heartbeat=time.time() - 5)  # another host, alive
    with pytest.raises(CatalogError, match="host elsewhere.example"):
        DriverLock(catalog).check()
    # this host's name, another PID namespace (containers with the host's network): its pid says nothing here,
    # and a live driver whose pid this namespace does not have was taken over
    _holder(catalog, pid=dead.pid, pid_namespace=1)
    with pytest.raises(CatalogError, match=f"host {socket.gethostname()}, pid {dead.pid}"):
        DriverLock(catalog).check()
    _holder(catalog, pid=dead.pid, pid_namespace=os.stat("/proc/self/ns/pid").st_ino)  # this namespace: gone
    DriverLock(catalog).check()


def test_release_leaves_a_lock_taken_over_by_another_driver(tmp_path):
    catalog = str(tmp_path / "cat")
    lock = DriverLock(catalog, heartbeat_s=50, stale_after_s=120)
    lock.acquire()
    _holder(catalog, session="newer", host="elsewhere.example")
    lock.release()
    assert json.loads(read_text(layout.driver_lock_url(catalog)))["session"] == "newer"
    for heartbeat_s in (10, 2.5):  # a run stops at half stale_after_s without a beat: it must beat before then
        with pytest.raises(InputError, match=r"need 0 < heartbeat_s < stale_after_s / 2, got"):
            DriverLock(catalog, heartbeat_s=heartbeat_s, stale_after_s=5)


def _acquire_together(locks: list[DriverLock]) -> list[bool]:
    """Each lock's ``acquire()`` on a thread of its own, at once: which of them succeeded."""
    from concurrent.futures import ThreadPoolExecutor

    def acquire(lock: DriverLock) -> bool:
        try:
            lock.acquire()
        except CatalogError:
            return False
        return True

    with ThreadPoolExecutor(len(locks)) as pool:
        return list(pool.map(acquire, locks))


@pytest.mark.parametrize("where", ["local", "s3"])
def test_of_drivers_started_together_exactly_one_holds_the_lock(tmp_path, where, request):
    """Check-then-write let two drivers started together both win (50 of 50 trials, locally)."""
    root = str(tmp_path) if where == "local" else request.getfixturevalue("s3_bucket")
    for trial in range(10):
        catalog = f"{root}/cat{trial}"
        locks = [DriverLock(catalog) for _ in range(4)]
        won = _acquire_together(locks)
        try:
            assert sum(won) == 1, f"trial {trial}: {sum(won)} drivers hold the lock"
            assert DriverLock(catalog).holder().session == locks[won.index(True)].session
        finally:
            for lock in locks:
                lock.release()


def test_a_driver_whose_lock_was_taken_over_finds_out_and_leaves_it(tmp_path):
    """A driver paused past the lease came back and its heartbeat rewrote the new holder's lock:
    two drivers ran on, each rewriting the lock over the other's."""
    catalog = str(tmp_path / "cat")
    lock = DriverLock(catalog, heartbeat_s=0.1, stale_after_s=60)
    lock.acquire()
    try:
        assert lock.held
        lock.check_held(read=True)
        _holder(catalog, session="newer", host="elsewhere.example")
        deadline = time.monotonic() + 10
        while lock.held and time.monotonic() < deadline:
            time.sleep(0.05)
        with pytest.raises(CatalogError, match=r"this run's lock on .* was taken over by host elsewhere\.example, pid 1 .*stopped"):
            lock.check_held()
        lock._thread.join(timeout=10)  # the heartbeat stops for good: no later beat rewrites the new holder's lock
        assert not lock._thread.is_alive()
        assert json.loads(read_text(layout.driver_lock_url(catalog)))["session"] == "newer"
    finally:
        lock.release()
    assert json.loads(read_text(layout.driver_lock_url(catalog)))["session"] == "newer"


def test_check_session_names_a_lock_held_by_another_run_or_gone(tmp_path):
    from skymorph.catalog.lock import check_session

    catalog = str(tmp_path / "cat")
    with pytest.raises(CatalogError, match="no longer holds .*its lock is gone"):
        check_session(catalog, "mine")
    with DriverLock(catalog) as lock:
        check_session(catalog, lock.session)
        with pytest.raises(CatalogError, match="no longer holds .*held by another run"):
            check_session(catalog, "mine")


def test_a_store_without_conditional_writes_still_gets_a_lock(s3, s3_bucket, monkeypatch):
    """501 to If-None-Match: check-then-write. 409 (a concurrent conditional write) counts as exists;
    400 is an error, not a lock that is not there (the run said to remove a file that did not exist)."""
    from skymorph.testing.faulty_proxy import FaultyProxy

    with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0, conditional_put_status=501) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        catalog = f"{s3_bucket}/cat"
        with DriverLock(catalog) as first:
            assert first.holder().session == first.session
            with pytest.raises(CatalogError, match="being written by another skymorph run"):
                DriverLock(catalog).acquire()
        assert not exists(layout.driver_lock_url(catalog))
    for status, raised, message in ((409, CatalogError, "being written by another skymorph run"),
                                    (400, OSError, r"If-None-Match is not supported")):
        with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0, conditional_put_status=status) as proxy:
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            with pytest.raises(raised, match=message) as err:
                DriverLock(f"{s3_bucket}/cat{status}").acquire()
            assert type(err.value) is raised  # not FileNotFoundError: "remove a lock" that is not there


def test_a_store_that_ignores_conditional_writes_is_warned_of(s3, s3_bucket, monkeypatch, capsys):
    """GCS's S3 interoperability ignores If-None-Match on writes: two drivers started together both created
    the lock, without a word. The lock is created a second time, which must fail, to find out."""
    from skymorph.testing.faulty_proxy import FaultyProxy

    catalog = f"{s3_bucket}/cat"
    with DriverLock(catalog):
        assert "warning" not in capsys.readouterr().err  # moto honours If-None-Match, as S3 does
    with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0, ignore_conditions=True) as proxy:
        monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
        with DriverLock(catalog) as lock:
            assert lock.holder().session == lock.session
    assert capsys.readouterr().err == (f"skymorph: warning: the store of {layout.driver_lock_url(catalog)} ignores If-None-Match (an "
                                       f"exclusive create of the existing lock succeeded): of two runs started together on {catalog!r}, "
                                       "the one the lock does not name stops only when it next reads the lock\n")


def test_a_driver_whose_own_create_was_answered_late_holds_the_lock(tmp_path):
    """A create whose reply was lost is retried and refused as 'exists': by this driver's own lock."""
    catalog = str(tmp_path / "cat")
    lock = DriverLock(catalog)
    _holder(catalog, session=lock.session, pid=os.getpid())
    lock.acquire()
    try:
        assert lock.held and lock.holder().session == lock.session
    finally:
        lock.release()


def test_of_drivers_taking_over_a_stale_lock_together_only_the_one_it_names_goes_on(tmp_path):
    """Remove-then-create is not exclusive (11 of 30 trials left several drivers believing they held
    it): a taker reads the lock again after a moment, and a driver checks it before each write, so all
    but the driver the lock names stop before writing anything."""
    for trial in range(4):
        catalog = str(tmp_path / f"cat{trial}")
        _holder(catalog, host="elsewhere.example", heartbeat=time.time() - 600)  # a driver dead for 10 minutes
        locks = [DriverLock(catalog, heartbeat_s=0.5, stale_after_s=60) for _ in range(4)]
        won = _acquire_together(locks)
        try:
            named = DriverLock(catalog).holder().session
            assert [lock.session for lock in locks].count(named) == 1 and won[[lock.session for lock in locks].index(named)]
            for lock, acquired in zip(locks, won):
                if acquired and lock.session != named:
                    with pytest.raises(CatalogError, match="this run's lock on .* was taken over"):
                        lock.check_held(read=True)
        finally:
            for lock in locks:
                lock.release()


def test_overwrite_keeps_the_lock_beside_an_s3_folder_marker(s3, s3_bucket):
    """A `_skymorph/` marker object (consoles, rclone) was listed as a child and removed, the lock with it."""
    from skymorph.storage import atomic_write_text, filesystem

    catalog = f"{s3_bucket}/cat"
    fs, _ = filesystem(catalog)
    atomic_write_text(layout.manifest_url(catalog), "{}")
    fs.pipe_file(f"{s3_bucket[5:]}/cat/_skymorph/", b"")
    with DriverLock(catalog) as lock:
        layout.remove_catalog(catalog, keep_lock=True)
        assert lock.holder().session == lock.session and not exists(layout.manifest_url(catalog))


def test_a_lock_that_cannot_be_released_does_not_hide_the_error_that_stopped_the_run():
    """With its storage gone, the lock's release raised on the way out, in place of the error (with its
    advice) that had stopped the run."""
    from skymorph.testing.s3 import LocalS3

    s3 = LocalS3().start()
    try:
        options = {**s3.storage_options, "config_kwargs": {"retries": {"max_attempts": 1}}}
        catalog = f"{s3.create_bucket('gone')}/cat"
        lock = DriverLock(catalog, options)
        with pytest.raises(RuntimeError, match="^what stopped the run$"):
            with lock:
                s3.stop()
                raise RuntimeError("what stopped the run")
    finally:
        s3.stop()


@pytest.mark.parametrize("where", ["local", "s3"])
def test_a_heartbeat_delayed_past_a_takeover_does_not_put_the_old_record_back(tmp_path, where, request):
    """The heartbeat read the lock, then rewrote it: a driver paused between the two (or its PUT held in
    flight) past stale_after_s put its record back over the driver that had taken over, and both went on.
    It now rewrites only the version it read."""
    from skymorph import storage

    catalog = str(tmp_path / "cat") if where == "local" else f"{request.getfixturevalue('s3_bucket')}/cat"
    a = DriverLock(catalog, heartbeat_s=0.2, stale_after_s=1.0)
    a.acquire()
    a._stop.set()  # this test beats for a by hand
    a._thread.join()
    text, version = storage.read_versioned(a.url)  # a's beat reads its own record, then pauses
    assert json.loads(text)["session"] == a.session
    time.sleep(1.2)
    b = DriverLock(catalog, heartbeat_s=0.2, stale_after_s=1.0)
    b.acquire()  # takes the stale lock over
    assert not storage.replace_if_version(a.url, a._record(), version)  # a's beat lands late: refused
    assert b.holder().session == b.session and b.confirm() and not a.confirm()
    text, version = storage.read_versioned(b.url)
    assert storage.replace_if_version(b.url, b._record(), version) and b.confirm()
    b.release()
    assert not storage.replace_if_version(b.url, b._record(), version) and not exists(b.url)  # removed since


def test_a_run_whose_heartbeats_keep_failing_stops_before_its_lock_goes_stale(s3, s3_bucket, monkeypatch):
    """Every failed heartbeat was retried in silence: the lock went stale under a live run, a second run
    took the catalog, and the first was told its heartbeat had been missed only once it had lost it."""
    from skymorph.testing.faulty_proxy import FaultyProxy

    lock = DriverLock(f"{s3_bucket}/cat", heartbeat_s=0.2, stale_after_s=4.0)
    with lock:
        lock.check_held(read=True)
        with FaultyProxy(s3.endpoint_url, p_503=0, p_drop=0, deny=r"^PUT ") as proxy:  # reads pass, writes are refused
            monkeypatch.setenv("AWS_ENDPOINT_URL", proxy.url)
            time.sleep(0.6)
            lock.check_held(read=True)  # a beat or two missed: still well inside stale_after_s
            time.sleep(1.8)
            with pytest.raises(CatalogError, match=r"has not been renewed for \d s \(\[Errno 13\] Access Denied: .*driver.lock'\); stopped "
                                                   r"before it goes stale \(4 s\)"):
                lock.check_held(read=True)
            assert proxy.counts.denied >= 4
            monkeypatch.setenv("AWS_ENDPOINT_URL", s3.endpoint_url)
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:  # the next heartbeat that lands renews the lock
            try:
                lock.check_held(read=True)
                break
            except CatalogError:
                time.sleep(0.1)
        lock.check_held(read=True)
