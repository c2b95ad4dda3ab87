"""Unpacking one layer (an OCI changeset tar) onto a directory, as a stream.

:func:`apply_layer` reads the blob once, front to back: the bytes go through the decompressor,
then the hash (the diff id covers every uncompressed byte, padding included), then Python's
``tarfile`` in stream mode. No layer is held in memory; file data is copied in chunks.

The target is either a full directory tree (a native snapshot: a copy of the parent), where a
whiteout deletes and an opaque directory is emptied of what lower layers put there, or an
overlay upper directory (``overlay_upper=True``), where a whiteout becomes a 0/0 character
device and an opaque directory gets ``trusted.overlay.opaque=y``, as overlayfs expects and as
containerd's overlay fast path writes them.

Every entry lands inside the target, whatever the layer says; see :mod:`.rootpath`. The
order of operations on each entry follows containerd's ``archive.Apply``: remove what is in
the way (a directory merges with a directory), create, chown, set extended attributes, chmod
(after chown, which clears set-id bits), set times; directory times last, once their contents
are written.
"""

from __future__ import annotations

import errno
import os
import shutil
import stat
import tarfile
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any, BinaryIO, cast

import structlog

from ctrpy import diskspace
from ctrpy.errors import InvalidArgument

from .. import failpoints
from .compression import LayerStream, LayerTooLarge
from .limits import NO_LIMITS, Limits
from .rootpath import UnsafeEntry, clean_name, resolve, split_parent
from .xattrs import PAX_PREFIX, applicable, read_applicable

__all__ = ["NO_LIMITS", "AppliedLayer", "CorruptLayer", "Limits", "apply_layer"]

log = structlog.get_logger(__name__)

WHITEOUT_PREFIX = ".wh."
WHITEOUT_META_PREFIX = ".wh..wh."
OPAQUE_MARKER = ".wh..wh..opq"
OVERLAY_OPAQUE_XATTR = "trusted.overlay.opaque"

_CHUNK = 1 << 20  # file data is copied in pieces of this size
_READ_SIZE = 1 << 18  # what tarfile asks of the decompressor at a time
_MAX_ID = 2**32 - 2  # (uid_t)-1 means "leave unchanged" to chown(2)
_MAX_DEV = 2**32 - 1
_NS_MIN, _NS_MAX = -(2**63), 2**63 - 1


@dataclass(frozen=True)
class AppliedLayer:
    """What was applied: the diff id (``sha256:`` of the uncompressed tar) and its size."""

    digest: str
    size: int


class CorruptLayer(InvalidArgument):
    """The layer is not a well-formed tar archive (bad header, truncated data, bad type)."""


# tarfile's header errors, which its type stubs do not list.
_EMPTY_HEADER: type[Exception] = vars(tarfile)["EmptyHeaderError"]
_EOF_HEADER: type[Exception] = vars(tarfile)["EOFHeaderError"]
_BAD_HEADER: tuple[type[Exception], ...] = (
    vars(tarfile)["InvalidHeaderError"],
    vars(tarfile)["TruncatedHeaderError"],
)


class _StrictTarInfo(tarfile.TarInfo):
    """TarInfo that reports a broken header instead of ending the archive quietly.

    In stream mode, ``tarfile`` takes an unreadable header in the middle of an archive for its
    end. Go's reader (containerd's) calls it an error, and so do we. An empty stream is an
    empty layer, as in containerd.
    """

    @classmethod
    def fromtarfile(cls, tarfile_: tarfile.TarFile) -> _StrictTarInfo:
        try:
            return super().fromtarfile(tarfile_)
        except _EMPTY_HEADER:
            raise _EOF_HEADER("end of file header") from None
        except _BAD_HEADER as exc:
            raise CorruptLayer(f"invalid tar header: {exc}") from None


def _ns(text: str | None, fallback: float) -> int:
    """A PAX time record (``"1700000000.123456789"``) in nanoseconds, bounded to int64."""
    value = int(fallback) * 1_000_000_000
    if text:
        seconds, _, fraction = text.partition(".")
        try:
            negative = seconds.startswith("-")
            value = int(seconds) * 1_000_000_000
            frac = int((fraction + "000000000")[:9]) if fraction else 0
            value += -frac if negative else frac
        except ValueError:
            pass
    return min(max(value, _NS_MIN), _NS_MAX)


def _times(member: tarfile.TarInfo) -> tuple[int, int]:
    """(atime, mtime) in nanoseconds; atime is never earlier than mtime (as in containerd)."""
    mtime = _ns(member.pax_headers.get("mtime"), member.mtime)
    atime = _ns(member.pax_headers.get("atime"), member.mtime)
    return max(atime, mtime), mtime


