"""ExecSync: run a command in a running container and return its output and exit code.

The exec's stdout and stderr are FIFOs that ctrpyd creates and reads itself (the shim copies
the process's pipes into them). Two things containerd's CRI plugin gets wrong here
(containerd#9568, #10094) are bounded:

- the timeout is enforced: when it passes, the exec's process and every process descending
  from it are SIGKILLed, and the call fails with DeadlineExceeded;
- an orphaned child that keeps the output pipes open cannot hold the call: once the exec's
  process has exited, the output is drained for at most :data:`DRAIN` seconds, then the call
  returns with what arrived.

Output is capped per stream (:data:`MAX_OUTPUT`), far below the kubelet's 16 MiB message limit;
what goes beyond is read and dropped, so that the writer never blocks on a full FIFO.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal
from dataclasses import dataclass
from typing import Any

import structlog

from ctrpy.errors import CtrpyError, DeadlineExceeded, FailedPrecondition, InvalidArgument, NotFound

from ..metadata.containers import ContainerStore as MetaContainers
from ..metadata.db import Database
from ..runtime import ShimClient, Stdio
from ..tasks.manager import TaskManager

log = structlog.get_logger(__name__)

MAX_OUTPUT = 8 * 1024 * 1024
DRAIN = 2.0
KILL_WAIT = 10.0
CLEANUP_WAIT = 10.0


@dataclass(frozen=True)
class ExecResult:
    stdout: bytes
    stderr: bytes
    exit_code: int


class _Output:
    """One FIFO read on the event loop into a capped buffer until EOF."""

    def __init__(self, path: str, cap: int) -> None:
        os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # A writer of our own until the shim has opened its end, so that reading before
        # then does not see an end of file.
        self.keeper: int | None = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        self.cap = cap
        self.data = bytearray()
        self.done = asyncio.Event()
        asyncio.get_running_loop().add_reader(self.fd, self._readable)

    def _readable(self) -> None:
        try:
            chunk = os.read(self.fd, 65536)
        except BlockingIOError:
            return
        except OSError:
            chunk = b""
        if not chunk:
            self._stop()
            return
        room = self.cap - len(self.data)
        if room > 0:
            self.data += chunk[:room]

    def _stop(self) -> None:
        if not self.done.is_set():
            with contextlib.suppress(ValueError, OSError):
                asyncio.get_running_loop().remove_reader(self.fd)
            self.done.set()

    def release_keeper(self) -> None:
        if self.keeper is not None:
            os.close(self.keeper)
            self.keeper = None

    def close(self) -> None:
        self._stop()
        self.release_keeper()
        with contextlib.suppress(OSError):
            os.close(self.fd)


def descendants(pid: int) -> list[int]:
    """``pid``'s children, grandchildren, ... (from /proc; what already left is skipped)."""
    found: list[int] = []
    todo = [pid]
    while todo:
        current = todo.pop()
        try:
            tasks = os.listdir(f"/proc/{current}/task")
        except OSError:
            continue
        for tid in tasks:
            try:
                with open(f"/proc/{current}/task/{tid}/children", encoding="ascii") as f:
                    children = [int(c) for c in f.read().split()]
            except (OSError, ValueError):
                continue
            for child in children:
                if child not in found:
                    found.append(child)
                    todo.append(child)
    return found


def kill_tree(pid: int) -> None:
    """SIGKILL ``pid`` and everything it started, its descendants first."""
    for victim in [*descendants(pid), pid]:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(victim, signal.SIGKILL)


async def exec_process(tasks: TaskManager, db: Database, meta: MetaContainers, container_id: str,
                       cmd: list[str], what: str, *, tty: bool = False) -> tuple[ShimClient, dict[str, Any]]:
    """The shim of the running ``container_id`` and the OCI process to exec ``cmd`` with: the
    container's own process, with these arguments. ``what`` names the call in errors."""
    if not cmd:
        raise InvalidArgument(f"{what} needs a command")
    try:
        _, client = tasks.live(container_id)
    except NotFound:
        raise FailedPrecondition(f'container "{container_id}" is not running') from None
    container = await db.run(meta.get, container_id)
    if container.spec is None:
        raise FailedPrecondition(f'container "{container_id}" has no spec')
    process = dict(json.loads(container.spec.value).get("process") or {})
    process["args"] = list(cmd)
    process["terminal"] = tty
    process.pop("consoleSize", None)
    return client, process


async def exec_sync(
    tasks: TaskManager,
    db: Database,
    meta: MetaContainers,
    container_id: str,
    cmd: list[str],
    timeout: float,
    work_dir: str,
) -> ExecResult:
    """Run ``cmd`` in ``container_id`` (its task must run); ``timeout`` 0 means none."""
    client, process = await exec_process(tasks, db, meta, container_id, cmd, "ExecSync")
    exec_id = secrets.token_hex(16)
    directory = os.path.join(work_dir, exec_id)
    os.makedirs(directory, mode=0o700)
    outputs: list[_Output] = []
    try:
        outputs = [_Output(os.path.join(directory, name), MAX_OUTPUT) for name in ("stdout", "stderr")]
        stdio = Stdio(stdout=os.path.join(directory, "stdout"), stderr=os.path.join(directory, "stderr"))
        await client.exec(exec_id, stdio, json.dumps(process).encode())
        try:
            pid = await client.start(exec_id)
        finally:
            for output in outputs:
                output.release_keeper()
        exit_code = await _wait(client, exec_id, pid, timeout)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(o.done.wait() for o in outputs)), DRAIN)
        return ExecResult(bytes(outputs[0].data), bytes(outputs[1].data), exit_code)
    finally:
        for output in outputs:
            output.close()
        await _delete(client, exec_id)
        await asyncio.to_thread(shutil.rmtree, directory, True)


async def _wait(client: ShimClient, exec_id: str, pid: int, timeout: float) -> int:
    waiting = asyncio.ensure_future(client.wait(exec_id))
    try:
        done, _ = await asyncio.wait((waiting,), timeout=timeout if timeout > 0 else None)
        if waiting in done:
            return waiting.result().exit_status
        await asyncio.to_thread(kill_tree, pid)
        with contextlib.suppress(CtrpyError):
            await client.kill(int(signal.SIGKILL), exec_id=exec_id)
        with contextlib.suppress(TimeoutError, CtrpyError):
            await asyncio.wait_for(asyncio.shield(waiting), KILL_WAIT)
        raise DeadlineExceeded(f"timeout {timeout:g}s exceeded: the command was killed")
    finally:
        if not waiting.done():
            waiting.cancel()
            with contextlib.suppress(asyncio.CancelledError, CtrpyError):
                await waiting
        elif not waiting.cancelled():
            waiting.exception()


async def _delete(client: ShimClient, exec_id: str) -> None:
    try:
        await asyncio.wait_for(client.delete(exec_id), CLEANUP_WAIT)
    except (CtrpyError, TimeoutError) as exc:
        log.info("exec process not deleted", exec_id=exec_id, error=str(exc))
