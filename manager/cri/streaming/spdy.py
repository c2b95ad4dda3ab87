"""SPDY/3.1 frames and their codec, without I/O.

Kubernetes still speaks SPDY/3.1 to a runtime's streaming server (kubelet, the API server, crictl
and critest all use moby/spdystream underneath), and no maintained Python library does, so the
framing lives here. The connection built on it is :mod:`.spdyconn`.

Wire layout (all integers big-endian)::

    control frame:  |1| version(15) | type(16) | flags(8) | length(24) | payload |
    data frame:     |0| stream id(31)           | flags(8) | length(24) | payload |

Header blocks (SYN_STREAM, SYN_REPLY, HEADERS) are ``count(32)`` then ``len(32) name len(32)
value`` pairs, compressed with one zlib context per direction (:mod:`.spdyzlib`). Names are
lowercase; several values of one name travel joined by NUL, and :class:`Headers` keeps them
that way (``"a\\x00b"``), as spdystream writes them.

:class:`FrameDecoder` is fed bytes and returns whole frames; anything malformed raises
:class:`SpdyProtocolError` and nothing else, which a fuzz test holds it to. After such an error
the decoder's header context is unusable, so the connection must end (GOAWAY), as the spec says.
"""

from __future__ import annotations

import enum
import struct
from dataclasses import dataclass, field

from ctrpy.errors import InvalidArgument

from .spdyzlib import HeaderCompressor, HeaderDecompressor

VERSION = 3
MAX_LENGTH = (1 << 24) - 1
"""The largest payload a frame's 24-bit length can say."""
MAX_STREAM_ID = (1 << 31) - 1
MAX_WINDOW = (1 << 31) - 1
DEFAULT_WINDOW = 64 * 1024
"""SPDY/3.1's initial window, per stream and for the session."""

FLAG_FIN = 0x01
FLAG_UNIDIRECTIONAL = 0x02
FLAG_CLEAR_SETTINGS = 0x01

Headers = dict[str, str]


class FrameType(enum.IntEnum):
    """Control frame types (type 5, SPDY/2's NOOP, is gone in SPDY/3)."""

    SYN_STREAM = 1
    SYN_REPLY = 2
    RST_STREAM = 3
    SETTINGS = 4
    PING = 6
    GOAWAY = 7
    HEADERS = 8
    WINDOW_UPDATE = 9


class RstStatus(enum.IntEnum):
    """RST_STREAM status codes."""

    PROTOCOL_ERROR = 1
    INVALID_STREAM = 2
    REFUSED_STREAM = 3
    UNSUPPORTED_VERSION = 4
    CANCEL = 5
    INTERNAL_ERROR = 6
    FLOW_CONTROL_ERROR = 7
    STREAM_IN_USE = 8
    STREAM_ALREADY_CLOSED = 9
    INVALID_CREDENTIALS = 10
    FRAME_TOO_LARGE = 11


class GoAwayStatus(enum.IntEnum):
    """GOAWAY status codes."""

    OK = 0
    PROTOCOL_ERROR = 1
    INTERNAL_ERROR = 2


class SettingId(enum.IntEnum):
    """SETTINGS ids; only INITIAL_WINDOW_SIZE changes what a connection does."""

    UPLOAD_BANDWIDTH = 1
    DOWNLOAD_BANDWIDTH = 2
    ROUND_TRIP_TIME = 3
    MAX_CONCURRENT_STREAMS = 4
    CURRENT_CWND = 5
    DOWNLOAD_RETRANS_RATE = 6
    INITIAL_WINDOW_SIZE = 7
    CLIENT_CERTIFICATE_VECTOR_SIZE = 8


class SpdyProtocolError(InvalidArgument):
    """The peer sent bytes that are not valid SPDY/3.1, or broke the protocol's rules.

    ``stream_id`` is the stream it concerns (0 for the session) and ``status`` the RST_STREAM or
    GOAWAY status to answer with.
    """

    def __init__(self, subject: str, stream_id: int = 0, status: int = 1) -> None:
        self.stream_id = stream_id
        self.status = status
        super().__init__(f"spdy: {subject}")


@dataclass(frozen=True)
class SynStream:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    priority: int = 0
    associated_id: int = 0
    slot: int = 0
    flags: int = 0


@dataclass(frozen=True)
class SynReply:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class RstStream:
    stream_id: int
    status: int


@dataclass(frozen=True)
class Setting:
    id: int
    value: int
    flags: int = 0


@dataclass(frozen=True)
class Settings:
    entries: tuple[Setting, ...] = ()
    flags: int = 0


@dataclass(frozen=True)
class Ping:
    ping_id: int


@dataclass(frozen=True)
class GoAway:
    last_good_stream_id: int
    status: int = GoAwayStatus.OK


@dataclass(frozen=True)
class HeadersFrame:
    stream_id: int
    headers: Headers = field(default_factory=dict)
    flags: int = 0


@dataclass(frozen=True)
class WindowUpdate:
    """A window increase for ``stream_id``, or for the whole session when it is 0 (SPDY/3.1)."""

    stream_id: int
    delta: int