def _write_all(fd: int, data: bytes, offset: int) -> None:
    view = memoryview(data)
    while view:
        n = os.pwrite(fd, view, offset)
        view = view[n:]
        offset += n


def _remove(path: str) -> None:
    """Remove ``path`` whatever it is, without following a symlink; a missing path is fine."""
    try:
        st = os.lstat(path)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        shutil.rmtree(path)  # fd-based; never follows symlinks inside the tree
    else:
        os.unlink(path)


class _Applier:
    """The state of one layer being applied: the root, what it unpacked, deferred dir times."""

    def __init__(self, root: str, overlay_upper: bool, parents: Sequence[str]) -> None:
        self.root = root
        self.overlay_upper = overlay_upper
        self.parents = list(parents)
        self.kept: set[str] = set()  # unpacked paths and their ancestors (opaque dirs keep them)
        self.dirs: list[tuple[str, int, int]] = []  # (name, atime, mtime) set at the end

    # -- one entry --------------------------------------------------------------------------

    def apply(self, tf: tarfile.TarFile, member: tarfile.TarInfo) -> None:
        name = clean_name(member.name)
        if name == ".":
            log.debug("layer entry for the root ignored", entry=member.name)
            return
        parent_name, base = split_parent(name)
        parent = resolve(self.root, parent_name)
        path = os.path.join(parent, base)
        if parent != self.root:
            self._mkparent(parent, name)

        if base.startswith(WHITEOUT_PREFIX):
            self._whiteout(name, parent, base, member)
            return

        if member.isdir():
            try:
                if not stat.S_ISDIR(os.lstat(path).st_mode):
                    _remove(path)
            except FileNotFoundError:
                pass
        else:
            _remove(path)

        self._create(tf, member, name, path)
        if member.isdir():
            self.dirs.append((name, *_times(member)))
        if not self.overlay_upper:
            self._keep(path)

    def _keep(self, path: str) -> None:
        while path != self.root and path not in self.kept:
            self.kept.add(path)
            path = os.path.dirname(path)

    def _mkparent(self, parent: str, name: str) -> None:
        """Create the missing directories of ``parent`` (a resolved path under the root)."""
        missing: list[str] = []
        path = parent
        while path != self.root:
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                missing.append(path)
                path = os.path.dirname(path)
                continue
            except NotADirectoryError:
                raise CorruptLayer(f"tar entry {name!r}: a parent is not a directory") from None
            if not stat.S_ISDIR(st.st_mode):
                rel = os.path.relpath(path, self.root)
                raise CorruptLayer(f"tar entry {name!r}: parent {rel!r} is not a directory")
            break
        for path in reversed(missing):
            os.mkdir(path, 0o755)
            os.chmod(path, 0o755)  # undo the umask
            self._copy_parent_info(path)

    def _copy_parent_info(self, path: str) -> None:
        """On an overlay upper, give a new directory the owner, mode, times and xattrs it has
        in the nearest lower layer, so that the merged view keeps them (containerd's
        ``mkparent`` with parents). Its mtime then moves as entries are added, as it would
        on a plain directory."""
        rel = os.path.relpath(path, self.root)
        for lower in self.parents:
            source = resolve(lower, rel)
            try:
                st = os.lstat(source)
            except (FileNotFoundError, NotADirectoryError):
                continue
            if not stat.S_ISDIR(st.st_mode):
                return  # replaced in that layer: defaults stay
            os.chown(path, st.st_uid, st.st_gid, follow_symlinks=False)
            os.chmod(path, stat.S_IMODE(st.st_mode))
            for key, value in read_applicable(source).items():
                os.setxattr(path, key, value, follow_symlinks=False)
            os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns), follow_symlinks=False)
            return

    # -- whiteouts --------------------------------------------------------------------------

    def _whiteout(self, name: str, parent: str, base: str, member: tarfile.TarInfo) -> None:
        if base == OPAQUE_MARKER:
            if self.overlay_upper:
                os.setxattr(parent, OVERLAY_OPAQUE_XATTR, b"y", follow_symlinks=False)
            else:
                self._empty_opaque(parent)
            return
        if base.startswith(WHITEOUT_META_PREFIX):
            log.debug("whiteout meta entry ignored", entry=member.name)
            return
        original = base[len(WHITEOUT_PREFIX) :]
        if original in ("", ".", ".."):
            raise UnsafeEntry(f"tar entry {name!r}: invalid whiteout name")
        path = os.path.join(parent, original)
        _remove(path)
        if self.overlay_upper:
            os.mknod(path, stat.S_IFCHR, os.makedev(0, 0))
            os.chown(path, *self._owner(name, member), follow_symlinks=False)

    def _empty_opaque(self, directory: str) -> None:
        """Remove from ``directory``, recursively, everything this layer did not unpack."""
        pending = [directory]
        while pending:
            current = pending.pop()
            with os.scandir(current) as entries:
                children = list(entries)
            for entry in children:
                if entry.path in self.kept:
                    if entry.is_dir(follow_symlinks=False):
                        pending.append(entry.path)
                else:
                    _remove(entry.path)

    # -- creating entries -------------------------------------------------------------------

    @staticmethod
    def _owner(name: str, member: tarfile.TarInfo) -> tuple[int, int]:
        if not (0 <= member.uid <= _MAX_ID and 0 <= member.gid <= _MAX_ID):
            raise CorruptLayer(f"tar entry {name!r}: owner {member.uid}:{member.gid} out of range")
        return member.uid, member.gid

    def _create(self, tf: tarfile.TarFile, member: tarfile.TarInfo, name: str, path: str) -> None:
        mode = stat.S_IMODE(member.mode)
        uid, gid = self._owner(name, member)
        if member.isreg():
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
            try:
                self._copy_data(tf, member, name, fd)
                os.chown(fd, uid, gid)
                self._set_xattrs(name, member, fd)
                os.chmod(fd, mode)
                os.utime(fd, ns=_times(member))
            finally:
                os.close(fd)
            return
        if member.isdir():
            if not os.path.lexists(path):
                os.mkdir(path, 0o700)
            fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
            try:
                os.chown(fd, uid, gid)
                self._set_xattrs(name, member, fd)
                os.chmod(fd, mode)
            finally:
                os.close(fd)
            return  # times are set at the end
        if member.issym():
            os.symlink(member.linkname, path)
        elif member.islnk():
            self._hardlink(member, name, path)
        elif member.ischr() or member.isblk() or member.isfifo():
            kind = stat.S_IFCHR if member.ischr() else stat.S_IFBLK if member.isblk() else stat.S_IFIFO
            if not (0 <= member.devmajor <= _MAX_DEV and 0 <= member.devminor <= _MAX_DEV):
                raise CorruptLayer(
                    f"tar entry {name!r}: device {member.devmajor}:{member.devminor} out of range"
                )
            os.mknod(path, kind | mode, os.makedev(member.devmajor, member.devminor))
        else:
            raise CorruptLayer(f"tar entry {name!r}: unsupported entry type {member.type!r}")
        os.chown(path, uid, gid, follow_symlinks=False)
        self._set_xattrs(name, member, path)
        if not stat.S_ISLNK(os.lstat(path).st_mode):  # Linux cannot chmod a symlink
            os.chmod(path, mode)
        os.utime(path, ns=_times(member), follow_symlinks=False)

    def _hardlink(self, member: tarfile.TarInfo, name: str, path: str) -> None:
        target_name = clean_name(member.linkname)
        if target_name == ".":
            raise UnsafeEntry(f"tar entry {name!r}: hard link to the root directory")
        target_parent, target_base = split_parent(target_name)
        target = os.path.join(resolve(self.root, target_parent), target_base)
        try:
            # follow_symlinks=False: a link to a symlink is a second name of the symlink,
            # never of whatever it points at.
            os.link(target, path, follow_symlinks=False)
        except FileNotFoundError:
            raise CorruptLayer(
                f"tar entry {name!r}: hard link target {member.linkname!r} not found"
            ) from None
        except PermissionError:
            raise CorruptLayer(
                f"tar entry {name!r}: cannot hard link to {member.linkname!r} (a directory?)"
            ) from None

    def _copy_data(self, tf: tarfile.TarFile, member: tarfile.TarInfo, name: str, fd: int) -> None:
        """Copy a regular entry's data; a sparse entry keeps its holes."""
        sparse = cast("list[tuple[int, int]] | None", member.sparse)
        regions = sparse or [(0, member.size)]
        source = tf.fileobj
        assert source is not None
        source.seek(member.offset_data)  # forward only: the stream is read once
        for offset, length in regions:
            if offset < 0 or length < 0 or offset + length > member.size:
                raise CorruptLayer(f"tar entry {name!r}: sparse map out of range")
            while length:
                chunk = source.read(min(length, _CHUNK))
                if not chunk:
                    raise CorruptLayer(f"tar entry {name!r}: unexpected end of data")
                _write_all(fd, chunk, offset)
                offset += len(chunk)
                length -= len(chunk)
        if sparse:
            os.ftruncate(fd, member.size)

    def _set_xattrs(self, name: str, member: tarfile.TarInfo, target: int | str) -> None:
        for key, value in member.pax_headers.items():
            if not key.startswith(PAX_PREFIX):
                continue
            attr = key[len(PAX_PREFIX) :]
            if not applicable(attr):
                log.warning("xattr from layer ignored", entry=name, xattr=attr)
                continue
            # tarfile decodes PAX values as UTF-8 with surrogateescape: this gives the bytes back.
            raw = value.encode("utf-8", "surrogateescape")
            try:
                if isinstance(target, int):
                    os.setxattr(target, attr, raw)
                else:
                    os.setxattr(target, attr, raw, follow_symlinks=False)
            except OSError as exc:
                if exc.errno == errno.ENOTSUP or (
                    exc.errno == errno.EPERM and attr.startswith("user.") and not member.isdir()
                    and not member.isreg()
                ):
                    # user.* exists only on files and directories; some file systems have none.
                    log.warning("xattr from layer not supported here", entry=name, xattr=attr)
                    continue
                raise CorruptLayer(
                    f"tar entry {name!r}: cannot set xattr {attr!r}: {exc.strerror}"
                ) from None

    # -- the end ----------------------------------------------------------------------------

    def finish(self) -> None:
        """Set the times of the layer's directories, now that their contents are written."""
        for name, atime, mtime in self.dirs:
            parent_name, base = split_parent(name)
            path = os.path.join(resolve(self.root, parent_name), base)
            try:
                st = os.lstat(path)
            except (FileNotFoundError, NotADirectoryError):
                continue  # removed by a later entry
            if stat.S_ISDIR(st.st_mode):
                os.utime(path, ns=(atime, mtime), follow_symlinks=False)


