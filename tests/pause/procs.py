"""Reading processes from /proc for the pause tests: parents, states, signal dispositions."""

from __future__ import annotations

import os
from pathlib import Path


def stat_fields(pid: int) -> tuple[str, int] | None:
    """(state, ppid) of ``pid``, or None when it is gone."""
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return None
    rest = text[text.rindex(")") + 2:].split()
    return rest[0], int(rest[1])


def children(pid: int) -> dict[int, str]:
    """Every process whose parent is ``pid``, with its state letter (``Z`` for a zombie)."""
    found: dict[int, str] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            fields = stat_fields(int(entry))
            if fields is not None and fields[1] == pid:
                found[int(entry)] = fields[0]
    return found


def status(pid: int) -> dict[str, str]:
    """The ``Key: value`` lines of /proc/PID/status (empty when the process is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except (FileNotFoundError, ProcessLookupError):
        return {}
    return dict(line.split(":\t", 1) for line in text.splitlines() if ":\t" in line)


def signal_set(pid: int, key: str) -> set[int]:
    """The signal numbers in one of the SigCgt/SigIgn/SigBlk masks of /proc/PID/status."""
    mask = int(status(pid).get(key, "0"), 16)
    return {bit + 1 for bit in range(64) if mask >> bit & 1}


def current_syscall(pid: int) -> int | None:
    """The number of the system call ``pid`` is blocked in (/proc/PID/syscall), else None."""
    try:
        first = Path(f"/proc/{pid}/syscall").read_text().split()[0]
    except (FileNotFoundError, ProcessLookupError, IndexError):
        return None
    return int(first) if first.lstrip("-").isdigit() else None
