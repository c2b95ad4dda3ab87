"""Processes as /proc shows them: finding ctrpy's shims and template, and ending them by pid.

A shim is recognised by its ``comm`` (``ctrpy-shim``; the template is ``ctrpy-template``, see
``ctrpy.shim.config`` and ``ctrpy.shim.template``). Which state directory it belongs to and
which bundle it serves are read from what the process itself shows: the unix sockets it
listens on (``<state>/s/<hash>``, listed in /proc/net/unix), its working directory (a shim
changes into its bundle) and its command line (``--state-root``, ``--bundle``, or the
template's ``--socket <state>/s/template``). A pid is always paired with its start time, so a
pid reused by an unrelated process is never mistaken for the shim that had it.
"""

from __future__ import annotations

import os
import signal
import time
from dataclasses import dataclass
from pathlib import Path

from ctrpy.shim.config import PROCESS_NAME
from ctrpy.shim.template import TEMPLATE_NAME

__all__ = [
    "SHIM_NAME",
    "TEMPLATE",
    "Proc",
    "ShimProcess",
    "alive",
    "kill",
    "read_proc",
    "shims_of",
]

SHIM_NAME = PROCESS_NAME.decode()
TEMPLATE = TEMPLATE_NAME.decode()
_DELETED = " (deleted)"
KILL_WAIT = 5.0


@dataclass(frozen=True)
class Proc:
    """A process: pid, start time (clock ticks after boot), ``comm`` and state letter."""

    pid: int
    starttime: int
    comm: str
    state: str

    @property
    def live(self) -> bool:
        """Not a zombie (a dead process not yet reaped counts as gone)."""
        return self.state not in ("Z", "X")


def read_proc(pid: int) -> Proc | None:
    """``/proc/<pid>/stat`` parsed, or None when there is no such process."""
    try:
        with open(f"/proc/{pid}/stat", "rb") as f:
            raw = f.read()
    except OSError:
        return None
    open_paren, close_paren = raw.find(b"("), raw.rfind(b")")
    if open_paren < 0 or close_paren < 0:
        return None
    comm = raw[open_paren + 1 : close_paren].decode(errors="replace")
    rest = raw[close_paren + 2 :].split()
    # After the comm: state is field 3 of stat(5), starttime field 22.
    try:
        return Proc(pid, int(rest[19]), comm, rest[0].decode())
    except (IndexError, ValueError):
        return None


def alive(pid: int, starttime: int | None = None) -> bool:
    """Whether ``pid`` is a live process (started at ``starttime``, when given)."""
    proc = read_proc(pid)
    return proc is not None and proc.live and (starttime is None or proc.starttime == starttime)


def kill(pid: int, starttime: int, comm: str, wait: float = KILL_WAIT) -> bool:
    """SIGKILL ``pid`` if it is still the process ``comm`` started at ``starttime``, and wait
    (up to ``wait`` seconds) until it is gone. Returns whether a signal was sent."""
    proc = read_proc(pid)
    if proc is None or not proc.live or proc.starttime != starttime or proc.comm != comm:
        return False
    try:
        os.kill(pid, signal.SIGKILL)
    except ProcessLookupError:
        return False
    deadline = time.monotonic() + wait
    while alive(pid, starttime) and time.monotonic() < deadline:
        time.sleep(0.01)
    return True


def _cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [part.decode(errors="replace") for part in f.read().split(b"\0") if part]
    except OSError:
        return []


def _option(argv: list[str], name: str) -> str:
    for i, word in enumerate(argv):
        if word == name and i + 1 < len(argv):
            return argv[i + 1]
        if word.startswith(name + "="):
            return word[len(name) + 1 :]
    return ""


def _cwd(pid: int) -> tuple[str, bool]:
    """The working directory and whether it was deleted ("" when unreadable)."""
    try:
        where = os.readlink(f"/proc/{pid}/cwd")
    except OSError:
        return "", False
    if where.endswith(_DELETED) and not os.path.isdir(where):
        return where[: -len(_DELETED)], True
    return where, False


def _unix_paths() -> dict[int, str]:
    """Socket inode -> bound path, for the named unix sockets of this network namespace."""
    found: dict[int, str] = {}
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="surrogateescape") as f:
            next(f, None)  # the header
            for line in f:
                fields = line.rstrip("\n").split(None, 7)
                if len(fields) == 8 and fields[7].startswith("/"):
                    found[int(fields[6])] = fields[7]
    except OSError:
        pass
    return found


def _socket_inodes(pid: int) -> set[int]:
    inodes: set[int] = set()
    try:
        names = os.listdir(f"/proc/{pid}/fd")
    except OSError:
        return inodes
    for name in names:
        try:
            target = os.readlink(f"/proc/{pid}/fd/{name}")
        except OSError:
            continue
        if target.startswith("socket:["):
            inodes.add(int(target[len("socket:[") : -1]))
    return inodes


@dataclass(frozen=True)
class ShimProcess:
    """A live shim or template of one state directory.

    ``bundle`` is the bundle a shim serves ("" for the template, or when it cannot be told);
    ``bundle_gone`` says the directory no longer exists. ``sockets`` are the paths it listens
    on under ``<state>/s``.
    """

    pid: int
    starttime: int
    comm: str
    bundle: str
    bundle_gone: bool
    sockets: tuple[str, ...]

    @property
    def is_template(self) -> bool:
        """Whether this is the template process rather than a shim."""
        return self.comm == TEMPLATE


def _state_of(argv: list[str], sockets: list[str], cwd: str) -> set[str]:
    """Every state directory the process names, by socket, command line and directory."""
    states = {os.path.dirname(os.path.dirname(path)) for path in sockets}
    if root := _option(argv, "--state-root"):
        states.add(os.path.realpath(root))
    if template_socket := _option(argv, "--socket"):
        states.add(os.path.dirname(os.path.dirname(os.path.realpath(template_socket))))
    if cwd:
        parts = Path(cwd).parts
        if len(parts) > 3 and parts[-3] == "tasks":
            states.add(str(Path(*parts[:-3])))
    return states


def shims_of(state: Path) -> list[ShimProcess]:
    """Every live ``ctrpy-shim`` and ``ctrpy-template`` that belongs to ``state`` (absolute,
    without symbolic links), by pid."""
    found: list[ShimProcess] = []
    paths: dict[int, str] | None = None
    socket_dir = str(state / "s")
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        proc = read_proc(int(entry))
        if proc is None or not proc.live or proc.comm not in (SHIM_NAME, TEMPLATE):
            continue
        if paths is None:
            paths = _unix_paths()
        sockets = sorted(
            {
                paths[i]
                for i in _socket_inodes(proc.pid)
                if i in paths and os.path.dirname(paths[i]) == socket_dir
            }
        )
        argv = _cmdline(proc.pid)
        cwd, deleted = _cwd(proc.pid)
        if str(state) not in _state_of(argv, sockets, cwd):
            continue
        bundle = ""
        if proc.comm == SHIM_NAME:
            bundle = cwd if cwd and cwd != "/" else _option(argv, "--bundle")
            deleted = deleted or not bundle or not os.path.isdir(bundle)
        found.append(ShimProcess(proc.pid, proc.starttime, proc.comm, bundle, deleted, tuple(sockets)))
    return sorted(found, key=lambda shim: shim.pid)
