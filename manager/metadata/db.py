"""The sqlite database behind ctrpyd's metadata, its schema, and its migrations.

The schema, as of the newest migration (``PRAGMA user_version`` holds the number applied)::

    server      (key PK, value)                       server-wide facts: the UUID
    namespaces  (name PK, labels, created_at, updated_at)
    containers  (namespace, id, labels, image, runtime_name, runtime_options_type,
                 runtime_options, spec_type, spec, snapshotter, snapshot_key, extensions,
                 created_at, updated_at, message)
                PK (namespace, id); message: the record as the serialized
                containerd.services.containers.v1.Container (see metadata/containers.py)
    images      (namespace, name, labels, target_media_type, target_digest, target_size,
                 target_annotations, created_at, updated_at)      PK (namespace, name)
    leases      (namespace, id, labels, created_at)               PK (namespace, id)
    lease_resources (namespace, lease_id, type, resource_id)      PK all four;
                 lease_id references leases, deleted with it
    content     (namespace, digest, labels, created_at, updated_at)  PK (namespace, digest):
                 which namespaces may see a shared blob, and their labels for it
    snapshots   (namespace, snapshotter, key, backend_key, parent, kind, labels,
                 created_at, updated_at, commit_intent)           PK (namespace, snapshotter, key);
                 UNIQUE (snapshotter, backend_key); parent NULL or the key of a row of the
                 same namespace and snapshotter (RESTRICT); commit_intent NULL or JSON
                 (see metadata/snapshots.py)
    snapshot_sequences (snapshotter PK, last)                     numbers in backend keys

Labels and other maps are JSON objects in TEXT columns. The ``Any`` values of a container (spec,
runtime options) are a type URL column and a BLOB column each, stored and returned byte for byte;
extensions, a map of them, are JSON ``{name: {"type_url": ..., "value": <base64>}}``.
Times are integer nanoseconds since the Unix epoch, UTC.

Every mutation is one transaction (``BEGIN IMMEDIATE`` ... ``COMMIT``); the database runs in WAL
mode with ``synchronous=FULL`` so a committed change survives a crash of ctrpyd or the machine.
All access goes through one thread (:meth:`Database.run`): sqlite connections are not shared
between threads, and the event loop never waits on disk.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import functools
import sqlite3
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import ParamSpec, TypeVar

from ctrpy import diskspace

from .. import tracing

P = ParamSpec("P")
T = TypeVar("T")

Migration = Callable[[sqlite3.Connection], None]


def _v1_initial(conn: sqlite3.Connection) -> None:
    # One execute() per statement: executescript() would commit the migration's transaction.
    statements = (
        """
        CREATE TABLE server (key TEXT PRIMARY KEY, value TEXT NOT NULL)
        """,
        """
        CREATE TABLE namespaces (
            name TEXT PRIMARY KEY,
            labels TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL
        )
        """,
        """
        CREATE TABLE containers (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            id TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            image TEXT NOT NULL DEFAULT '',
            runtime_name TEXT NOT NULL,
            runtime_options_type TEXT,
            runtime_options BLOB,
            spec_type TEXT,
            spec BLOB,
            snapshotter TEXT NOT NULL DEFAULT '',
            snapshot_key TEXT NOT NULL DEFAULT '',
            extensions TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (namespace, id)
        )
        """,
        """
        CREATE TABLE images (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            name TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            target_media_type TEXT NOT NULL,
            target_digest TEXT NOT NULL,
            target_size INTEGER NOT NULL,
            target_annotations TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (namespace, name)
        )
        """,
        """
        CREATE TABLE leases (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            id TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,
            PRIMARY KEY (namespace, id)
        )
        """,
        """
        CREATE TABLE lease_resources (
            namespace TEXT NOT NULL,
            lease_id TEXT NOT NULL,
            type TEXT NOT NULL,
            resource_id TEXT NOT NULL,
            PRIMARY KEY (namespace, lease_id, type, resource_id),
            FOREIGN KEY (namespace, lease_id) REFERENCES leases(namespace, id) ON DELETE CASCADE
        )
        """,
        """
        CREATE TABLE content (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            digest TEXT NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            PRIMARY KEY (namespace, digest)
        )
        """,
        """
        CREATE INDEX content_by_digest ON content(digest)
        """,
    )
    for statement in statements:
        conn.execute(statement)


def _v2_snapshots(conn: sqlite3.Connection) -> None:
    # Each namespace's view of the snapshotters: its keys, mapped to the backends' own keys.
    # One execute() per statement: executescript() would commit the migration's transaction.
    statements = (
        """
        CREATE TABLE snapshots (
            namespace TEXT NOT NULL REFERENCES namespaces(name),
            snapshotter TEXT NOT NULL,
            key TEXT NOT NULL,
            backend_key TEXT NOT NULL,
            parent TEXT,
            kind INTEGER NOT NULL,
            labels TEXT NOT NULL DEFAULT '{}',
            created_at INTEGER NOT NULL,
            updated_at INTEGER NOT NULL,
            commit_intent TEXT,
            PRIMARY KEY (namespace, snapshotter, key),
            UNIQUE (snapshotter, backend_key),
            FOREIGN KEY (namespace, snapshotter, parent)
                REFERENCES snapshots(namespace, snapshotter, key) ON DELETE RESTRICT
        )
        """,
        "CREATE INDEX snapshots_by_parent ON snapshots(namespace, snapshotter, parent)",
        "CREATE TABLE snapshot_sequences (snapshotter TEXT PRIMARY KEY, last INTEGER NOT NULL)",
    )
    for statement in statements:
        conn.execute(statement)


def _v3_container_messages(conn: sqlite3.Connection) -> None:
    # Each container row also holds its record as the serialized API message, so List answers
    # by concatenating bytes. NULL in rows written before this migration: the container store
    # fills them when it is built (the encoder lives above the metadata layer).
    conn.execute("ALTER TABLE containers ADD COLUMN message BLOB")


# Ordered: MIGRATIONS[i] takes the schema from version i to version i + 1. Append, never edit.
MIGRATIONS: list[Migration] = [_v1_initial, _v2_snapshots, _v3_container_messages]


def migrate(conn: sqlite3.Connection, migrations: list[Migration] = MIGRATIONS) -> int:
    """Apply every migration newer than the database's ``user_version``; return the new version.

    Each migration runs in its own transaction together with the version bump, so a crash
    leaves the database at one version or the next, never between.
    """
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(migrations):
        raise RuntimeError(
            f"metadata database is at schema version {version}, newer than this ctrpyd "
            f"understands ({len(migrations)})"
        )
    for number in range(version, len(migrations)):
        with _immediate(conn):
            migrations[number](conn)
            conn.execute(f"PRAGMA user_version = {number + 1}")
    return len(migrations)


#: Set by :func:`deferred_sync` for the commits made in its block (and the store calls it makes).
_deferred = contextvars.ContextVar("deferred_sync", default=False)


@contextlib.contextmanager
def deferred_sync() -> Iterator[None]:
    """Commit the writes made inside the block at ``synchronous = NORMAL``.

    In WAL mode such a commit is whole on disk once it returns, so it survives a crash of
    ctrpyd; only a power cut can lose it, until the next commit at ``FULL`` fsyncs the WAL and
    with it every frame written before. A request that writes several times and ends with a
    FULL commit (CRI's CreateContainer) thus saves an fsync per earlier write and answers for
    nothing a power cut can take: if the cut comes before its last commit, the request was
    never answered, and what the lost rows named is undone at start-up like any create that
    did not finish.
    """
    token = _deferred.set(True)
    try:
        yield
    finally:
        _deferred.reset(token)


@contextlib.contextmanager
def _immediate(conn: sqlite3.Connection) -> Iterator[sqlite3.Connection]:
    conn.execute("BEGIN IMMEDIATE")
    try:
        yield conn
        conn.commit()
    except BaseException:
        # A failed COMMIT (SQLITE_FULL, say) may leave the transaction open, or sqlite may have
        # rolled it back already: either way none is left open for the next caller.
        if conn.in_transaction:
            conn.rollback()
        raise


class Database:
    """One sqlite database and the single thread that uses it."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="metadata")
        self._conn: sqlite3.Connection | None = None
        self._executor.submit(self._open).result()

    def _open(self) -> None:
        # isolation_level=None: transactions are explicit (BEGIN IMMEDIATE in transaction()).
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=True)
        conn.execute("PRAGMA journal_mode = WAL")
        conn.execute("PRAGMA synchronous = FULL")
        conn.execute("PRAGMA foreign_keys = ON")
        conn.execute("PRAGMA busy_timeout = 5000")
        migrate(conn)
        self._conn = conn

    @property
    def conn(self) -> sqlite3.Connection:
        """The connection; only valid on the database thread (inside :meth:`run`)."""
        if self._conn is None:
            raise RuntimeError("metadata database is closed")
        return self._conn

    @contextlib.contextmanager
    def transaction(self, *, sync: bool = False) -> Iterator[sqlite3.Connection]:
        """A write transaction: committed when the block ends, rolled back when it raises.

        Its commit is fsynced unless made inside :func:`deferred_sync`; ``sync`` fsyncs it even
        there (a write whose loss no later write could make good).

        On a full disk (SQLITE_FULL, or the WAL that cannot grow) it rolls back and raises
        ResourceExhausted; the database stays usable, and serves reads meanwhile.
        """
        deferred = not sync and _deferred.get()
        if deferred:
            self.conn.execute("PRAGMA synchronous = NORMAL")
        try:
            with diskspace.guard("writing the metadata database", self.path), _immediate(self.conn) as conn:
                yield conn
        finally:
            if deferred:
                self.conn.execute("PRAGMA synchronous = FULL")

    async def run(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Run ``fn`` on the database thread, in the caller's context (namespace included)."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        if tracing.enabled():  # inside a traced call, a span per store call (manager/tracing)
            with tracing.span(f"metadata {getattr(fn, '__qualname__', 'call')}"):
                return await asyncio.get_running_loop().run_in_executor(self._executor, call)
        return await asyncio.get_running_loop().run_in_executor(self._executor, call)

    def call(self, fn: Callable[P, T], *args: P.args, **kwargs: P.kwargs) -> T:
        """Like :meth:`run`, from synchronous code outside the event loop (start-up, tests)."""
        context = contextvars.copy_context()
        call = functools.partial(context.run, fn, *args, **kwargs)
        return self._executor.submit(call).result()

    def close(self) -> None:
        """Close the connection and stop the thread. Safe to call twice."""

        def _close() -> None:
            if self._conn is not None:
                self._conn.close()
                self._conn = None

        with contextlib.suppress(RuntimeError):
            self._executor.submit(_close).result()
        self._executor.shutdown(wait=True)