def apply_layer(
    stream: BinaryIO,
    media_type: str,
    target_dir: Path,
    *,
    overlay_upper: bool = False,
    parents: Sequence[Path] = (),
    limits: Limits = NO_LIMITS,
) -> AppliedLayer:
    """Unpack the layer blob read from ``stream`` onto ``target_dir``; return its diff id and size.

    ``media_type`` selects the decompression (see :mod:`.compression`). With ``overlay_upper``
    the target is an overlay upper directory: whiteouts become overlay whiteouts, and
    ``parents`` (the overlay's lower directories, topmost first) give new parent directories
    their metadata. The stream is read to its end. Synchronous: run it in a thread.

    Raises :class:`~ctrpy.errors.NotImplemented` for an unsupported media type,
    :class:`~ctrpy.manager.diff.rootpath.UnsafeEntry` for an entry that would escape the
    target, :class:`CorruptLayer` for a malformed archive, :class:`LayerTooLarge` past
    ``limits`` (all of them :class:`~ctrpy.errors.InvalidArgument`), and :class:`OSError` when
    the file system fails. What was unpacked before an error stays: apply into a fresh
    directory and discard it on failure.

    The exception is a full disk (ENOSPC, EDQUOT): it raises
    :class:`~ctrpy.errors.ResourceExhausted`, and a target that was empty when the layer began
    (an overlay upper directory, the usual case) is emptied again first, so the space comes back
    even before the client removes its snapshot. A target that held files (a native snapshot's
    copy of its parent) cannot be told apart from what the layer wrote, and is left to that
    removal.
    """
    root = os.path.realpath(target_dir)
    if not os.path.isdir(root):
        raise InvalidArgument(f"apply target {str(target_dir)!r} is not a directory")
    cleanup = None if os.listdir(root) else (lambda: _empty_directory(root))
    with diskspace.guard(f"applying a layer onto {root}", root, cleanup):
        return _apply(stream, media_type, root, overlay_upper, parents, limits)


