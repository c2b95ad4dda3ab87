"""What a crash leaves outside the stores' own recovery, cleaned before ctrpyd serves.

ctrpyd may die anywhere (DESIGN.md, "After a crash"). Each store settles its own state when it
opens (sqlite's journal, :meth:`SnapshotStore.recover`, :meth:`TaskManager.recover` for task
bundles and shims); this module handles the rest, which no store owns at start-up:

- ``<root>/tmpmounts/*``: the temporary mount points of Diff.Apply and Diff.Diff. Whatever is
  mounted there is unmounted (detached, deepest first) and the directories removed.
- ``<root>/content/ingest``: temporary directories of interrupted ingest creates and removes
  (``.tmp-*``, ``.trash-*``), half-replaced metadata files (``*.tmp``) and ingests too damaged to
  resume are removed. Resumable ingests stay, as in containerd: a client that was writing one
  resumes it by its ref; ``ctr content active`` lists them and the garbage collector or
  ``ctrpy doctor`` removes the stale ones. Their number is logged.

Nothing here runs while ctrpyd serves: only at start-up, under the root's lock, so no
operation of this process can be in flight in these directories.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass
from pathlib import Path

import structlog

from ctrpy import mount as mounts

from .content import ContentStore, ingest

log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class Cleaned:
    """One thing removed at start-up: its ``kind`` (``tmpmount``, ``ingest-temp``,
    ``broken-ingest``), its path, and why it was there."""

    kind: str
    path: str
    detail: str


def remove_tmpmount(path: Path) -> str:
    """Unmount one entry of the tmpmounts directory and remove it; say what was done.

    A directory that still holds files once unmounted is not a mount point of ours: it stays,
    and OSError says why. ``ctrpy doctor --fix`` uses this too.
    """
    if not os.path.lexists(path):
        return "already gone"
    if not (path.is_dir() and not path.is_symlink()):
        path.unlink()
        return "removed"
    was_mounted = bool(mounts.mountpoints_under(path))
    mounts.unmount_recursive(path, detach=True)
    if mounts.mountpoints_under(path):
        raise OSError(f"{path} is still mounted")
    try:
        os.rmdir(path)
    except OSError as exc:
        raise OSError(f"{path} is not an empty mount point: {exc.strerror}") from None
    return "unmounted and removed" if was_mounted else "removed"


def clean_tmpmounts(tmp_root: Path) -> list[Cleaned]:
    """Unmount and remove every entry of ``tmp_root``; entries that will not go are logged."""
    cleaned: list[Cleaned] = []
    try:
        entries = sorted(os.scandir(tmp_root), key=lambda e: e.name)
    except FileNotFoundError:
        return cleaned
    for entry in entries:
        path = Path(entry.path)
        try:
            detail = remove_tmpmount(path)
        except OSError as exc:
            log.error("temporary mount point left in place", path=str(path), error=str(exc))
            continue
        cleaned.append(Cleaned("tmpmount", str(path), detail))
    return cleaned


def clean_ingests(store: ContentStore) -> list[Cleaned]:
    """Remove the ingest leftovers of a crash (see the module docstring); keep resumable ingests."""
    cleaned: list[Cleaned] = []
    resumable = 0
    for entry in sorted(os.scandir(store.ingest_root), key=lambda e: e.name):
        path = Path(entry.path)
        if ingest.is_temp(entry.name):
            _remove(path)
            cleaned.append(Cleaned("ingest-temp", str(path), "interrupted ingest create or remove"))
            continue
        try:
            ingest.load(path)
        except ingest.Broken as why:
            _remove(path)
            cleaned.append(Cleaned("broken-ingest", str(path), str(why)))
            continue
        for temp in sorted(path.glob("*" + ingest.META_TEMP_SUFFIX)):
            temp.unlink(missing_ok=True)
            cleaned.append(Cleaned("ingest-temp", str(temp), "interrupted metadata update"))
        resumable += 1
    if resumable:
        log.info("resumable ingests kept from before the restart", count=resumable)
    return cleaned


def clean(store: ContentStore, tmp_root: Path) -> list[Cleaned]:
    """Everything this module cleans, logged one line per item; call it before serving."""
    cleaned = clean_tmpmounts(tmp_root) + clean_ingests(store)
    for item in cleaned:
        log.warning("cleaned after a crash", kind=item.kind, path=item.path, detail=item.detail)
    return cleaned


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)
