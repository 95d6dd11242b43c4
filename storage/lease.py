"""Leases: one holder at a time for a piece of the results tree (one driver per sweep).

A lease is a small JSON file, ``<results>/leases/<key>.json``, naming its holder: host,
pid, a random token, when it was taken and its heartbeat, which the holder refreshes
from a daemon thread every ``HEARTBEAT_SECONDS``. Whoever finds a live lease is refused
with one line naming the holder. A lease whose holder is gone is taken over: at once when
the holder ran on this host and its process has ended; otherwise once its heartbeat is
older than ``STALE_SECONDS`` (so clocks of hosts sharing a results root must agree to
well within that). Only the holder, recognised by its token, refreshes or removes it.

Taking a lease in a local (or network-mounted) directory is atomic: the JSON is written
under a temporary name and hard-linked to the lease's name, which fails when that name
exists (create-if-absent, like ``O_CREAT | O_EXCL``, and no reader ever sees half a
lease). Taking over a stale lease is serialised per stale content (``_take_over``), so of
many takers exactly one wins. pyarrow's object-store filesystems have no create-if-absent,
so there it is best effort; see ``_acquire_store``.

Leases live beside the tables, not among them: ``storage.query`` and ``storage.parquet``
read only ``<table>/sweep=*/*.parquet`` for the tables they are given (``sweeps.tables``).
"""

from __future__ import annotations

import datetime as dt
import errno
import hashlib
import json
import os
import secrets
import socket
import threading
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import pyarrow as pa

from theoryscope.core.errors import StorageError, first_line
from theoryscope.storage.location import (
    FilePath, ResultsLike, StorePath, age_seconds, is_file, read_bytes, remove, results_root, temporary_name,
    write_file_atomic,
)

LEASES = "leases"
# How often a holder says it is alive, and how long a silent lease is honoured.
HEARTBEAT_SECONDS = 10.0
STALE_SECONDS = 60.0
# Object stores: how long a new lease is left before it is read back (see _acquire_store).
STORE_SETTLE_SECONDS = 1.0
# Attempts to take a local lease before giving up on a lease that keeps changing hands.
TAKER_PASSES = 50
# What os.link raises on filesystems without hard links (FAT, some FUSE and SMB mounts).
NO_HARD_LINKS = {errno.EPERM, errno.EOPNOTSUPP, errno.ENOTSUP, errno.ENOSYS, errno.EXDEV, errno.EMLINK}


class LeaseHeld(StorageError):
    """Someone else holds a live lease."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease; times are UTC ISO 8601 text, as stored."""

    host: str
    pid: int
    token: str
    started_at: str
    heartbeat_at: str

    @classmethod
    def me(cls) -> Holder:
        now = _now()
        return cls(socket.gethostname(), os.getpid(), secrets.token_hex(16), now, now)

    def encode(self) -> bytes:
        return json.dumps(asdict(self), indent=2).encode() + b"\n"

    @classmethod
    def decode(cls, data: bytes) -> Holder | None:
        try:
            fields = json.loads(data)
            holder = cls(str(fields["host"]), int(fields["pid"]), str(fields["token"]),
                         str(fields["started_at"]), str(fields["heartbeat_at"]))
            for stamp in (holder.started_at, holder.heartbeat_at):
                dt.datetime.fromisoformat(stamp)
        except (ValueError, TypeError, KeyError):
            return None
        return holder

    def silent_seconds(self) -> float:
        """Seconds since the last heartbeat."""
        return time.time() - dt.datetime.fromisoformat(self.heartbeat_at).timestamp()

    def gone(self, stale_seconds: float) -> bool:
        """Whether this holder can no longer be using its lease."""
        if self.host == socket.gethostname() and _process_gone(self.pid):
            return True
        return self.silent_seconds() > stale_seconds


def lease_path(results: ResultsLike, key: str) -> FilePath:
    return results_root(results) / LEASES / f"{key}.json"


def read_holder(path: FilePath) -> tuple[bytes, Holder | None] | None:
    """The lease file's bytes and holder (None for a file that does not parse), or None
    when there is no lease."""
    try:
        data = read_bytes(path) if isinstance(path, Path) or is_file(path) else None
    except (FileNotFoundError, pa.ArrowException, OSError):
        data = None  # removed between the check and the read, or unreadable: no lease to honour
    if data is None:
        return None
    return data, Holder.decode(data)


