"""The metadata half of the sweep: delete what the mark left, inside the mark's transaction.

Only rows go here. Files and backend snapshots are removed after the commit (see
``collector``): a blob file once no namespace holds a row for it, a backend snapshot through
its snapshotter's cleanup, which knows what is still being created.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterable
from dataclasses import dataclass

from .mark import Marked, SnapshotRecord


@dataclass(frozen=True)
class Swept:
    """The rows one sweep deleted."""

    content: list[tuple[str, str]]  # (namespace, digest)
    snapshots: list[SnapshotRecord]
    leases: list[tuple[str, str]]  # (namespace, id)


def sweep(conn: sqlite3.Connection, marked: Marked) -> Swept:
    """Delete the unreachable content and snapshot rows and the expired leases (with their
    resources). Snapshots go children first, as the parent reference requires."""
    for namespace, lease_id in marked.leases:
        conn.execute("DELETE FROM leases WHERE namespace = ? AND id = ?", (namespace, lease_id))
    for namespace, digest in marked.content:
        conn.execute("DELETE FROM content WHERE namespace = ? AND digest = ?", (namespace, digest))
    for record in marked.snapshots:
        conn.execute(
            "DELETE FROM snapshots WHERE namespace = ? AND snapshotter = ? AND key = ?",
            (record.namespace, record.snapshotter, record.key),
        )
    return Swept(content=list(marked.content), snapshots=list(marked.snapshots), leases=list(marked.leases))


def unheld_blobs(conn: sqlite3.Connection, digests: Iterable[str]) -> list[str]:
    """Those of ``digests`` that no namespace holds a row for any more."""
    return sorted(
        digest
        for digest in set(digests)
        if conn.execute("SELECT 1 FROM content WHERE digest = ? LIMIT 1", (digest,)).fetchone() is None
    )
