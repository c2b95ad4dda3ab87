"""The SPDY/3.1 framing (``spdy``, ``spdyzlib``) and connection (``spdyconn``).

The captured frames below were written by moby/spdystream's Framer (the SPDY code that kubelet,
kubectl and crictl use), one Framer for the whole list, so the header blocks share one zlib
context and must be decoded in order by one decoder.
"""

from __future__ import annotations

import asyncio
import socket
import zlib
from collections.abc import Awaitable, Callable
from typing import TypeVar

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ctrpy.manager.cri.streaming import spdy
from ctrpy.manager.cri.streaming.spdy import (
    Data,
    FrameDecoder,
    FrameEncoder,
    GoAway,
    HeadersFrame,
    Ping,
    RstStatus,
    RstStream,
    Setting,
    Settings,
    SpdyProtocolError,
    SynReply,
    SynStream,
    WindowUpdate,
)
from ctrpy.manager.cri.streaming.spdyconn import Connection, ConnectionClosed, Stream, StreamReset
from ctrpy.manager.cri.streaming.spdyzlib import HEADER_DICTIONARY

T = TypeVar("T")

# (name, bytes written by spdystream, the frame they decode to)
CAPTURED: list[tuple[str, str, spdy.Frame]] = [
    (
        "syn_stream_error",
        "800300010000002a0000000100000000000078f9e3c6a7c26260606004a7b392a2d4c45c6851c29a5a54945f04000000ffff",
        SynStream(1, {"streamtype": "error"}),
    ),
    (
        "syn_stream_stdin",
        "800300010000001700000003000000000000c22e555c92929907000000ffff",
        SynStream(3, {"streamtype": "stdin"}),
    ),
    (
        "syn_stream_portforward_fin",
        "80030001010000340000000500000000000062606060c6906249492c498494e5452520dac2c0c280818181b3"
        "0812f799290c0c0c8c0600000000ffff",
        SynStream(5, {"streamtype": "data", "port": "8080", "requestid": "0"}, flags=spdy.FLAG_FIN),
    ),
    ("syn_reply", "800300020000000e000000016260606000000000ffff", SynReply(1, {})),
    ("rst_stream", "80030003000000080000000300000005", RstStream(3, RstStatus.CANCEL)),
    (
        "settings",
        "80030004000000140000000200000007000100000100000400000064",
        Settings((Setting(7, 65536), Setting(4, 100, flags=1))),
    ),
    ("ping", "800300060000000400000001", Ping(1)),
    ("goaway", "80030007000000080000000500000000", GoAway(5, 0)),
    (
        "headers_two_values",
        "8003000800000020000000056260606064606060afd04dad28294a646060604e644802000000ffff",
        HeadersFrame(5, {"x-extra": "a\x00b"}),
    ),
    ("window_update", "80030009000000080000000300008000", WindowUpdate(3, 32768)),
    ("data", "000000030000000668656c6c6f0a", Data(3, b"hello\n")),
    ("data_fin", "0000000301000000", Data(3, b"", spdy.FLAG_FIN)),
]

NO_HEADER_BLOCK = (RstStream, Settings, Ping, GoAway, WindowUpdate, Data)


def run(make: Callable[[], Awaitable[T]], timeout: float = 30) -> T:
    """Run one async test body on a fresh loop, bounded so a flow-control bug fails, not hangs."""

    async def bounded() -> T:
        return await asyncio.wait_for(make(), timeout)

    return asyncio.run(bounded())


# -- the codec ----------------------------------------------------------------------------------


def test_dictionary_is_the_spec_dictionary() -> None:
    assert len(HEADER_DICTIONARY) == 1423
    assert HEADER_DICTIONARY.startswith(b"\x00\x00\x00\x07options\x00\x00\x00\x04head")
    assert HEADER_DICTIONARY.endswith(b"charset=utf-8charset=iso-8859-1,utf-,*,enq=0.")


