"""A SPDY/3.1 connection over asyncio streams: streams, flow control, PING, RST and GOAWAY.

A streaming server wraps the socket it upgraded in a :class:`Connection` and takes the streams
the client opens (kubectl/crictl open ``error``, ``stdin``, ``stdout``, ... for an exec, a
``data`` and an ``error`` stream per port for a port-forward)::

    conn = Connection(reader, writer, server=True)
    conn.start()
    stream = await conn.accept_stream()      # SYN_REPLY already sent
    stream.headers["streamtype"]
    await stream.write(b"out"); await stream.close()    # FIN
    data = await stream.read()               # b"" once the peer sent FIN
    stream.reset()                           # RST_STREAM CANCEL
    await conn.aclose()                      # GOAWAY, then the socket closes

Flow control. SPDY/3.1 gives every stream and the session a 64 KiB send window that the
receiver reopens with WINDOW_UPDATE as its application consumes data. This connection always
sends those updates, and with ``flow_control=True`` it honours the peer's windows and resets a
stream that overruns its own (FLOW_CONTROL_ERROR). moby/spdystream -- and so kubelet, kubectl,
crictl and critest -- ignores WINDOW_UPDATE and never sends one (checked by hand: a Go client on
the vendored k8s roundtripper gets 64 KiB of a 1 MiB stdout, then its stdin stream is reset).
So the default is ``flow_control=False``, as spdystream behaves: windows are tracked but not
enforced, and reading stops (TCP pushes back) while a stream holds more than ``max_buffer``
unread bytes. Pass ``flow_control=True`` only for a peer known to do SPDY/3.1 flow control.
"""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools

from ctrpy.errors import Aborted, Unavailable

from .spdy import (
    DEFAULT_WINDOW,
    FLAG_FIN,
    FLAG_UNIDIRECTIONAL,
    MAX_WINDOW,
    Data,
    Frame,
    FrameDecoder,
    FrameEncoder,
    GoAway,
    GoAwayStatus,
    Headers,
    HeadersFrame,
    Ping,
    RstStatus,
    RstStream,
    Setting,
    SettingId,
    Settings,
    SpdyProtocolError,
    SynReply,
    SynStream,
    WindowUpdate,
)

CHUNK = 32 * 1024
"""The largest data frame this side sends."""


class StreamReset(Aborted):
    """The stream was reset (RST_STREAM) by either side; ``status`` says why."""

    def __init__(self, stream_id: int, status: int) -> None:
        self.stream_id = stream_id
        self.status = status
        try:
            name = RstStatus(status).name
        except ValueError:
            name = str(status)
        super().__init__(f"spdy stream {stream_id} reset ({name})")


class ConnectionClosed(Unavailable):
    """The connection ended (GOAWAY, EOF, a protocol error, or :meth:`Connection.aclose`)."""


class Stream:
    """One SPDY stream, either direction; created by :class:`Connection`, never directly."""

    def __init__(self, conn: Connection, stream_id: int, headers: Headers, send_window: int) -> None:
        self._conn = conn
        self.stream_id = stream_id
        self.headers = headers
        self.reply_headers: Headers = {}
        self._chunks: collections.deque[bytes] = collections.deque()
        self._buffered = 0
        self._recv_window = conn.initial_window
        self._unacked = 0
        self.send_window = send_window
        self.remote_closed = False
        self.local_closed = False
        self.reset_status = 0
        self._changed = asyncio.Event()
        self._write_lock = asyncio.Lock()
        self.replied: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _wake(self) -> None:
        self._changed.set()
        self._conn._wake_writers()

    async def read(self) -> bytes:
        """The next bytes the peer sent, ``b""`` once it sent FIN; raises :class:`StreamReset`."""
        while not self._chunks:
            if self.reset_status:
                raise StreamReset(self.stream_id, self.reset_status)
            if self.remote_closed:
                return b""
            self._changed.clear()
            await self._changed.wait()
        chunk = self._chunks.popleft()
        self._buffered -= len(chunk)
        self._conn._consumed(self, len(chunk))
        self._conn._maybe_forget(self)
        return chunk

    async def write(self, data: bytes) -> None:
        """Send ``data`` in frames the windows allow; raises :class:`StreamReset` or
        :class:`ConnectionClosed` when it can no longer go. Concurrent writes on one stream go
        one after the other, whole, so a message (a resize, a status) is never split by another."""
        view = memoryview(data)
        async with self._write_lock:
            while view:
                size = await self._conn._reserve(self, len(view))
                await self._conn._send(Data(self.stream_id, bytes(view[:size])))
                view = view[size:]

    async def close(self) -> None:
        """Half-close: FIN after what was written (it waits for writes under way). Idempotent;
        a no-op on a reset stream."""
        async with self._write_lock:
            if self.local_closed or self.reset_status:
                return
            self.local_closed = True
            await self._conn._send(Data(self.stream_id, b"", FLAG_FIN))
        self._conn._maybe_forget(self)

    def reset(self, status: int = RstStatus.CANCEL) -> None:
        """Abort the stream both ways with RST_STREAM; later reads and writes raise. Safe to call
        in any state, on a dead connection too (then only the local side ends)."""
        if self.reset_status:
            return
        with contextlib.suppress(ConnectionClosed, ConnectionError, OSError):
            self._conn._write_now(RstStream(self.stream_id, status))
        self._on_reset(status)

    def _on_reset(self, status: int) -> None:
        self.reset_status = status
        if not self.replied.done():
            self.replied.set_exception(StreamReset(self.stream_id, status))
            self.replied.exception()  # nobody may await it: not an unretrieved error
        self._wake()
        self._conn._forget(self)