def _empty_directory(root: str) -> None:
    for entry in os.listdir(root):
        _remove(os.path.join(root, entry))


def _apply(
    stream: BinaryIO,
    media_type: str,
    root: str,
    overlay_upper: bool,
    parents: Sequence[Path],
    limits: Limits,
) -> AppliedLayer:
    layer = LayerStream(stream, media_type, limits.max_uncompressed_bytes)
    applier = _Applier(root, overlay_upper, [os.path.realpath(p) for p in parents])
    entries = 0
    try:
        with tarfile.open(
            fileobj=cast(IO[bytes], layer),
            mode="r|",
            bufsize=_READ_SIZE,
            tarinfo=_StrictTarInfo,
            encoding="utf-8",
            errors="surrogateescape",
        ) as tf:
            while (member := tf.next()) is not None:
                cast(Any, tf).members.clear()  # stream mode still lists every member: keep memory flat
                entries += 1
                if limits.max_entries is not None and entries > limits.max_entries:
                    raise LayerTooLarge(f"layer exceeds {limits.max_entries} entries")
                applier.apply(tf, member)
                failpoints.hit(failpoints.DIFF_APPLY_MID_LAYER)
    except tarfile.TarError as exc:
        raise CorruptLayer(f"invalid tar archive: {exc}") from None
    applier.finish()
    layer.drain()
    return AppliedLayer(layer.digest, layer.size)