class Lease:
    """A lease held by this process. As a context manager it keeps the heartbeat going
    and releases the lease on the way out, whatever ends the block."""

    def __init__(self, path: FilePath, holder: Holder, heartbeat_seconds: float = HEARTBEAT_SECONDS):
        self.path, self.holder, self.heartbeat_seconds = path, holder, heartbeat_seconds
        # Set when the lease turned out to be someone else's: taken over while this
        # process was silent for longer than the stale limit (stopped, or starved).
        self.lost = False
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def _ours(self) -> bool:
        found = read_holder(self.path)
        return found is not None and found[1] is not None and found[1].token == self.holder.token

    def refresh(self) -> bool:
        """Write a new heartbeat; False (and ``lost``) when the lease is no longer ours.
        Between the check and the write another driver could take the lease over; that
        needs this process to have been silent past the stale limit first."""
        if not self._ours():
            self.lost = True
            return False
        self.holder = replace(self.holder, heartbeat_at=_now())
        data = self.holder.encode()
        write_file_atomic(self.path, lambda stream: stream.write(data))
        return True

    def release(self) -> bool:
        """Remove the lease if it is still ours; whether it was."""
        self._stop.set()
        if self._thread is not None and self._thread is not threading.current_thread():
            self._thread.join()
        try:
            return self._ours() and remove(self.path)
        except (StorageError, OSError, pa.ArrowException):
            return False  # unreachable now: the lease goes stale and is taken over

    def _beat(self) -> None:
        while not self._stop.wait(self.heartbeat_seconds):
            try:
                if not self.refresh():
                    return
            except (StorageError, OSError, pa.ArrowException):
                continue  # a store that is briefly unreachable; the next beat tries again

    def __enter__(self) -> Lease:
        self._thread = threading.Thread(target=self._beat, name=f"lease {self.path.name}", daemon=True)
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire(results: ResultsLike, key: str, what: str, advice: str,
            stale_seconds: float = STALE_SECONDS, heartbeat_seconds: float = HEARTBEAT_SECONDS) -> Lease:
    """Take the lease ``key`` in ``results``, or raise ``LeaseHeld`` (one line: ``what``
    is held by whom since when, then ``advice``). Failing to write is a ``StorageError``
    naming the results directory, before anything else has been written."""
    root = results_root(results)
    path = lease_path(root, key)
    holder = Holder.me()
    try:
        if isinstance(path, StorePath):
            _acquire_store(path, holder, stale_seconds)
        else:
            _acquire_local(path, holder, stale_seconds)
    except _Held as held:
        raise LeaseHeld(_held_message(what, advice, held, path, stale_seconds)) from None
    except (StorageError, OSError, pa.ArrowException) as exc:
        reason = exc.strerror if isinstance(exc, OSError) and exc.strerror else first_line(exc)
        raise StorageError(f"cannot write to results directory {root}: {reason}") from None
    return Lease(path, holder, heartbeat_seconds)


class _Held(Exception):
    """A live lease: its holder (None for a file that does not parse) and how long it
    has been silent."""

    def __init__(self, holder: Holder | None, age: float | None):
        super().__init__()
        self.holder, self.age = holder, age

    @classmethod
    def of(cls, found: tuple[bytes, Holder | None] | None) -> _Held:
        holder = None if found is None else found[1]
        return cls(holder, None if holder is None else holder.silent_seconds())


def _judge(found: tuple[bytes, Holder | None], path: FilePath, stale_seconds: float) -> None:
    """Raise ``_Held`` unless the lease ``found`` at ``path`` may be taken over. A file
    that does not parse (not written by us) is judged by its age alone."""
    holder = found[1]
    if holder is not None:
        if not holder.gone(stale_seconds):
            raise _Held(holder, holder.silent_seconds())
        return
    age = age_seconds(path)
    if age is not None and age <= stale_seconds:
        raise _Held(None, age)


def _acquire_local(path: Path, holder: Holder, stale_seconds: float) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(temporary_name(path.name))
    try:
        with open(tmp, "wb") as handle:
            handle.write(holder.encode())
            handle.flush()
            os.fsync(handle.fileno())
        for _ in range(TAKER_PASSES):  # each pass takes the lease, or sees it change hands
            if _create(path, tmp):
                return
            found = read_holder(path)
            if found is None:
                continue  # released just now
            _judge(found, path, stale_seconds)
            if _take_over(path, tmp, found[0], stale_seconds):
                return
        raise _Held.of(read_holder(path))
    finally:
        tmp.unlink(missing_ok=True)


