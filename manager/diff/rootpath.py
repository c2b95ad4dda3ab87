"""Turning names from a layer into host paths that stay inside a root directory.

A layer names its entries as paths in the container's filesystem. Two rules keep every write
inside the root directory being built:

- :func:`clean_name` normalises an entry's name lexically: a leading ``/`` is dropped (the
  name is relative to the root, as in containerd) and a name whose ``..`` components climb
  above the root is refused.
- :func:`resolve` walks a name one component at a time and resolves every symlink it meets as
  if the root were ``/``: an absolute target starts again at the root, and ``..`` never climbs
  above it. This is what containerd's ``fs.RootPath`` does, so a layer's ``lib -> /usr/lib``
  followed by ``lib/x`` writes ``<root>/usr/lib/x``, and ``a -> /`` followed by ``a/x`` writes
  ``<root>/x``, never the host's ``/x``.

Each directory component of the returned path was checked with ``lstat`` to be no symlink, so
an operation that does not follow its last component (``O_NOFOLLOW``, ``lchown``...) stays
inside the root, as long as no one else changes the tree meanwhile.
"""

from __future__ import annotations

import os
import posixpath
import stat

from ctrpy.errors import InvalidArgument

__all__ = ["MAX_SYMLINKS", "UnsafeEntry", "clean_name", "resolve", "split_parent"]

MAX_SYMLINKS = 255  # containerd's bound on links walked while resolving one path


class UnsafeEntry(InvalidArgument):
    """A layer entry would land outside the target directory, or is otherwise hostile.

    Raised for names that climb out with ``..``, whiteouts of ``..``, hard links that point
    outside the layer's root, symlink loops, and similar. Nothing has been written outside
    the target when it is raised.
    """


def clean_name(name: str) -> str:
    """Normalise a layer entry's name into a relative path; ``"."`` stands for the root.

    A leading ``/`` is removed (absolute names are relative to the root). Raises
    :class:`UnsafeEntry` when ``..`` components climb above the root, or when the name holds a
    NUL byte.
    """
    if "\x00" in name:
        raise UnsafeEntry(f"tar entry {name!r}: name contains a NUL byte")
    stripped = name.lstrip("/")
    relative = posixpath.normpath(stripped) if stripped else "."
    if relative == ".." or relative.startswith("../"):
        raise UnsafeEntry(f"tar entry {name!r}: path climbs above the root")
    return relative


def split_parent(name: str) -> tuple[str, str]:
    """Split a cleaned name into its parent (``"."`` for the root) and its last component."""
    parent, base = posixpath.split(name)
    return parent or ".", base


def resolve(root: str, name: str) -> str:
    """The host path of ``name`` under ``root``, with every symlink resolved inside ``root``.

    ``root`` must be an absolute, symlink-free path. Every component of ``name``, the last one
    included, is followed when it is a symlink; components that do not exist yet are taken
    as plain names. Raises :class:`UnsafeEntry` after :data:`MAX_SYMLINKS` symlinks (a loop).
    """
    pending = [p for p in name.split("/") if p][::-1]  # a stack: the next component is last
    resolved: list[str] = []
    links = 0
    missing = False  # once a component is missing, nothing below it can be a symlink
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            missing = False
            continue
        candidate = os.path.join(root, *resolved, part)
        if missing:
            resolved.append(part)
            continue
        try:
            st = os.lstat(candidate)
        except (FileNotFoundError, NotADirectoryError):
            missing = True
            resolved.append(part)
            continue
        if not stat.S_ISLNK(st.st_mode):
            resolved.append(part)
            continue
        links += 1
        if links > MAX_SYMLINKS:
            raise UnsafeEntry(f"path {name!r}: too many levels of symbolic links")
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending.extend(p for p in reversed(target.split("/")) if p)
    return os.path.join(root, *resolved)
