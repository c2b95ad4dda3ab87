"""Extended attributes as layers carry them (PAX ``SCHILY.xattr.<name>`` records).

Which attributes travel in a layer:

- ``trusted.*`` never does, in either direction. Those attributes steer overlayfs
  (``trusted.overlay.opaque``, ``.redirect``, ``.origin``...), and a layer able to set them
  could reshape the merged view; containerd refuses them on apply too.
- a diff carries ``user.*`` and ``security.capability`` (file capabilities). Other
  ``security.*`` labels (SELinux, IMA) describe the host's policy rather than the image, and
  ``system.*`` holds ACLs, which tar carries in records of its own.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

__all__ = [
    "PAX_PREFIX",
    "applicable",
    "carried_in_diffs",
    "read_applicable",
    "read_carried",
]

PAX_PREFIX = "SCHILY.xattr."

# errnos meaning "this file system or this kind of file has no such attributes"
_UNSUPPORTED = (errno.ENOTSUP, errno.ENODATA)


def applicable(name: str) -> bool:
    """Whether an attribute found in a layer may be set on the files being unpacked."""
    return bool(name) and not name.startswith("trusted.")


def carried_in_diffs(name: str) -> bool:
    """Whether an attribute on disk is recorded in the layers that :mod:`.writer` produces."""
    return name.startswith("user.") or name == "security.capability"


def read_carried(path: str) -> dict[str, bytes]:
    """The attributes of ``path`` (not following a symlink) that diffs carry, sorted by name.

    A file system without extended attributes gives an empty mapping.
    """
    return _read(path, carried_in_diffs)


def read_applicable(path: str) -> dict[str, bytes]:
    """The attributes of ``path`` (not following a symlink) that may be copied, by name."""
    return _read(path, applicable)


def _read(path: str, wanted: Callable[[str], bool]) -> dict[str, bytes]:
    try:
        names = os.listxattr(path, follow_symlinks=False)
    except OSError as exc:
        if exc.errno in _UNSUPPORTED:
            return {}
        raise
    found: dict[str, bytes] = {}
    for name in sorted(n for n in names if wanted(n)):
        try:
            found[name] = os.getxattr(path, name, follow_symlinks=False)
        except OSError as exc:
            if exc.errno not in _UNSUPPORTED:
                raise
    return found
