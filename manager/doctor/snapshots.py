"""Checks and repairs of the snapshotters and of meta.db's view of them.

Two layers must agree (see ``ctrpy.manager.metadata.snapshots``). Inside each local
snapshotter (``<root>/snapshots/<name>/``), every snapshot recorded in its ``metadata.db``
has its directory ``snapshots/<id>`` and every directory there is a recorded snapshot (the
``new-*`` and ``rm-*`` leftovers are the ``temp`` check's). Between meta.db and a backend,
every row's backend key is a snapshot of the backend, and every backend snapshot is some
namespace's (rows with an interrupted commit count their committed name too).
"""

from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path

from ctrpy.errors import FailedPrecondition
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.snapshot_tables import SnapshotTables
from ctrpy.snapshotter.fsutil import remove_tree
from ctrpy.snapshotter.local import LocalSnapshotter

from .model import Check, Finding, Repair, Target
from .sqlite import has_table, reading

__all__ = ["CHECKS", "REPAIRS", "TEMP_PREFIXES", "local_snapshotters"]

#: Names of directories that a create (``new-``) or a remove (``rm-``) was working in.
TEMP_PREFIXES = ("new-", "rm-")
# The snapshotters ctrpyd keeps under its root; their rows are checked even when the
# directory is missing. Other names (proxies) live elsewhere and are not checked.
BUILTIN = ("overlayfs", "native")


@dataclass(frozen=True)
class BackendSnapshot:
    """One record of a snapshotter's metadata.db."""

    id: int
    key: str
    parent_id: int | None


@dataclass(frozen=True)
class Row:
    """One row of meta.db's ``snapshots`` table."""

    namespace: str
    snapshotter: str
    key: str
    backend_key: str
    parent: str
    intent_key: str  # the committed name's backend key of an interrupted commit, else ""


def local_snapshotters(target: Target) -> list[str]:
    """Names of the snapshotter directories under ``<root>/snapshots`` that have a metadata.db."""
    try:
        entries = os.scandir(target.snapshots_root)
    except FileNotFoundError:
        return []
    return sorted(
        e.name
        for e in entries
        if e.is_dir(follow_symlinks=False) and os.path.isfile(os.path.join(e.path, "metadata.db"))
    )


def _backend(target: Target, name: str) -> list[BackendSnapshot] | None:
    """The records of snapshotter ``name``, or None when it has no metadata.db."""
    with reading(target.snapshots_root / name / "metadata.db") as conn:
        if conn is None or not has_table(conn, "snapshots"):
            return None
        rows = conn.execute("SELECT id, key, parent_id FROM snapshots ORDER BY id")
        return [BackendSnapshot(int(i), str(k), p) for i, k, p in rows]


def _rows(target: Target) -> list[Row] | None:
    """meta.db's snapshot rows, or None when meta.db (or its snapshots table) is missing."""
    with reading(target.meta_db) as conn:
        if conn is None or not has_table(conn, "snapshots"):
            return None
        found: list[Row] = []
        query = "SELECT namespace, snapshotter, key, backend_key, parent, commit_intent FROM snapshots"
        for namespace, snapshotter, key, backend_key, parent, intent in conn.execute(
            query + " ORDER BY rowid"
        ):
            intent_key = ""
            if intent:
                try:
                    intent_key = str(json.loads(intent)["backend_key"])
                except (ValueError, KeyError, TypeError):
                    intent_key = ""
            found.append(Row(namespace, snapshotter, key, backend_key, parent or "", intent_key))
        return found


def _snapshot_dir(target: Target, name: str) -> Path:
    return target.snapshots_root / name / "snapshots"


# --- inside each snapshotter -----------------------------------------------------------------


