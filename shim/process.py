"""One process of a container as the shim tracks it: the init process or an exec process."""

from __future__ import annotations

import asyncio
import json
import os

from .files import ExitInfo, write_atomic
from .states import State, transition
from .stdio import ProcessIO, StdioPaths


class Process:
    """State, pid, stdio and exit of one process. Moves only through :meth:`move`."""

    def __init__(self, container_id: str, exec_id: str, stdio: StdioPaths, spec: bytes = b"") -> None:
        self.container_id = container_id
        self.exec_id = exec_id
        self.stdio = stdio
        self.spec = spec  # the OCI process JSON of an exec process
        self.pid = 0
        self.state = State.CREATED
        self.io: ProcessIO | None = None
        self.exit: ExitInfo | None = None
        self.exited = asyncio.Event()
        # Clear while Start is running: the exit is published only after the start event.
        self.start_done = asyncio.Event()
        self.start_done.set()
        self.stdin_closed = False

    @property
    def id(self) -> str:
        """The exec id, or the container id for the init process (containerd's TaskExit.id)."""
        return self.exec_id or self.container_id

    @property
    def is_init(self) -> bool:
        """Whether this is the container's init process."""
        return not self.exec_id

    def move(self, action: str) -> None:
        """Apply ``action`` to the state; raises FailedPrecondition when the table forbids it."""
        self.state = transition(self.state, action)

    def set_exited(self, info: ExitInfo) -> None:
        """Record the exit, stop the process and wake every waiter."""
        self.exit = info
        if self.state is not State.STOPPED:
            self.move("exit")
        self.exited.set()


def clamp_oom_score_adj(process: dict[str, object]) -> bool:
    """Raise a negative ``oomScoreAdj`` to 0 (this kernel refuses negative values); True if changed."""
    value = process.get("oomScoreAdj")
    if isinstance(value, int) and value < 0:
        process["oomScoreAdj"] = 0
        return True
    return False


def prepare_config(bundle: str) -> dict[str, object]:
    """Read ``<bundle>/config.json``, clamp its oomScoreAdj in place on disk, return the spec."""
    path = os.path.join(bundle, "config.json")
    with open(path, encoding="utf-8") as f:
        spec = json.load(f)
    if not isinstance(spec, dict):
        raise ValueError("config.json does not hold an object")
    process = spec.get("process")
    if isinstance(process, dict) and clamp_oom_score_adj(process):
        write_atomic(path, json.dumps(spec))
    return spec


def has_own_pid_namespace(spec: dict[str, object]) -> bool:
    """Whether the container gets a new pid namespace (then the kernel kills all on init exit)."""
    linux = spec.get("linux")
    namespaces = linux.get("namespaces") if isinstance(linux, dict) else None
    for ns in namespaces or []:
        if isinstance(ns, dict) and ns.get("type") == "pid" and not ns.get("path"):
            return True
    return False


def exec_process_json(spec: bytes) -> str:
    """An exec's OCI process JSON as handed to ``runc exec --process`` (oomScoreAdj clamped)."""
    process = json.loads(spec)
    if isinstance(process, dict):
        clamp_oom_score_adj(process)
    return json.dumps(process)
