"""ttrpc's framing: a 10-byte header, then the payload.

The header is the payload's length and the stream id (big-endian uint32 each), the message type
(1 request, 2 response, 3 data) and a flags byte. A call takes a new odd stream id from the
client and gets its response on the same id, so one connection carries calls concurrently.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from dataclasses import dataclass

HEADER = struct.Struct(">IIBB")
HEADER_SIZE = HEADER.size  # 10
#: ttrpc's limit on a payload (4 MiB); a longer frame is skipped and its call fails.
MAX_MESSAGE = 4 << 20

REQUEST = 1
RESPONSE = 2
DATA = 3


def frame(stream_id: int, kind: int, payload: bytes) -> bytes:
    """One frame, header and payload, ready to write."""
    return HEADER.pack(len(payload), stream_id, kind, 0) + payload


@dataclass(frozen=True)
class Frame:
    """A frame read off the connection; ``payload`` is None when it was over :data:`MAX_MESSAGE`
    (then ``length`` says how long it was)."""

    stream_id: int
    kind: int
    payload: bytes | None
    length: int


class FrameReader:
    """Turns the bytes of a connection, in whatever pieces they arrive, into frames."""

    def __init__(self, limit: int = MAX_MESSAGE) -> None:
        self.limit = limit
        self._buffer = bytearray()
        self._skipping = 0  # bytes still to drop of a frame over the limit

    def feed(self, data: bytes) -> Iterator[Frame]:
        """The frames that ``data`` completes."""
        buffer = self._buffer
        buffer += data
        while True:
            if self._skipping:
                dropped = min(self._skipping, len(buffer))
                del buffer[:dropped]
                self._skipping -= dropped
                if self._skipping:
                    return
            if len(buffer) < HEADER_SIZE:
                return
            length, stream_id, kind, _flags = HEADER.unpack_from(buffer)
            if length > self.limit:
                del buffer[:HEADER_SIZE]
                self._skipping = length
                yield Frame(stream_id, kind, None, length)
                continue
            end = HEADER_SIZE + length
            if len(buffer) < end:
                return
            payload = bytes(buffer[HEADER_SIZE:end])
            del buffer[:end]
            yield Frame(stream_id, kind, payload, length)
