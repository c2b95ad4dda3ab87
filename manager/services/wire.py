"""Responses put together from bytes already serialized, without building messages.

A protobuf message is its fields one after another, and a message-typed field is a tag, the
length of the sub-message as a varint, and the sub-message's bytes; a repeated one is that once
per element. So a response whose only field holds stored messages (``ListContainersResponse``,
``GetContainerResponse``) is the stored bytes, each behind its tag and length: what
``SerializeToString`` would give, at the cost of a join. The method's handler must then be
registered with no response serializer (grpc sends bytes as they are).
"""

from __future__ import annotations

from collections.abc import Iterable

_WIRE_LENGTH_DELIMITED = 2


def varint(value: int) -> bytes:
    """``value`` (not negative) as a protobuf base-128 varint."""
    if value < 0x80:
        return bytes((value,))
    if value < 0x4000:  # most stored messages: two bytes
        return bytes(((value & 0x7F) | 0x80, value >> 7))
    out = bytearray()
    while value >= 0x80:
        out.append((value & 0x7F) | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def tag(field_number: int) -> bytes:
    """The key of a length-delimited field (a message, a string, bytes)."""
    return varint(field_number << 3 | _WIRE_LENGTH_DELIMITED)


def message_field(field_number: int, data: bytes) -> bytes:
    """One message-typed field holding the serialized message ``data``."""
    return b"".join((tag(field_number), varint(len(data)), data))


def repeated_message_field(field_number: int, items: Iterable[bytes]) -> bytes:
    """A repeated message-typed field holding each serialized message of ``items``, in order."""
    key = tag(field_number)
    parts: list[bytes] = []
    append = parts.append
    for data in items:
        append(key + varint(len(data)))
        append(data)
    return b"".join(parts)
