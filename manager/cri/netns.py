"""Pinned network namespaces: one per pod, a file under the state directory.

A pod's network namespace must outlive every process in it (the pause process may die and be
restarted, ctrpyd may restart) and must be nameable by path, because CNI plugins and runc take
it as ``CNI_NETNS`` and as the ``network`` namespace path of the OCI spec. So, as containerd
does, ctrpyd *pins* it: it creates an empty file ``<state>/netns/cni-<uuid>`` and bind-mounts a
new namespace's ``/proc/<pid>/task/<tid>/ns/net`` onto it. The bind mount holds a reference to
the namespace; unmounting it (and removing the file) lets the kernel free the namespace once no
process is left in it, taking its veth ends and addresses with it.

Why a dedicated thread: ``unshare(CLONE_NEWNET)`` moves only the calling OS thread into the new
namespace. ctrpyd runs an asyncio loop, gRPC's thread pool and executor threads; any of them
left in the wrong namespace would open sockets there. So the unshare happens on a new
``threading.Thread`` made for this one call, which pins the namespace and then ends: the OS
thread, and its namespace membership, go with it (CPython does not reuse threads). containerd
does the same with a locked OS thread that it never unlocks. Forking a helper would also work,
but fork in a threaded process is the riskier tool.

Crash consistency: the file is created before the namespace is pinned and removed after it is
unpinned, so a crash at any step leaves at most a file under ``<state>/netns`` (pinned or not),
which :func:`list_leftovers` finds for start-up reconcile and ``ctrpy doctor``; :func:`remove`
handles both kinds. Bringing ``lo`` up inside the namespace is the CNI loopback plugin's job.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import fcntl
import os
import threading
import uuid
from collections.abc import Collection
from dataclasses import dataclass

from ctrpy.errors import CtrpyError, InvalidArgument
from ctrpy.mount import Mount, mount, unmount_all

__all__ = [
    "NETNS_DIR",
    "PREFIX",
    "Leftover",
    "create",
    "exists",
    "is_pinned",
    "list_all",
    "list_leftovers",
    "netns_dir",
    "pin_from_pid",
    "remove",
]

NETNS_DIR = "netns"
PREFIX = "cni-"

_CLONE_NEWNET = 0x40000000
# ioctl(2) on a namespace file: which kind of namespace it is (<linux/nsfs.h>).
_NS_GET_NSTYPE = 0xB703

_libc = ctypes.CDLL(None, use_errno=True)
_libc.unshare.argtypes = [ctypes.c_int]
_libc.unshare.restype = ctypes.c_int


def netns_dir(state_dir: str | os.PathLike[str]) -> str:
    """The directory under ``state_dir`` that holds the pinned namespaces."""
    return os.path.join(os.fspath(state_dir), NETNS_DIR)


def _nsfs_dev() -> int:
    # Every namespace file lives on the one internal nsfs superblock, so its device number
    # tells a pinned namespace from the empty file under it.
    return os.stat("/proc/self/ns/net").st_dev


def _pin_on_new_thread(path: str) -> None:
    """Unshare a new network namespace on a throw-away thread and bind it onto ``path``."""
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            if _libc.unshare(_CLONE_NEWNET) != 0:
                err = ctypes.get_errno()
                raise OSError(err, f"unshare(CLONE_NEWNET): {os.strerror(err)}")
            source = f"/proc/{os.getpid()}/task/{threading.get_native_id()}/ns/net"
            mount(Mount("none", source, options=("bind",)), path)
        except BaseException as exc:  # handed over to the caller's thread
            outcome.append(exc)
        else:
            outcome.append(None)

    worker = threading.Thread(target=run, name="ctrpy-netns", daemon=True)
    worker.start()
    worker.join()
    if not outcome:
        raise CtrpyError(f"netns thread for {path!r} ended without a result")
    if outcome[0] is not None:
        raise outcome[0]


def new_path(state_dir: str | os.PathLike[str]) -> str:
    """A fresh path for :func:`create`: callers that record the path before the namespace
    exists (one record write instead of two) take it here."""
    return os.path.join(netns_dir(state_dir), f"{PREFIX}{uuid.uuid4()}")


def create(state_dir: str | os.PathLike[str], path: str | None = None) -> str:
    """Create and pin a new network namespace under ``state_dir`` (at ``path``, from
    :func:`new_path`, when given); return its path.

    Blocking but short (one thread start and two system calls); call it through
    ``asyncio.to_thread`` from the event loop. Raises :class:`CtrpyError` when the kernel
    refuses (no CAP_SYS_ADMIN, no network namespace support); nothing is left behind then.
    """
    directory = netns_dir(state_dir)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    if path is None:
        path = new_path(state_dir)
    elif os.path.dirname(path) != directory or not os.path.basename(path).startswith(PREFIX):
        raise InvalidArgument(f"{path!r} is not a network namespace path under {directory}")
    # O_EXCL: a name collision must not silently reuse someone else's namespace.
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    try:
        _pin_on_new_thread(path)
    except BaseException as exc:
        try:
            os.unlink(path)
        except OSError:
            pass
        if isinstance(exc, OSError):
            raise CtrpyError(f"create network namespace {path}: {exc.strerror or exc}") from exc
        raise
    return path


def pin_from_pid(state_dir: str | os.PathLike[str], pid: int) -> str:
    """Pin the network namespace process ``pid`` is in under ``state_dir``; return its path.

    For a pod with a user namespace: runc makes its network namespace (a namespace owned by the
    pod's user namespace, which the pause process needs to mount its own /sys and set net.*
    sysctls), and ctrpyd pins it from the created pause process, as containerd's
    ``NewNetNSFromPID``. Same file naming, crash behaviour and removal as :func:`create`.
    """
    directory = netns_dir(state_dir)
    os.makedirs(directory, mode=0o755, exist_ok=True)
    path = os.path.join(directory, f"{PREFIX}{uuid.uuid4()}")
    fd = os.open(path, os.O_RDONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o444)
    os.close(fd)
    try:
        mount(Mount("none", f"/proc/{pid}/ns/net", options=("bind",)), path)
    except OSError as exc:
        with contextlib.suppress(OSError):
            os.unlink(path)
        raise CtrpyError(f"pin network namespace of pid {pid} at {path}: {exc.strerror or exc}") from exc
    return path


def exists(path: str | os.PathLike[str]) -> bool:
    """Whether the namespace file is there at all (pinned or not)."""
    return os.path.lexists(os.fspath(path))


def is_pinned(path: str | os.PathLike[str]) -> bool:
    """Whether ``path`` is a live network namespace (a bind-mounted nsfs file of type net).

    False for a missing path, for a plain file (a pin that never happened, or the mount was
    lost with a reboot of a persistent state directory) and for other namespace kinds.
    """
    p = os.fspath(path)
    try:
        if os.stat(p).st_dev != _nsfs_dev():
            return False
        fd = os.open(p, os.O_RDONLY | os.O_CLOEXEC)
    except OSError:
        return False
    try:
        return fcntl.ioctl(fd, _NS_GET_NSTYPE) == _CLONE_NEWNET
    except OSError:
        return False
    finally:
        os.close(fd)


def remove(path: str | os.PathLike[str]) -> None:
    """Unpin (lazy unmount) and delete a namespace file. Idempotent: a missing path is fine.

    The namespace itself lives on while a process is still in it; it is freed by the kernel
    when the last one leaves. Only paths named like ours are accepted, so a caller with a bad
    record cannot unmount something else.
    """
    p = os.fspath(path)
    if not os.path.basename(p).startswith(PREFIX):
        raise InvalidArgument(f"{p!r} is not a pinned network namespace path")
    try:
        unmount_all(p, detach=True)
    except OSError as exc:
        raise CtrpyError(f"unmount network namespace {p}: {exc.strerror or exc}") from exc
    try:
        os.unlink(p)
    except FileNotFoundError:
        pass
    except OSError as exc:
        if exc.errno != errno.ENOENT:
            raise CtrpyError(f"remove network namespace {p}: {exc.strerror or exc}") from exc


@dataclass(frozen=True)
class Leftover:
    """A namespace file no record claims: ``pinned`` says whether it still holds a namespace."""

    path: str
    pinned: bool


def list_all(state_dir: str | os.PathLike[str]) -> list[str]:
    """Paths of every namespace file under ``state_dir`` (pinned or not), sorted."""
    directory = netns_dir(state_dir)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    return sorted(os.path.join(directory, n) for n in names if n.startswith(PREFIX))


def list_leftovers(state_dir: str | os.PathLike[str], in_use: Collection[str] = ()) -> list[Leftover]:
    """Namespace files under ``state_dir`` that are not in ``in_use`` (the paths that sandbox
    records name): what start-up reconcile and ``ctrpy doctor`` remove with :func:`remove`.

    A file appears between :func:`create`'s first step and the record that names it, so call
    this only when no sandbox is being created (at start-up, or under the pod lock).
    """
    claimed = {os.path.normpath(p) for p in in_use}
    return [Leftover(p, is_pinned(p)) for p in list_all(state_dir) if os.path.normpath(p) not in claimed]
