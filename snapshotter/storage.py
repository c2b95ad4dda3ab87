"""The metadata store of one snapshotter: keys, parents, kinds, labels and usage, in sqlite.

Each snapshotter root has its own ``metadata.db`` (WAL journal). The schema, version 1::

    snapshots                                    labels
    +--------------------------------------+     +------------------------------------+
    | id          INTEGER PK AUTOINCREMENT |<-+--| snapshot_id INTEGER -> snapshots   |
    | key         TEXT UNIQUE NOT NULL     |  |  |             ON DELETE CASCADE      |
    | parent_id   INTEGER -> snapshots(id) |--+  | key         TEXT                   |
    | kind        INTEGER (Kind, wire nos) |     | value       TEXT                   |
    | created_at  INTEGER (us since epoch) |     | PRIMARY KEY (snapshot_id, key)     |
    | updated_at  INTEGER (us since epoch) |     +------------------------------------+
    | size        INTEGER NULL (committed) |
    | inodes      INTEGER NULL (committed) |
    +--------------------------------------+

``id`` names the snapshot's directory, ``<root>/snapshots/<id>``, for its whole life: commit
renames the key, not the directory. AUTOINCREMENT keeps ids from being reused while the
database lives. ``key`` holds the key of an active or view snapshot and the name of a
committed one (one key space). ``parent_id`` always points at a committed snapshot;
removing a snapshot that is still a parent is refused (FailedPrecondition), and the foreign
key backs that up. ``PRAGMA user_version`` is the schema version; :data:`MIGRATIONS` brings
an older file up to date, in order, each step in its own transaction.

All access goes through :meth:`MetaStore.transaction`, a context manager that commits when
the block ends normally and rolls back when it raises. Transactions are serialized within
the process (one connection, one lock) and across processes by sqlite (writers take the
write lock at ``BEGIN IMMEDIATE``). Directory work that must agree with the metadata is
done inside the transaction; deletions happen after it commits.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

from ctrpy import diskspace
from ctrpy.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    Unavailable,
)

from .types import Info, Kind, Usage, freeze_labels

__all__ = ["MIGRATIONS", "MetaStore", "Snapshot", "Transaction", "validate_labels"]

MIGRATIONS: list[str] = [
    # 1: the initial schema.
    """
    CREATE TABLE snapshots (
        id          INTEGER PRIMARY KEY AUTOINCREMENT,
        key         TEXT NOT NULL UNIQUE,
        parent_id   INTEGER REFERENCES snapshots(id) ON DELETE RESTRICT,
        kind        INTEGER NOT NULL,
        created_at  INTEGER NOT NULL,
        updated_at  INTEGER NOT NULL,
        size        INTEGER,
        inodes      INTEGER
    );
    CREATE INDEX snapshots_by_parent ON snapshots(parent_id);
    CREATE TABLE labels (
        snapshot_id INTEGER NOT NULL REFERENCES snapshots(id) ON DELETE CASCADE,
        key         TEXT NOT NULL,
        value       TEXT NOT NULL,
        PRIMARY KEY (snapshot_id, key)
    );
    """,
]

# containerd's limit on one label: key and value together, in bytes.
MAX_LABEL_SIZE = 4096


@dataclass(frozen=True)
class Snapshot:
    """Where an active or view snapshot lives: its id and its parents' ids, nearest first."""

    id: int
    kind: Kind
    parent_ids: tuple[int, ...] = ()


def _micros(t: datetime) -> int:
    delta = t - datetime.fromtimestamp(0, UTC)
    return (delta.days * 86_400 + delta.seconds) * 1_000_000 + delta.microseconds


