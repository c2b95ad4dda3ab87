"""Mount descriptions, and the code that performs them on this host.

A :class:`Mount` is what a snapshotter returns and what travels on the wire as
``containerd.types.Mount``: a filesystem type, a source and fstab-style options. Whoever holds
one (the shim for a task's rootfs, a client for ``images mount``, a test) performs it with
:func:`mount_all` and undoes it with :func:`unmount_all`.

Options are split the way mount(8) and containerd do it: known words (``ro``, ``rbind``,
``nosuid``, ``private``...) become mount(2) flags, everything else is passed to the filesystem
as its data string. Two details follow containerd's mount package, so that mounts a
containerd client can perform are performable here too and the other way round:

- a read-only bind mount is a bind followed by a read-only remount (the kernel ignores
  ``MS_RDONLY`` on the first call);
- the data string of mount(2) is limited to one page. When an overlay's options come near
  that limit, the ``lowerdir=`` paths are rewritten relative to their common parent directory
  and the mount is made from a thread that has its own working directory there
  (``unshare(CLONE_FS)`` then ``chdir``), which leaves the rest of the process untouched.
"""

from __future__ import annotations

import ctypes
import errno
import os
import threading
import time
from collections.abc import Iterable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from ctrpy.errors import InvalidArgument

__all__ = [
    "Mount",
    "mount",
    "mount_all",
    "mounted",
    "mountpoints_under",
    "parse_options",
    "unmount",
    "unmount_all",
    "unmount_recursive",
]

# mount(2) flags, from <linux/mount.h>.
MS_RDONLY = 0x1
MS_NOSUID = 0x2
MS_NODEV = 0x4
MS_NOEXEC = 0x8
MS_SYNCHRONOUS = 0x10
MS_REMOUNT = 0x20
MS_MANDLOCK = 0x40
MS_DIRSYNC = 0x80
MS_NOATIME = 0x400
MS_NODIRATIME = 0x800
MS_BIND = 0x1000
MS_REC = 0x4000
MS_UNBINDABLE = 0x20000
MS_PRIVATE = 0x40000
MS_SLAVE = 0x80000
MS_SHARED = 0x100000
MS_RELATIME = 0x200000
MS_STRICTATIME = 0x1000000

MNT_DETACH = 0x2
_CLONE_FS = 0x200

_PROPAGATION = MS_SHARED | MS_PRIVATE | MS_SLAVE | MS_UNBINDABLE

# option -> (clears the flag?, flag)
_FLAG_OPTIONS: dict[str, tuple[bool, int]] = {
    "async": (True, MS_SYNCHRONOUS),
    "atime": (True, MS_NOATIME),
    "bind": (False, MS_BIND),
    "defaults": (False, 0),
    "dev": (True, MS_NODEV),
    "diratime": (True, MS_NODIRATIME),
    "dirsync": (False, MS_DIRSYNC),
    "exec": (True, MS_NOEXEC),
    "mand": (False, MS_MANDLOCK),
    "noatime": (False, MS_NOATIME),
    "nodev": (False, MS_NODEV),
    "nodiratime": (False, MS_NODIRATIME),
    "noexec": (False, MS_NOEXEC),
    "nomand": (True, MS_MANDLOCK),
    "norelatime": (True, MS_RELATIME),
    "nostrictatime": (True, MS_STRICTATIME),
    "nosuid": (False, MS_NOSUID),
    "rbind": (False, MS_BIND | MS_REC),
    "relatime": (False, MS_RELATIME),
    "remount": (False, MS_REMOUNT),
    "ro": (False, MS_RDONLY),
    "rw": (True, MS_RDONLY),
    "strictatime": (False, MS_STRICTATIME),
    "suid": (True, MS_NOSUID),
    "sync": (False, MS_SYNCHRONOUS),
}

_PROPAGATION_OPTIONS: dict[str, int] = {
    "private": MS_PRIVATE,
    "rprivate": MS_PRIVATE | MS_REC,
    "shared": MS_SHARED,
    "rshared": MS_SHARED | MS_REC,
    "slave": MS_SLAVE,
    "rslave": MS_SLAVE | MS_REC,
    "unbindable": MS_UNBINDABLE,
    "runbindable": MS_UNBINDABLE | MS_REC,
}

PAGE_SIZE = os.sysconf("SC_PAGE_SIZE")
# Compact overlay options a little before the hard limit, as containerd does.
_COMPACT_AT = PAGE_SIZE - 512

_libc = ctypes.CDLL(None, use_errno=True)
_libc.mount.argtypes = [
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_char_p,
    ctypes.c_ulong,
    ctypes.c_char_p,
]
_libc.mount.restype = ctypes.c_int
_libc.umount2.argtypes = [ctypes.c_char_p, ctypes.c_int]
_libc.umount2.restype = ctypes.c_int
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int


