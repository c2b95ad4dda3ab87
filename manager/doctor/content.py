"""Checks and repairs of the content store and of meta.db's references to it.

Ingest leftovers (stale or damaged ingests, temporary files) are found by the content store's
own :func:`ctrpy.manager.content.doctor.find_leftovers`. Referenced-but-missing content is
a ``content`` row of meta.db whose blob file is gone (fixed by dropping the row: the
namespace no longer claims a blob it cannot serve), or an image whose target blob is not
there or not in its namespace (only reported: the image's name may matter to someone, and
pulling or importing it again restores it).
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path

from ctrpy.errors import CtrpyError, FailedPrecondition
from ctrpy.manager.content import ContentStore, digests, ingest
from ctrpy.manager.content.doctor import find_leftovers
from ctrpy.manager.metadata.db import Database

from .model import Check, Finding, Repair, Target
from .sqlite import has_table, reading

__all__ = ["CHECKS", "REPAIRS"]

_PROBLEMS = {
    "temp": "temporary file or directory of an interrupted ingest",
    "broken-ingest": "damaged ingest",
    "stale-ingest": "stale ingest",
    "stray": "stray entry in the blob directory",
    "corrupt-blob": "blob content does not match its digest",
}


def _blob_path(target: Target, digest: str) -> Path | None:
    """Where blob ``digest`` lives, or None for a malformed digest."""
    try:
        algorithm, encoded = digests.split(digest)
    except CtrpyError:
        return None
    return target.root / "content" / "blobs" / algorithm / encoded


def check_ingests(target: Target) -> list[Finding]:
    """Ingests nobody has touched for ``stale_after``, damaged ingests, temporary leftovers,
    strays under ``blobs/`` (and, with ``verify``, blobs whose bytes do not match)."""
    if not (target.root / "content" / "ingest").is_dir():
        return []
    found: list[Finding] = []
    for leftover in find_leftovers(ContentStore(target.root), target.stale_after, target.verify):
        problem = _PROBLEMS.get(leftover.kind, leftover.kind)
        if leftover.detail:
            problem += f" ({leftover.detail})"
        if leftover.ref:
            problem += f", ref {leftover.ref!r}"
        in_ingest = leftover.kind in ("temp", "broken-ingest", "stale-ingest")
        found.append(
            Finding(
                "ingests" if in_ingest else "content",
                leftover.path,
                problem,
                "remove" if in_ingest else "",
                "remove-ingest" if in_ingest else "",
                {"path": leftover.path, "kind": leftover.kind},
            )
        )
    return found


def repair_remove_ingest(target: Target, finding: Finding) -> str:
    """Remove the ingest (renamed aside first, as the store does) or the temporary entry."""
    path = Path(str(finding.details["path"]))
    if not os.path.lexists(path):
        return "already gone"
    if finding.details["kind"] != "temp" and path.is_dir() and not path.is_symlink():
        ingest.remove(path)
    elif path.is_dir() and not path.is_symlink():
        shutil.rmtree(path)
    else:
        path.unlink()
    return "removed"


def check_content_rows(target: Target) -> list[Finding]:
    """meta.db content rows whose blob file is missing (or whose digest is malformed)."""
    found: list[Finding] = []
    with reading(target.meta_db) as conn:
        if conn is None or not has_table(conn, "content"):
            return found
        rows = conn.execute("SELECT namespace, digest FROM content ORDER BY namespace, digest").fetchall()
    for namespace, digest in rows:
        path = _blob_path(target, digest)
        if path is not None and path.is_file():
            continue
        problem = "malformed digest" if path is None else f"blob file is missing ({path})"
        found.append(
            Finding(
                "content",
                f"{namespace}/{digest}",
                problem,
                "drop the row",
                "drop-content-row",
                {"namespace": namespace, "digest": digest},
            )
        )
    return found


def repair_drop_content_row(target: Target, finding: Finding) -> str:
    """Delete the namespace's content row, once more checking that the blob is missing."""
    namespace, digest = str(finding.details["namespace"]), str(finding.details["digest"])
    path = _blob_path(target, digest)
    if path is not None and path.is_file():
        raise FailedPrecondition(f"blob {digest} exists now")
    db = Database(target.meta_db)

    def drop() -> int:
        with db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM content WHERE namespace = ? AND digest = ?", (namespace, digest)
            )
            return cursor.rowcount

    try:
        dropped = db.call(drop)
    finally:
        db.close()
    return "row dropped" if dropped else "already gone"


def check_images(target: Target) -> list[Finding]:
    """Images whose target blob is missing, or not held by the image's namespace."""
    found: list[Finding] = []
    with reading(target.meta_db) as conn:
        if conn is None or not has_table(conn, "images") or not has_table(conn, "content"):
            return found
        rows = conn.execute(
            "SELECT i.namespace, i.name, i.target_digest, c.digest IS NOT NULL FROM images i"
            " LEFT JOIN content c ON c.namespace = i.namespace AND c.digest = i.target_digest"
            " ORDER BY i.namespace, i.name"
        ).fetchall()
    for namespace, name, digest, held in rows:
        path = _blob_path(target, digest)
        if path is None:
            problem = f"target digest {digest!r} is malformed"
        elif not path.is_file():
            problem = f"target blob {digest} is missing"
        elif not held:
            problem = f"target blob {digest} is not in namespace {namespace}"
        else:
            continue
        found.append(Finding("images", f"{namespace}/{name}", problem + " (import or pull it again)"))
    return found


CHECKS: list[tuple[str, Check]] = [
    ("ingests", check_ingests),
    ("content-rows", check_content_rows),
    ("images", check_images),
]

REPAIRS: dict[str, Repair] = {
    "remove-ingest": repair_remove_ingest,
    "drop-content-row": repair_drop_content_row,
}