def test_captured_frames_decode_in_order() -> None:
    decoder = FrameDecoder()
    for name, hexbytes, expected in CAPTURED:
        assert decoder.feed(bytes.fromhex(hexbytes)) == [expected], name


def test_captured_stream_decodes_byte_by_byte() -> None:
    wire = b"".join(bytes.fromhex(h) for _, h, _ in CAPTURED)
    decoder = FrameDecoder()
    frames = [frame for i in range(len(wire)) for frame in decoder.feed(wire[i : i + 1])]
    assert frames == [expected for _, _, expected in CAPTURED]


@pytest.mark.parametrize("name,hexbytes,frame", [c for c in CAPTURED if isinstance(c[2], NO_HEADER_BLOCK)])
def test_encoding_matches_spdystream_bytes(name: str, hexbytes: str, frame: spdy.Frame) -> None:
    assert FrameEncoder().encode(frame).hex() == hexbytes


def test_our_header_blocks_decode_with_plain_zlib_and_the_dictionary() -> None:
    """What spdystream's reader does: one zlib stream primed with the dictionary."""
    encoder = FrameEncoder()
    first = encoder.encode(SynStream(1, {"streamtype": "error"}))
    second = encoder.encode(SynReply(1, {"a": "b"}))
    inflate = zlib.decompressobj(zlib.MAX_WBITS, HEADER_DICTIONARY)
    block = inflate.decompress(first[18:])
    assert block == b"\x00\x00\x00\x01\x00\x00\x00\x0astreamtype\x00\x00\x00\x05error"
    assert inflate.decompress(second[12:]) == b"\x00\x00\x00\x01\x00\x00\x00\x01a\x00\x00\x00\x01b"


EVERY_TYPE: list[spdy.Frame] = [
    SynStream(7, {"streamtype": "stdout", "requestid": "3"}, priority=5, associated_id=1, slot=2, flags=3),
    SynReply(7, {"status": "200", "v": ""}, flags=spdy.FLAG_FIN),
    RstStream(7, RstStatus.FLOW_CONTROL_ERROR),
    Settings((Setting(spdy.SettingId.INITIAL_WINDOW_SIZE, 1 << 20, 1),), spdy.FLAG_CLEAR_SETTINGS),
    Settings(()),
    Ping(0x7FFFFFFE),
    GoAway(2**31 - 1, spdy.GoAwayStatus.INTERNAL_ERROR),
    HeadersFrame(8, {"x": "1\x002"}, flags=spdy.FLAG_FIN),
    WindowUpdate(0, 2**31 - 1),
    WindowUpdate(9, 1),
    Data(2**31 - 1, b"x" * 70000, spdy.FLAG_FIN),
    Data(1, b""),
]


@pytest.mark.parametrize("frame", EVERY_TYPE, ids=lambda f: type(f).__name__)
def test_round_trip_every_frame_type(frame: spdy.Frame) -> None:
    assert FrameDecoder().feed(FrameEncoder().encode(frame)) == [frame]


def test_header_names_are_sent_lowercase() -> None:
    wire = FrameEncoder().encode(SynStream(1, {"streamType": "error"}))
    assert FrameDecoder().feed(wire) == [SynStream(1, {"streamtype": "error"})]


def test_unknown_control_type_is_skipped() -> None:
    unknown = bytes.fromhex("8003000500000004deadbeef")  # SPDY/2's NOOP, gone in SPDY/3
    assert FrameDecoder().feed(unknown + bytes.fromhex("800300060000000400000001")) == [Ping(1)]


def _raw_headers_frame(block: bytes, kind: int = 8) -> bytes:
    payload = (1).to_bytes(4, "big") + block
    return bytes([0x80, 3, 0, kind]) + len(payload).to_bytes(4, "big") + payload


def _deflate(block: bytes) -> bytes:
    z = zlib.compressobj(9, zlib.DEFLATED, zlib.MAX_WBITS, 8, zlib.Z_DEFAULT_STRATEGY, HEADER_DICTIONARY)
    return z.compress(block) + z.flush(zlib.Z_SYNC_FLUSH)


