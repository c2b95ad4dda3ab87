"""Filesystem helpers of the snapshotters: measure, copy and delete directory trees."""

from __future__ import annotations

import errno
import os
import shutil
import stat
import subprocess
from pathlib import Path

import structlog

from ctrpy.mount import mountpoints_under, unmount_recursive

from .types import Usage

__all__ = ["copy_tree", "disk_usage", "remove_tree"]

log = structlog.get_logger(__name__)


def disk_usage(root: str | os.PathLike[str]) -> Usage:
    """Bytes of allocated blocks and number of inodes in the tree at ``root``, root included.

    Symbolic links are not followed, a hard-linked inode counts once, and entries that
    vanish during the walk are skipped. Raises OSError when ``root`` itself is unreadable.
    """
    top = os.lstat(root)
    seen = {(top.st_dev, top.st_ino)}
    size = top.st_blocks * 512
    stack = [os.fspath(root)] if stat.S_ISDIR(top.st_mode) else []
    while stack:
        directory = stack.pop()
        try:
            entries = list(os.scandir(directory))
        except FileNotFoundError:
            continue
        for entry in entries:
            try:
                st = entry.stat(follow_symlinks=False)
            except FileNotFoundError:
                continue
            ident = (st.st_dev, st.st_ino)
            if ident not in seen:
                seen.add(ident)
                size += st.st_blocks * 512
            if stat.S_ISDIR(st.st_mode):
                stack.append(entry.path)
    return Usage(size=size, inodes=len(seen))


def copy_tree(source: str | os.PathLike[str], destination: str | os.PathLike[str]) -> None:
    """Copy the tree ``source`` to the new path ``destination``, like ``cp -a``.

    Owners, modes, times, extended attributes, hard links within the tree, symbolic links,
    device nodes, FIFOs and sockets are preserved; file data is reflinked where the
    filesystem can. ``destination`` must not exist. Raises OSError when the copy fails.
    """
    result = subprocess.run(
        [
            "cp",
            "--archive",
            "--no-target-directory",
            "--reflink=auto",
            "--",
            os.fspath(source),
            os.fspath(destination),
        ],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        check=False,
    )
    if result.returncode != 0:
        message = result.stderr.decode(errors="replace").strip()
        # cp reports a full disk only in words; keep its errno so the caller can tell.
        code = errno.EIO
        for number in (errno.ENOSPC, errno.EDQUOT):
            if os.strerror(number) in message:
                code = number
        raise OSError(code, f"copy {os.fspath(source)!r}: {message}")


def remove_tree(path: str | os.PathLike[str]) -> bool:
    """Delete the tree at ``path`` (gone already is fine); return whether it is gone.

    Anything still mounted inside is detached first, as containerd does for busy
    directories, so that the deletion never reaches into a mounted filesystem. Failures are
    logged, not raised: callers delete after their metadata has committed, and whatever
    stays behind is found again by a later cleanup.
    """
    target = Path(path)
    try:
        if target.is_symlink() or not target.is_dir():
            target.unlink()
            return True
        if mountpoints_under(target):
            unmount_recursive(target)
        shutil.rmtree(target)
    except FileNotFoundError:
        pass
    except OSError as exc:
        log.warning("failed to remove snapshot directory", path=str(target), error=str(exc))
    return not target.exists()