class Connection:
    """One side of a SPDY/3.1 session over an asyncio stream pair.

    ``server`` picks the stream-id parity (servers open even ids, clients odd). Frames are
    written in the order they are encoded, so the shared header compressor stays in step.
    """

    def __init__(
        self,
        reader: asyncio.StreamReader,
        writer: asyncio.StreamWriter,
        *,
        server: bool,
        flow_control: bool = False,
        initial_window: int = DEFAULT_WINDOW,
        max_buffer: int = 1 << 20,
        max_pending: int = 100,
    ) -> None:
        self._reader = reader
        self._writer = writer
        self.server = server
        self.flow_control = flow_control
        self.initial_window = initial_window
        self._max_buffer = max_buffer
        self._encoder = FrameEncoder()
        self._decoder = FrameDecoder()
        self._streams: dict[int, Stream] = {}
        self._next_id = 2 if server else 1
        self._next_ping = itertools.count(2 if server else 1, 2)
        self._pings: dict[int, asyncio.Future[None]] = {}
        self._last_peer_id = 0
        self._peer_initial_window = DEFAULT_WINDOW
        self._session_send = DEFAULT_WINDOW
        self._session_unacked = 0
        self._pending: asyncio.Queue[Stream | None] = asyncio.Queue(max_pending)
        self._window_changed = asyncio.Event()
        self._reader_task: asyncio.Task[None] | None = None
        self.goaway_received = False
        self.closed = False
        self.close_reason = ""

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Start reading frames; announces a non-default initial window with SETTINGS."""
        if self.initial_window != DEFAULT_WINDOW:
            entry = Setting(SettingId.INITIAL_WINDOW_SIZE, self.initial_window)
            self._write_now(Settings((entry,)))
        self._reader_task = asyncio.create_task(self._read_loop())

    async def aclose(self, status: int = GoAwayStatus.OK, grace: float = 5.0) -> None:
        """Send GOAWAY, close the socket and end every stream; idempotent.

        What is still buffered goes out if the peer takes it within ``grace`` seconds; a peer
        that stopped reading gets the socket aborted instead of holding the caller forever.
        """
        if not self.closed:
            with contextlib.suppress(ConnectionClosed, ConnectionError, OSError):
                self._write_now(GoAway(self._last_peer_id, status))
        self._shutdown("closed locally")
        if self._reader_task is not None and self._reader_task is not asyncio.current_task():
            self._reader_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader_task
        try:
            await asyncio.wait_for(self._writer.wait_closed(), grace)
        except (TimeoutError, ConnectionError, OSError):
            self._writer.transport.abort()

    async def wait_closed(self) -> None:
        """Return once the peer or we ended the connection."""
        if self._reader_task is not None:
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.shield(self._reader_task)

    def _shutdown(self, reason: str) -> None:
        if self.closed:
            return
        self.closed = True
        self.close_reason = reason
        for stream in list(self._streams.values()):
            if not stream.remote_closed or not stream.replied.done():
                stream._on_reset(RstStatus.CANCEL)
            stream._wake()
        self._streams.clear()
        for fut in self._pings.values():
            if not fut.done():
                fut.set_exception(ConnectionClosed(reason))
                fut.exception()
        with contextlib.suppress(asyncio.QueueFull):
            self._pending.put_nowait(None)
        self._wake_writers()
        self._writer.close()

    # -- the API ----------------------------------------------------------------------------

    async def accept_stream(self) -> Stream:
        """The next stream the peer opened; raises :class:`ConnectionClosed` when no more come."""
        if self._pending.empty() and (self.closed or self.goaway_received):
            raise ConnectionClosed(f"spdy connection: {self.close_reason or 'going away'}")
        stream = await self._pending.get()
        if stream is None:
            with contextlib.suppress(asyncio.QueueFull):
                self._pending.put_nowait(None)  # wake any other acceptor too
            raise ConnectionClosed(f"spdy connection: {self.close_reason or 'closed'}")
        return stream

    async def open_stream(self, headers: Headers, *, fin: bool = False) -> Stream:
        """Open a stream (SYN_STREAM) and wait for the peer's SYN_REPLY."""
        if self.closed or self.goaway_received:
            raise ConnectionClosed("spdy connection: closed")
        sid = self._next_id
        self._next_id += 2
        stream = Stream(self, sid, dict(headers), self._peer_initial_window)
        stream.local_closed = fin
        self._streams[sid] = stream
        self._write_now(SynStream(sid, dict(headers), flags=FLAG_FIN if fin else 0))
        await self._writer.drain()
        await stream.replied
        return stream

    async def ping(self) -> None:
        """Send a PING and wait for its echo."""
        pid = next(self._next_ping)
        fut: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._pings[pid] = fut
        try:
            await self._send(Ping(pid))
            await fut
        finally:
            self._pings.pop(pid, None)

    # -- writing ----------------------------------------------------------------------------

    def _write_now(self, frame: Frame) -> None:
        if self.closed or self._writer.is_closing():
            raise ConnectionClosed("spdy connection: closed")
        self._writer.write(self._encoder.encode(frame))

    async def _send(self, frame: Frame) -> None:
        self._write_now(frame)
        try:
            await self._writer.drain()
        except (ConnectionError, OSError) as exc:
            self._shutdown(f"write failed: {exc}")
            raise ConnectionClosed("spdy connection: write failed") from exc

    def _wake_writers(self) -> None:
        self._window_changed.set()

    async def _reserve(self, stream: Stream, wanted: int) -> int:
        """Wait for send window on ``stream`` and the session; take up to ``wanted`` bytes."""
        while True:
            if stream.reset_status:
                raise StreamReset(stream.stream_id, stream.reset_status)
            if self.closed:
                raise ConnectionClosed("spdy connection: closed")
            if stream.local_closed:
                raise StreamReset(stream.stream_id, RstStatus.STREAM_ALREADY_CLOSED)
            if not self.flow_control:
                return min(wanted, CHUNK)
            size = min(wanted, CHUNK, stream.send_window, self._session_send)
            if size > 0:
                stream.send_window -= size
                self._session_send -= size
                return size
            self._window_changed.clear()
            await self._window_changed.wait()

    def _consumed(self, stream: Stream, size: int) -> None:
        """The application read ``size`` bytes: reopen windows once half of one is used."""
        stream._unacked += size
        self._session_unacked += size
        half = self.initial_window // 2
        with contextlib.suppress(ConnectionClosed, ConnectionError, OSError):
            if stream._unacked >= half and not stream.remote_closed and not stream.reset_status:
                stream._recv_window += stream._unacked
                self._write_now(WindowUpdate(stream.stream_id, stream._unacked))
                stream._unacked = 0
            if self._session_unacked >= DEFAULT_WINDOW // 2:
                self._write_now(WindowUpdate(0, self._session_unacked))
                self._session_unacked = 0
        stream._changed.set()

    # -- reading ----------------------------------------------------------------------------

    async def _read_loop(self) -> None:
        reason = "peer closed the connection"
        try:
            while True:
                head = await self._reader.readexactly(8)
                length = int.from_bytes(head[5:8], "big")
                payload = await self._reader.readexactly(length) if length else b""
                for frame in self._decoder.feed(head + payload):
                    await self._handle(frame)
                if self.closed:
                    return
        except asyncio.IncompleteReadError:
            pass
        except SpdyProtocolError as exc:
            reason = str(exc)
            with contextlib.suppress(ConnectionClosed, ConnectionError, OSError):
                self._write_now(GoAway(self._last_peer_id, GoAwayStatus.PROTOCOL_ERROR))
        except (ConnectionClosed, ConnectionError, OSError) as exc:
            reason = f"read failed: {exc}"
        finally:
            self._finish_reading(reason)

    def _finish_reading(self, reason: str) -> None:
        for stream in list(self._streams.values()):
            stream.remote_closed = True
        self._shutdown(reason)

    async def _handle(self, frame: Frame) -> None:
        if isinstance(frame, Data):
            await self._on_data(frame)
        elif isinstance(frame, SynStream):
            self._on_syn_stream(frame)
        elif isinstance(frame, SynReply | HeadersFrame):
            stream = self._streams.get(frame.stream_id)
            if stream is None:
                return
            if isinstance(frame, SynReply):
                stream.reply_headers = frame.headers
                if not stream.replied.done():
                    stream.replied.set_result(None)
            if frame.flags & FLAG_FIN:
                self._remote_fin(stream)
        elif isinstance(frame, RstStream):
            stream = self._streams.get(frame.stream_id)
            if stream is not None:
                stream._on_reset(frame.status)
        elif isinstance(frame, WindowUpdate):
            self._on_window_update(frame)
        elif isinstance(frame, Settings):
            self._on_settings(frame)
        elif isinstance(frame, Ping):
            if frame.ping_id % 2 != (0 if self.server else 1):
                self._write_now(frame)
            elif (fut := self._pings.get(frame.ping_id)) is not None and not fut.done():
                fut.set_result(None)
        elif isinstance(frame, GoAway):
            self.goaway_received = True
            with contextlib.suppress(asyncio.QueueFull):
                self._pending.put_nowait(None)

    def _on_syn_stream(self, frame: SynStream) -> None:
        sid = frame.stream_id
        if sid % 2 != (0 if self.server else 1) and sid > self._last_peer_id:
            if self.goaway_received or self.closed:
                self._write_now(RstStream(sid, RstStatus.REFUSED_STREAM))
                return
            self._last_peer_id = sid
            stream = Stream(self, sid, frame.headers, self._peer_initial_window)
            stream.remote_closed = bool(frame.flags & FLAG_FIN)
            stream.local_closed = bool(frame.flags & FLAG_UNIDIRECTIONAL)
            stream.replied.set_result(None)
            try:
                self._pending.put_nowait(stream)
            except asyncio.QueueFull:
                self._write_now(RstStream(sid, RstStatus.REFUSED_STREAM))
                return
            self._streams[sid] = stream
            self._write_now(SynReply(sid, {}))
        elif sid in self._streams:
            self._write_now(RstStream(sid, RstStatus.STREAM_IN_USE))
        else:
            raise SpdyProtocolError(f"SYN_STREAM {sid} out of order", sid)

    async def _on_data(self, frame: Data) -> None:
        stream = self._streams.get(frame.stream_id)
        size = len(frame.data)
        if stream is None:
            if frame.stream_id > max(self._last_peer_id, self._next_id - 2):
                raise SpdyProtocolError(f"data on unopened stream {frame.stream_id}")
            # A stream already reset or done: the frame was in flight; drop it, but give its
            # bytes back to the session window.
            self._session_unacked += size
            return
        if stream.remote_closed:
            self._session_unacked += size
            stream.reset(RstStatus.STREAM_ALREADY_CLOSED)
            return
        if self.flow_control and size > stream._recv_window:
            stream.reset(RstStatus.FLOW_CONTROL_ERROR)
            return
        stream._recv_window -= size
        if size:
            stream._chunks.append(frame.data)
            stream._buffered += size
        if frame.fin:
            self._remote_fin(stream)
        stream._wake()
        while (
            not self.flow_control
            and stream._buffered > self._max_buffer
            and not stream.reset_status
            and not self.closed
        ):
            stream._changed.clear()
            await stream._changed.wait()

    def _remote_fin(self, stream: Stream) -> None:
        stream.remote_closed = True
        stream._wake()
        self._maybe_forget(stream)

    def _on_window_update(self, frame: WindowUpdate) -> None:
        if frame.stream_id == 0:
            if self._session_send + frame.delta > MAX_WINDOW:
                raise SpdyProtocolError("session window overflow")
            self._session_send += frame.delta
        elif (stream := self._streams.get(frame.stream_id)) is not None:
            if stream.send_window + frame.delta > MAX_WINDOW:
                stream.reset(RstStatus.FLOW_CONTROL_ERROR)
                return
            stream.send_window += frame.delta
        self._wake_writers()

    def _on_settings(self, frame: Settings) -> None:
        for entry in frame.entries:
            if entry.id == SettingId.INITIAL_WINDOW_SIZE:
                if entry.value > MAX_WINDOW:
                    raise SpdyProtocolError(f"initial window {entry.value}")
                change = entry.value - self._peer_initial_window
                self._peer_initial_window = entry.value
                for stream in self._streams.values():
                    stream.send_window += change
        self._wake_writers()

    def _maybe_forget(self, stream: Stream) -> None:
        if stream.local_closed and stream.remote_closed and not stream._chunks:
            self._forget(stream)

    def _forget(self, stream: Stream) -> None:
        if self._streams.get(stream.stream_id) is stream:
            del self._streams[stream.stream_id]
