"""Leases: named holds on resources (content, snapshots, ingests) that garbage collection honours.

A lease is created by a client around work that makes resources before anything else refers to
them (an import, an unpack, a container's first snapshot). Resources are attached explicitly
(AddResource) or by calls made with the ``containerd-lease`` header.
"""

from __future__ import annotations

import builtins
import sqlite3
from collections.abc import Sequence

from ctrpy import errors, filters, identifiers
from ctrpy.errors import AlreadyExists, InvalidArgument, NotFound
from ctrpy.records import Lease, LeaseResource, freeze

from ..content import digests
from .db import Database
from .rows import (
    current_namespace,
    dump_labels,
    ensure_namespace,
    load_labels,
    now_ns,
    to_datetime,
)

# containerd's resource types: content blobs, ingests, and snapshots of a named snapshotter.
_RESOURCE_TYPES = ("content", "ingests")
_SNAPSHOT_PREFIX = "snapshots/"


MAX_LEASE_ID = 1024


def validate_lease_id(lease_id: str) -> str:
    """A lease id is any printable string (containerd accepts paths: ``ctr images mount`` uses its
    target directory); it never becomes a path here, so only emptiness, size and control
    characters are refused."""
    if not lease_id:
        raise InvalidArgument("lease id must be provided")
    if len(lease_id) > MAX_LEASE_ID or any(ord(ch) < 0x20 or ch == "\x7f" for ch in lease_id):
        raise InvalidArgument(f"lease id {lease_id[:80]!r} is invalid")
    return lease_id


def validate_resource(resource: LeaseResource) -> None:
    """containerd's checks, in its order: the type first (a type it does not know is
    UNIMPLEMENTED, a known one with the wrong number of ``/`` parts INVALID_ARGUMENT), then the
    id (a content id must be a digest)."""
    parts = resource.type.split("/")
    if parts[0] in _RESOURCE_TYPES and len(parts) != 1:
        raise InvalidArgument(f"invalid resource type {resource.type}")
    if parts[0] == _SNAPSHOT_PREFIX.rstrip("/") and len(parts) != 2:
        raise InvalidArgument(f"invalid snapshot resource type {resource.type}")
    if resource.type not in _RESOURCE_TYPES and not resource.type.startswith(_SNAPSHOT_PREFIX):
        raise errors.NotImplemented(f"resource type {resource.type} not supported yet")
    if resource.type == "content":
        try:
            digests.validate(resource.id)
        except InvalidArgument:
            raise InvalidArgument(f"invalid content resource id {resource.id}: invalid checksum digest format") from None
    if not resource.id:
        raise InvalidArgument("resource id must not be empty")
    if "\x00" in resource.id:
        raise InvalidArgument("resource id must not contain NUL")
    if resource.type.startswith(_SNAPSHOT_PREFIX):
        # containerd fails "snapshots/" with an UNKNOWN "bucket name required"; ctrpyd
        # refuses it as the bad argument it is.
        identifiers.validate(resource.type[len(_SNAPSHOT_PREFIX):])


def attach(conn: sqlite3.Connection, namespace: str, lease_id: str | None, resource: LeaseResource) -> None:
    """Record ``resource`` as held by ``lease_id``, inside the caller's transaction.

    Stores call this for what they create while a call carries the ``containerd-lease`` header
    (pass ``namespaces.current_lease.get()``); no lease means nothing to record. A lease that
    does not exist is NotFound, as in containerd.
    """
    if not lease_id:
        return
    row = conn.execute("SELECT 1 FROM leases WHERE namespace = ? AND id = ?", (namespace, lease_id)).fetchone()
    if row is None:
        raise NotFound("lease does not exist")  # containerd's words for a bad lease header
    conn.execute(
        "INSERT OR IGNORE INTO lease_resources (namespace, lease_id, type, resource_id) VALUES (?, ?, ?, ?)",
        (namespace, lease_id, resource.type, resource.id),
    )


class LeaseStore:
    """Leases in the call's namespace. Methods run on the database thread."""

    def __init__(self, db: Database) -> None:
        self.db = db

    def _require(self, conn: sqlite3.Connection, namespace: str, lease_id: str) -> None:
        row = conn.execute(
            "SELECT 1 FROM leases WHERE namespace = ? AND id = ?", (namespace, lease_id)
        ).fetchone()
        if row is None:
            raise NotFound(f'lease "{lease_id}"')

    def create(self, lease_id: str, labels: dict[str, str]) -> Lease:
        namespace = current_namespace()
        validate_lease_id(lease_id)
        # containerd checks no lease label (not even its size) and stores only those with a
        # value; an empty key (with a value) fails in its store after the existence check
        # (UNKNOWN "key required"): InvalidArgument here, in the same place.
        labels = {key: value for key, value in labels.items() if value}
        stamp = now_ns()
        with self.db.transaction() as conn:
            ensure_namespace(conn, namespace)
            try:
                conn.execute(
                    "INSERT INTO leases (namespace, id, labels, created_at) VALUES (?, ?, ?, ?)",
                    (namespace, lease_id, dump_labels(labels), stamp),
                )
            except sqlite3.IntegrityError:
                raise AlreadyExists(f'lease "{lease_id}"') from None
            if "" in labels:  # rolls the insert back
                raise InvalidArgument("label key must not be empty")
        return Lease(id=lease_id, labels=freeze(labels), created_at=to_datetime(stamp))

    def delete(self, lease_id: str) -> None:
        # Lookups (delete, resources) do not validate the id: a lease that could not have
        # been created is simply not found, as in containerd.
        namespace = current_namespace()
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM leases WHERE namespace = ? AND id = ?", (namespace, lease_id)
            )
            if cursor.rowcount == 0:
                raise NotFound(f'lease "{lease_id}"')

    def list(self, filter_expressions: Sequence[str] = ()) -> list[Lease]:
        namespace = current_namespace()
        match = filters.parse_all(filter_expressions)
        rows = self.db.conn.execute(
            "SELECT id, labels, created_at FROM leases WHERE namespace = ? ORDER BY created_at, id",
            (namespace,),
        )
        found = [
            Lease(id=lid, labels=load_labels(labels), created_at=to_datetime(created))
            for lid, labels, created in rows
        ]
        return [lease for lease in found if match.match(filters.lease_adaptor(lease.id, lease.labels))]

    def add_resource(self, lease_id: str, resource: LeaseResource) -> None:
        namespace = current_namespace()
        with self.db.transaction() as conn:
            self._require(conn, namespace, lease_id)
            validate_resource(resource)
            attach(conn, namespace, lease_id, resource)

    def delete_resource(self, lease_id: str, resource: LeaseResource) -> None:
        namespace = current_namespace()
        with self.db.transaction() as conn:
            self._require(conn, namespace, lease_id)
            if resource.type == _SNAPSHOT_PREFIX:
                return  # nothing can be held under "snapshots/": containerd deletes nothing, OK
            validate_resource(resource)
            conn.execute(
                "DELETE FROM lease_resources WHERE namespace = ? AND lease_id = ? AND type = ?"
                " AND resource_id = ?",
                (namespace, lease_id, resource.type, resource.id),
            )

    def list_resources(self, lease_id: str) -> builtins.list[LeaseResource]:
        namespace = current_namespace()
        conn = self.db.conn
        self._require(conn, namespace, lease_id)
        rows = conn.execute(
            "SELECT resource_id, type FROM lease_resources WHERE namespace = ? AND lease_id = ?"
            " ORDER BY type, resource_id",
            (namespace, lease_id),
        )
        return [LeaseResource(id=rid, type=rtype) for rid, rtype in rows]
