"""The remotecommand channels over SPDY/3.1 (a :class:`.pump.Transport`), as the kubelet serves them.

After the upgrade the client (client-go's remotecommand: crictl, critest, the API server)
opens one SPDY stream per channel, each named by its ``streamType`` header: ``error`` first,
then ``stdin``, ``stdout``, ``stderr`` as the request asked for them, and ``resize`` for a
terminal. The server waits until every expected stream is there (at most
:data:`STREAM_CREATION_TIMEOUT`), then runs the command. Stdin ends with the client's FIN on
its stream; the client leaving shows as the connection ending.

The negotiated ``X-Stream-Protocol-Version`` decides what the error stream says:

- ``v4.channel.k8s.io``: a ``metav1.Status`` JSON, for success too (the exit code in its causes);
- ``v3.channel.k8s.io``: a failure's message as text, nothing on success; adds the resize stream;
- ``v2.channel.k8s.io``: as v3 without resize;
- ``channel.k8s.io`` (v1): as v2, but the kubelet resets the error stream as soon as the streams
  are there and half-closes stdin from its side (what 1.0 kubelets did; kept for fidelity).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator

import structlog

from . import channels
from .channels import Protocol
from .pump import TransportClosed
from .spdyconn import Connection, ConnectionClosed, Stream, StreamReset

log = structlog.get_logger(__name__)

STREAM_CREATION_TIMEOUT = 30.0  # the kubelet's (and containerd's) default
CLOSE_GRACE = 5.0  # how long the end of the streams may take to go out

#: The versions served, in the kubelet's order; the client's order of preference decides.
PROTOCOLS = {
    p.name: p
    for p in (
        Protocol("v4.channel.k8s.io", binary=True, status_json=True, half_close=True),
        Protocol("v3.channel.k8s.io", binary=True, status_json=False, half_close=True),
        Protocol("v2.channel.k8s.io", binary=True, status_json=False, half_close=True),
        Protocol("channel.k8s.io", binary=True, status_json=False, half_close=True),
    )
}
V1 = "channel.k8s.io"
STREAM_TYPES = {"stdin": channels.STDIN, "stdout": channels.STDOUT, "stderr": channels.STDERR,
                "error": channels.ERROR, "resize": channels.RESIZE}


def resizes(protocol: str) -> bool:
    return protocol in ("v4.channel.k8s.io", "v3.channel.k8s.io")


def stream_type(stream: Stream) -> str:
    for name, value in stream.headers.items():
        if name.lower() == "streamtype":
            return value
    return ""


async def accept_streams(conn: Connection, protocol: str, *, stdin: bool, stdout: bool, stderr: bool,
                         tty: bool, timeout: float = STREAM_CREATION_TIMEOUT) -> dict[int, Stream]:
    """Channel -> stream for the streams a request with these flags expects, as the kubelet
    waits for them. Raises TimeoutError when they do not all come within ``timeout`` and
    :class:`.spdyconn.ConnectionClosed` when the client leaves first."""
    expected = 1 + stdin + stdout + stderr + (tty and resizes(protocol))
    streams: dict[int, Stream] = {}
    received = 0
    async with asyncio.timeout(timeout):
        while received < expected:
            stream = await conn.accept_stream()
            channel = STREAM_TYPES.get(stream_type(stream))
            if channel is None or (channel == channels.RESIZE and not resizes(protocol)):
                log.info("unexpected spdy stream type", stream_type=stream_type(stream), protocol=protocol)
                continue
            streams[channel] = stream
            received += 1
    if protocol == V1:
        if channels.ERROR in streams:
            streams.pop(channels.ERROR).reset()
        if channels.STDIN in streams:
            await streams[channels.STDIN].close()
    return streams


class SpdyTransport:
    """The exec's (or attach's) channels on the streams :func:`accept_streams` collected."""

    def __init__(self, conn: Connection, protocol: str, streams: dict[int, Stream]) -> None:
        self.conn = conn
        self.protocol: Protocol = PROTOCOLS[protocol]
        self.streams = streams

    async def ready(self, first: int) -> None:
        return None

    async def send(self, channel: int, data: bytes) -> None:
        stream = self.streams.get(channel)
        if stream is None:
            raise TransportClosed(f"no spdy stream for channel {channel}")
        try:
            await stream.write(data)
        except (StreamReset, ConnectionClosed) as exc:
            raise TransportClosed(str(exc)) from exc

    async def incoming(self) -> AsyncIterator[tuple[int, bytes]]:
        queue: asyncio.Queue[tuple[int, bytes] | None] = asyncio.Queue(16)
        # Sizes first: a terminal's size that arrived with the first keystrokes is set before
        # they are delivered (the readers start in this order).
        readers = [asyncio.ensure_future(self._read(channel, self.streams[channel], queue))
                   for channel in (channels.RESIZE, channels.STDIN) if channel in self.streams]
        gone = asyncio.ensure_future(self._gone(queue))
        try:
            while (item := await queue.get()) is not None:
                yield item
        finally:
            for job in (*readers, gone):
                job.cancel()
            await asyncio.gather(*readers, gone, return_exceptions=True)

    async def _read(self, channel: int, stream: Stream,
                    queue: asyncio.Queue[tuple[int, bytes] | None]) -> None:
        with contextlib.suppress(StreamReset, ConnectionClosed):
            while data := await stream.read():
                await queue.put((channel, data))
        if channel == channels.STDIN:
            await queue.put((channels.CLOSE, bytes((channels.STDIN,))))

    async def _gone(self, queue: asyncio.Queue[tuple[int, bytes] | None]) -> None:
        await self.conn.wait_closed()
        await queue.put(None)

    async def close(self) -> None:
        """FIN on every stream we write, then GOAWAY and the socket closes (the client reads
        to the end of each stream, then of the connection)."""
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(CLOSE_GRACE):  # a client that stopped reading: no FINs
                for channel in (channels.STDOUT, channels.STDERR, channels.ERROR):
                    stream = self.streams.get(channel)
                    if stream is not None:
                        with contextlib.suppress(StreamReset, ConnectionClosed):
                            await stream.close()
        await self.conn.aclose(grace=CLOSE_GRACE)
