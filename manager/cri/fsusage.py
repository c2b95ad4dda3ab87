"""Disk usage of the snapshotter's directory, for ImageFsInfo.

The kubelet asks ImageFsInfo every few seconds to decide on image garbage collection; walking a
snapshot tree each time would cost more than the answer is worth. containerd samples each
snapshot's usage every ``stats_collect_period`` seconds and answers from the last sample; so
does :class:`UsageSampler`, for the whole directory of the default snapshotter (every
namespace's snapshots: they share the filesystem the kubelet watches). Bytes are allocated
blocks (``st_blocks``), hard links counted once.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass
from pathlib import Path

from ctrpy.snapshotter.fsutil import disk_usage


@dataclass(frozen=True)
class Usage:
    timestamp_ns: int
    used_bytes: int
    inodes_used: int


def measure(root: Path) -> Usage:
    """The usage of the tree at ``root`` now (the snapshotter's own walk: symlinks not followed,
    hard links counted once, the root included as containerd's ``fs.DiskUsage`` counts it)."""
    try:
        usage = disk_usage(root)
    except OSError:  # removed meanwhile, or unreadable
        return Usage(time.time_ns(), 0, 0)
    return Usage(time.time_ns(), usage.size, usage.inodes)


class UsageSampler:
    """The usage of ``root``, measured at most once per ``period`` seconds (0: every call)."""

    def __init__(self, root: Path | None, period: float) -> None:
        self.root = root
        self.period = period
        self._last: Usage | None = None
        self._taken = 0.0
        self._lock = asyncio.Lock()

    @property
    def mountpoint(self) -> str:
        return str(self.root) if self.root is not None else ""

    async def sample(self) -> Usage:
        async with self._lock:
            now = time.monotonic()
            if self._last is None or now - self._taken >= self.period:
                if self.root is None or not self.root.is_dir():
                    self._last = Usage(time.time_ns(), 0, 0)
                else:
                    self._last = await asyncio.to_thread(measure, self.root)
                self._taken = now
            return self._last
