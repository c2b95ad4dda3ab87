"""The ``snapshots`` rows of meta.db: one snapshotter's keys in every namespace.

The SQL half of :mod:`ctrpy.manager.metadata.snapshots`, which explains the model and the
order of writes; every method here is one transaction (or one read) on the database thread.
"""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from ctrpy import fieldmask
from ctrpy.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ctrpy.records import Labels, LeaseResource
from ctrpy.snapshotter.types import Info, Kind

from . import leases
from .db import Database
from .rows import dump_labels, ensure_namespace, load_labels, now_ns, to_datetime, validate_labels

__all__ = ["Plan", "SnapshotRow", "SnapshotTables"]

_COLUMNS = "key, backend_key, parent, kind, labels, created_at, updated_at, commit_intent"
#: Backend key numbers reserved in ``snapshot_sequences`` at a time (see SnapshotTables._reserve).
NUMBERS_AT_ONCE = 64


@dataclass(frozen=True)
class SnapshotRow:
    """One namespace's snapshot: its key, the backend's key for it, and what meta.db keeps."""

    key: str
    backend_key: str
    parent: str
    kind: Kind
    labels: Labels
    created_at: datetime
    updated_at: datetime
    commit_intent: dict[str, Any] | None

    @classmethod
    def load(cls, row: tuple[Any, ...]) -> SnapshotRow:
        key, backend_key, parent, kind, labels, created, updated, intent = row
        created_at, updated_at = to_datetime(created), to_datetime(updated)
        assert created_at is not None and updated_at is not None  # NOT NULL columns
        return cls(
            key=key,
            backend_key=backend_key,
            parent=parent or "",
            kind=Kind(kind),
            labels=load_labels(labels),
            created_at=created_at,
            updated_at=updated_at,
            commit_intent=json.loads(intent) if intent else None,
        )

    def info(self, backend: Info | None = None) -> Info:
        """The namespace's view: its key, parent, labels and times over the backend's info."""
        labels = {**(backend.labels if backend else {}), **self.labels}
        kind = backend.kind if backend is not None and backend.kind != Kind.UNKNOWN else self.kind
        return Info(
            name=self.key,
            parent=self.parent,
            kind=kind,
            labels=labels,
            created_at=self.created_at,
            updated_at=self.updated_at,
        )


@dataclass(frozen=True)
class Plan:
    """What a create or a commit will do in the backend."""

    backend_key: str  # prepare/view: the new snapshot; commit: the active one
    backend_parent: str = ""  # prepare/view only
    backend_name: str = ""  # commit only: the committed snapshot's backend key