def _time(micros: int) -> datetime:
    return datetime.fromtimestamp(micros // 1_000_000, UTC).replace(microsecond=micros % 1_000_000)


def _now() -> int:
    return _micros(datetime.now(UTC))


def check_key(key: str, what: str = "key") -> str:
    """Return ``key`` when usable as a snapshot key or name; raise InvalidArgument otherwise."""
    if not key:
        raise InvalidArgument(f"snapshot {what} must not be empty")
    if "\x00" in key:
        raise InvalidArgument(f"snapshot {what} {key!r} contains a NUL character")
    return key


def validate_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """A plain copy of ``labels`` without empty values (an empty value means no label).

    Raises InvalidArgument for an empty key or a key and value longer than 4096 bytes.
    """
    out: dict[str, str] = {}
    for key, value in (labels or {}).items():
        if not key:
            raise InvalidArgument("label key must not be empty")
        if len(key.encode()) + len(value.encode()) > MAX_LABEL_SIZE:
            raise InvalidArgument(
                f"label key and value greater than maximum size ({MAX_LABEL_SIZE} bytes), key: {key[:10]}"
            )
        if value:
            out[key] = value
    return out


class Transaction:
    """One open transaction; only valid inside its ``with`` block."""

    def __init__(self, conn: sqlite3.Connection, writable: bool) -> None:
        self._conn = conn
        self.writable = writable

    def _require_writable(self) -> None:
        if not self.writable:
            raise RuntimeError("write in a read-only snapshot transaction")

    def _row(self, key: str) -> sqlite3.Row | None:
        row: sqlite3.Row | None = self._conn.execute(
            "SELECT s.*, p.key AS parent_key FROM snapshots s "
            "LEFT JOIN snapshots p ON p.id = s.parent_id WHERE s.key = ?",
            (key,),
        ).fetchone()
        return row

    def _labels(self, snapshot_id: int) -> dict[str, str]:
        rows = self._conn.execute("SELECT key, value FROM labels WHERE snapshot_id = ?", (snapshot_id,))
        return {k: v for k, v in rows}

    def _write_labels(self, snapshot_id: int, labels: Mapping[str, str]) -> None:
        self._conn.execute("DELETE FROM labels WHERE snapshot_id = ?", (snapshot_id,))
        self._conn.executemany(
            "INSERT INTO labels (snapshot_id, key, value) VALUES (?, ?, ?)",
            [(snapshot_id, k, v) for k, v in labels.items() if v],
        )

    @staticmethod
    def _info(row: sqlite3.Row, labels: Mapping[str, str]) -> Info:
        return Info(
            name=row["key"],
            parent=row["parent_key"] or "",
            kind=Kind(row["kind"]),
            labels=freeze_labels(labels),
            created_at=_time(row["created_at"]),
            updated_at=_time(row["updated_at"]),
        )

    def _parent_chain(self, first: int) -> tuple[int, ...]:
        rows = self._conn.execute(
            "WITH RECURSIVE chain(id, parent_id, depth) AS ("
            " SELECT id, parent_id, 0 FROM snapshots WHERE id = ?"
            " UNION ALL"
            " SELECT s.id, s.parent_id, c.depth + 1 FROM snapshots s JOIN chain c ON s.id = c.parent_id"
            ") SELECT id FROM chain ORDER BY depth",
            (first,),
        )
        return tuple(r[0] for r in rows)

    def get_info(self, key: str) -> tuple[int, Info, Usage]:
        """The id, info and stored usage of snapshot ``key``. Raises NotFound."""
        row = self._row(key)
        if row is None:
            raise NotFound(f'snapshot "{key}"')
        usage = Usage(size=row["size"] or 0, inodes=row["inodes"] or 0)
        return row["id"], self._info(row, self._labels(row["id"])), usage

    def get_snapshot(self, key: str) -> Snapshot:
        """Id, kind and parent ids of active or view snapshot ``key``.

        Raises NotFound, FailedPrecondition when ``key`` is committed.
        """
        row = self._row(key)
        if row is None:
            raise NotFound(f'snapshot "{key}"')
        kind = Kind(row["kind"])
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise FailedPrecondition(f'snapshot "{key}" is not active or view')
        parents = self._parent_chain(row["parent_id"]) if row["parent_id"] is not None else ()
        return Snapshot(id=row["id"], kind=kind, parent_ids=parents)

    def create_snapshot(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> Snapshot:
        """Record a new active or view snapshot ``key`` on ``parent`` and return where it lives.

        Raises InvalidArgument (bad kind, key or labels; parent not committed), NotFound
        (parent), AlreadyExists (key).
        """
        self._require_writable()
        if kind not in (Kind.ACTIVE, Kind.VIEW):
            raise InvalidArgument(f"snapshot kind {kind.text} cannot be created; only active or view")
        check_key(key)
        clean = validate_labels(labels)
        parent_id: int | None = None
        if parent:
            prow = self._row(parent)
            if prow is None:
                raise NotFound(f'parent snapshot "{parent}"')
            if prow["kind"] != Kind.COMMITTED:
                raise InvalidArgument(f'parent "{parent}" is not a committed snapshot')
            parent_id = prow["id"]
        if self._row(key) is not None:
            raise AlreadyExists(f'snapshot "{key}"')
        now = _now()
        cursor = self._conn.execute(
            "INSERT INTO snapshots (key, parent_id, kind, created_at, updated_at) VALUES (?, ?, ?, ?, ?)",
            (key, parent_id, int(kind), now, now),
        )
        new_id = cursor.lastrowid
        assert new_id is not None
        self._write_labels(new_id, clean)
        parents = self._parent_chain(parent_id) if parent_id is not None else ()
        return Snapshot(id=new_id, kind=kind, parent_ids=parents)

    def update_info(self, info: Info, fieldpaths: Sequence[str] = ()) -> Info:
        """Apply the label changes ``fieldpaths`` names (see ``Snapshotter.update``).

        Raises NotFound, InvalidArgument.
        """
        self._require_writable()
        row = self._row(info.name)
        if row is None:
            raise NotFound(f'snapshot "{info.name}"')
        labels = self._labels(row["id"])
        for path in fieldpaths or ("labels",):
            if path == "labels":
                labels = dict(info.labels)
                continue
            head, dot, label = path.partition(".")
            if head == "labels" and dot and label:
                if info.labels.get(label):
                    labels[label] = info.labels[label]
                else:
                    labels.pop(label, None)
                continue
            raise InvalidArgument(f'cannot update "{path}" field on snapshot "{info.name}"')
        clean = validate_labels(labels)
        now = _now()
        self._conn.execute("UPDATE snapshots SET updated_at = ? WHERE id = ?", (now, row["id"]))
        self._write_labels(row["id"], clean)
        return self.get_info(info.name)[1]

    def commit_active(self, key: str, name: str, usage: Usage, labels: Mapping[str, str] | None) -> int:
        """Turn active ``key`` into committed ``name`` (same id) and return the id.

        The committed snapshot gets ``labels`` (not the active one's), ``usage`` and a new
        creation time. Raises InvalidArgument, AlreadyExists (name), NotFound (key),
        FailedPrecondition (key not active).
        """
        self._require_writable()
        check_key(name, "name")
        check_key(key)
        clean = validate_labels(labels)
        if self._row(name) is not None:
            raise AlreadyExists(f'snapshot "{name}"')
        row = self._row(key)
        if row is None:
            raise NotFound(f'snapshot "{key}"')
        if row["kind"] != Kind.ACTIVE:
            raise FailedPrecondition(f'snapshot "{key}" is not active')
        now = _now()
        self._conn.execute(
            "UPDATE snapshots SET key = ?, kind = ?, created_at = ?, updated_at = ?, "
            "size = ?, inodes = ? WHERE id = ?",
            (name, int(Kind.COMMITTED), now, now, usage.size, usage.inodes, row["id"]),
        )
        self._write_labels(row["id"], clean)
        snapshot_id: int = row["id"]
        return snapshot_id

    def remove(self, key: str) -> tuple[int, Kind]:
        """Delete the record of ``key``; return its id and kind.

        Raises NotFound, FailedPrecondition when it has children.
        """
        self._require_writable()
        row = self._row(key)
        if row is None:
            raise NotFound(f'snapshot "{key}"')
        child = self._conn.execute(
            "SELECT 1 FROM snapshots WHERE parent_id = ? LIMIT 1", (row["id"],)
        ).fetchone()
        if child is not None:
            raise FailedPrecondition(f'cannot remove snapshot "{key}" with child')
        self._conn.execute("DELETE FROM snapshots WHERE id = ?", (row["id"],))
        return row["id"], Kind(row["kind"])

    def infos(self) -> list[Info]:
        """The info of every snapshot, in id order."""
        labels: dict[int, dict[str, str]] = {}
        for sid, k, v in self._conn.execute("SELECT snapshot_id, key, value FROM labels"):
            labels.setdefault(sid, {})[k] = v
        rows = self._conn.execute(
            "SELECT s.*, p.key AS parent_key FROM snapshots s "
            "LEFT JOIN snapshots p ON p.id = s.parent_id ORDER BY s.id"
        )
        return [self._info(r, labels.get(r["id"], {})) for r in rows]

    def ids(self) -> set[int]:
        """The ids of every snapshot (to tell owned directories from orphans)."""
        return {r[0] for r in self._conn.execute("SELECT id FROM snapshots")}


def _migrate(conn: sqlite3.Connection, path: Path) -> None:
    version: int = conn.execute("PRAGMA user_version").fetchone()[0]
    if version > len(MIGRATIONS):
        raise FailedPrecondition(
            f"{path} has schema version {version}, newer than this ctrpy knows ({len(MIGRATIONS)})"
        )
    for number in range(version, len(MIGRATIONS)):
        conn.execute("BEGIN IMMEDIATE")
        try:
            for statement in MIGRATIONS[number].split(";"):
                if statement.strip():
                    conn.execute(statement)
            conn.execute(f"PRAGMA user_version = {number + 1}")
            conn.execute("COMMIT")
        except BaseException:
            conn.execute("ROLLBACK")
            raise


class MetaStore:
    """The sqlite metadata of one snapshotter root; see the module docstring."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)
        conn = sqlite3.connect(self.path, isolation_level=None, check_same_thread=False, timeout=30.0)
        try:
            conn.row_factory = sqlite3.Row
            conn.execute("PRAGMA journal_mode = WAL")
            conn.execute("PRAGMA synchronous = FULL")
            conn.execute("PRAGMA foreign_keys = ON")
            _migrate(conn, self.path)
        except BaseException:
            conn.close()
            raise
        self._conn: sqlite3.Connection | None = conn
        self._lock = threading.RLock()

    @property
    def lock(self) -> threading.RLock:
        """The lock every transaction takes; hold it to keep work next to a transaction."""
        return self._lock

    @property
    def schema_version(self) -> int:
        """The ``PRAGMA user_version`` of the open database."""
        with self._lock:
            version: int = self._connection().execute("PRAGMA user_version").fetchone()[0]
            return version

    def _connection(self) -> sqlite3.Connection:
        if self._conn is None:
            raise Unavailable("snapshotter metadata store is closed")
        return self._conn

    @contextmanager
    def transaction(self, writable: bool = False) -> Iterator[Transaction]:
        """A transaction for the ``with`` block: committed at its end, rolled back on error.

        Raises Unavailable when the store is closed.
        """
        with self._lock:
            conn = self._connection()
            if conn.in_transaction:
                raise RuntimeError("snapshot transactions do not nest")
            # A full disk (SQLITE_FULL, ENOSPC from work done in the block) is answered as
            # ResourceExhausted once rolled back; sqlite may have rolled back already.
            with diskspace.guard("writing snapshot metadata", self.path):
                conn.execute("BEGIN IMMEDIATE" if writable else "BEGIN DEFERRED")
                try:
                    yield Transaction(conn, writable)
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise
                try:
                    conn.execute("COMMIT" if writable else "ROLLBACK")
                except BaseException:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
                    raise

    def close(self) -> None:
        """Close the database; later transactions raise Unavailable. Idempotent."""
        with self._lock:
            if self._conn is not None:
                self._conn.close()
                self._conn = None
