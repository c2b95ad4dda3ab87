"""Helpers for the layer tests: building exact tar layers, and describing trees to compare."""

from __future__ import annotations

import gzip
import hashlib
import io
import os
import stat
import tarfile
from dataclasses import dataclass, field
from pathlib import Path

from ctrpy.manager.diff import AppliedLayer, apply_layer

OCI_TAR = "application/vnd.oci.image.layer.v1.tar"
OCI_GZIP = "application/vnd.oci.image.layer.v1.tar+gzip"
T0 = 1_600_000_000  # a whole-second mtime used throughout


@dataclass
class Layer:
    """A tar layer built entry by entry, exactly as given (names are not cleaned up)."""

    members: list[tuple[tarfile.TarInfo, bytes]] = field(default_factory=list)

    def _add(
        self,
        name: str,
        kind: bytes,
        *,
        data: bytes = b"",
        mode: int = 0o644,
        uid: int = 0,
        gid: int = 0,
        mtime: int = T0,
        linkname: str = "",
        xattrs: dict[str, bytes] | None = None,
        dev: tuple[int, int] = (0, 0),
    ) -> Layer:
        info = tarfile.TarInfo(name)
        info.type = kind
        info.mode = mode
        info.uid, info.gid = uid, gid
        info.uname = info.gname = ""
        info.mtime = mtime
        info.linkname = linkname
        info.size = len(data) if kind == tarfile.REGTYPE else 0
        info.devmajor, info.devminor = dev
        if xattrs:
            info.pax_headers = {
                "SCHILY.xattr." + k: v.decode("utf-8", "surrogateescape") for k, v in xattrs.items()
            }
        self.members.append((info, data))
        return self

    def file(self, name: str, data: bytes = b"", **kw: object) -> Layer:
        return self._add(name, tarfile.REGTYPE, data=data, **kw)  # type: ignore[arg-type]

    def dir(self, name: str, mode: int = 0o755, **kw: object) -> Layer:
        return self._add(name, tarfile.DIRTYPE, mode=mode, **kw)  # type: ignore[arg-type]

    def symlink(self, name: str, target: str, **kw: object) -> Layer:
        return self._add(name, tarfile.SYMTYPE, linkname=target, mode=0o777, **kw)  # type: ignore[arg-type]

    def hardlink(self, name: str, target: str, **kw: object) -> Layer:
        return self._add(name, tarfile.LNKTYPE, linkname=target, **kw)  # type: ignore[arg-type]

    def chardev(self, name: str, major: int, minor: int, **kw: object) -> Layer:
        return self._add(name, tarfile.CHRTYPE, dev=(major, minor), **kw)  # type: ignore[arg-type]

    def blockdev(self, name: str, major: int, minor: int, **kw: object) -> Layer:
        return self._add(name, tarfile.BLKTYPE, dev=(major, minor), **kw)  # type: ignore[arg-type]

    def fifo(self, name: str, **kw: object) -> Layer:
        return self._add(name, tarfile.FIFOTYPE, **kw)  # type: ignore[arg-type]

    def whiteout(self, name: str) -> Layer:
        parent, base = os.path.split(name)
        return self._add(os.path.join(parent, ".wh." + base), tarfile.REGTYPE, mode=0)

    def opaque(self, directory: str) -> Layer:
        return self._add(os.path.join(directory, ".wh..wh..opq"), tarfile.REGTYPE, mode=0)

    def tar(self) -> bytes:
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w", format=tarfile.PAX_FORMAT) as tf:
            for info, data in self.members:
                tf.addfile(info, io.BytesIO(data) if info.type == tarfile.REGTYPE else None)
        return buf.getvalue()

    def gzip(self) -> bytes:
        return gzip.compress(self.tar(), mtime=0)


def apply_bytes(blob: bytes, root: Path, media_type: str = OCI_TAR, **kw: object) -> AppliedLayer:
    """Apply a layer held in memory (tests only) onto ``root``."""
    return apply_layer(io.BytesIO(blob), media_type, root, **kw)  # type: ignore[arg-type]


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _user_xattrs(path: str) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError:
        return {}
    return {
        n: os.getxattr(path, n, follow_symlinks=False)
        for n in sorted(names)
        if n.startswith(("user.", "trusted.")) or n == "security.capability"
    }


def describe(root: Path, *, mtimes: bool = True, dir_mtimes: bool = True) -> dict[str, tuple[object, ...]]:
    """Everything a layer can say about the tree under ``root``, by relative path.

    Each path maps to (type, mode, uid, gid, content-or-target-or-rdev, xattrs, mtime); a
    final ``"<links>"`` key lists groups of paths that share an inode.
    """
    out: dict[str, tuple[object, ...]] = {}
    inodes: dict[tuple[int, int], list[str]] = {}
    base = str(root)
    for dirpath, dirnames, filenames in os.walk(base):
        dirnames.sort()
        for name in sorted(dirnames + filenames):
            full = os.path.join(dirpath, name)
            rel = os.path.relpath(full, base)
            st = os.lstat(full)
            kind = stat.S_IFMT(st.st_mode)
            if stat.S_ISREG(kind):
                with open(full, "rb") as f:
                    what: object = hashlib.sha256(f.read()).hexdigest()
            elif stat.S_ISLNK(kind):
                what = os.readlink(full)
            elif stat.S_ISCHR(kind) or stat.S_ISBLK(kind):
                what = (os.major(st.st_rdev), os.minor(st.st_rdev))
            else:
                what = None
            is_dir = stat.S_ISDIR(kind)
            mtime = st.st_mtime_ns if mtimes and (dir_mtimes or not is_dir) else None
            out[rel] = (kind, stat.S_IMODE(st.st_mode), st.st_uid, st.st_gid, what,
                        _user_xattrs(full), mtime)
            if not is_dir and st.st_nlink > 1:
                inodes.setdefault((st.st_dev, st.st_ino), []).append(rel)
    out["<links>"] = tuple(sorted(tuple(sorted(v)) for v in inodes.values() if len(v) > 1))
    return out


def set_times(root: Path, seconds: int = T0) -> None:
    """Give every path under ``root`` (and ``root``) the same whole-second times, bottom up."""
    for dirpath, dirnames, filenames in os.walk(root, topdown=False):
        for name in dirnames + filenames:
            os.utime(os.path.join(dirpath, name), (seconds, seconds), follow_symlinks=False)
    os.utime(root, (seconds, seconds))


@dataclass
class Sentinel:
    """A directory beside the target holding a secret file; nothing may change it."""

    tmp_path: Path
    outside: Path
    secret: Path
    before: dict[str, tuple[object, ...]]
    siblings: set[str]
    before_meta: tuple[int, ...] = ()

    @staticmethod
    def meta(path: Path) -> tuple[int, ...]:
        st = os.lstat(path)
        return (st.st_mode, st.st_uid, st.st_gid, st.st_mtime_ns, len(os.listxattr(path)))

    def check(self) -> None:
        assert describe(self.outside) == self.before, "the outside directory changed"
        assert self.meta(self.outside) == self.before_meta, "the outside directory's metadata changed"
        assert self.secret.read_bytes() == b"secret\n"
        assert os.lstat(self.secret).st_nlink == 1, "the secret got a hard link"
        assert {p.name for p in self.tmp_path.iterdir()} == self.siblings, "tmp_path changed"
