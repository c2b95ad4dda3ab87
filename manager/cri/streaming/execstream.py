"""An interactive exec process for the streaming server, independent of the transport.

Like ExecSync (:mod:`..execsync`), ctrpyd creates the exec's FIFOs itself and the shim copies the
process's stdio into them; here they are streamed instead of collected: :meth:`ExecSession.read`
gives each output's next chunk (the transport sends it on), :meth:`ExecSession.write_stdin`
writes what the client typed, :meth:`ExecSession.close_stdin` ends stdin (CloseIO),
:meth:`ExecSession.resize` sets the terminal size (ResizePty). When the client goes away first,
:meth:`ExecSession.kill` ends the process and what it started, so no exec outlives its client.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import secrets
import shutil
import signal

import structlog

from ctrpy.errors import CtrpyError

from ...metadata.containers import ContainerStore as MetaContainers
from ...metadata.db import Database
from ...runtime import ShimClient, Stdio
from ...tasks.manager import TaskManager
from ..execsync import CLEANUP_WAIT, KILL_WAIT, exec_process, kill_tree

log = structlog.get_logger(__name__)

CHUNK = 32 * 1024


class FifoReader:
    """The read end of an output FIFO, read on the event loop; b"" at end of file."""

    def __init__(self, path: str) -> None:
        os.mkfifo(path, 0o600)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
        # A writer of our own until the shim has opened its end, so that reading before then
        # does not see an end of file.
        self.keeper: int | None = os.open(path, os.O_WRONLY | os.O_NONBLOCK | os.O_CLOEXEC)

    async def read(self) -> bytes:
        loop = asyncio.get_running_loop()
        while True:
            try:
                return os.read(self.fd, CHUNK)
            except BlockingIOError:
                pass
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_reader(self.fd, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_reader(self.fd)

    def release_keeper(self) -> None:
        if self.keeper is not None:
            os.close(self.keeper)
            self.keeper = None

    def close(self) -> None:
        self.release_keeper()
        with contextlib.suppress(OSError):
            os.close(self.fd)


def _wake(future: asyncio.Future[None]) -> None:
    if not future.done():
        future.set_result(None)


class ExecSession:
    """One exec process: made by :meth:`start`, ended by :meth:`wait` or :meth:`kill`, cleaned up
    by :meth:`close` (always call it)."""

    def __init__(self, client: ShimClient, process: dict[str, object], directory: str, *,
                 stdin: bool, stdout: bool, stderr: bool, tty: bool) -> None:
        self.client, self.process, self.directory = client, process, directory
        self.exec_id = os.path.basename(directory)
        self.tty = tty
        self.outputs: dict[int, FifoReader] = {}  # channel -> reader
        self._want = (stdin, stdout, stderr and not tty)
        self._stdin = -1
        self._created = False
        self.pid = 0

    async def start(self) -> None:
        os.makedirs(self.directory, mode=0o700)
        want_in, want_out, want_err = self._want
        paths = {name: os.path.join(self.directory, name) for name in ("stdin", "stdout", "stderr")}
        if want_in:
            os.mkfifo(paths["stdin"], 0o600)
            # Read-write: opening never blocks and never fails for want of a reader; the shim
            # opens its own read end.
            self._stdin = os.open(paths["stdin"], os.O_RDWR | os.O_NONBLOCK | os.O_CLOEXEC)
        if want_out:
            self.outputs[1] = FifoReader(paths["stdout"])
        if want_err:
            self.outputs[2] = FifoReader(paths["stderr"])
        stdio = Stdio(stdin=paths["stdin"] if want_in else "", stdout=paths["stdout"] if want_out else "",
                      stderr=paths["stderr"] if want_err else "", terminal=self.tty)
        await self.client.exec(self.exec_id, stdio, json.dumps(self.process).encode())
        self._created = True
        try:
            self.pid = await self.client.start(self.exec_id)
        finally:
            for output in self.outputs.values():
                output.release_keeper()

    async def write_stdin(self, data: bytes) -> None:
        """Write to the process's stdin FIFO, waiting while it is full (the client then waits too)."""
        if self._stdin < 0:
            return
        loop = asyncio.get_running_loop()
        view = memoryview(data)
        while view:
            try:
                view = view[os.write(self._stdin, view):]
                continue
            except BlockingIOError:
                pass
            ready: asyncio.Future[None] = loop.create_future()
            loop.add_writer(self._stdin, _wake, ready)
            try:
                await ready
            finally:
                loop.remove_writer(self._stdin)

    async def close_stdin(self) -> None:
        """The client's stdin ended: the shim delivers what is in the FIFO, then closes stdin."""
        if self._stdin >= 0 and self._created:
            with contextlib.suppress(CtrpyError):
                await self.client.close_io(self.exec_id)

    async def resize(self, width: int, height: int) -> None:
        if self.tty and self._created:
            try:
                await self.client.resize_pty(width, height, exec_id=self.exec_id)
            except CtrpyError as exc:  # not started yet, or gone: the next size will do
                log.debug("exec resize failed", exec_id=self.exec_id, error=str(exc))

    async def wait(self) -> int:
        return (await self.client.wait(self.exec_id)).exit_status

    async def kill(self) -> None:
        """SIGKILL the process and everything it started (its descendants first, as ExecSync)."""
        if self.pid:
            await asyncio.to_thread(kill_tree, self.pid)
        if self._created:
            with contextlib.suppress(Exception):  # the /proc kill above has done the work then
                await self.client.kill(int(signal.SIGKILL), exec_id=self.exec_id)
                await asyncio.wait_for(self.wait(), KILL_WAIT)

    async def close(self) -> None:
        for output in self.outputs.values():
            output.close()
        if self._stdin >= 0:
            with contextlib.suppress(OSError):
                os.close(self._stdin)
            self._stdin = -1
        if self._created:
            try:
                await asyncio.wait_for(self.client.delete(self.exec_id), CLEANUP_WAIT)
            except Exception as exc:  # the shim gone or its client closed (ctrpyd stopping)
                log.info("exec process not deleted", exec_id=self.exec_id, error=str(exc))
        await asyncio.to_thread(shutil.rmtree, self.directory, True)


async def prepare(tasks: TaskManager, db: Database, meta: MetaContainers, container_id: str, cmd: list[str],
                  work_dir: str, *, stdin: bool, stdout: bool, stderr: bool, tty: bool,
                  size: tuple[int, int] | None = None) -> ExecSession:
    """An exec session for ``cmd`` in the running ``container_id``: the container's process with
    these arguments (and ``TERM=xterm`` with a terminal, as containerd sets it). ``size``
    (width, height): the terminal's size from the start (runc sets it on the new terminal)."""
    client, process = await exec_process(tasks, db, meta, container_id, cmd, "Exec", tty=tty)
    if tty:
        env = [e for e in process.get("env") or [] if not str(e).startswith("TERM=")]
        process["env"] = [*env, "TERM=xterm"]
        if size is not None and size[0] > 0 and size[1] > 0:
            process["consoleSize"] = {"width": size[0], "height": size[1]}
    directory = os.path.join(work_dir, secrets.token_hex(16))
    return ExecSession(client, process, directory, stdin=stdin, stdout=stdout, stderr=stderr, tty=tty)