def _take_over(path: Path, tmp: Path, stale: bytes, stale_seconds: float) -> bool:
    """Replace the lease file whose bytes were ``stale`` by ``tmp``'s; False when another
    taker is at it or the file changed meanwhile (look again).

    Removing the stale file and creating ours are two steps; a taker that still believed
    an older lease stale could remove ours in between. So takers of one stale content
    first create a breaker file named after it (``O_EXCL``: one at a time), and remove
    the lease only if it still holds exactly those bytes. A lease taken meanwhile has other
    bytes (a new token; a refreshed one a new heartbeat) and is left alone."""
    breaker = path.with_name(f"{path.name}.break-{hashlib.sha256(stale).hexdigest()[:16]}")
    try:
        os.close(os.open(breaker, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644))
    except FileExistsError:
        age = age_seconds(breaker)
        if age is not None and age > stale_seconds:  # its taker died within these few lines
            breaker.unlink(missing_ok=True)
        time.sleep(0.01)
        return False
    try:
        try:
            if path.read_bytes() != stale:
                return False
            path.unlink()
        except FileNotFoundError:
            pass  # released or taken over already: just create ours
        return _create(path, tmp)
    finally:
        breaker.unlink(missing_ok=True)


def _create(path: Path, tmp: Path) -> bool:
    """Give the complete file ``tmp`` the name ``path`` unless that name exists; whether
    it did. A hard link is atomic and never shows half a file; where the filesystem has
    no hard links, ``O_CREAT | O_EXCL`` is as atomic, and a reader that catches the file
    before its bytes sees a lease that does not parse yet, too young to take over."""
    try:
        os.link(tmp, path)
        return True
    except FileExistsError:
        return False
    except OSError as exc:
        if exc.errno not in NO_HARD_LINKS:
            raise
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "wb") as handle:
        handle.write(tmp.read_bytes())
        handle.flush()
        os.fsync(handle.fileno())
    return True



def _acquire_store(path: StorePath, holder: Holder, stale_seconds: float) -> None:
    """Write, wait, read back: of drivers that write at nearly the same time, the last
    write wins and every other one reads it back and backs off. The race left: a driver
    whose check of the lease and its own write lie further apart than
    ``STORE_SETTLE_SECONDS`` (a stalled request) can overwrite a lease that another one
    has already read back as its own, and both run. Object stores with conditional writes
    (S3's If-None-Match) could close it; pyarrow.fs does not expose them."""
    found = read_holder(path)
    if found is not None:
        _judge(found, path, stale_seconds)
    data = holder.encode()
    write_file_atomic(path, lambda stream: stream.write(data))
    time.sleep(STORE_SETTLE_SECONDS)
    back = read_holder(path)
    if back is None or back[1] is None or back[1].token != holder.token:
        raise _Held.of(back)


def _held_message(what: str, advice: str, held: _Held, path: FilePath, stale_seconds: float) -> str:
    h = held.holder
    if h is None:
        age = "" if held.age is None else f", written {held.age:.0f} s ago"
        return (f"{what} is in use: its lease file {path} does not parse{age}; {advice} (the file is taken "
                f"over once it is {stale_seconds:.0f} s old)")
    since = dt.datetime.fromisoformat(h.started_at).strftime("%Y-%m-%d %H:%M:%S UTC")
    heard = "" if held.age is None else f", last heartbeat {max(0.0, held.age):.0f} s ago"
    return (f"{what} is in use by another driver (host {h.host}, pid {h.pid}, since {since}{heard}); "
            f"{advice} (a lease whose driver is gone is taken over: at once on {h.host}, from other hosts "
            f"{stale_seconds:.0f} s after its last heartbeat; lease file {path})")


def _process_gone(pid: int) -> bool:
    """Whether no process of this host has ``pid`` (a zombie counts as gone: it has
    exited and only waits to be reaped)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except PermissionError:
        return False
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state == "Z"


def _now() -> str:
    return dt.datetime.now(dt.timezone.utc).isoformat()
