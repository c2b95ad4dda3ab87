"""Writing the changes between two trees as an OCI layer tar (containerd's ``WriteDiff``).

Each change from :func:`.changes.changes` becomes one tar entry, in the same sorted order:

- an addition or modification: the upper file's header (PAX format, numeric owner, no user or
  group names, mode with set-id and sticky bits, mtime truncated to the second, device
  numbers, the extended attributes that diffs carry as ``SCHILY.xattr.*``) and its data;
- a deletion: an empty ``.wh.<name>`` file next to it, with a zero mtime (containerd 2.0);
- the parent directories of every entry come first, once each, so that applying the layer
  recreates them with their metadata;
- files with several hard links: the first name written carries the data, later names are
  hard-link entries to it. An unchanged name of a changed inode is written as a link too, so
  the link survives.

Sockets are left out. The same trees give the same bytes.
"""

from __future__ import annotations

import copy
import os
import stat
import tarfile
from collections import defaultdict
from pathlib import Path
from typing import IO, BinaryIO, cast

from .changes import Change, Kind, changes
from .compression import Compression, DigestWriter
from .xattrs import PAX_PREFIX, read_carried

__all__ = ["write_diff"]

_WHITEOUT_PREFIX = ".wh."


class _ChangeWriter:
    def __init__(self, tf: tarfile.TarFile, upper: str) -> None:
        self.tf = tf
        self.upper = upper
        self.added_dirs: set[str] = set()
        self.inode_source: dict[tuple[int, int], str] = {}
        self.inode_refs: defaultdict[tuple[int, int], list[str]] = defaultdict(list)

    def handle(self, change: Change) -> None:
        if change.kind is Kind.DELETE:
            self._whiteout(change.path)
            return
        st = change.st
        assert st is not None
        if stat.S_ISSOCK(st.st_mode):
            return
        full = os.path.join(self.upper, change.path)
        info = self._header(change.path, full, st)

        extra_links: list[str] = []
        if not stat.S_ISDIR(st.st_mode) and st.st_nlink > 1:
            inode = (st.st_dev, st.st_ino)
            source = self.inode_source.get(inode)
            if source is not None:
                info.type = tarfile.LNKTYPE
                info.linkname = source
                info.size = 0
            elif change.kind is Kind.UNMODIFIED:
                self.inode_refs[inode].append(change.path)
                return
            else:
                self.inode_source[inode] = change.path
                extra_links = self.inode_refs.pop(inode, [])
        elif change.kind is Kind.UNMODIFIED:
            return

        self._include_parents(change.path, stat.S_ISDIR(st.st_mode))
        if info.type == tarfile.REGTYPE and info.size > 0:
            fd = os.open(full, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
            with open(fd, "rb") as data:
                self.tf.addfile(info, data)
        else:
            self.tf.addfile(info)

        for name in extra_links:
            link = copy.copy(info)
            link.name, link.type, link.linkname, link.size = name, tarfile.LNKTYPE, change.path, 0
            self._include_parents(name, False)
            self.tf.addfile(link)

    def _header(self, path: str, full: str, st: os.stat_result) -> tarfile.TarInfo:
        info = tarfile.TarInfo(path)
        info.mode = stat.S_IMODE(st.st_mode)
        info.uid, info.gid = st.st_uid, st.st_gid
        info.uname = info.gname = ""
        info.mtime = st.st_mtime_ns // 1_000_000_000
        mode = st.st_mode
        if stat.S_ISREG(mode):
            info.type, info.size = tarfile.REGTYPE, st.st_size
        elif stat.S_ISDIR(mode):
            info.type = tarfile.DIRTYPE  # tarfile adds the trailing "/" to the name
        elif stat.S_ISLNK(mode):
            info.type, info.linkname = tarfile.SYMTYPE, os.readlink(full)
        elif stat.S_ISCHR(mode) or stat.S_ISBLK(mode):
            info.type = tarfile.CHRTYPE if stat.S_ISCHR(mode) else tarfile.BLKTYPE
            info.devmajor, info.devminor = os.major(st.st_rdev), os.minor(st.st_rdev)
        elif stat.S_ISFIFO(mode):
            info.type = tarfile.FIFOTYPE
        else:
            raise OSError(f"{full!r}: cannot put this kind of file in a layer")
        info.pax_headers = {
            PAX_PREFIX + key: value.decode("utf-8", "surrogateescape")
            for key, value in read_carried(full).items()
        }
        return info

    def _whiteout(self, path: str) -> None:
        parent, base = os.path.split(path)
        info = tarfile.TarInfo(os.path.join(parent, _WHITEOUT_PREFIX + base))
        info.type, info.size, info.mtime, info.mode = tarfile.REGTYPE, 0, 0, 0
        info.uname = info.gname = ""
        self._include_parents(info.name, False)
        self.tf.addfile(info)

    def _include_parents(self, path: str, is_dir: bool) -> None:
        """Write the entry of ``path``'s parent directory first, unless written already."""
        parent = os.path.dirname(path)
        if parent and parent not in self.added_dirs:
            self.added_dirs.add(parent)
            st = os.lstat(os.path.join(self.upper, parent))
            self.handle(Change(Kind.MODIFY, parent, st))
        if is_dir:
            self.added_dirs.add(path)


def write_diff(
    lower_dir: Path | None,
    upper_dir: Path,
    out: BinaryIO,
    compression: Compression = None,
) -> tuple[str, int]:
    """Write the layer that turns ``lower_dir`` into ``upper_dir`` to ``out``.

    ``compression`` is ``"gzip"`` or ``None`` (plain tar); ``lower_dir=None`` means an empty
    lower tree. Returns the uncompressed tar's digest (``sha256:<hex>``, the diff id) and size.
    Raises :class:`~ctrpy.errors.NotImplemented` for another compression, :class:`OSError` when
    a tree cannot be read (``out`` then holds a partial stream: discard it).
    """
    writer = DigestWriter(out, compression)
    lower = os.path.realpath(lower_dir) if lower_dir is not None else None
    upper = os.path.realpath(upper_dir)
    with tarfile.open(
        fileobj=cast(IO[bytes], writer),
        mode="w|",
        format=tarfile.PAX_FORMAT,
        encoding="utf-8",
        errors="surrogateescape",
    ) as tf:
        cw = _ChangeWriter(tf, upper)
        for change in changes(lower, upper):
            cw.handle(change)
    writer.close()
    return writer.digest, writer.size