def _pairs(*pairs: tuple[bytes, bytes], count: int | None = None) -> bytes:
    out = (len(pairs) if count is None else count).to_bytes(4, "big")
    for name, value in pairs:
        out += len(name).to_bytes(4, "big") + name + len(value).to_bytes(4, "big") + value
    return out


MALFORMED = {
    "version 2": bytes.fromhex("800200060000000400000001"),
    "ping too long": bytes.fromhex("80030006000000050000000100"),
    "rst status 0": bytes.fromhex("80030003000000080000000100000000"),
    "rst stream 0": bytes.fromhex("80030003000000080000000000000005"),
    "window delta 0": bytes.fromhex("80030009000000080000000100000000"),
    "goaway short": bytes.fromhex("8003000700000004000000ff"),
    "settings count lies": bytes.fromhex("8003000400000004000000ff"),
    "syn_stream short": bytes.fromhex("80030001000000040000000f"),
    "data stream 0": bytes.fromhex("0000000000000001ff"),
    "not zlib": _raw_headers_frame(b"\xff" * 20),
    "uppercase name": _raw_headers_frame(_deflate(_pairs((b"Port", b"1")))),
    "duplicate name": _raw_headers_frame(_deflate(_pairs((b"a", b"1"), (b"a", b"2")))),
    "empty name": _raw_headers_frame(_deflate(_pairs((b"", b"1")))),
    "too many pairs": _raw_headers_frame(_deflate(_pairs((b"a", b"1"), count=9))),
    "trailing bytes": _raw_headers_frame(_deflate(_pairs((b"a", b"1")) + b"\x00")),
    "not utf-8": _raw_headers_frame(_deflate(_pairs((b"a", b"\xff")))),
    "zlib stream ended": _raw_headers_frame(zlib.compressobj(zdict=HEADER_DICTIONARY).compress(b"") + b""),
    "zlib bomb": _raw_headers_frame(_deflate(_pairs((b"a", b"x" * (2 << 20))))),
}


@pytest.mark.parametrize("wire", MALFORMED.values(), ids=list(MALFORMED))
def test_malformed_frames_raise_the_protocol_error(wire: bytes) -> None:
    with pytest.raises(SpdyProtocolError):
        FrameDecoder().feed(wire)


def test_frame_length_is_bounded_before_buffering() -> None:
    with pytest.raises(SpdyProtocolError):
        FrameDecoder(max_length=1024).feed(bytes.fromhex("0000000100000801"))


# -- fuzz ---------------------------------------------------------------------------------------

names = st.text(
    st.characters(min_codepoint=0x21, max_codepoint=0x7E).filter(lambda c: not c.isupper()), min_size=1
)
headers = st.dictionaries(names, st.text(max_size=40), max_size=6)
ids = st.integers(1, 2**31 - 1)
frames = st.one_of(
    st.builds(SynStream, ids, headers, st.integers(0, 7), st.integers(0, 2**31 - 1), st.integers(0, 255), st.integers(0, 3)),
    st.builds(SynReply, ids, headers, st.integers(0, 1)),
    st.builds(RstStream, ids, st.integers(1, 2**32 - 1)),
    st.builds(
        Settings,
        st.lists(st.builds(Setting, st.integers(0, 2**24 - 1), st.integers(0, 2**32 - 1), st.integers(0, 255)), max_size=4).map(tuple),
        st.integers(0, 1),
    ),
    st.builds(Ping, st.integers(0, 2**32 - 1)),
    st.builds(GoAway, st.integers(0, 2**31 - 1), st.integers(0, 2**32 - 1)),
    st.builds(HeadersFrame, ids, headers, st.integers(0, 1)),
    st.builds(WindowUpdate, st.integers(0, 2**31 - 1), st.integers(1, 2**31 - 1)),
    st.builds(Data, ids, st.binary(max_size=300), st.integers(0, 1)),
)  # fmt: skip
FUZZ = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@FUZZ
@given(st.binary(max_size=2000))
def test_fuzz_random_bytes_raise_only_the_protocol_error(data: bytes) -> None:
    try:
        FrameDecoder(max_length=4096).feed(data)
    except SpdyProtocolError:
        pass