def check_directories(target: Target) -> list[Finding]:
    """Directories under ``<name>/snapshots`` that no record of that snapshotter owns."""
    found: list[Finding] = []
    for name in local_snapshotters(target):
        records = _backend(target, name)
        if records is None:
            continue
        owned = {str(r.id) for r in records}
        try:
            entries = sorted(os.listdir(_snapshot_dir(target, name)))
        except FileNotFoundError:
            continue
        for entry in entries:
            if entry in owned or entry.startswith(TEMP_PREFIXES):
                continue
            path = _snapshot_dir(target, name) / entry
            found.append(
                Finding(
                    "snapshots",
                    str(path),
                    f"directory with no metadata (no snapshot {entry} in {name}'s metadata.db)",
                    "remove",
                    "remove-snapshot-dir",
                    {"snapshotter": name, "path": str(path), "entry": entry},
                )
            )
    return found


def repair_remove_directory(target: Target, finding: Finding) -> str:
    """Delete the directory (detaching anything mounted in it first) if still unowned."""
    name, entry = str(finding.details["snapshotter"]), str(finding.details["entry"])
    records = _backend(target, name) or []
    if entry in {str(r.id) for r in records}:
        raise FailedPrecondition(f"snapshot {entry} of {name} is recorded now")
    path = Path(str(finding.details["path"]))
    if not os.path.lexists(path):
        return "already gone"
    if not remove_tree(path):
        raise OSError(f"{path} could not be removed")
    return "removed"


def check_records(target: Target) -> list[Finding]:
    """Snapshots recorded in a snapshotter's metadata.db whose directory is missing."""
    found: list[Finding] = []
    for name in local_snapshotters(target):
        records = _backend(target, name)
        if records is None:
            continue
        parents = {r.parent_id for r in records}
        for record in reversed(records):  # children (newer ids) before their parents
            path = _snapshot_dir(target, name) / str(record.id)
            if path.is_dir():
                continue
            problem = f"metadata with no directory ({path} is missing)"
            repair, action = "remove-backend-snapshot", "remove the record"
            if record.id in parents:
                problem += "; other snapshots are built on it"
                repair, action = "", ""
            found.append(
                Finding(
                    "snapshots",
                    f"{name}:{record.key}",
                    problem,
                    action,
                    repair,
                    {"snapshotter": name, "key": record.key, "why": "no-directory"},
                )
            )
    return found


def repair_remove_backend_snapshot(target: Target, finding: Finding) -> str:
    """Remove the snapshot from its snapshotter (record and directory) after checking that
    the reason still holds."""
    name, key = str(finding.details["snapshotter"]), str(finding.details["key"])
    records = {r.key: r for r in _backend(target, name) or []}
    record = records.get(key)
    if record is None:
        return "already gone"
    if finding.details["why"] == "no-directory" and (_snapshot_dir(target, name) / str(record.id)).is_dir():
        raise FailedPrecondition(f"snapshot {key} of {name} has its directory now")
    if finding.details["why"] == "unreferenced" and key in _referenced(_rows(target) or [], name):
        raise FailedPrecondition(f"snapshot {key} of {name} is referenced now")
    with LocalSnapshotter(target.snapshots_root / name) as backend:
        backend.remove(key)
    return "removed"


# --- between meta.db and the snapshotters ----------------------------------------------------


def _referenced(rows: list[Row], name: str) -> set[str]:
    keys = set()
    for row in rows:
        if row.snapshotter == name:
            keys.add(row.backend_key)
            if row.intent_key:
                keys.add(row.intent_key)
    return keys


def check_rows(target: Target) -> list[Finding]:
    """meta.db rows whose backend snapshot is missing, and commits a crash interrupted."""
    rows = _rows(target)
    if rows is None:
        return []
    local = set(local_snapshotters(target))
    backends: dict[str, set[str]] = {}
    for name in local | set(BUILTIN):
        records = _backend(target, name) if name in local else []
        if records is not None:
            backends[name] = {r.key for r in records}
    found: list[Finding] = []
    for row in rows:
        keys = backends.get(row.snapshotter)
        if keys is None:
            continue
        what = f"{row.namespace}/{row.snapshotter}/{row.key}"
        details: dict[str, str | int] = {
            "namespace": row.namespace,
            "snapshotter": row.snapshotter,
            "key": row.key,
        }
        if row.intent_key:
            state = "done" if row.intent_key in keys else "not done"
            problem = f"interrupted commit (the snapshotter's part is {state})"
            action = "settle it as ctrpyd's start-up does"
            found.append(Finding("snapshots", what, problem, action, "settle-commit", details))
            continue
        if row.backend_key in keys:
            continue
        problem = f"no snapshot {row.backend_key} in the {row.snapshotter} snapshotter"
        children = [
            r
            for r in rows
            if (r.namespace, r.snapshotter, r.parent) == (row.namespace, row.snapshotter, row.key)
        ]
        if children:
            found.append(
                Finding("snapshots", what, problem + "; other snapshots are built on it", details=details)
            )
        else:
            found.append(Finding("snapshots", what, problem, "drop the row", "drop-snapshot-row", details))
    return found


