"""Unpack worker processes for the event loop: started on demand, kept while used, ended idle.

:class:`UnpackPool` hands one layer at a time to a :mod:`.worker` process and awaits its
reply. Workers start in the background when a pull begins (:meth:`UnpackPool.warm`), so the
first layer does not wait for an interpreter to start; one that has been idle for
``idle_timeout`` seconds exits, so an idle daemon holds none. A layer whose caller gives up
(cancellation) or whose worker misbehaves gets its worker killed, and waited for, before the
error goes up: when the caller then removes the half-written snapshot, nothing writes into it
any more.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import structlog

from ctrpy import errors
from ctrpy.mount import Mount

from .apply import NO_LIMITS, AppliedLayer, Limits
from .worker import raise_reply, request

__all__ = ["UnpackPool"]

log = structlog.get_logger(__name__)

_MAX_REPLY = 1 << 20


class _Worker:
    def __init__(self, process: asyncio.subprocess.Process) -> None:
        self.process = process
        self.idle_since = 0.0

    @property
    def alive(self) -> bool:
        return self.process.returncode is None

    async def call(self, line: bytes) -> AppliedLayer:
        stdin, stdout = self.process.stdin, self.process.stdout
        assert stdin is not None and stdout is not None
        stdin.write(line)
        await stdin.drain()
        reply = await stdout.readline()
        if not reply.endswith(b"\n"):
            code = await self.process.wait()
            raise errors.Unavailable(f"unpack worker {self.process.pid} ended (status {code})")
        return raise_reply(json.loads(reply))

    async def kill(self) -> None:
        if self.alive:
            with contextlib.suppress(ProcessLookupError):
                self.process.kill()
        await self.process.wait()

    async def close(self) -> None:
        """End the worker by ending its input; kill it if it does not go."""
        if self.process.stdin is not None and not self.process.stdin.is_closing():
            self.process.stdin.close()
        try:
            await asyncio.wait_for(self.process.wait(), 5)
        except TimeoutError:
            await self.kill()


class UnpackPool:
    """Up to ``size`` unpack workers; :meth:`apply` unpacks one layer in one of them."""

    def __init__(self, size: int = 2, idle_timeout: float = 30.0, *, log_level: str = "info",
                 python: str = sys.executable) -> None:
        if size < 1:
            raise ValueError("an unpack pool needs at least one worker")
        self.size = size
        self.idle_timeout = idle_timeout
        self._python = python
        self._env = {**os.environ, "CTRPY_LOG_LEVEL": log_level}
        self._slots = asyncio.Semaphore(size)
        self._idle: list[_Worker] = []
        self._starting: asyncio.Task[_Worker] | None = None
        self._reaper: asyncio.Task[None] | None = None
        self._closed = False
        self.started = 0  #: workers started so far (for tests and benchmarks)

    async def _start(self) -> _Worker:
        process = await asyncio.create_subprocess_exec(
            self._python, "-P", "-m", "ctrpy.manager.diff.worker",  # -P: see ..runtime.launcher
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=self._env,
            limit=_MAX_REPLY,
        )
        self.started += 1
        log.debug("unpack worker started", pid=process.pid)
        return _Worker(process)

    def warm(self) -> None:
        """Start a worker in the background unless one is idle or starting already."""
        if self._closed or self._idle or self._starting is not None:
            return
        self._starting = asyncio.get_running_loop().create_task(self._start())

    async def _take(self) -> _Worker:
        while self._idle:
            worker = self._idle.pop()
            if worker.alive:
                return worker
            await worker.kill()
        starting, self._starting = self._starting, None
        if starting is not None:
            try:
                return await starting
            except OSError:
                pass  # try once more, and report that failure
        return await self._start()

    def _give_back(self, worker: _Worker) -> None:
        if self._closed or not worker.alive:
            asyncio.get_running_loop().create_task(worker.kill())
            return
        worker.idle_since = asyncio.get_running_loop().time()
        self._idle.append(worker)
        if self._reaper is None or self._reaper.done():
            self._reaper = asyncio.get_running_loop().create_task(self._reap())

    async def _reap(self) -> None:
        """End workers idle for longer than ``idle_timeout``, until none is left."""
        loop = asyncio.get_running_loop()
        while self._idle:
            oldest = min(worker.idle_since for worker in self._idle)
            await asyncio.sleep(max(0.0, oldest + self.idle_timeout - loop.time()) + 0.01)
            now = loop.time()
            stale = [w for w in self._idle if now - w.idle_since >= self.idle_timeout]
            self._idle = [w for w in self._idle if w not in stale]
            for worker in stale:
                await worker.close()

    async def apply(self, blob: Path, media_type: str, mounts: Sequence[Mount], *,
                    tmp_root: Path | None = None, limits: Limits = NO_LIMITS) -> AppliedLayer:
        """Unpack the layer in file ``blob`` onto ``mounts``; what :func:`.apply_to_mounts`
        returns or raises, raised again here."""
        if self._closed:
            raise errors.Unavailable("unpack pool is closed")
        line = request(str(blob), media_type, list(mounts), str(tmp_root) if tmp_root else None, limits)
        async with self._slots:
            worker = await self._take()
            try:
                result = await worker.call(line)
            except (errors.CtrpyError, OSError):
                self._give_back(worker)  # it answered: still good for the next layer
                raise
            except BaseException:
                # Cancelled, or the worker broke: it must not write on after we return.
                await asyncio.shield(worker.kill())
                raise
            self._give_back(worker)
            return result

    async def aclose(self) -> None:
        """End every worker (at daemon shutdown)."""
        self._closed = True
        if self._reaper is not None:
            self._reaper.cancel()
        workers, self._idle = self._idle, []
        if self._starting is not None:
            with contextlib.suppress(Exception):
                workers.append(await self._starting)
            self._starting = None
        for worker in workers:
            await worker.close()
