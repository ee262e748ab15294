"""One driver per output prefix: a lease object ``<output>/_lease`` with expiry and renewal. No Ray.

Two drivers on one output (a caption run and the nightly run, a backfill, a night that overruns into the
next) would both process every shared pending video, and one's compaction and reconcile would run while the
other writes. So :func:`pipeline.run.run_pipeline` holds the output's lease from before it reads the
ledger until its last write; the ledger's reconcile and compaction run only under it.

The lease is a small JSON document (:class:`Holder`: run id, host, pid, a random token, ``acquired_at``,
``expires_at``), written with an atomic create-if-absent: on S3 a PUT with ``If-None-Match: *``; locally a
complete temporary file hard-linked to ``_lease`` (``link`` fails if the name exists), under an ``flock`` of the
output folder that also serialises takeover, renewal and release. A daemon thread renews it every
``ttl_s / 3`` with a conditional overwrite (S3: ``If-Match`` on the ETag we wrote; locally: only while the
file still holds our content). A lease past ``expires_at``, or held by a process of this host that no
longer exists (a killed driver; "this host" is the hostname, PID namespace and boot id, :func:`host_identity`,
never a PID seen from another container), is taken over by the same conditional overwrite, so of two drivers
taking over at once one wins. A second driver gets :class:`LeaseHeld`, naming the holder and its expiry, or
waits for the lease with ``wait_s``.

Fencing. A holder can lose its lease without knowing it: a driver paused past its TTL (a long GC or a
stopped VM), or cut off from storage, is taken over by the next run, whose reconcile then deletes what the
paused run's writers are still staging. So a holder re-reads the lease before every step that could undo
another run's work, and stops with :class:`LeaseLost` unless the lease still carries its own ``token``:
:meth:`OutputLease.check` in the driver (before it deletes replaced part files and before it compacts), and
:func:`check_fence` in every write task before each commit (the ledger's ``lease_token``; one small GET per
committed video, and another after its marker). The check and the write are two requests, not one
conditional write, so a writer stopped between them can still write after a takeover; its commit never counts,
because its marker carries this lease's epoch, which the new holder superseded before writing
(pipeline/commit/ledger_index.py, "Epochs"). The driver's own checks are two requests as well: a driver stopped
between its check and its deletes or compaction can still act after a takeover (docs/reliability.md).

S3's conditions. ``If-None-Match: *`` and ``If-Match`` on PutObject (AWS, since 2024) make creation and
renewal atomic. Release deletes with ``If-Match`` on DeleteObject, which AWS S3 evaluates too ("conditional
deletes", DeleteObject and DeleteObjects: 412 on another ETag, 409 when a PUT races it; it needs s3:GetObject
besides s3:DeleteObject); an S3-compatible store that ignored the header would delete unconditionally, so
release first re-reads the lease and deletes only its own (the remaining window is the two requests). Nothing
else depends on conditional deletes: the ledger's compaction and reconcile delete plain objects, safe by the
commit protocol under the lease and after :meth:`OutputLease.check`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import json
import logging
import os
import posixpath
import socket
import threading
import time
import uuid
from dataclasses import asdict, dataclass, replace

import pyarrow.fs as pafs

from pipeline.commit.lease_store import Store, lease_store
from pipeline.commit.ledger_files import PrefixFiles

logger = logging.getLogger(__name__)

__all__ = [
    "DEFAULT_TTL_S",
    "LEASE_NAME",
    "Holder",
    "LeaseHeld",
    "LeaseLost",
    "OutputLease",
    "check_fence",
    "host_identity",
]

LEASE_NAME = "_lease"
DEFAULT_TTL_S = 300.0  # a killed driver on another host blocks the output this long; renewed every TTL/3
_POLL_S = 5.0  # how often a waiting driver looks at the lease again


class LeaseHeld(RuntimeError):
    """Another run holds the output's lease."""


class LeaseLost(RuntimeError):
    """This run's lease was taken over or could not be renewed in time."""