@dataclass(frozen=True)
class Data:
    stream_id: int
    data: bytes = b""
    flags: int = 0

    @property
    def fin(self) -> bool:
        return bool(self.flags & FLAG_FIN)


Frame = SynStream | SynReply | RstStream | Settings | Ping | GoAway | HeadersFrame | WindowUpdate | Data

_U32 = struct.Struct(">I")
_HEAD = struct.Struct(">II")


def _control(kind: FrameType, flags: int, payload: bytes) -> bytes:
    if len(payload) > MAX_LENGTH:
        raise InvalidArgument(f"spdy: {kind.name} payload of {len(payload)} bytes")
    return _HEAD.pack(0x80000000 | VERSION << 16 | kind, flags << 24 | len(payload)) + payload


def _check_id(value: int, what: str, *, zero: bool = False) -> None:
    if not (0 if zero else 1) <= value <= MAX_STREAM_ID:
        raise InvalidArgument(f"spdy: {what} {value} out of range")


def encode_header_block(headers: Headers) -> bytes:
    """The uncompressed name/value block; names are sent lowercased, as spdystream does."""
    parts = [_U32.pack(len(headers))]
    for name, value in headers.items():
        raw_name = name.lower().encode()
        raw_value = value.encode()
        parts += [_U32.pack(len(raw_name)), raw_name, _U32.pack(len(raw_value)), raw_value]
    return b"".join(parts)


def decode_header_block(block: bytes, stream_id: int) -> Headers:
    """Parse a decompressed block; raise :class:`SpdyProtocolError` on any defect."""

    def fail(why: str) -> SpdyProtocolError:
        return SpdyProtocolError(f"header block: {why}", stream_id)

    if len(block) < 4:
        raise fail("truncated")
    (count,) = _U32.unpack_from(block, 0)
    if count * 8 > len(block) - 4:
        raise fail(f"{count} pairs cannot fit")
    pos, headers = 4, {}
    for _ in range(count):
        raw = []
        for _part in (0, 1):
            if pos + 4 > len(block):
                raise fail("truncated")
            (size,) = _U32.unpack_from(block, pos)
            pos += 4
            if pos + size > len(block):
                raise fail("truncated")
            raw.append(block[pos : pos + size])
            pos += size
        try:
            name, value = raw[0].decode(), raw[1].decode()
        except UnicodeDecodeError:
            raise fail("not UTF-8") from None
        if not name or name != name.lower():
            raise fail(f"bad name {name!r}")
        if name in headers:
            raise fail(f"duplicate name {name!r}")
        headers[name] = value
    if pos != len(block):
        raise fail("trailing bytes")
    return headers


class FrameEncoder:
    """Turns frames into bytes for one direction of one connection (it owns the header context,
    so frames must go on the wire in the order they were encoded)."""

    def __init__(self) -> None:
        self._zlib = HeaderCompressor()

    def _block(self, headers: Headers) -> bytes:
        return self._zlib.compress(encode_header_block(headers))

    def encode(self, frame: Frame) -> bytes:
        """Serialise ``frame``; raises ``InvalidArgument`` for a frame the wire cannot carry."""
        if isinstance(frame, Data):
            _check_id(frame.stream_id, "stream id")
            if len(frame.data) > MAX_LENGTH:
                raise InvalidArgument(f"spdy: data frame of {len(frame.data)} bytes")
            return _HEAD.pack(frame.stream_id, frame.flags << 24 | len(frame.data)) + frame.data
        if isinstance(frame, SynStream):
            _check_id(frame.stream_id, "stream id")
            _check_id(frame.associated_id, "associated stream id", zero=True)
            head = struct.pack(">IIBB", frame.stream_id, frame.associated_id,
                               (frame.priority & 7) << 5, frame.slot)  # fmt: skip
            return _control(FrameType.SYN_STREAM, frame.flags, head + self._block(frame.headers))
        if isinstance(frame, SynReply):
            _check_id(frame.stream_id, "stream id")
            payload = _U32.pack(frame.stream_id) + self._block(frame.headers)
            return _control(FrameType.SYN_REPLY, frame.flags, payload)
        if isinstance(frame, HeadersFrame):
            _check_id(frame.stream_id, "stream id")
            payload = _U32.pack(frame.stream_id) + self._block(frame.headers)
            return _control(FrameType.HEADERS, frame.flags, payload)
        if isinstance(frame, RstStream):
            _check_id(frame.stream_id, "stream id")
            return _control(FrameType.RST_STREAM, 0, _HEAD.pack(frame.stream_id, frame.status))
        if isinstance(frame, Settings):
            body = b"".join(_HEAD.pack(s.flags << 24 | s.id & 0xFFFFFF, s.value) for s in frame.entries)
            payload = _U32.pack(len(frame.entries)) + body
            return _control(FrameType.SETTINGS, frame.flags, payload)
        if isinstance(frame, Ping):
            return _control(FrameType.PING, 0, _U32.pack(frame.ping_id))
        if isinstance(frame, GoAway):
            _check_id(frame.last_good_stream_id, "last good stream id", zero=True)
            payload = _HEAD.pack(frame.last_good_stream_id, frame.status)
            return _control(FrameType.GOAWAY, 0, payload)
        _check_id(frame.stream_id, "stream id", zero=True)
        if not 1 <= frame.delta <= MAX_WINDOW:
            raise InvalidArgument(f"spdy: window delta {frame.delta} out of range")
        return _control(FrameType.WINDOW_UPDATE, 0, _HEAD.pack(frame.stream_id, frame.delta))


