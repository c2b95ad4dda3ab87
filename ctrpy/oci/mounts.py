"""The one mount a spec must not have: a bind of a proc filesystem over the container's ``/proc``.

runc accepts any procfs as the source of a mount at ``/proc`` (its ``checkProcMount`` asks
only whether the source *is* a proc filesystem), so a spec binding the host's ``/proc`` there
hands the container the host's processes and sysctls. :func:`check_mounts` refuses it.

runc does not take a destination literally: it resolves it inside the rootfs, at the moment
of mounting, the way ``filepath-securejoin`` does (:func:`resolve`): component by component,
symbolic links followed but with absolute targets taken from the rootfs, ``..`` never going
above the rootfs, at most 255 links. So an image with ``/myproc -> /proc``, ``/d -> /``
(``/d/proc``) or ``/x/y -> ../../proc`` turns an innocent-looking bind at ``/myproc`` into a
bind over ``/proc``. The check therefore resolves each destination the same way, inside the
mounted rootfs, and with what the spec's earlier mounts put there (a bind's source takes the
place of the directory it covers); a destination that would pass through a proc filesystem's
links to other processes' roots (``/proc/self/root/...``) cannot be judged and is refused.

The daemon checks destinations literally when a task is created (no rootfs yet); the shim
checks them again, resolved, once it has mounted the rootfs and before ``runc create``.
"""

from __future__ import annotations

import os
import posixpath
from collections.abc import Callable, Sequence
from typing import Any

from ctrpy.errors import InvalidArgument

__all__ = ["MAX_SYMLINKS", "TooManyLinks", "Unresolvable", "check_mounts", "resolve", "rootfs_readlink"]

#: How many symbolic links one resolution may follow (filepath-securejoin's bound).
MAX_SYMLINKS = 255

PROC = "/proc"

#: Reads the symbolic link at a container path: its target, or None if it is not a link.
Readlink = Callable[[str], str | None]


class TooManyLinks(InvalidArgument):
    """Resolving a path followed more than :data:`MAX_SYMLINKS` symbolic links (a loop)."""


class Unresolvable(InvalidArgument):
    """A path whose resolution depends on what only exists once the container runs."""


def resolve(path: str, readlink: Readlink, max_links: int = MAX_SYMLINKS) -> str:
    """``path`` resolved inside a root whose symbolic links ``readlink`` reads; returns the
    absolute, clean path inside that root that it names.

    As filepath-securejoin: components are taken left to right from ``/``; ``.`` and empty ones
    are skipped; ``..`` goes to the parent of what is resolved so far (``/`` stays ``/``); a
    symbolic link's target replaces it, an absolute one starting again from ``/``. The last
    component is followed too. ``readlink`` is called with clean absolute paths only. Raises
    TooManyLinks past ``max_links`` links.
    """
    pending = [part for part in reversed(path.split("/")) if part]
    current = "/"
    links = 0
    while pending:
        part = pending.pop()
        if part == ".":
            continue
        if part == "..":
            current = posixpath.dirname(current)
            continue
        candidate = posixpath.join(current, part)
        target = readlink(candidate)
        if target is None:
            current = candidate
            continue
        links += 1
        if links > max_links:
            raise TooManyLinks(f"{path!r}: more than {max_links} symbolic links")
        if target.startswith("/"):
            current = "/"
        pending.extend(part for part in reversed(target.split("/")) if part)
    return current


def _is_bind(mount: dict[str, Any]) -> bool:
    options = mount.get("options") or []
    return mount.get("type") == "bind" or any(o in ("bind", "rbind") for o in options if isinstance(o, str))


def _lexical(path: str) -> str | None:
    return None


def rootfs_readlink(rootfs: str, earlier: Sequence[tuple[str, dict[str, Any]]]) -> Readlink:
    """A :data:`Readlink` for the container whose root filesystem is mounted at ``rootfs``, with
    the ``earlier`` mounts (resolved destination, spec entry), in spec order, on top of it.

    A path under a bind mount is read in the bind's source; under any other mount (a fresh
    tmpfs, proc, sysfs...) it is taken as it is, except the entries of a proc filesystem that
    lead to other processes' roots, which raise Unresolvable.
    """

    def readlink(path: str) -> str | None:
        for destination, mount in reversed(earlier):  # the last mount on a path hides the rest
            if path != destination and not path.startswith(destination.rstrip("/") + "/"):
                continue
            rest = path[len(destination) :].lstrip("/")
            if not rest:
                return None  # a mount point is the root of what is mounted there
            if _is_bind(mount):
                source = mount.get("source")
                if not isinstance(source, str) or not source.startswith("/"):
                    return None
                return _host_readlink(posixpath.join(source, rest))
            if mount.get("type") == "proc":
                first = rest.split("/", 1)[0]
                if first in ("self", "thread-self") or first.isdigit():
                    raise Unresolvable(f"{path!r} goes through a process's entry in /proc")
            return None
        return _host_readlink(os.path.join(rootfs, path.lstrip("/")))

    return readlink


def _host_readlink(host_path: str) -> str | None:
    try:
        return os.readlink(host_path)
    except OSError:  # not a link (EINVAL), or not there (ENOENT): taken as it is
        return None


def check_mounts(container_id: str, mounts: object, rootfs: str | None = None) -> None:
    """Refuse a spec's ``mounts`` that would put anything but a new proc filesystem on
    ``/proc``; InvalidArgument, naming the container and the mount.

    Without ``rootfs`` the destinations are judged as written (``//proc/.`` is ``/proc``); with
    it, resolved inside that mounted root filesystem as runc will (see the module docstring).
    Also InvalidArgument when ``mounts`` is not a list of objects, a destination resolves
    through too many links, or through a process's entry in a proc filesystem.
    """
    if mounts is None:
        return
    if not isinstance(mounts, list) or not all(isinstance(m, dict) for m in mounts):
        raise InvalidArgument(f'container "{container_id}": spec mounts must be a list of objects')
    earlier: list[tuple[str, dict[str, Any]]] = []
    readlink = rootfs_readlink(rootfs, earlier) if rootfs is not None else _lexical
    for m in mounts:
        destination = m.get("destination")
        if not isinstance(destination, str):
            continue
        try:
            resolved = resolve(destination, readlink)
        except InvalidArgument as exc:
            raise type(exc)(f'container "{container_id}": mount destination {exc.message}') from None
        earlier.append((resolved, m))
        if resolved != PROC:
            continue
        if m.get("type") != "proc" or _is_bind(m):
            literal = resolve(destination, _lexical) == PROC
            through = "" if literal else f" (resolved through symbolic links from {destination!r})"
            raise InvalidArgument(
                f'container "{container_id}": /proc must be a new proc filesystem, '
                f'not a {m.get("type") or "bind"} mount of {m.get("source")!r}{through}'
            )