@dataclass(frozen=True)
class Holder:
    """Who holds a lease, and until when (ISO 8601, UTC)."""

    run_id: str
    host: str
    pid: int
    token: str  # random per acquisition: tells this acquisition from any other with the same run id
    acquired_at: str
    expires_at: str

    def expired(self) -> bool:
        return dt.datetime.fromisoformat(self.expires_at) <= dt.datetime.now(dt.UTC)

    def dead_here(self) -> bool:
        """Whether the holder ran here (this host, boot and PID namespace: :func:`host_identity`) and its
        process is gone (a killed driver). A holder in another container that shares the hostname (host
        networking) is never judged by a PID this namespace cannot see: its lease lasts until it expires."""
        if self.host != host_identity():
            return False
        try:
            os.kill(self.pid, 0)
        except ProcessLookupError:
            return True
        except PermissionError:  # alive, another user's
            return False
        return False

    def describe(self) -> str:
        return (
            f"run {self.run_id!r} (host {self.host}, pid {self.pid}) since {self.acquired_at}, until {self.expires_at}"
        )


class OutputLease:
    """The lease on one output prefix for one run.

    Args:
        filesystem: the output's pyarrow filesystem (local, or s3fs through ``FSSpecHandler``).
        base: the output prefix as a path of that filesystem.
        run_id: the run that asks for the lease.
        ttl_s: how long a lease lasts without renewal.
    """

    def __init__(self, filesystem: pafs.FileSystem, base: str, run_id: str, ttl_s: float = DEFAULT_TTL_S) -> None:
        path = posixpath.join(base.rstrip("/"), LEASE_NAME)
        self.where = path if isinstance(filesystem, pafs.LocalFileSystem) else f"s3://{path}"
        self.run_id = run_id
        self.ttl_s = ttl_s
        self.holder: Holder | None = None
        self._store: Store = lease_store(filesystem, path)
        self._version = ""
        self._valid_until = 0.0  # time.monotonic() past which an unrenewed lease may have expired
        self._lost: str | None = None
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._renewer: threading.Thread | None = None

    def __enter__(self) -> OutputLease:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()

    def acquire(self, wait_s: float = 0.0) -> OutputLease:
        """Take the lease, waiting up to ``wait_s`` seconds for another run's, and start renewing it.

        Raises:
            LeaseHeld: another live run still holds it after ``wait_s``.
        """
        deadline = time.monotonic() + wait_s
        while (other := self._try_acquire()) is not None:
            left = deadline - time.monotonic()
            if left <= 0:
                raise LeaseHeld(
                    f"another run holds the output lease {self.where}: {other.describe()} unless it renews it. "
                    "Two runs on one output would process the same videos twice; wait for it "
                    "(--wait-for-lease SECONDS), or rerun once it has ended or expired"
                )
            logger.info("waiting for the output lease %s: %s", self.where, other.describe())
            time.sleep(min(_POLL_S, left))
        self._renewer = threading.Thread(target=self._renew_until_stopped, name="lease-renewal", daemon=True)
        self._renewer.start()
        return self

    @property
    def token(self) -> str:
        """This acquisition's token, which the run's writers check before each commit (:func:`check_fence`)."""
        if self.holder is None:
            raise LeaseLost(f"run {self.run_id!r} does not hold the output lease {self.where}")
        return self.holder.token

    def check(self) -> None:
        """Raise :class:`LeaseLost` unless this run still holds the lease: renewed in time, and the lease in
        storage still its own (one read; call it before deleting or compacting)."""
        token = self.token
        if self._lost is not None:
            raise LeaseLost(self._lost)
        if time.monotonic() > self._valid_until:
            raise LeaseLost(f"the output lease {self.where} was not renewed within its {self.ttl_s:.0f} s")
        current = self._current()
        if current is None or current.token != token:
            self._lost = f"the output lease {self.where} was taken over: {_named(current)}"
            raise LeaseLost(self._lost)

    def renew(self) -> None:
        """Extend the lease by ``ttl_s`` if this run still holds it (else remember that it was lost)."""
        with self._lock:
            if self.holder is None or self._lost is not None:
                return
            renewed = replace(self.holder, expires_at=_iso(time.time() + self.ttl_s))
            started = time.monotonic()
            version = self._store.replace(_encode(renewed), self._version)
            if version is None:
                current = self._current()
                self._lost = f"the output lease {self.where} was taken over: {_named(current)}"
                logger.error("%s; this run stops compacting", self._lost)
                return
            self.holder, self._version, self._valid_until = renewed, version, started + self.ttl_s

    def release(self) -> None:
        """Stop renewing and delete the lease if it is still this run's."""
        self._stop.set()
        if self._renewer is not None:
            self._renewer.join()
        with self._lock:
            if self.holder is None or self._lost is not None:
                return
            try:
                current = self._current()  # taken over unnoticed: leave the new holder's lease alone, even on a
                if current is not None and current.token == self.holder.token:  # store that ignores If-Match
                    self._store.delete(self._version)  # conditional as well (S3 If-Match; locally under flock)
            except OSError as err:  # it expires by itself; the next run waits for it or takes it over
                logger.warning(
                    "could not release the output lease %s (%s); it expires at %s",
                    self.where,
                    err,
                    self.holder.expires_at,
                )
            self.holder = None

    # -- internals ----------------------------------------------------------------------------------------

    def _try_acquire(self, attempts: int = 5) -> Holder | None:
        """Take the lease if it is free, expired or held by a dead local process; else return its holder."""
        if attempts <= 0:
            raise OSError(f"the output lease {self.where} keeps changing under this run; is the output writable?")
        now = time.time()
        mine = Holder(self.run_id, host_identity(), os.getpid(), uuid.uuid4().hex, _iso(now), _iso(now + self.ttl_s))
        started = time.monotonic()
        version = self._store.create(_encode(mine))
        if version is None:
            found = self._store.read()
            if found is None:  # released between our create and read: try again at once
                return self._try_acquire(attempts - 1)
            data, old_version = found
            other = _decode(data)
            if other is not None and not other.expired() and not other.dead_here():
                return other
            logger.warning("taking over the output lease %s: %s", self.where, _stale(other))
            version = self._store.replace(_encode(mine), old_version)
            if version is None:  # another driver took it over first
                return self._current() or self._try_acquire(attempts - 1)
        self.holder, self._version, self._valid_until = mine, version, started + self.ttl_s
        logger.info(
            "holding the output lease %s until %s (renewed every %g s)", self.where, mine.expires_at, self.ttl_s / 3
        )
        return None

    def _current(self) -> Holder | None:
        found = self._store.read()
        return None if found is None else _decode(found[0])

    def _renew_until_stopped(self) -> None:
        while not self._stop.wait(self.ttl_s / 3):
            try:
                self.renew()
            except OSError as err:  # storage unreachable for now: the lease lasts until _valid_until
                logger.warning("could not renew the output lease %s (%s); retrying", self.where, err)