@FUZZ
@given(st.lists(frames, max_size=12), st.data())
def test_fuzz_frame_sequences_round_trip_in_any_slicing(seq: list[spdy.Frame], data: st.DataObject) -> None:
    encoder = FrameEncoder()
    wire = b"".join(encoder.encode(frame) for frame in seq)
    cuts = sorted(data.draw(st.lists(st.integers(0, len(wire)), max_size=8)))
    decoder, decoded, start = FrameDecoder(), [], 0
    for end in [*cuts, len(wire)]:
        decoded += decoder.feed(wire[start:end])
        start = end
    assert decoded == seq


@FUZZ
@given(st.lists(frames, min_size=1, max_size=8), st.data())
def test_fuzz_corrupted_sequences_raise_only_the_protocol_error(
    seq: list[spdy.Frame], data: st.DataObject
) -> None:
    encoder = FrameEncoder()
    wire = bytearray(b"".join(encoder.encode(frame) for frame in seq))
    for _ in range(data.draw(st.integers(1, 6))):
        wire[data.draw(st.integers(0, len(wire) - 1))] = data.draw(st.integers(0, 255))
    try:
        FrameDecoder(max_length=1 << 16).feed(bytes(wire))
    except SpdyProtocolError:
        pass


@settings(max_examples=25, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.binary(min_size=1, max_size=500))
def test_fuzz_connection_fed_garbage_closes(garbage: bytes) -> None:
    """Whatever arrives, the connection ends (GOAWAY or EOF) and no call hangs or leaks."""

    async def body() -> None:
        async with loopback_raw(server=True) as (conn, peer):
            peer.writer.write(garbage)
            await peer.writer.drain()
            peer.writer.write_eof()
            await conn.wait_closed()
            assert conn.closed
            with pytest.raises(ConnectionClosed):
                while True:
                    stream = await conn.accept_stream()
                    stream.reset()

    run(body, timeout=20)


# -- the connection -----------------------------------------------------------------------------


class RawPeer:
    """The other end as bare frames: what a peer that ignores flow control (spdystream) does."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader, self.writer = reader, writer
        self.encoder, self.decoder = FrameEncoder(), FrameDecoder()
        self.frames: list[spdy.Frame] = []

    async def send(self, *frames: spdy.Frame) -> None:
        for frame in frames:
            self.writer.write(self.encoder.encode(frame))
        await self.writer.drain()

    async def recv(self) -> spdy.Frame:
        while not self.frames:
            data = await self.reader.read(65536)
            if not data:
                raise EOFError
            self.frames += self.decoder.feed(data)
        return self.frames.pop(0)

    async def recv_until(self, kind: type[T]) -> T:
        while not isinstance(frame := await self.recv(), kind):
            pass
        return frame


class loopback_raw:
    """A :class:`Connection` on one end of a socket pair and a :class:`RawPeer` on the other
    (with SPDY/3.1 flow control unless the test says otherwise)."""

    def __init__(self, *, server: bool, **kwargs: object) -> None:
        self.server, self.kwargs = server, {"flow_control": True, **kwargs}

    async def __aenter__(self) -> tuple[Connection, RawPeer]:
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        self.conn = Connection(ra, wa, server=self.server, **self.kwargs)  # type: ignore[arg-type]
        self.conn.start()
        self.peer = RawPeer(rb, wb)
        return self.conn, self.peer

    async def __aexit__(self, *exc: object) -> None:
        await self.conn.aclose()
        self.peer.writer.close()
        try:
            await self.peer.writer.wait_closed()
        except OSError:
            pass


class loopback:
    """A client and a server :class:`Connection` joined by a socket pair (flow control on unless
    the test says otherwise)."""

    def __init__(self, **kwargs: object) -> None:
        self.kwargs = {"flow_control": True, **kwargs}

    async def __aenter__(self) -> tuple[Connection, Connection]:
        a, b = socket.socketpair()
        ra, wa = await asyncio.open_connection(sock=a)
        rb, wb = await asyncio.open_connection(sock=b)
        self.client = Connection(ra, wa, server=False, **self.kwargs)  # type: ignore[arg-type]
        self.server = Connection(rb, wb, server=True, **self.kwargs)  # type: ignore[arg-type]
        self.client.start()
        self.server.start()
        return self.client, self.server

    async def __aexit__(self, *exc: object) -> None:
        await self.client.aclose()
        await self.server.aclose()


async def read_all(stream: Stream) -> bytes:
    out = bytearray()
    while chunk := await stream.read():
        out += chunk
    return bytes(out)


async def until(check: Callable[[], bool], timeout: float = 10) -> None:
    """Poll ``check`` until it holds (generous, for a loaded machine)."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not check():
        assert loop.time() < deadline, "condition not reached"
        await asyncio.sleep(0.01)