class SnapshotTables:
    """The rows of one snapshotter in meta.db. Every method runs on the database thread."""

    def __init__(self, db: Database, snapshotter: str) -> None:
        self.db = db
        self.snapshotter = snapshotter
        self.resource_type = f"snapshots/{snapshotter}"
        self._next_number = 1  # the reserved numbers not yet handed out: _next_number.._last_number
        self._last_number = 0

    def _row(self, conn: sqlite3.Connection, namespace: str, key: str) -> SnapshotRow | None:
        row = conn.execute(
            f"SELECT {_COLUMNS} FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (namespace, self.snapshotter, key),
        ).fetchone()
        return SnapshotRow.load(row) if row is not None else None

    def _require(self, conn: sqlite3.Connection, namespace: str, key: str) -> SnapshotRow:
        row = self._row(conn, namespace, key)
        if row is None:
            raise NotFound(f"snapshot {key} does not exist")  # containerd's words
        return row

    def _reserve(self) -> None:
        """Make sure a backend key number is at hand: numbers are reserved in meta.db
        :data:`NUMBERS_AT_ONCE` at a time, in a transaction of their own, so that taking one is
        no write and a prepare's first transaction (checks only, then) commits nothing to wait
        for. Numbers reserved and never handed out (a restart drops them) are skipped: they
        are never reused, which is all a backend key needs. Called before the caller's own
        transaction begins, and only trusted once this one has committed."""
        if self._next_number <= self._last_number:
            return
        # Fsynced even inside deferred_sync: numbers handed out must stay used after a power cut.
        with self.db.transaction(sync=True) as conn:
            (last,) = conn.execute(
                "INSERT INTO snapshot_sequences (snapshotter, last) VALUES (?, ?)"
                " ON CONFLICT (snapshotter) DO UPDATE SET last = last + ? RETURNING last",
                (self.snapshotter, NUMBERS_AT_ONCE, NUMBERS_AT_ONCE),
            ).fetchone()
        self._next_number, self._last_number = int(last) - NUMBERS_AT_ONCE + 1, int(last)

    def _backend_key(self, namespace: str, key: str) -> str:
        """A backend key with a number :meth:`_reserve` put at hand (used up even when the
        caller's transaction then fails)."""
        if self._next_number > self._last_number:
            raise RuntimeError("no backend key number reserved")  # a caller forgot _reserve()
        number = self._next_number
        self._next_number += 1
        return f"{namespace}/{number}/{key}"

    @staticmethod
    def _lease_exists(conn: sqlite3.Connection, namespace: str, lease: str) -> bool:
        query = "SELECT 1 FROM leases WHERE namespace = ? AND id = ?"
        return conn.execute(query, (namespace, lease)).fetchone() is not None

    def _drop_from_lease(self, conn: sqlite3.Connection, namespace: str, lease: str | None, key: str) -> None:
        # As containerd: only the call's own lease lets go of the key.
        if lease:
            conn.execute(
                "DELETE FROM lease_resources WHERE namespace = ? AND lease_id = ? AND type = ?"
                " AND resource_id = ?",
                (namespace, lease, self.resource_type, key),
            )

    def get(self, namespace: str, key: str) -> SnapshotRow:
        return self._require(self.db.conn, namespace, key)

    def rows(self, namespace: str) -> list[SnapshotRow]:
        rows = self.db.conn.execute(
            f"SELECT {_COLUMNS} FROM snapshots WHERE namespace = ? AND snapshotter = ? ORDER BY key",
            (namespace, self.snapshotter),
        )
        return [SnapshotRow.load(row) for row in rows]

    def plan_create(self, namespace: str, key: str, parent: str, lease: str | None) -> Plan:
        """Check that ``key`` is free and ``parent`` committed; take a backend key."""
        self._reserve()
        with self.db.transaction() as conn:
            if self._row(conn, namespace, key) is not None:
                raise AlreadyExists(f'snapshot "{key}"')
            backend_parent = ""
            if parent:
                found = self._row(conn, namespace, parent)
                if found is None:
                    raise NotFound(f"parent snapshot {parent} does not exist")
                if found.kind != Kind.COMMITTED:
                    raise InvalidArgument(f'parent "{parent}" is not a committed snapshot')
                backend_parent = found.backend_key
            if lease and not self._lease_exists(conn, namespace, lease):
                raise NotFound("lease does not exist")  # containerd's words
            return Plan(self._backend_key(namespace, key), backend_parent=backend_parent)

    def insert(
        self,
        namespace: str,
        key: str,
        parent: str,
        kind: Kind,
        backend_key: str,
        labels: Mapping[str, str],
        lease: str | None,
    ) -> SnapshotRow:
        """Record a snapshot the backend now has, and attach it to the call's lease."""
        stamp = now_ns()
        with self.db.transaction() as conn:
            ensure_namespace(conn, namespace)
            try:
                conn.execute(
                    f"INSERT INTO snapshots (namespace, snapshotter, {_COLUMNS})"
                    " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                    (
                        namespace,
                        self.snapshotter,
                        key,
                        backend_key,
                        parent or None,
                        int(kind),
                        dump_labels(labels),
                        stamp,
                        stamp,
                    ),
                )
            except sqlite3.IntegrityError:
                if self._row(conn, namespace, key) is not None:
                    raise AlreadyExists(f'snapshot "{key}"') from None
                raise NotFound(f"parent snapshot {parent} does not exist") from None
            leases.attach(conn, namespace, lease, LeaseResource(id=key, type=self.resource_type))
            return self._require(conn, namespace, key)

    def plan_commit(
        self, namespace: str, name: str, key: str, labels: Mapping[str, str], lease: str | None
    ) -> Plan:
        """Check the commit of ``key`` as ``name`` and write its intent on the active row."""
        self._reserve()
        with self.db.transaction() as conn:
            if self._row(conn, namespace, name) is not None:
                raise AlreadyExists(f'snapshot "{name}"')
            row = self._require(conn, namespace, key)
            if row.kind != Kind.ACTIVE:
                raise FailedPrecondition(f'snapshot "{key}" is not active')
            if row.commit_intent is not None:
                raise FailedPrecondition(f'snapshot "{key}" is being committed')
            if lease and not self._lease_exists(conn, namespace, lease):
                raise NotFound("lease does not exist")  # containerd's words
            backend_name = self._backend_key(namespace, name)
            intent = {"name": name, "backend_key": backend_name, "labels": dict(labels)}
            conn.execute(
                "UPDATE snapshots SET commit_intent = ? WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (json.dumps(intent), namespace, self.snapshotter, key),
            )
            return Plan(row.backend_key, backend_name=backend_name)

    def finish_commit(self, namespace: str, key: str, lease: str | None) -> None:
        """Replace active ``key`` by the committed snapshot its intent names."""
        stamp = now_ns()
        with self.db.transaction() as conn:
            row = self._require(conn, namespace, key)
            intent = row.commit_intent
            if intent is None:
                raise FailedPrecondition(f'snapshot "{key}" has no commit in progress')
            name = str(intent["name"])
            if self._row(conn, namespace, name) is not None:
                raise AlreadyExists(f'snapshot "{name}"')
            where = (namespace, self.snapshotter, key)
            conn.execute("DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?", where)
            conn.execute(
                f"INSERT INTO snapshots (namespace, snapshotter, {_COLUMNS})"
                " VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, NULL)",
                (
                    namespace,
                    self.snapshotter,
                    name,
                    intent["backend_key"],
                    row.parent or None,
                    int(Kind.COMMITTED),
                    dump_labels(intent["labels"]),
                    stamp,
                    stamp,
                ),
            )
            if lease and self._lease_exists(conn, namespace, lease):
                leases.attach(conn, namespace, lease, LeaseResource(id=name, type=self.resource_type))
                self._drop_from_lease(conn, namespace, lease, key)

    def abandon_commit(self, namespace: str, key: str) -> None:
        with self.db.transaction() as conn:
            conn.execute(
                "UPDATE snapshots SET commit_intent = NULL WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (namespace, self.snapshotter, key),
            )

    def intents(self) -> list[tuple[str, str, dict[str, Any]]]:
        """(namespace, key, intent) of every commit that was in progress, in every namespace."""
        rows = self.db.conn.execute(
            "SELECT namespace, key, commit_intent FROM snapshots"
            " WHERE snapshotter = ? AND commit_intent IS NOT NULL",
            (self.snapshotter,),
        )
        return [(ns, key, json.loads(intent)) for ns, key, intent in rows]

    def delete(self, namespace: str, key: str, lease: str | None) -> str:
        """Delete the row of ``key`` (no children allowed) and return its backend key."""
        with self.db.transaction() as conn:
            row = self._require(conn, namespace, key)
            if row.commit_intent is not None:
                raise FailedPrecondition(f'snapshot "{key}" is being committed')
            child = conn.execute(
                "SELECT 1 FROM snapshots WHERE namespace = ? AND snapshotter = ? AND parent = ? LIMIT 1",
                (namespace, self.snapshotter, key),
            ).fetchone()
            if child is not None:
                raise FailedPrecondition(f'cannot remove snapshot "{key}" with child')
            conn.execute(
                "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (namespace, self.snapshotter, key),
            )
            self._drop_from_lease(conn, namespace, lease, key)
            return row.backend_key

    def update_labels(
        self, namespace: str, key: str, update: Mapping[str, str], paths: Sequence[str]
    ) -> tuple[SnapshotRow, SnapshotRow]:
        """Apply a label update (mask already validated); return the row before and after."""
        with self.db.transaction() as conn:
            before = self._require(conn, namespace, key)
            labels = fieldmask.apply_labels(before.labels, update, paths)
            validate_labels(labels)
            conn.execute(
                "UPDATE snapshots SET labels = ?, updated_at = ?"
                " WHERE namespace = ? AND snapshotter = ? AND key = ?",
                (dump_labels(labels), now_ns(), namespace, self.snapshotter, key),
            )
            return before, self._require(conn, namespace, key)

    def backend_keys(self) -> set[str]:
        """Every backend key a namespace references, committed names of intents included."""
        keys: set[str] = set()
        rows = self.db.conn.execute(
            "SELECT backend_key, commit_intent FROM snapshots WHERE snapshotter = ?", (self.snapshotter,)
        )
        for backend_key, intent in rows:
            keys.add(backend_key)
            if intent:
                keys.add(json.loads(intent)["backend_key"])
        return keys