def check_fence(files: PrefixFiles, token: str) -> None:
    """Raise :class:`LeaseLost` unless the lease under ``files``' prefix carries ``token`` (a writer's check
    before each commit: its run still holds the output)."""
    path = files.path(LEASE_NAME)
    found = lease_store(files.fs, path).read()  # uncached; a storage error raises: it says nothing about the lease
    current = None if found is None else _decode(found[0])
    if current is None or current.token != token:
        raise LeaseLost(
            f"the output lease {path} is no longer this run's ({_named(current)}); this write task stops "
            "before committing: another run owns the output now and will process what this one did not commit"
        )


def _named(holder: Holder | None) -> str:
    return "deleted" if holder is None else holder.describe()


def _iso(epoch_s: float) -> str:
    return dt.datetime.fromtimestamp(epoch_s, dt.UTC).isoformat(timespec="milliseconds")


def host_identity() -> str:
    """``<hostname>/pidns-<inode>/boot-<8 hex>``: where a PID means one process. Containers that share a hostname
    (``docker --network host``, Kubernetes ``hostNetwork``) differ in their PID namespace, a rebooted host in
    its boot id; either part is left out where Linux does not expose it (the hostname alone then)."""
    parts = [socket.gethostname()]
    with contextlib.suppress(OSError):
        parts.append(f"pidns-{os.stat('/proc/self/ns/pid').st_ino}")
    with contextlib.suppress(OSError), open("/proc/sys/kernel/random/boot_id") as f:
        parts.append(f"boot-{f.read().strip()[:8]}")
    return "/".join(parts)


def _encode(holder: Holder) -> bytes:
    return json.dumps(asdict(holder), indent=1).encode()


def _decode(data: bytes) -> Holder | None:
    """The holder in a lease document, or None if it is not one (then it is treated as expired)."""
    try:
        return Holder(**json.loads(data))
    except (ValueError, TypeError):
        return None


def _stale(holder: Holder | None) -> str:
    if holder is None:
        return "its content is not a lease"
    reason = "expired" if holder.expired() else "its process is gone"
    return f"{holder.describe()}, {reason}"
