"""A byte stream written to a client over a Streaming stream, with containerd's flow control.

containerd sends bytes on a stream (``core/transfer/streaming``: the HTTP debug logs of a
transfer, an export's tar) as ``containerd.types.transfer.Data`` messages of at most 32 KiB,
and only as many bytes as the reader allowed with ``WindowUpdate`` messages (containerd's reader
grants 64 KiB at a time, again whenever it has consumed some). :class:`ByteStreamWriter` does
that for the daemon's side.

It differs from containerd's writer in one way, on purpose: containerd's ``Write`` blocks until
the reader grants a window, so a client that never reads its log stream stalls the pull. Here
:meth:`ByteStreamWriter.write` never blocks: bytes wait in memory, up to ``limit``; what comes
beyond that is dropped, and a line saying how much was dropped is sent before the stream ends.
"""

from __future__ import annotations

import asyncio
import contextlib

import structlog

from ctrpy.api.containerd.types.transfer import streaming_pb2
from ctrpy.errors import InvalidArgument, Unavailable

from .streams import Stream, type_name, unpack

log = structlog.get_logger(__name__)

#: The largest Data message, as containerd's writer sends them.
MAX_DATA = 32 * 1024
#: Bytes kept waiting for the reader's window before further writes are dropped.
DEFAULT_LIMIT = 4 << 20
_WINDOW_UPDATE = streaming_pb2.WindowUpdate.DESCRIPTOR.full_name


class ByteStreamWriter:
    """Writes bytes to ``stream`` within the window its reader grants. Start it with
    :meth:`start` (in the event loop), end it with :meth:`aclose`, which sends what the window
    allows within ``drain_timeout`` and then closes the stream."""

    def __init__(self, stream: Stream, *, limit: int = DEFAULT_LIMIT) -> None:
        self.stream = stream
        self.limit = limit
        self.window = 0
        self.dropped = 0
        self._pending = bytearray()
        self._reader: asyncio.Task[None] | None = None
        self._drained = asyncio.Event()
        self._drained.set()
        self._gone = False

    def start(self) -> None:
        """Begin reading the reader's window updates."""
        if self._reader is None:
            self._reader = asyncio.ensure_future(self._read_updates())

    def write(self, data: bytes) -> None:
        """Queue ``data`` (sent as the window allows; dropped past ``limit``). Never blocks."""
        if self._gone or not data:
            return
        if len(self._pending) + len(data) > self.limit:
            self.dropped += len(data)
            return
        self._pending += data
        self._drained.clear()
        self._flush()

    def _flush(self) -> None:
        while self._pending and self.window > 0 and not self._gone:
            size = min(len(self._pending), MAX_DATA, self.window)
            self.stream.send(streaming_pb2.Data(data=bytes(self._pending[:size])))
            del self._pending[:size]
            self.window -= size
        if not self._pending:
            self._drained.set()

    async def _read_updates(self) -> None:
        try:
            while True:
                message = await self.stream.recv()
                if type_name(message) != _WINDOW_UPDATE:
                    log.debug("unexpected message on a byte stream", stream=self.stream.name,
                              type_url=message.type_url)
                    continue
                try:
                    update = unpack(message, streaming_pb2.WindowUpdate)
                except InvalidArgument:
                    continue
                if update.update > 0:
                    self.window += update.update
                    self._flush()
        except Unavailable:
            self._gone = True  # the reader went away: nothing more can be sent
            self._drained.set()

    async def aclose(self, drain_timeout: float = 5.0) -> None:
        """Send what is queued (waiting at most ``drain_timeout`` for the reader's window), say
        what was dropped, and close the stream."""
        if self.dropped and not self._gone:
            note = f"\n[ctrpyd: {self.dropped} bytes of HTTP debug output dropped: the client did not read them]\n"
            self._pending += note.encode()
            self._drained.clear()
            self._flush()
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(self._drained.wait(), drain_timeout)
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
        self.stream.close()