def check_unreferenced(target: Target) -> list[Finding]:
    """Snapshots of a snapshotter that no namespace's row references (garbage a crash left)."""
    rows = _rows(target)
    found: list[Finding] = []
    for name in local_snapshotters(target):
        records = _backend(target, name)
        if not records:
            continue
        if rows is None:  # without meta.db every snapshot would look unused: touch none
            problem = f"meta.db has no snapshot table: cannot tell which of {name}'s snapshots are used"
            found.append(Finding("snapshots", str(target.meta_db), problem))
            continue
        referenced = _referenced(rows, name)
        for record in reversed(records):  # children before their parents
            if record.key in referenced:
                continue
            found.append(
                Finding(
                    "snapshots",
                    f"{name}:{record.key}",
                    "snapshot no namespace references",
                    "remove it from the snapshotter",
                    "remove-backend-snapshot",
                    {"snapshotter": name, "key": record.key, "why": "unreferenced"},
                )
            )
    return found


def _with_tables(target: Target, snapshotter: str) -> tuple[Database, SnapshotTables]:
    db = Database(target.meta_db)
    return db, SnapshotTables(db, snapshotter)


def repair_drop_row(target: Target, finding: Finding) -> str:
    """Delete the row (refused while rows are built on it) after checking the backend still
    lacks its snapshot."""
    namespace, name, key = (str(finding.details[k]) for k in ("namespace", "snapshotter", "key"))
    row = next(
        (r for r in _rows(target) or [] if (r.namespace, r.snapshotter, r.key) == (namespace, name, key)),
        None,
    )
    if row is None:
        return "already gone"
    if row.backend_key in {r.key for r in _backend(target, name) or []}:
        raise FailedPrecondition(f"snapshot {row.backend_key} of {name} exists now")
    db, tables = _with_tables(target, name)
    try:
        db.call(tables.delete, namespace, key, None)
    finally:
        db.close()
    return "row dropped"


def repair_settle_commit(target: Target, finding: Finding) -> str:
    """Finish the commit when the snapshotter committed, else drop the intent (what ctrpyd
    does at start-up, ``SnapshotStore.recover``)."""
    namespace, name, key = (str(finding.details[k]) for k in ("namespace", "snapshotter", "key"))
    row = next(
        (r for r in _rows(target) or [] if (r.namespace, r.snapshotter, r.key) == (namespace, name, key)),
        None,
    )
    if row is None or not row.intent_key:
        return "already settled"
    committed = row.intent_key in {r.key for r in _backend(target, name) or []}
    db, tables = _with_tables(target, name)
    try:
        if committed:
            db.call(tables.finish_commit, namespace, key, None)
        else:
            db.call(tables.abandon_commit, namespace, key)
    finally:
        db.close()
    return "commit finished" if committed else "commit abandoned"


CHECKS: list[tuple[str, Check]] = [
    ("snapshot-rows", check_rows),
    ("snapshot-unreferenced", check_unreferenced),
    ("snapshot-records", check_records),
    ("snapshot-directories", check_directories),
]

REPAIRS: dict[str, Repair] = {
    "remove-snapshot-dir": repair_remove_directory,
    "remove-backend-snapshot": repair_remove_backend_snapshot,
    "drop-snapshot-row": repair_drop_row,
    "settle-commit": repair_settle_commit,
}
