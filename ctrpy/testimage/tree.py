"""What an unpacked image should look like, and what an unpacked directory does look like.

:func:`expected_tree` replays an image's layers the way an overlay-style unpacker must: a
whiteout ``.wh.<name>`` removes ``<name>`` and everything under it from the layers below; an
opaque marker ``.wh..wh..opq`` removes everything the layers below hold in its directory; an
entry replaces whatever was at its path, except that a directory over a directory only changes
the metadata; a hard link copies its target's node. :func:`scan_tree` reads a real directory
into the same shape, so the two compare with ``==``.
"""

from __future__ import annotations

import hashlib
import os
import posixpath
import stat
from dataclasses import dataclass

from ctrpy.testimage.model import (
    BLOCK,
    CHAR,
    DIR,
    FIFO,
    FILE,
    HARDLINK,
    OPAQUE_MARKER,
    SYMLINK,
    WHITEOUT_PREFIX,
    Entry,
    Image,
    RawLayer,
)


@dataclass(frozen=True)
class Node:
    """One path of a root filesystem.

    ``mode`` holds the permission bits with setuid, setgid and sticky (``stat.S_IMODE``).
    ``content`` is ``sha256:<hex>`` for a file, the target for a symlink, ``"major,minor"`` for
    a device and ``""`` otherwise. ``xattrs`` holds only ``user.*`` attributes, sorted.
    """

    kind: str
    mode: int
    uid: int
    gid: int
    content: str
    xattrs: tuple[tuple[str, bytes], ...] = ()


def _node(entry: Entry) -> Node:
    if entry.kind == FILE:
        content = entry.content_digest()
    elif entry.kind == SYMLINK:
        content = entry.target
    elif entry.kind in (CHAR, BLOCK):
        content = f"{entry.devmajor},{entry.devminor}"
    else:
        content = ""
    mode = 0o777 if entry.kind == SYMLINK else entry.mode
    xattrs = tuple(sorted(x for x in entry.xattrs if x[0].startswith("user.")))
    return Node(entry.kind, mode, entry.uid, entry.gid, content, xattrs)


def _remove(tree: dict[str, Node], path: str, keep: set[str] | None = None) -> None:
    """Drop ``path``'s subtree (``path`` itself too unless it is "keep"-listed)."""
    prefix = path.rstrip("/") + "/"
    for key in [k for k in tree if k == path or k.startswith(prefix)]:
        if keep is None or key not in keep:
            del tree[key]


def _ensure_parents(tree: dict[str, Node], parent: str, added: set[str]) -> None:
    """Create missing parent directories as an unpacker does: 0755, owned by root."""
    missing: list[str] = []
    while parent not in ("/", "") and parent not in tree:
        missing.append(parent)
        parent = posixpath.dirname(parent)
    for path in reversed(missing):
        tree[path] = Node(DIR, 0o755, 0, 0, "")
        added.add(path)


def expected_tree(image: Image) -> dict[str, Node]:
    """The root filesystem ``image`` unpacks to, as ``{absolute path: Node}`` without "/".

    Raises TypeError for a raw layer (its entries are unknown), ValueError for a hard link
    whose target does not exist.
    """
    tree: dict[str, Node] = {}
    for layer in image.layers:
        if isinstance(layer, RawLayer):
            raise TypeError("expected_tree cannot model a raw layer")
        added: set[str] = set()
        for entry in layer.entries:
            parent, base = posixpath.split(entry.path)
            _ensure_parents(tree, parent, added)
            if base == OPAQUE_MARKER:
                # Hides the lower layers' contents; this layer's own entries stay.
                _remove(tree, parent, keep=added | {parent})
                continue
            if base.startswith(WHITEOUT_PREFIX):
                _remove(tree, posixpath.join(parent, base[len(WHITEOUT_PREFIX):]))
                continue
            if entry.kind == HARDLINK:
                if entry.target not in tree:
                    raise ValueError(f"hard link {entry.path} -> {entry.target}: no target")
                node = tree[entry.target]
            else:
                node = _node(entry)
            existing = tree.get(entry.path)
            if not (existing is not None and existing.kind == DIR and node.kind == DIR):
                _remove(tree, entry.path)
            tree[entry.path] = node
            added.add(entry.path)
    return tree


def _user_xattrs(path: str) -> tuple[tuple[str, bytes], ...]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return ()
    return tuple(sorted((name, os.getxattr(path, name, follow_symlinks=False))
                        for name in names if name.startswith("user.")))


def _file_digest(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return "sha256:" + h.hexdigest()


def scan_node(path: str) -> Node:
    """Describe the real file at ``path`` (not following a final symlink) as a :class:`Node`.

    Raises OSError if it cannot be read.
    """
    st = os.lstat(path)
    mode = st.st_mode
    content = ""
    if stat.S_ISREG(mode):
        kind, content = FILE, _file_digest(path)
    elif stat.S_ISDIR(mode):
        kind = DIR
    elif stat.S_ISLNK(mode):
        kind, content = SYMLINK, os.readlink(path)
    elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
        kind = CHAR if stat.S_ISCHR(mode) else BLOCK
        content = f"{os.major(st.st_rdev)},{os.minor(st.st_rdev)}"
    elif stat.S_ISFIFO(mode):
        kind = FIFO
    else:
        kind = "other"
    return Node(kind, stat.S_IMODE(mode), st.st_uid, st.st_gid, content, _user_xattrs(path))


def scan_tree(root: str | os.PathLike[str]) -> dict[str, Node]:
    """Read the directory ``root`` into ``{absolute path: Node}`` (``root`` itself omitted),
    without following symlinks. Raises OSError if ``root`` cannot be read."""
    top = os.fspath(root)
    tree: dict[str, Node] = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            tree["/" + os.path.relpath(full, top)] = scan_node(full)
    return tree


def diff_trees(expected: dict[str, Node], actual: dict[str, Node]) -> list[str]:
    """Human-readable differences between two trees, one line each; empty when equal."""
    lines: list[str] = []
    for path in sorted(expected.keys() | actual.keys()):
        want, got = expected.get(path), actual.get(path)
        if want == got:
            continue
        if got is None:
            lines.append(f"missing  {path}: want {want}")
        elif want is None:
            lines.append(f"extra    {path}: got {got}")
        else:
            lines.append(f"differs  {path}: want {want}, got {got}")
    return lines
