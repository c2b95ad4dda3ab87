"""Users and groups of an image: ``/etc/passwd`` and ``/etc/group`` read from its root filesystem.

The image's ``User`` (``name``, ``uid``, ``name:group``, ``uid:gid``...) becomes the process's
uid, gid and additional gids the way containerd's ``WithUser`` and ``WithAdditionalGIDs`` do it:

- a numeric uid that is not in /etc/passwd (or no /etc/passwd at all) runs as that uid with gid 0;
- a user or group *name* must exist, or creating the container fails;
- the additional gids are those of the groups that list the user as a member (except a group of
  the user's own name), with the primary gid first when it is not among them.

Files are read from a root directory as if it were ``/``: symlinks inside the image are followed
but never lead outside it.
"""

from __future__ import annotations

import errno
import os
import stat
from collections.abc import Callable
from dataclasses import dataclass

from ctrpy.errors import InvalidArgument, NotFound

_MAX_LINKS = 255


@dataclass(frozen=True)
class User:
    """One line of /etc/passwd (the fields containerd uses)."""

    name: str
    uid: int
    gid: int


@dataclass(frozen=True)
class Group:
    """One line of /etc/group."""

    name: str
    gid: int
    members: tuple[str, ...]


@dataclass(frozen=True)
class Identity:
    """Who the process runs as."""

    uid: int
    gid: int
    additional_gids: tuple[int, ...]


def root_path(root: str, path: str) -> str:
    """The host path of ``path`` inside ``root``, following symlinks without leaving ``root``.

    ``..`` stops at the root and absolute link targets start again at the root, as if the
    process were chrooted. A missing component ends the walk (the rest is joined as given).
    Raises OSError(ELOOP) on too many links.
    """
    pending = [part for part in path.split("/") if part]
    resolved: list[str] = []
    links = 0
    while pending:
        part = pending.pop(0)
        if part == ".":
            continue
        if part == "..":
            if resolved:
                resolved.pop()
            continue
        candidate = os.path.join(root, *resolved, part)
        try:
            mode = os.lstat(candidate).st_mode
        except FileNotFoundError:
            return os.path.join(root, *resolved, part, *pending)
        if not stat.S_ISLNK(mode):
            resolved.append(part)
            continue
        links += 1
        if links > _MAX_LINKS:
            raise OSError(errno.ELOOP, os.strerror(errno.ELOOP), path)
        target = os.readlink(candidate)
        if target.startswith("/"):
            resolved = []
        pending[:0] = [p for p in target.split("/") if p]
    return os.path.join(root, *resolved)


def _atoi(text: str) -> int:
    # Like the Go parser containerd uses: a field that is not a number counts as 0.
    try:
        return int(text.strip())
    except ValueError:
        return 0


def _lines(root: str, path: str) -> list[list[str]]:
    """The non-empty lines of a file in the image, split on ':'; raises FileNotFoundError."""
    with open(root_path(root, path), encoding="utf-8", errors="surrogateescape") as f:
        return [line.strip().split(":") for line in f if line.strip()]


def parse_users(root: str) -> list[User]:
    """Every user in ``root``'s /etc/passwd; raises FileNotFoundError when there is none."""
    users = []
    for fields in _lines(root, "/etc/passwd"):
        fields += [""] * (7 - len(fields))
        users.append(User(fields[0], _atoi(fields[2]), _atoi(fields[3])))
    return users


def parse_groups(root: str) -> list[Group]:
    """Every group in ``root``'s /etc/group; raises FileNotFoundError when there is none."""
    groups = []
    for fields in _lines(root, "/etc/group"):
        fields += [""] * (4 - len(fields))
        members = tuple(m for m in fields[3].split(",") if m)
        groups.append(Group(fields[0], _atoi(fields[2]), members))
    return groups


def _find_user(root: str, match: Callable[[User], bool]) -> User | None:
    for user in parse_users(root):
        if match(user):
            return user
    return None


def _user_by_name(root: str, name: str) -> User:
    try:
        found = _find_user(root, lambda u: u.name == name)
    except FileNotFoundError:
        raise NotFound(f'user "{name}": the image has no /etc/passwd') from None
    if found is None:
        raise NotFound(f'user "{name}": no users found')
    return found


def _gid_by_name(root: str, name: str) -> int:
    try:
        groups = parse_groups(root)
    except FileNotFoundError:
        raise NotFound(f'group "{name}": the image has no /etc/group') from None
    for group in groups:
        if group.name == name:
            return group.gid
    raise NotFound(f'group "{name}": no groups found')


def _numeric(text: str) -> int | None:
    try:
        return int(text)
    except ValueError:
        return None


def resolve_user(root: str | None, user: str) -> tuple[int, int]:
    """The uid and gid for an image's ``User`` string (containerd's ``WithUser``).

    ``root`` is the mounted image root; it may be None only when ``user`` is ``uid:gid``.
    Raises NotFound for an unknown user or group name, InvalidArgument for a malformed value.
    """
    parts = user.split(":")
    if len(parts) > 2:
        raise InvalidArgument(f"invalid USER value {user}")
    if len(parts) == 2:
        uid, gid = _numeric(parts[0]), _numeric(parts[1])
        if uid is not None and gid is not None:
            return uid, gid
        if root is None:
            raise InvalidArgument(f"USER {user}: names need the image's root filesystem")
        if uid is None:
            uid = _user_by_name(root, parts[0]).uid
        if gid is None:
            gid = _gid_by_name(root, parts[1])
        return uid, gid
    if root is None:
        raise InvalidArgument(f"USER {user}: needs the image's root filesystem")
    uid = _numeric(user)
    if uid is None:
        found = _user_by_name(root, user)
        return found.uid, found.gid
    try:
        known = _find_user(root, lambda u: u.uid == uid)
    except FileNotFoundError:
        known = None
    return (uid, known.gid) if known is not None else (uid, 0)


def additional_gids(root: str, user: str) -> tuple[int, ...]:
    """The gids of the groups listing ``user`` (a name, or a uid looked up in /etc/passwd) as
    a member, not counting a group named like the user. Missing files mean no groups."""
    name = user
    uid = _numeric(user)
    if uid is not None:
        try:
            found = _find_user(root, lambda u: u.uid == uid)
        except FileNotFoundError:
            return ()
        if found is None:
            return ()
        name = found.name
    try:
        groups = parse_groups(root)
    except FileNotFoundError:
        return ()
    return tuple(g.gid for g in groups if g.name != name and name in g.members)


def identity(root: str | None, user: str) -> Identity:
    """Who a process of an image runs as: ``user`` from the image config ("" for none).

    With a user, its uid and gid, then the additional gids of that uid; without, root (0:0)
    with the additional gids of the user named ``root``. The primary gid always leads the
    additional gids unless they already hold it.
    """
    if user:
        uid, gid = resolve_user(root, user)
        extra = additional_gids(root, str(uid)) if root is not None else ()
    else:
        uid, gid = 0, 0
        extra = additional_gids(root, "root") if root is not None else ()
    if gid not in extra:
        extra = (gid, *extra)
    return Identity(uid, gid, extra)
