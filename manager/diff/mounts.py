"""Applying layers onto, and diffing, snapshots given as mount descriptions.

The snapshotter describes a snapshot as mounts and never mounts them. Where the description
says which directory to write, no mount is needed, as in containerd's ``apply_linux.go``:

- one ``bind`` mount: unpack straight into its source directory;
- one ``overlay`` mount with an ``upperdir=``: unpack into the upper directory, writing
  overlay whiteouts (the lower directories lend their metadata to new parent directories).

Anything else is mounted on a temporary directory, used, and unmounted, also on failure.
Diffs mount both sides read-only (an overlay's upper directory becomes its topmost lower, as
containerd's ``WithReadonlyTempMount`` does), so that a snapshot in use by a running container
can be diffed without a second writer on its upper directory.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import ExitStack, contextmanager
from pathlib import Path
from typing import BinaryIO

import structlog

from ctrpy.mount import Mount, mounted

from .apply import NO_LIMITS, AppliedLayer, Limits, apply_layer
from .compression import Compression
from .writer import write_diff

__all__ = ["apply_to_mounts", "diff_mounts", "readonly_mounts", "temp_mount"]

log = structlog.get_logger(__name__)

_SKIPPED_READONLY = ("workdir=", "index=", "rw")


def _overlay_dirs(options: Sequence[str]) -> tuple[str, list[str]]:
    """The ``upperdir=`` (or ``""``) and ``lowerdir=`` directories of overlay options."""
    upper, lowers = "", []
    for option in options:
        if option.startswith("upperdir="):
            upper = option[len("upperdir=") :]
        elif option.startswith("lowerdir="):
            lowers = [d for d in option[len("lowerdir=") :].split(":") if d]
    return upper, lowers


def _readonly(m: Mount) -> Mount:
    if m.type != "overlay":
        options = (*(o for o in m.options if o not in ("rw", "ro")), "ro")
        return Mount(m.type, m.source, m.target, options)
    upper, lowers = _overlay_dirs(m.options)
    if upper:
        lowers = [upper, *lowers]
    if len(lowers) == 1:
        # overlayfs needs two lower directories when it has no upper one.
        return Mount("bind", lowers[0], m.target, ("rbind", "ro"))
    kept = [
        o
        for o in m.options
        if not o.startswith(("upperdir=", "lowerdir=")) and not o.startswith(_SKIPPED_READONLY)
    ]
    kept.append("lowerdir=" + ":".join(lowers))
    return Mount(m.type, m.source, m.target, tuple(kept))


def readonly_mounts(mounts: Sequence[Mount]) -> list[Mount]:
    """The same mounts made read-only (containerd's ``readonlyMounts``)."""
    return [_readonly(m) for m in mounts]


@contextmanager
def temp_mount(mounts: Sequence[Mount], tmp_root: Path | None = None) -> Iterator[Path]:
    """Mount ``mounts`` on a new temporary directory for the ``with`` block; then unmount them
    and remove the directory, also when the block fails. Raises :class:`OSError` when a mount
    fails (nothing stays mounted then)."""
    directory = tempfile.mkdtemp(prefix="ctrpy-mount-", dir=tmp_root)
    try:
        with mounted(mounts, directory):
            yield Path(directory)
    finally:
        try:
            os.rmdir(directory)
        except OSError as exc:  # still mounted after a failed unmount: leave it be
            log.warning("temporary mount point not removed", path=directory, error=str(exc))


def _single_dir(mounts: Sequence[Mount]) -> str | None:
    """The directory of a lone plain bind mount, usable without mounting it."""
    if len(mounts) == 1 and mounts[0].type == "bind" and not mounts[0].target:
        return mounts[0].source
    return None


def apply_to_mounts(
    stream: BinaryIO,
    media_type: str,
    mounts: Sequence[Mount],
    *,
    limits: Limits = NO_LIMITS,
    tmp_root: Path | None = None,
) -> AppliedLayer:
    """Apply a layer onto the snapshot that ``mounts`` describe; see :func:`.apply_layer`.

    ``tmp_root`` holds the temporary mount point when one is needed (default: the system's
    temporary directory). Raises what :func:`.apply_layer` raises, and :class:`OSError` when
    mounting fails.
    """
    if len(mounts) == 1 and not mounts[0].target and "ro" not in mounts[0].options:
        m = mounts[0]
        if m.type == "bind":
            return apply_layer(stream, media_type, Path(m.source), limits=limits)
        if m.type == "overlay":
            upper, lowers = _overlay_dirs(m.options)
            if upper:
                return apply_layer(
                    stream,
                    media_type,
                    Path(upper),
                    overlay_upper=True,
                    parents=[Path(d) for d in lowers],
                    limits=limits,
                )
    with temp_mount(mounts, tmp_root) as root:
        return apply_layer(stream, media_type, root, limits=limits)


def diff_mounts(
    lower_mounts: Sequence[Mount],
    upper_mounts: Sequence[Mount],
    out: BinaryIO,
    compression: Compression = None,
    *,
    tmp_root: Path | None = None,
) -> tuple[str, int]:
    """Write the layer from the ``lower_mounts`` snapshot to the ``upper_mounts`` one to ``out``.

    No lower mounts stand for an empty tree. Both sides are mounted read-only on temporary
    directories (a lone bind mount is read in place) and unmounted afterwards. Returns the
    uncompressed digest and size, as :func:`.write_diff` does; raises what it raises, and
    :class:`OSError` when mounting fails.
    """
    with ExitStack() as stack:
        lower: Path | None = None
        if lower_mounts:
            lower_dir = _single_dir(lower_mounts)
            lower = (
                Path(lower_dir)
                if lower_dir is not None
                else stack.enter_context(temp_mount(readonly_mounts(lower_mounts), tmp_root))
            )
        upper_dir = _single_dir(upper_mounts)
        upper = (
            Path(upper_dir)
            if upper_dir is not None
            else stack.enter_context(temp_mount(readonly_mounts(upper_mounts), tmp_root))
        )
        return write_diff(lower, upper, out, compression)
