"""The changes between two directory trees, in the order a layer must list them.

:func:`changes` walks a lower and an upper tree side by side, each in sorted order (children
sorted by their bytes, a directory's subtree right after the directory), the way continuity's
``fs.Changes`` (containerd's walking differ) does, and reports what a layer applied on the
lower tree needs to turn it into the upper one:

- ``ADD``: only in upper; ``DELETE``: only in lower (a deleted directory is reported once,
  its contents are implied; so are the contents of a directory replaced by a file);
- ``MODIFY``: in both, but different: type, mode, owner, device number, the extended
  attributes that diffs carry, or (for non-directories) size, mtime or content;
- ``UNMODIFIED``: in both and the same, reported only for files with several hard links,
  so that a link to them from a changed file can be written.

Files are compared as continuity compares them: when the mtimes agree to the second and both
have a zero nanosecond part (times truncated by an earlier tar round trip), the contents are
compared byte by byte; otherwise differing mtimes mean a change. Directories are compared by
metadata only: a directory whose contents changed shows up as the parent of its changes.
"""

from __future__ import annotations

import enum
import os
import stat
from collections.abc import Iterator
from dataclasses import dataclass

from .xattrs import read_carried

__all__ = ["Change", "Kind", "changes"]

_CHUNK = 1 << 16


class Kind(enum.Enum):
    """What happened to one path between lower and upper."""

    UNMODIFIED = 0
    ADD = 1
    MODIFY = 2
    DELETE = 3


@dataclass(frozen=True)
class Change:
    """One change: ``path`` is relative (``"etc/hosts"``); ``st`` is the upper file's lstat,
    ``None`` for a deletion."""

    kind: Kind
    path: str
    st: os.stat_result | None


@dataclass(frozen=True)
class _Entry:
    key: tuple[bytes, ...]  # the path's components as bytes: tuples sort as continuity does
    path: str  # relative path
    full: str  # host path
    st: os.stat_result


def _children(directory: str) -> list[tuple[str, os.stat_result]]:
    with os.scandir(directory) as it:
        found = [(e.name, e.stat(follow_symlinks=False)) for e in it]
    found.sort(key=lambda item: os.fsencode(item[0]))
    return found


def _walk(root: str) -> Iterator[_Entry]:
    """Every path under ``root`` (not ``root`` itself), depth first, children sorted."""
    stack: list[tuple[str, str, tuple[bytes, ...], Iterator[tuple[str, os.stat_result]]]] = [
        (root, "", (), iter(_children(root)))
    ]
    while stack:
        directory, rel, key, children = stack[-1]
        item = next(children, None)
        if item is None:
            stack.pop()
            continue
        name, st = item
        entry = _Entry(
            (*key, os.fsencode(name)),
            f"{rel}/{name}" if rel else name,
            os.path.join(directory, name),
            st,
        )
        yield entry
        if stat.S_ISDIR(st.st_mode):
            stack.append((entry.full, entry.path, entry.key, iter(_children(entry.full))))


def _same_content(a: str, b: str) -> bool:
    flags = os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC
    with open(os.open(a, flags), "rb") as fa, open(os.open(b, flags), "rb") as fb:
        while True:
            ca, cb = fa.read(_CHUNK), fb.read(_CHUNK)
            if ca != cb:
                return False
            if not ca:
                return True


def _same(lower: _Entry, upper: _Entry) -> bool:
    """Whether ``upper`` is unchanged from ``lower`` (continuity's ``sameFile``)."""
    a, b = lower.st, upper.st
    if (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino):
        return True
    if (a.st_mode, a.st_uid, a.st_gid, a.st_rdev) != (b.st_mode, b.st_uid, b.st_gid, b.st_rdev):
        return False
    if read_carried(lower.full) != read_carried(upper.full):
        return False
    if stat.S_ISDIR(a.st_mode):
        return True
    if a.st_size != b.st_size:
        return False
    sec_a, nsec_a = divmod(a.st_mtime_ns, 1_000_000_000)
    sec_b, nsec_b = divmod(b.st_mtime_ns, 1_000_000_000)
    if sec_a != sec_b:
        return False
    if nsec_a == 0 and nsec_b == 0:
        # Possibly truncated by a tar round trip: let the contents decide.
        if stat.S_ISLNK(a.st_mode):
            return os.readlink(lower.full) == os.readlink(upper.full)
        if a.st_size == 0 or not stat.S_ISREG(a.st_mode):
            return True
        return _same_content(lower.full, upper.full)
    return nsec_a == nsec_b


def _linked(st: os.stat_result) -> bool:
    return not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1


def changes(lower: str | None, upper: str) -> Iterator[Change]:
    """The changes from ``lower`` to ``upper`` (host directories), in apply order.

    ``lower=None`` stands for an empty tree: everything in ``upper`` is an addition.
    Raises :class:`OSError` when a tree cannot be read.
    """
    lower_walk = _walk(lower) if lower is not None else iter(())
    upper_walk = _walk(upper)
    a = next(lower_walk, None)
    b = next(upper_walk, None)
    removed: tuple[bytes, ...] | None = None  # a directory gone from upper: skip its contents
    while a is not None or b is not None:
        if b is None or (a is not None and a.key < b.key):
            assert a is not None
            if removed is not None and a.key[: len(removed)] == removed:
                a = next(lower_walk, None)
                continue
            if stat.S_ISDIR(a.st.st_mode):
                removed = a.key
            yield Change(Kind.DELETE, a.path, None)
            a = next(lower_walk, None)
        elif a is None or b.key < a.key:
            yield Change(Kind.ADD, b.path, b.st)
            b = next(upper_walk, None)
        else:
            if stat.S_ISDIR(a.st.st_mode) and not stat.S_ISDIR(b.st.st_mode):
                removed = a.key
            kind = Kind.MODIFY
            if _same(a, b):
                kind = Kind.UNMODIFIED
            current = b
            a = next(lower_walk, None)
            b = next(upper_walk, None)
            if kind is Kind.UNMODIFIED and not _linked(current.st):
                continue
            yield Change(kind, current.path, current.st)
