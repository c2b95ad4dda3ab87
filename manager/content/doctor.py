"""Finding and removing what crashes and abandoned clients leave in a content store.

:func:`find_leftovers` only looks (for ``ctrpy doctor``); :func:`cleanup` removes. Neither
touches an ingest that a writer of this process holds, nor a temporary directory this process
is still filling. Both assume no other process writes to the same content root.
"""

from __future__ import annotations

import os
import shutil
import time
from datetime import timedelta
from pathlib import Path
from typing import TYPE_CHECKING

from ctrpy.errors import NotFound, Unavailable

from . import digests, ingest
from .locks import TABLE
from .model import Leftover, ns_to_datetime

if TYPE_CHECKING:
    from .store import ContentStore

#: An ingest untouched for this long counts as abandoned in :func:`find_leftovers`.
DEFAULT_STALE_AFTER = timedelta(days=1)


def find_leftovers(
    store: ContentStore, stale_after: timedelta = DEFAULT_STALE_AFTER, verify: bool = False
) -> list[Leftover]:
    """Report temporary directories and files, damaged ingests, ingests not updated within
    ``stale_after``, and stray entries under ``blobs/``. With ``verify``, also re-hash every blob
    and report those whose content no longer matches the digest (reads all content)."""
    found: list[Leftover] = []
    cutoff = time.time_ns() - _ns(stale_after)
    for entry in sorted(os.scandir(store.ingest_root), key=lambda entry: entry.name):
        path = Path(entry.path)
        if ingest.is_temp(entry.name):
            if not ingest.is_inflight(path):
                found.append(Leftover("temp", str(path), "interrupted ingest create or remove"))
            continue
        if TABLE.is_held(store.ingest_lock_key(entry.name)):
            continue  # a writer is open on it right now
        try:
            state = ingest.load(path)
        except ingest.Broken as why:
            found.append(Leftover("broken-ingest", str(path), str(why)))
            continue
        found.extend(
            Leftover("temp", str(tmp), "interrupted metadata update", state.ref)
            for tmp in _meta_temps(path)
        )
        if state.updated_ns < cutoff:
            total = state.total or "?"
            when = ns_to_datetime(state.updated_ns).isoformat()
            detail = f"{state.offset} of {total} bytes, last updated {when}"
            found.append(Leftover("stale-ingest", str(path), detail, state.ref))
    found.extend(Leftover("stray", str(path), why) for path, why in store.blobs.strays())
    if verify:
        found.extend(_corrupt_blobs(store))
    return found


def cleanup(store: ContentStore, older_than: timedelta | None = None) -> list[Leftover]:
    """Remove ingests last updated more than ``older_than`` ago (every ingest when None) that no
    writer holds, every damaged ingest, and temporary leftovers (when None, or when older than
    ``older_than``). Returns what was removed, with ``stale-ingest`` for whole ingests."""
    removed: list[Leftover] = []
    cutoff = None if older_than is None else time.time_ns() - _ns(older_than)
    for entry in sorted(os.scandir(store.ingest_root), key=lambda entry: entry.name):
        path = Path(entry.path)
        if ingest.is_temp(entry.name):
            if ingest.is_inflight(path):
                continue
            if cutoff is not None and entry.stat(follow_symlinks=False).st_mtime_ns > cutoff:
                continue
            _remove_any(path)
            removed.append(Leftover("temp", str(path), "interrupted ingest create or remove"))
            continue
        key = store.ingest_lock_key(entry.name)
        try:
            TABLE.acquire(key, entry.name, 0)  # hold it so no writer opens it while we decide
        except Unavailable:
            continue
        try:
            removed.extend(_clean_ingest(path, cutoff))
        finally:
            TABLE.release(key)
    return removed


def _clean_ingest(path: Path, cutoff: int | None) -> list[Leftover]:
    try:
        state = ingest.load(path)
    except ingest.Broken as why:
        _remove_ingest(path)
        return [Leftover("broken-ingest", str(path), str(why))]
    if cutoff is None or state.updated_ns < cutoff:
        _remove_ingest(path)
        return [Leftover("stale-ingest", str(path), f"{state.offset} bytes", state.ref)]
    removed = []
    for tmp in _meta_temps(path):
        tmp.unlink(missing_ok=True)
        removed.append(Leftover("temp", str(tmp), "interrupted metadata update", state.ref))
    return removed


def _meta_temps(path: Path) -> list[Path]:
    try:
        return sorted(path.glob("*" + ingest.META_TEMP_SUFFIX))
    except OSError:
        return []


def _remove_ingest(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        try:
            ingest.remove(path)
        except FileNotFoundError:
            pass
    else:
        path.unlink(missing_ok=True)


def _remove_any(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        path.unlink(missing_ok=True)


def _corrupt_blobs(store: ContentStore) -> list[Leftover]:
    corrupt = []
    for info in store.walk():
        algorithm = digests.split(info.digest)[0]
        hasher = digests.new_hasher(algorithm)
        path = store.blobs.path_for(info.digest)
        try:
            with store.reader(info.digest) as stream:
                digests.feed(hasher, stream)
        except NotFound:  # deleted meanwhile
            continue
        except OSError as error:
            corrupt.append(Leftover("corrupt-blob", str(path), f"unreadable: {error}"))
            continue
        actual = digests.of(hasher, algorithm)
        if actual != info.digest:
            corrupt.append(Leftover("corrupt-blob", str(path), f"content hashes to {actual}"))
    return corrupt


def _ns(delta: timedelta) -> int:
    return (delta.days * 86_400 + delta.seconds) * 1_000_000_000 + delta.microseconds * 1000