@dataclass(frozen=True)
class Mount:
    """One mount to perform: ``mount -t <type> -o <options> <source> <root>/<target>``.

    ``target`` is a path relative to the directory given to :func:`mount_all` (empty: that
    directory itself). ``options`` may be given as any sequence; it is stored as a tuple.
    """

    type: str
    source: str
    target: str = ""
    options: tuple[str, ...] = field(default_factory=tuple)

    def __post_init__(self) -> None:
        if not isinstance(self.options, tuple):
            object.__setattr__(self, "options", tuple(self.options))


@dataclass(frozen=True)
class ParsedOptions:
    """Options split for mount(2): flags, propagation flags, and the filesystem data."""

    flags: int
    propagation: int
    data: tuple[str, ...]


def parse_options(options: Iterable[str]) -> ParsedOptions:
    """Split fstab-style options into mount(2) flags, propagation flags and data words."""
    flags = 0
    propagation = 0
    data: list[str] = []
    for option in options:
        if option in _FLAG_OPTIONS:
            clear, flag = _FLAG_OPTIONS[option]
            flags = flags & ~flag if clear else flags | flag
        elif option in _PROPAGATION_OPTIONS:
            propagation |= _PROPAGATION_OPTIONS[option]
        else:
            data.append(option)
    return ParsedOptions(flags, propagation, tuple(data))


def _os_error(err: int, what: str) -> OSError:
    return OSError(err, f"{what}: {os.strerror(err)}")


def _sys_mount(source: str, target: str, fstype: str, flags: int, data: str) -> None:
    ret = _libc.mount(
        source.encode() if source else None,
        target.encode(),
        fstype.encode() if fstype else None,
        flags,
        data.encode() if data else None,
    )
    if ret != 0:
        err = ctypes.get_errno()
        raise _os_error(err, f"mount {fstype or '(remount)'} {source!r} on {target!r}")


def _mount_in(chdir: str, source: str, target: str, fstype: str, flags: int, data: str) -> None:
    """mount(2) from a thread whose working directory is ``chdir``.

    The thread unshares its filesystem attributes first, so the chdir is its own; the thread
    then ends, and its private working directory with it.
    """
    outcome: list[OSError | None] = []

    def run() -> None:
        try:
            if _libc.unshare(_CLONE_FS) != 0:
                raise _os_error(ctypes.get_errno(), "unshare(CLONE_FS)")
            os.chdir(chdir)
            _sys_mount(source, target, fstype, flags, data)
        except OSError as exc:  # handed over to the caller's thread
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, name="ctrpy-mount")
    worker.start()
    worker.join()
    if not outcome:
        raise RuntimeError(f"mount thread for {target!r} died unexpectedly")
    if outcome[0] is not None:
        raise outcome[0]


def _compact_lowerdirs(data: Sequence[str]) -> tuple[str, tuple[str, ...]]:
    """Rewrite ``lowerdir=`` relative to the lowerdirs' common parent directory.

    Returns the directory to mount from (empty when nothing could be compacted) and the new
    data words. Snapshot directories are named by number, so the common string prefix of
    ``.../snapshots/12/fs`` and ``.../snapshots/13/fs`` may end inside a name; going up one
    directory from it gives ``.../snapshots``.
    """
    index = next((i for i, word in enumerate(data) if word.startswith("lowerdir=")), -1)
    if index < 0:
        return "", tuple(data)
    dirs = data[index][len("lowerdir=") :].split(":")
    if len(dirs) < 2:
        return "", tuple(data)
    common = os.path.dirname(os.path.commonprefix(dirs))
    if common in ("", "/", "."):
        return "", tuple(data)
    prefix = common.rstrip("/") + "/"
    if any(len(d) <= len(prefix) or not d.startswith(prefix) for d in dirs):
        return "", tuple(data)
    relative = ":".join(d[len(prefix) :] for d in dirs)
    words = [w for i, w in enumerate(data) if i != index]
    words.append(f"lowerdir={relative}")
    return common, tuple(words)


