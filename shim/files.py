"""The files a shim keeps in its bundle: the on-disk contract between shim and manager.

A bundle is ``<state>/tasks/<namespace>/<id>/``. ctrpyd writes ``config.json``; the shim adds
the rest::

    config.json     the OCI runtime spec (ctrpyd; the shim clamps a negative oomScoreAdj)
    rootfs/         mount point of the task's root filesystem (mounted by the shim)
    address         the shim's ttrpc address, ``unix:///<state>/s/<hash>`` (the containers of a pod
                    may share the shim of its sandbox: then several bundles name one shim)
    shim.pid        the shim's pid
    init.pid        the init process's pid (written by runc --pid-file)
    runtime.json    the runtime binary and root the shim used, for ``ctrpy-shim delete``
    exit            ``{"pid", "exit_status", "exited_at"[, "oom_killed"]}`` of the init process, written
                    (temp + fsync + rename) before the exit is reported to anyone
    oom             present once the kernel's OOM killer has killed a process of the task
                    (written before the OOM is reported, and before the exit it caused)
    log.json        runc's log (json lines)
    shim.log        the shim's own stderr (one file, linked into every bundle of a pod's shim)

This module has no dependencies beyond the standard library, so that ctrpyd can read these
files without importing the shim's server code.
"""

from __future__ import annotations

import json
import os
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

CONFIG = "config.json"
ROOTFS = "rootfs"
ADDRESS = "address"
SHIM_PID = "shim.pid"
INIT_PID = "init.pid"
RUNTIME = "runtime.json"
EXIT = "exit"
OOM = "oom"
RUNC_LOG = "log.json"
SHIM_LOG = "shim.log"

# What `ctrpy-shim delete` reports when the bundle holds no exit status (containerd: 255).
UNKNOWN_EXIT_STATUS = 255


@dataclass(frozen=True)
class ExitInfo:
    """How a process ended: its pid, exit status (128 + signal when killed) and exit time; for
    a task's init process, also whether the OOM killer had killed a process of the task (kept in
    the ``exit`` file, so that it outlives both the event and the shim)."""

    pid: int
    exit_status: int
    exited_at_ns: int
    oom_killed: bool = False

    def to_json(self) -> str:
        """The JSON text stored in the bundle's ``exit`` file (``oom_killed`` only when true)."""
        data: dict[str, int | bool] = {"pid": self.pid, "exit_status": self.exit_status,
                                       "exited_at": self.exited_at_ns}
        if self.oom_killed:
            data["oom_killed"] = True
        return json.dumps(data)

    @classmethod
    def from_json(cls, text: str) -> ExitInfo:
        """Parse the ``exit`` file's text; raises ``ValueError`` when it is malformed."""
        data = json.loads(text)
        if not isinstance(data, dict):
            raise ValueError("exit file does not hold an object")
        return cls(int(data["pid"]), int(data["exit_status"]), int(data["exited_at"]),
                   bool(data.get("oom_killed", False)))


@dataclass(frozen=True)
class RuntimeInfo:
    """The runtime binary and ``--root`` directory used for a container."""

    binary: str
    root: str


def write_atomic(
    path: str | os.PathLike[str], data: str | bytes, *, mode: int = 0o644, durable: bool = False
) -> None:
    """Replace ``path`` with ``data``: write a temporary file beside it, then rename it over.

    Readers see the old content or the new, never a part. By default nothing is fsynced:
    bundles live in the state directory, which does not survive a reboot by design, and what a
    process has written is safe from its own crash once ``write`` returns; syncing costs a
    journal commit per file. ``durable`` fsyncs the data and the directory, for the one file
    whose loss would lose something users rely on: the exit status.
    """
    target = Path(path)
    raw = data.encode() if isinstance(data, str) else data
    fd, tmp = tempfile.mkstemp(prefix=f".{target.name}.", dir=target.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(raw)
            if durable:
                f.flush()
                os.fsync(f.fileno())
        os.chmod(tmp, mode)
        os.rename(tmp, target)
        if durable:
            directory = os.open(target.parent, os.O_RDONLY | os.O_DIRECTORY)
            try:
                os.fsync(directory)
            finally:
                os.close(directory)
    except BaseException:
        try:
            os.unlink(tmp)
        except FileNotFoundError:
            pass
        raise


def write_exit(bundle: str | os.PathLike[str], info: ExitInfo) -> None:
    """Persist the init process's exit in ``<bundle>/exit``, atomically and fsynced, before
    anyone is told of the exit."""
    write_atomic(Path(bundle) / EXIT, info.to_json(), durable=True)


def record_oom(bundle: str | os.PathLike[str]) -> None:
    """Mark in ``<bundle>/oom`` that the OOM killer killed a process of the task, durably: the
    manager may be down when it happens, and its event may never reach a restarted one in time."""
    write_atomic(Path(bundle) / OOM, "", durable=True)


def oom_recorded(bundle: str | os.PathLike[str]) -> bool:
    """Whether :func:`record_oom` marked the task's bundle."""
    return (Path(bundle) / OOM).exists()


def read_exit(bundle: str | os.PathLike[str]) -> ExitInfo | None:
    """The exit stored in ``<bundle>/exit``, or None when there is none (or it is unreadable)."""
    try:
        return ExitInfo.from_json((Path(bundle) / EXIT).read_text())
    except (OSError, ValueError, KeyError, TypeError):
        return None


def read_text(bundle: str | os.PathLike[str], name: str) -> str | None:
    """The stripped content of ``<bundle>/<name>``, or None when it does not exist."""
    try:
        return (Path(bundle) / name).read_text().strip()
    except FileNotFoundError:
        return None


def read_pid(bundle: str | os.PathLike[str], name: str) -> int | None:
    """A pid stored in ``<bundle>/<name>`` (``shim.pid``, ``init.pid``), or None."""
    text = read_text(bundle, name)
    try:
        return int(text) if text else None
    except ValueError:
        return None


def write_runtime(bundle: str | os.PathLike[str], info: RuntimeInfo) -> None:
    """Record which runtime binary and root a container was created with."""
    write_atomic(Path(bundle) / RUNTIME, json.dumps({"binary": info.binary, "root": info.root}))


def read_runtime(bundle: str | os.PathLike[str]) -> RuntimeInfo | None:
    """The runtime recorded by :func:`write_runtime`, or None."""
    text = read_text(bundle, RUNTIME)
    if not text:
        return None
    try:
        data = json.loads(text)
        return RuntimeInfo(str(data["binary"]), str(data["root"]))
    except (ValueError, KeyError, TypeError):
        return None


def now_ns() -> int:
    """The current wall-clock time in nanoseconds since the epoch."""
    return time.time_ns()
