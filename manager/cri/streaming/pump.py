"""The transport-neutral loop of exec and attach: a process's stdio over any channel transport.

Kubernetes' remotecommand has the same five channels whatever carries them (:mod:`.channels`:
0 stdin, 1 stdout, 2 stderr, 3 error, 4 resize). A :class:`Transport` moves channel bytes --
over WebSocket one message per chunk (:mod:`.wstransport`), over SPDY one stream per channel
(:mod:`.spdyexec`) -- and :func:`run` moves them between a transport and a :class:`Process`
(an exec; an attach to a container's process), so each protocol is written once:

- every output of the process goes to its channel until end of file;
- stdin, its end, and terminal sizes come back from the client;
- when the process ends, the rest of its output is sent (for at most :data:`DRAIN` seconds),
  then its status on the error channel, then the transport closes;
- when the client goes first, the process is killed (:meth:`Process.kill`: an exec dies with
  its client; an attach just detaches).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from typing import Protocol as Interface

import structlog

from ctrpy.errors import CtrpyError, Unavailable

from . import channels
from .channels import Protocol

log = structlog.get_logger(__name__)

#: How long the output may keep coming after the process has exited (an orphan that holds the
#: pipe open is not waited for longer).
DRAIN = 2.0
#: How long the exit status may take to go out to a client that does not read.
FINISH = 10.0
#: How long a terminal exec waits for the client's first terminal size before its process
#: starts. crictl and kubectl send it as soon as the streams are up; a process started before
#: it arrives sees a 0x0 terminal (``stty size`` fails), as with containerd.
FIRST_SIZE_WAIT = 1.0


class TransportClosed(Unavailable):
    """The client is gone (or the channel it would go on is): nothing more can be sent."""


class Transport(Interface):
    """Channels to one client. ``protocol`` says how the error channel reports an exit
    (``protocol.status_json``: a Status JSON from v4 on, plain text before)."""

    protocol: Protocol

    async def ready(self, first: int) -> None:
        """The streams are set up (WebSocket: an empty message on channel ``first``, as the
        kubelet sends; SPDY: nothing)."""

    async def send(self, channel: int, data: bytes) -> None:
        """Send ``data`` on ``channel`` (STDOUT, STDERR, ERROR); raises :class:`TransportClosed`."""

    def incoming(self) -> AsyncIterator[tuple[int, bytes]]:
        """What the client sends: ``(STDIN, data)``, ``(RESIZE, data)`` (JSON sizes, possibly
        split), ``(CLOSE, bytes([STDIN]))`` once stdin has ended. It ends only when the client
        has gone (or :meth:`close` was called), never because stdin ended."""

    async def close(self) -> None:
        """End the exchange: what was sent is flushed, then the connection closes. Idempotent."""


class Output(Interface):
    async def read(self) -> bytes:
        """The next chunk; b"" at end of file."""


class Process(Interface):
    """What :func:`run` drives (:class:`.execstream.ExecSession` is one)."""

    @property
    def outputs(self) -> Mapping[int, Output]: ...  # channel (STDOUT, STDERR) -> its reader

    async def write_stdin(self, data: bytes) -> None: ...

    async def close_stdin(self) -> None: ...

    async def resize(self, width: int, height: int) -> None: ...

    async def wait(self) -> int:
        """The exit code, once the process has ended."""

    async def kill(self) -> None:
        """The client left first: end (exec) or let go of (attach) the process."""


#: The error channel's bytes for an exit code (b"": send nothing).
StatusOf = Callable[[Protocol, int], bytes]


async def run(transport: Transport, process: Process, status: StatusOf) -> None:
    """Pump ``process`` over ``transport`` until it exits (then send ``status`` of its exit
    code and close) or the client leaves (then :meth:`Process.kill` it). Always closes the
    transport; never raises for a client that went away."""
    protocol = transport.protocol
    with contextlib.suppress(TransportClosed):
        await transport.ready(min(process.outputs, default=channels.ERROR))
    pumps = [asyncio.ensure_future(_pump_out(transport, channel, reader))
             for channel, reader in process.outputs.items()]
    receiver = asyncio.ensure_future(_receive(transport, process))
    exited = asyncio.ensure_future(process.wait())
    try:
        await asyncio.wait((exited, receiver), return_when=asyncio.FIRST_COMPLETED)
        failure = _failure(exited)
        if failure is not None:  # the client left, or the shim could not tell how it ended
            log.info("stream ended before its process", error=failure)
            if failure:
                with contextlib.suppress(TransportClosed):
                    await transport.send(channels.ERROR, channels.internal_error(protocol, failure))
            await transport.close()
            await process.kill()
            return
        if pumps:
            await asyncio.wait(pumps, timeout=DRAIN)
        for pump in pumps:
            pump.cancel()
        await asyncio.gather(*pumps, return_exceptions=True)
        message = status(protocol, exited.result())
        with contextlib.suppress(TransportClosed, TimeoutError):
            if message:  # bounded: a client that stopped reading cannot hold us here
                async with asyncio.timeout(FINISH):
                    await transport.send(channels.ERROR, message)
        await transport.close()
    finally:
        for job in (*pumps, receiver, exited):
            job.cancel()
        await asyncio.gather(*pumps, receiver, exited, return_exceptions=True)


def _failure(exited: asyncio.Future[int]) -> str | None:
    """None when the process's exit is known; "" when the client left first; else why the
    wait failed (the shim gone, ctrpyd stopping)."""
    if not exited.done():
        return ""
    if exited.cancelled():
        return "the wait for the process was cancelled"
    error = exited.exception()
    if error is None:
        return None
    return error.message if isinstance(error, CtrpyError) else repr(error)


async def _pump_out(transport: Transport, channel: int, reader: Output) -> None:
    with contextlib.suppress(TransportClosed, OSError):
        while data := await reader.read():
            await transport.send(channel, data)


class Buffered:
    """A :class:`Transport` whose incoming messages can be looked at before :func:`run` takes
    them (:meth:`first_size`); nothing is lost: what was looked at is given again, in order."""

    def __init__(self, inner: Transport, depth: int = 64) -> None:
        self.inner = inner
        self.protocol = inner.protocol
        # Bounded: a client sending stdin faster than the process reads is held back, as before.
        self._queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(depth)
        self._seen: list[tuple[int, bytes] | None] = []
        self._reader = asyncio.ensure_future(self._read())

    async def _read(self) -> None:
        try:
            async for item in self.inner.incoming():
                await self._queue.put(item)
        finally:
            with contextlib.suppress(asyncio.QueueFull):
                self._queue.put_nowait(None)  # the end (if full, the reader of the queue is gone)

    async def first_size(self, timeout: float = FIRST_SIZE_WAIT) -> tuple[int, int] | None:
        """The client's first terminal size (width, height), or None when none came in time."""
        sizes = channels.ResizeDecoder()
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while (left := deadline - loop.time()) > 0:
            try:
                item = await asyncio.wait_for(self._queue.get(), left)
            except TimeoutError:
                return None
            self._seen.append(item)
            if item is None:
                return None
            if item[0] == channels.RESIZE and (found := sizes.feed(item[1])):
                return found[-1]
        return None

    async def ready(self, first: int) -> None:
        await self.inner.ready(first)

    async def send(self, channel: int, data: bytes) -> None:
        await self.inner.send(channel, data)

    async def incoming(self) -> AsyncIterator[tuple[int, bytes]]:
        seen, self._seen = self._seen, []
        for item in seen:
            if item is None:
                return
            yield item
        while (item := await self._queue.get()) is not None:
            yield item

    async def close(self) -> None:
        try:
            await self.inner.close()
        finally:
            self._reader.cancel()
            await asyncio.gather(self._reader, return_exceptions=True)


async def _receive(transport: Transport, process: Process) -> None:
    """Stdin, its end and terminal sizes from the client, until it has gone."""
    sizes = channels.ResizeDecoder()
    async for channel, data in transport.incoming():
        if channel == channels.STDIN:
            await process.write_stdin(data)
        elif channel == channels.RESIZE:
            for width, height in sizes.feed(data):
                await process.resize(width, height)
        elif channel == channels.CLOSE and data == bytes((channels.STDIN,)):
            await process.close_stdin()