class FrameDecoder:
    """Turns the bytes received on one connection into frames.

    :meth:`feed` takes any slice of the byte stream and returns the frames it completes; partial
    frames wait in a buffer. Control frames of unknown types are skipped, as the spec asks.
    ``max_length`` bounds one frame's payload, so a peer cannot make the buffer grow further.
    """

    def __init__(self, max_length: int = MAX_LENGTH) -> None:
        self._zlib = HeaderDecompressor()
        self._buf = bytearray()
        self._max_length = max_length

    def feed(self, data: bytes) -> list[Frame]:
        self._buf += data
        frames: list[Frame] = []
        while len(self._buf) >= 8:
            first, flags_length = _HEAD.unpack_from(self._buf, 0)
            length = flags_length & MAX_LENGTH
            if length > self._max_length:
                raise SpdyProtocolError(f"frame of {length} bytes", status=RstStatus.FRAME_TOO_LARGE)
            if len(self._buf) < 8 + length:
                break
            payload = bytes(self._buf[8 : 8 + length])
            del self._buf[: 8 + length]
            flags = flags_length >> 24
            if first & 0x80000000:
                frame = self._control((first >> 16) & 0x7FFF, first & 0xFFFF, flags, payload)
            else:
                frame = _data(first, flags, payload)
            if frame is not None:
                frames.append(frame)
        return frames

    def _headers(self, data: bytes, stream_id: int) -> Headers:
        try:
            block = self._zlib.decompress(data)
        except ValueError as exc:
            raise SpdyProtocolError(str(exc), stream_id) from None
        return decode_header_block(block, stream_id)

    def _control(self, version: int, kind: int, flags: int, payload: bytes) -> Frame | None:
        if version != VERSION:
            raise SpdyProtocolError(f"version {version}", status=RstStatus.UNSUPPORTED_VERSION)
        if kind == FrameType.SYN_STREAM:
            _need(kind, payload, 10, exact=False)
            sid, assoc, prio, slot = struct.unpack_from(">IIBB", payload)
            sid, assoc = _stream_id(sid), assoc & MAX_STREAM_ID
            headers = self._headers(payload[10:], sid)
            return SynStream(sid, headers, prio >> 5, assoc, slot, flags)
        if kind in (FrameType.SYN_REPLY, FrameType.HEADERS):
            _need(kind, payload, 4, exact=False)
            sid = _stream_id(_U32.unpack_from(payload)[0])
            headers = self._headers(payload[4:], sid)
            if kind == FrameType.SYN_REPLY:
                return SynReply(sid, headers, flags)
            return HeadersFrame(sid, headers, flags)
        if kind == FrameType.RST_STREAM:
            _need(kind, payload, 8)
            sid, status = _HEAD.unpack(payload)
            sid = _stream_id(sid)
            if status == 0:
                raise SpdyProtocolError("RST_STREAM with status 0", sid)
            return RstStream(sid, status)
        if kind == FrameType.SETTINGS:
            _need(kind, payload, 4, exact=False)
            (count,) = _U32.unpack_from(payload)
            if count * 8 != len(payload) - 4:
                raise SpdyProtocolError(f"SETTINGS says {count} entries in {len(payload)} bytes")
            entries = tuple(
                Setting(word & 0xFFFFFF, value, word >> 24) for word, value in _HEAD.iter_unpack(payload[4:])
            )
            return Settings(entries, flags)
        if kind == FrameType.PING:
            _need(kind, payload, 4)
            return Ping(_U32.unpack(payload)[0])
        if kind == FrameType.GOAWAY:
            _need(kind, payload, 8)
            last, status = _HEAD.unpack(payload)
            return GoAway(last & MAX_STREAM_ID, status)
        if kind == FrameType.WINDOW_UPDATE:
            _need(kind, payload, 8)
            sid, delta = _HEAD.unpack(payload)
            delta &= MAX_WINDOW
            if delta == 0:
                raise SpdyProtocolError("WINDOW_UPDATE of 0", sid & MAX_STREAM_ID)
            return WindowUpdate(sid & MAX_STREAM_ID, delta)
        return None


def _need(kind: int, payload: bytes, size: int, *, exact: bool = True) -> None:
    if len(payload) < size or (exact and len(payload) != size):
        raise SpdyProtocolError(f"{FrameType(kind).name} of {len(payload)} bytes")


def _stream_id(raw: int) -> int:
    sid = raw & MAX_STREAM_ID
    if sid == 0:
        raise SpdyProtocolError("stream id 0")
    return sid


def _data(first: int, flags: int, payload: bytes) -> Data:
    return Data(_stream_id(first), payload, flags)