PAYLOAD = bytes(range(256)) * 4096  # 1 MiB


def test_exchange_streams_with_k8s_headers() -> None:
    async def body() -> None:
        async with loopback() as (client, server):
            opened = [
                await client.open_stream({"streamType": "error"}),
                await client.open_stream({"streamtype": "data", "port": "8080", "requestID": "0"}),
            ]
            accepted = [await server.accept_stream(), await server.accept_stream()]
            assert [s.stream_id for s in opened] == [1, 3]
            assert [s.headers for s in accepted] == [
                {"streamtype": "error"},
                {"streamtype": "data", "port": "8080", "requestid": "0"},
            ]
            await accepted[1].write(b"HTTP/1.0 200 OK\r\n\r\n")
            await accepted[1].close()
            await opened[1].write(b"GET / HTTP/1.0\r\n\r\n")
            await opened[1].close()
            assert await read_all(opened[1]) == b"HTTP/1.0 200 OK\r\n\r\n"
            assert await read_all(accepted[1]) == b"GET / HTTP/1.0\r\n\r\n"
            await opened[0].close()
            assert await accepted[0].read() == b""

    run(body)


def test_one_mebibyte_each_way_through_64k_windows() -> None:
    """The sender stops at the receiver's window until the receiver reads."""

    async def body() -> None:
        async with loopback() as (client, server):
            up = await client.open_stream({"streamtype": "stdin"})
            down = await server.accept_stream()
            writer = asyncio.create_task(up.write(PAYLOAD))
            await until(lambda: up.send_window == 0)
            await asyncio.sleep(0.1)
            assert not writer.done(), "the sender ran past the 64 KiB window"
            assert len(down._chunks) and down._buffered == spdy.DEFAULT_WINDOW
            reader = asyncio.create_task(read_all(down))
            await writer
            await up.close()
            assert await reader == PAYLOAD
            # and back; close() waits for the write under way, so FIN comes after the data
            back = asyncio.gather(down.write(PAYLOAD), down.close())
            assert await read_all(up) == PAYLOAD
            await back

    run(body)


def test_receiver_resets_a_stream_that_overruns_its_window() -> None:
    async def body() -> None:
        async with loopback_raw(server=True) as (conn, peer):
            await peer.send(SynStream(1, {"streamtype": "stdin"}))
            stream = await conn.accept_stream()
            assert await peer.recv_until(SynReply) == SynReply(1, {})
            await peer.send(Data(1, b"x" * spdy.DEFAULT_WINDOW), Data(1, b"y"))
            assert await peer.recv_until(RstStream) == RstStream(1, RstStatus.FLOW_CONTROL_ERROR)
            with pytest.raises(StreamReset):
                await read_all(stream)

    run(body)


