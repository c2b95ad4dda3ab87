"""Namespaces: created explicitly or on the first write into them; deleted only when empty."""

from __future__ import annotations

import sqlite3
from collections.abc import Sequence

from ctrpy import fieldmask, filters, identifiers
from ctrpy.errors import AlreadyExists, FailedPrecondition, NotFound
from ctrpy.records import Namespace, freeze

from .db import Database
from .rows import dump_labels, load_labels, now_ns, validate_labels

# Tables whose rows belong to a namespace, with the word containerd uses in its refusal message.
_OWNED = (
    ("images", "images"),
    ("content", "blobs"),
    ("containers", "containers"),
    ("leases", "leases"),
)


class NamespaceStore:
    """Namespace records. Methods run on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Other stores (snapshots) register here what else keeps a namespace from being deleted.
        self.extra_owners: list[tuple[str, str]] = []

    def _row(self, conn: sqlite3.Connection, name: str) -> Namespace:
        row = conn.execute("SELECT labels FROM namespaces WHERE name = ?", (name,)).fetchone()
        if row is None:
            raise NotFound(f'namespace "{name}"')
        return Namespace(name=name, labels=load_labels(row[0]))

    def get(self, name: str) -> Namespace:
        """The namespace's labels; a namespace that does not exist has none.

        containerd answers Get for a missing namespace with the name and empty labels (its
        store reads the labels bucket, and a missing bucket means no labels), and its Go
        client relies on it: it reads the default-runtime label of a namespace it has not
        created yet when it connects (dockerd's "moby", for one). Like containerd's, the name
        is not validated here: a lookup writes nothing, and a name that could never be created
        simply has no labels.
        """
        try:
            return self._row(self.db.conn, name)
        except NotFound:
            return Namespace(name=name, labels=freeze({}))

    def list(self, filter_expressions: Sequence[str] = ()) -> list[Namespace]:
        match = filters.parse_all(filter_expressions)
        rows = self.db.conn.execute("SELECT name, labels FROM namespaces ORDER BY name")
        found = [Namespace(name=name, labels=load_labels(labels)) for name, labels in rows]
        return [ns for ns in found if match.match(filters.namespace_adaptor(ns.name, ns.labels))]

    def create(self, namespace: Namespace) -> Namespace:
        identifiers.validate(namespace.name)
        validate_labels(namespace.labels)
        stamp = now_ns()
        with self.db.transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    (namespace.name, dump_labels(namespace.labels), stamp, stamp),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'namespace "{namespace.name}"') from None
        return Namespace(name=namespace.name, labels=freeze(namespace.labels))

    def update(self, namespace: Namespace, paths: Sequence[str]) -> Namespace:
        identifiers.validate(namespace.name)
        fieldmask.validate_paths(paths, fields={"labels"}, kind="namespace", name=namespace.name)
        with self.db.transaction() as conn:
            current = self._row(conn, namespace.name)
            labels = fieldmask.apply_labels(current.labels, namespace.labels, paths)
            validate_labels(labels)
            conn.execute(
                "UPDATE namespaces SET labels = ?, updated_at = ? WHERE name = ?",
                (dump_labels(labels), now_ns(), namespace.name),
            )
        return Namespace(name=namespace.name, labels=freeze(labels))

    def delete(self, name: str) -> None:
        identifiers.validate(name)
        with self.db.transaction() as conn:
            self._row(conn, name)
            in_use = [
                word
                for table, word in (*_OWNED, *self.extra_owners)
                if conn.execute(f"SELECT 1 FROM {table} WHERE namespace = ? LIMIT 1", (name,)).fetchone()
            ]
            if in_use:
                raise FailedPrecondition(
                    f'namespace "{name}" must be empty, but it still has {", ".join(in_use)}'
                )
            conn.execute("DELETE FROM namespaces WHERE name = ?", (name,))