def mount(m: Mount, target: str) -> None:
    """Perform ``m`` on the directory ``target`` (``m.target`` is not consulted here).

    Raises :class:`OSError` with the errno of the failing mount(2) call. A read-only bind
    that fails at its remount step is unmounted again before the error is raised.
    """
    parsed = parse_options(m.options)
    data = parsed.data
    chdir = ""
    if m.type == "overlay" and sum(len(w) for w in data) >= _COMPACT_AT:
        chdir, data = _compact_lowerdirs(data)
    text = ",".join(data)
    if len(text.encode()) > PAGE_SIZE:
        raise OSError(errno.E2BIG, f"mount options for {target!r} are longer than a page")
    flags = parsed.flags
    if not flags & MS_REMOUNT or text:
        if chdir:
            _mount_in(chdir, m.source, target, m.type, flags, text)
        else:
            _sys_mount(m.source, target, m.type, flags, text)
    try:
        if parsed.propagation:
            _sys_mount("", target, "", parsed.propagation, "")
        if flags & (MS_BIND | MS_RDONLY) == MS_BIND | MS_RDONLY and not flags & MS_REMOUNT:
            _sys_mount("", target, "", flags | MS_REMOUNT, "")
    except OSError:
        if not flags & MS_REMOUNT:
            unmount(target, detach=True)
        raise


def _inside(path: str, root: str) -> bool:
    return path == root or path.startswith(root.rstrip("/") + "/")


def _target_of(m: Mount, root: str) -> str:
    """Where ``m`` goes below ``root``. A target is client input: one that leads outside the
    root, by ``..`` or through a symlink already there, raises InvalidArgument."""
    if not m.target:
        return root
    if "\0" in m.target:
        raise InvalidArgument(f"mount target {m.target!r} contains NUL")
    root = os.path.normpath(root)
    where = os.path.normpath(os.path.join(root, m.target.lstrip("/")))
    if not _inside(where, root) or not _inside(os.path.realpath(where), os.path.realpath(root)):
        raise InvalidArgument(f"mount target {m.target!r} leads outside {root}")
    return where


def mount_all(mounts: Iterable[Mount], target: str | os.PathLike[str]) -> None:
    """Perform each mount in order on ``target`` (or on ``target/<m.target>``).

    All or nothing: when one fails, those already made are unmounted and the error raised.
    """
    root = os.fspath(target)
    done: list[str] = []
    try:
        for m in mounts:
            where = _target_of(m, root)
            mount(m, where)
            done.append(where)
    except BaseException:
        for where in reversed(done):
            try:
                unmount(where, detach=True)
            except OSError:
                pass
        raise


def unmount(target: str | os.PathLike[str], *, detach: bool = False) -> None:
    """Unmount the topmost mount on ``target``; retry briefly while it is busy.

    Raises :class:`OSError` (``EINVAL`` when ``target`` is not a mount point).
    """
    path = os.fspath(target)
    flags = MNT_DETACH if detach else 0
    for attempt in range(50):
        if _libc.umount2(path.encode(), flags) == 0:
            return
        err = ctypes.get_errno()
        if err != errno.EBUSY or attempt == 49:
            raise _os_error(err, f"unmount {path!r}")
        time.sleep(0.05)


def unmount_all(target: str | os.PathLike[str], *, detach: bool = False) -> None:
    """Unmount every mount stacked on ``target`` until it is a plain directory again.

    A target that is not a mount point, or does not exist, is fine.
    """
    while True:
        try:
            unmount(target, detach=detach)
        except OSError as exc:
            if exc.errno in (errno.EINVAL, errno.ENOENT):
                return
            raise


def _unescape(field_text: str) -> str:
    # mountinfo escapes space, tab, newline and backslash as \ooo octal.
    out: list[str] = []
    i = 0
    while i < len(field_text):
        if field_text[i] == "\\" and i + 3 < len(field_text) and field_text[i + 1 : i + 4].isdigit():
            out.append(chr(int(field_text[i + 1 : i + 4], 8)))
            i += 4
        else:
            out.append(field_text[i])
            i += 1
    return "".join(out)


def mountpoints_under(path: str | os.PathLike[str]) -> list[str]:
    """Mount points at or below ``path`` in this mount namespace, deepest first."""
    base = os.path.realpath(os.fspath(path))
    found: list[str] = []
    with open("/proc/self/mountinfo", encoding="utf-8", errors="surrogateescape") as f:
        for line in f:
            fields = line.split(" ")
            if len(fields) < 5:
                continue
            point = _unescape(fields[4])
            if point == base or point.startswith(base.rstrip("/") + "/"):
                found.append(point)
    found.sort(key=lambda p: p.count("/"), reverse=True)
    return found


def unmount_recursive(path: str | os.PathLike[str], *, detach: bool = True) -> None:
    """Unmount everything mounted at or below ``path``, deepest first."""
    for point in mountpoints_under(path):
        unmount_all(point, detach=detach)


@contextmanager
def mounted(mounts: Sequence[Mount], target: str | os.PathLike[str]) -> Iterator[str]:
    """Mount ``mounts`` on ``target`` for the length of a ``with`` block, then unmount them."""
    root = os.fspath(target)
    mount_all(mounts, root)
    try:
        yield root
    finally:
        for m in reversed(mounts):
            unmount_all(_target_of(m, root))