def test_window_updates_are_sent_as_data_is_read() -> None:
    async def body() -> None:
        async with loopback_raw(server=True) as (conn, peer):
            await peer.send(SynStream(1, {"streamtype": "stdin"}))
            stream = await conn.accept_stream()
            await peer.send(Data(1, b"x" * spdy.DEFAULT_WINDOW))
            assert len(await stream.read()) == spdy.DEFAULT_WINDOW
            updates = {(await peer.recv_until(WindowUpdate)).stream_id for _ in range(2)}
            assert updates == {0, 1}  # the stream's window and SPDY/3.1's session window

    run(body)


def test_lenient_mode_serves_a_peer_that_never_updates_windows() -> None:
    """spdystream (kubectl, crictl) never sends WINDOW_UPDATE: without flow control 1 MiB goes."""

    async def body() -> None:
        async with loopback_raw(server=True, flow_control=False) as (conn, peer):
            await peer.send(SynStream(1, {"streamtype": "stdout"}, flags=spdy.FLAG_FIN))
            stream = await conn.accept_stream()
            sending = asyncio.gather(stream.write(PAYLOAD), stream.close())
            got = bytearray()
            while not isinstance(frame := await peer.recv(), Data) or not frame.fin:
                if isinstance(frame, Data):
                    got += frame.data
            assert got == PAYLOAD
            await sending

    run(body)


def test_lenient_mode_pushes_back_on_an_unread_stream() -> None:
    """Without flow control a peer that floods one stream fills at most ``max_buffer``; the
    rest waits in the socket until the application reads."""

    async def body() -> None:
        async with loopback_raw(server=True, flow_control=False, max_buffer=256 * 1024) as (conn, peer):
            await peer.send(SynStream(1, {"streamtype": "stdin"}))
            stream = await conn.accept_stream()
            frames = [Data(1, b"z" * 32768) for _ in range(64)] + [Data(1, b"", spdy.FLAG_FIN)]
            flooding = asyncio.create_task(peer.send(*frames))
            await until(lambda: stream._buffered > 256 * 1024)
            await asyncio.sleep(0.2)
            assert stream._buffered <= 256 * 1024 + 32768
            assert await read_all(stream) == b"z" * (2 << 20)
            await flooding

    run(body)


def test_default_is_lenient_like_spdystream() -> None:
    async def body() -> None:
        async with loopback(flow_control=False) as (client, server):
            assert Connection.__init__.__kwdefaults__ is not None
            assert Connection.__init__.__kwdefaults__["flow_control"] is False
            up = await client.open_stream({"streamtype": "stdin"})
            down = await server.accept_stream()
            sending = asyncio.gather(up.write(PAYLOAD), up.close())
            assert await read_all(down) == PAYLOAD
            await sending

    run(body)


def test_strict_mode_stalls_at_the_peers_window() -> None:
    async def body() -> None:
        async with loopback_raw(server=True) as (conn, peer):
            await peer.send(SynStream(1, {"streamtype": "stdout"}))
            stream = await conn.accept_stream()
            writer = asyncio.create_task(stream.write(PAYLOAD))
            await until(lambda: stream.send_window == 0)
            await asyncio.sleep(0.1)
            assert not writer.done()
            await peer.send(WindowUpdate(1, len(PAYLOAD)))
            await asyncio.sleep(0.1)
            assert not writer.done(), "the session window must hold it too"
            await peer.send(WindowUpdate(0, len(PAYLOAD)))
            received = 0
            while received < len(PAYLOAD):
                frame = await peer.recv_until(Data)
                received += len(frame.data)
            assert received == len(PAYLOAD)
            await writer

    run(body)


