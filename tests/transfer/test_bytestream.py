"""The daemon's side of a byte stream (HTTP debug logs): Data messages of at most 32 KiB, never
more than the reader's window, nothing held up when nobody reads, a bounded backlog."""

from __future__ import annotations

import asyncio

from ctrpy.api.containerd.types.transfer import streaming_pb2
from ctrpy.manager.transfer.bytestream import MAX_DATA, ByteStreamWriter
from ctrpy.manager.transfer.streams import Stream, pack


def _sent(stream: Stream) -> list[bytes]:
    out: list[bytes] = []
    while not stream.outbox.empty():
        message = stream.outbox.get_nowait()
        if message is not None:
            out.append(streaming_pb2.Data.FromString(message.value).data)
    return out


async def _settle() -> None:
    for _ in range(5):
        await asyncio.sleep(0)


def test_sends_within_the_window() -> None:
    async def scenario() -> None:
        stream = Stream("ns", "logs")
        writer = ByteStreamWriter(stream)
        writer.start()
        payload = bytes(range(256)) * 400  # 102,400 bytes
        writer.write(payload)
        await _settle()
        assert _sent(stream) == []  # no window yet
        stream.inbox.put_nowait(pack(streaming_pb2.WindowUpdate(update=40_000)))
        await _settle()
        first = _sent(stream)
        assert [len(chunk) for chunk in first] == [MAX_DATA, 40_000 - MAX_DATA]
        stream.inbox.put_nowait(pack(streaming_pb2.WindowUpdate(update=1 << 20)))
        await _settle()
        rest = _sent(stream)
        assert all(len(chunk) <= MAX_DATA for chunk in rest)
        assert b"".join(first + rest) == payload
        await writer.aclose(drain_timeout=1)
        assert stream.closed

    asyncio.run(scenario())


def test_backlog_is_bounded_and_the_drop_is_reported() -> None:
    async def scenario() -> None:
        stream = Stream("ns", "logs")
        writer = ByteStreamWriter(stream, limit=1000)
        writer.start()
        writer.write(b"a" * 800)
        writer.write(b"b" * 800)  # over the limit: dropped
        assert writer.dropped == 800
        stream.inbox.put_nowait(pack(streaming_pb2.WindowUpdate(update=1 << 16)))
        await _settle()
        await writer.aclose(drain_timeout=1)
        text = b"".join(_sent(stream))
        assert text.startswith(b"a" * 800) and b"800 bytes of HTTP debug output dropped" in text

    asyncio.run(scenario())


def test_close_does_not_wait_forever_for_a_silent_reader() -> None:
    async def scenario() -> None:
        stream = Stream("ns", "logs")
        writer = ByteStreamWriter(stream)
        writer.start()
        writer.write(b"x" * 10)
        await asyncio.wait_for(writer.aclose(drain_timeout=0.2), 10)
        assert stream.closed and _sent(stream) == []

    asyncio.run(scenario())
