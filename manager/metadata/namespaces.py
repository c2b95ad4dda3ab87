"""Namespaces: created explicitly or on the first write into them; deleted only when empty."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import Callable, Sequence

from ctrpy import filters, identifiers
from ctrpy.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ctrpy.records import Namespace, freeze

from .db import Database
from .rows import dump_labels, ensure_namespace, load_labels, now_ns, validate_label_sizes, validate_labels

# Tables whose rows belong to a namespace, with the word containerd uses in its refusal message.
# Leases do not keep a namespace: containerd deletes them with it (they live in its bucket).
_OWNED = (
    ("images", "images"),
    ("content", "blobs"),
    ("containers", "containers"),
)


class NamespaceStore:
    """Namespace records. Methods run on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db
        # Other stores (snapshots) register here what else keeps a namespace from being deleted.
        self.extra_owners: list[tuple[str, str]] = []
        # And what they forget of a namespace once it is deleted (content: its ingests); each
        # is called with the name, on a worker thread, after the deletion.
        self.deleted_hooks: list[Callable[[str], None]] = []

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
        # containerd checks label sizes, then whether the namespace exists, and only then
        # meets an empty key (in its store): the same order here.
        validate_label_sizes(namespace.labels)
        stamp = now_ns()
        with self.db.transaction() as conn:
            try:
                conn.execute(
                    "INSERT INTO namespaces (name, labels, created_at, updated_at) VALUES (?, ?, ?, ?)",
                    # containerd's Create puts every label, then sets each again, and setting
                    # an empty value deletes it: only labels with a value are kept (the reply
                    # and the event still carry the request's labels, as containerd's).
                    (namespace.name, dump_labels({k: v for k, v in namespace.labels.items() if v}),
                     stamp, stamp),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'namespace "{namespace.name}"') from None
            validate_labels(namespace.labels)  # an empty key: rolls the insert back
        return Namespace(name=namespace.name, labels=freeze(namespace.labels))

    def update(self, namespace: Namespace, paths: Sequence[str]) -> Namespace:
        """containerd's rules: the mask takes only ``labels.<key>`` paths (each sets that
        label, an empty value removes it); no mask clears every label, then sets the
        request's. Setting any label creates a namespace that does not exist yet."""
        identifiers.validate(namespace.name)
        # containerd sets the paths' labels one by one in the mask's order and stops at the
        # first it cannot: a bad label before a bad path is the error ("labels." is an empty
        # key; an empty key with an empty value only deletes nothing).
        for path in paths:
            if not path.startswith("labels."):
                raise InvalidArgument(f"cannot update {json.dumps(path, ensure_ascii=False)} field")
            key = path[len("labels."):]
            if key or namespace.labels.get(key, ""):
                validate_labels({key: namespace.labels.get(key, "")})
        with self.db.transaction() as conn:
            try:
                current = dict(self._row(conn, namespace.name).labels)
            except NotFound:
                current = {}
            if paths:
                keys = [path[len("labels."):] for path in paths]
                labels = dict(current)
            else:
                keys, labels = list(namespace.labels), {}
            touched = {key: namespace.labels.get(key, "") for key in keys}
            validate_labels({key: value for key, value in touched.items() if key or value})
            for key, value in touched.items():
                if value:
                    labels[key] = value
                else:
                    labels.pop(key, None)
            if touched or current:
                ensure_namespace(conn, namespace.name)
                conn.execute(
                    "UPDATE namespaces SET labels = ?, updated_at = ? WHERE name = ?",
                    (dump_labels(labels), now_ns(), namespace.name),
                )
        return Namespace(name=namespace.name, labels=freeze(labels))

    def delete(self, name: str) -> None:
        # Not validated, as containerd: a name that could never be created (an empty one too)
        # is simply not found.
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
            conn.execute("DELETE FROM lease_resources WHERE namespace = ?", (name,))
            conn.execute("DELETE FROM leases WHERE namespace = ?", (name,))
            conn.execute("DELETE FROM namespaces WHERE name = ?", (name,))