def test_settings_initial_window_resizes_open_streams() -> None:
    async def body() -> None:
        async with loopback_raw(server=True) as (conn, peer):
            await peer.send(SynStream(1, {"streamtype": "stdout"}))
            stream = await conn.accept_stream()
            await peer.send(Settings((Setting(spdy.SettingId.INITIAL_WINDOW_SIZE, 1024),)))
            await until(lambda: stream.send_window == 1024)

    run(body)


def test_ping_both_ways() -> None:
    async def body() -> None:
        async with loopback() as (client, server):
            await client.ping()
            await server.ping()
        async with loopback_raw(server=True) as (_, peer):
            await peer.send(Ping(7))  # a client's odd id: echoed
            assert await peer.recv_until(Ping) == Ping(7)

    run(body)


def test_reset_both_ways() -> None:
    async def body() -> None:
        async with loopback() as (client, server):
            ours = await client.open_stream({"streamtype": "resize"})
            theirs = await server.accept_stream()
            theirs.reset()
            with pytest.raises(StreamReset) as caught:
                await ours.read()
            assert caught.value.status == RstStatus.CANCEL
            with pytest.raises(StreamReset):
                await ours.write(b"x")
            second = await client.open_stream({"streamtype": "stdin"})
            accepted = await server.accept_stream()
            second.reset(RstStatus.INTERNAL_ERROR)
            with pytest.raises(StreamReset):
                await accepted.read()
            await server.ping()  # the session lives on
            third = await client.open_stream({"streamtype": "stdout"})
            await client.aclose()
            third.reset()  # harmless on a closed connection
            assert third.reset_status

    run(body)


def test_refused_syn_reply_wait_ends_in_reset() -> None:
    async def body() -> None:
        async with loopback_raw(server=False) as (conn, peer):
            opening = asyncio.create_task(conn.open_stream({"streamtype": "error"}))
            syn = await peer.recv_until(SynStream)
            await peer.send(RstStream(syn.stream_id, RstStatus.REFUSED_STREAM))
            with pytest.raises(StreamReset):
                await opening

    run(body)


def test_goaway_ends_accepting_and_closes_cleanly() -> None:
    async def body() -> None:
        async with loopback() as (client, server):
            stream = await client.open_stream({"streamtype": "stdout"})
            accepted = await server.accept_stream()
            await accepted.write(b"last words")
            await client.aclose()
            with pytest.raises(ConnectionClosed):
                await server.accept_stream()
            await server.wait_closed()
            assert server.closed
            with pytest.raises(ConnectionClosed):
                await accepted.write(b"more")
            assert stream.reset_status  # ours, ended by our own close
        async with loopback_raw(server=True) as (conn, peer):
            await conn.aclose()
            assert await peer.recv_until(GoAway) == GoAway(0, spdy.GoAwayStatus.OK)

    run(body)


def test_protocol_error_answers_goaway_and_closes() -> None:
    async def body() -> None:
        async with loopback_raw(server=True) as (conn, peer):
            await peer.send(SynStream(3, {}))
            await conn.accept_stream()
            await peer.send(SynStream(1, {}))  # ids must increase
            frame = await peer.recv_until(GoAway)
            assert frame == GoAway(3, spdy.GoAwayStatus.PROTOCOL_ERROR)
            await conn.wait_closed()
            assert "out of order" in conn.close_reason

    run(body)


def test_data_after_fin_and_on_closed_streams() -> None:
    async def body() -> None:
        async with loopback_raw(server=True) as (conn, peer):
            await peer.send(SynStream(1, {}, flags=spdy.FLAG_FIN))
            stream = await conn.accept_stream()
            assert await stream.read() == b""
            await peer.send(Data(1, b"late"))
            assert await peer.recv_until(RstStream) == RstStream(1, RstStatus.STREAM_ALREADY_CLOSED)
            await peer.send(Data(1, b"in flight after the reset"), Ping(9))  # data dropped quietly
            assert await peer.recv() == Ping(9)
            await peer.send(Data(99, b"never opened"))
            await peer.recv_until(GoAway)

    run(body)
