"""Blobs over the Content API: write (the STAT/WRITE/COMMIT stream), read in ranged windows,
label, list.

Every function takes a :class:`ctrpy.client.Client` and raises :mod:`ctrpy.errors` kinds.
Writing streams from a file object in 1 MiB chunks and never holds a whole blob in memory.
"""

from __future__ import annotations

import hashlib
import io
import random
import time
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from types import MappingProxyType
from typing import BinaryIO

from google.protobuf import field_mask_pb2, timestamp_pb2

from ctrpy import errors
from ctrpy.api.containerd.services.content.v1 import content_pb2 as api
from ctrpy.client import Client, Duplex
from ctrpy.images.model import MAX_DOCUMENT, Descriptor, Labels

CHUNK = 1 << 20
READ_WINDOW = 1 << 20
# How long to wait for another writer to release an ingest ref before giving up.
LOCK_WAIT = 60.0
_GO_ZERO_SECONDS = -62135596800


def timestamp(stamp: timestamp_pb2.Timestamp) -> datetime | None:
    """A protobuf timestamp as an aware datetime; None when unset (or Go's zero time)."""
    if stamp.seconds in (0, _GO_ZERO_SECONDS) and not stamp.nanos:
        return None
    return stamp.ToDatetime(tzinfo=UTC)


@dataclass(frozen=True)
class ContentInfo:
    """What the content store knows about one blob."""

    digest: str
    size: int
    labels: Labels = field(default_factory=lambda: MappingProxyType({}))
    created_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class IngestStatus:
    """An ingest in progress (``Content.ListStatuses``)."""

    ref: str
    offset: int
    total: int
    expected: str = ""
    started_at: datetime | None = None
    updated_at: datetime | None = None


@dataclass(frozen=True)
class Written:
    """The result of :func:`write_blob`: the blob's digest and size, and whether it was already
    stored (then the source may not have been read at all)."""

    digest: str
    size: int
    existed: bool = False


def _info(message: api.Info) -> ContentInfo:
    return ContentInfo(message.digest, message.size, MappingProxyType(dict(message.labels)),
                       timestamp(message.created_at), timestamp(message.updated_at))


def info(client: Client, digest: str) -> ContentInfo:
    """``Content.Info``; raises NotFound when the blob is not stored (in this namespace)."""
    return _info(client.call(client.content.Info, api.InfoRequest(digest=digest)).info)


def exists(client: Client, digest: str) -> bool:
    """Whether the blob is stored in this namespace."""
    try:
        info(client, digest)
    except errors.NotFound:
        return False
    return True


def list_content(client: Client, filters: Iterable[str] = ()) -> Iterator[ContentInfo]:
    """Every blob matching any of ``filters`` (containerd's filter syntax)."""
    for response in client.stream(client.content.List, api.ListContentRequest(filters=list(filters))):
        for item in response.info:
            yield _info(item)


def update_labels(client: Client, digest: str, labels: Mapping[str, str]) -> ContentInfo:
    """Set the given labels on a blob (an empty value removes the label); other labels stay.

    Raises NotFound for a blob that is not stored.
    """
    request = api.UpdateRequest(
        info=api.Info(digest=digest, labels={k: v for k, v in labels.items() if v}),
        update_mask=field_mask_pb2.FieldMask(paths=[f"labels.{key}" for key in labels]),
    )
    return _info(client.call(client.content.Update, request).info)


def delete(client: Client, digest: str) -> None:
    """Remove a blob from this namespace; raises NotFound when it is not there."""
    client.call(client.content.Delete, api.DeleteContentRequest(digest=digest))


def list_statuses(client: Client, filters: Iterable[str] = ()) -> list[IngestStatus]:
    """Ingests in progress."""
    response = client.call(client.content.ListStatuses, api.ListStatusesRequest(filters=list(filters)))
    return [IngestStatus(s.ref, s.offset, s.total, s.expected, timestamp(s.started_at), timestamp(s.updated_at))
            for s in response.statuses]


def abort(client: Client, ref: str) -> None:
    """Abandon the ingest ``ref``; raises NotFound when there is none."""
    client.call(client.content.Abort, api.AbortRequest(ref=ref))


def read_range(client: Client, digest: str, offset: int, size: int) -> bytes:
    """Exactly ``size`` bytes of the blob from ``offset`` (one ``Content.Read``).

    Raises NotFound for a missing blob, OutOfRange when the blob ends early.
    """
    parts = [r.data for r in client.stream(client.content.Read,
                                           api.ReadContentRequest(digest=digest, offset=offset, size=size))]
    data = b"".join(parts)
    if len(data) != size:
        raise errors.OutOfRange(f"content {digest}: read {len(data)} bytes at offset {offset}, wanted {size}")
    return data


def iter_blob(client: Client, digest: str, size: int | None = None, window: int = READ_WINDOW) -> Iterator[bytes]:
    """The blob's bytes in ranged windows of ``window`` bytes (Info first when ``size`` is None)."""
    if size is None:
        size = info(client, digest).size
    offset = 0
    while offset < size:
        length = min(window, size - offset)
        yield read_range(client, digest, offset, length)
        offset += length


def read_blob(client: Client, desc: Descriptor | str, limit: int = MAX_DOCUMENT) -> bytes:
    """A whole (small) blob: Info, then Read; its sha256 is checked against the digest.

    Raises NotFound when missing, InvalidArgument when larger than ``limit`` or corrupt.
    """
    digest = desc if isinstance(desc, str) else desc.digest
    size = info(client, digest).size
    if size > limit:
        raise errors.InvalidArgument(f"content {digest}: {size} bytes is more than the {limit} allowed here")
    data = read_range(client, digest, 0, size) if size else b""
    if digest.startswith("sha256:") and "sha256:" + hashlib.sha256(data).hexdigest() != digest:
        raise errors.InvalidArgument(f"content {digest}: stored bytes do not match the digest")
    return data


class BlobReader(io.RawIOBase):
    """A read-only file over a stored blob, fetched in ranged windows and verified at the end.

    Reading past the end of a blob whose bytes do not hash to its sha256 digest raises
    InvalidArgument, so a copy made through it is never silently corrupt.
    """

    def __init__(self, client: Client, digest: str, size: int, window: int = READ_WINDOW) -> None:
        super().__init__()
        self._chunks = iter_blob(client, digest, size, window)
        self._digest = digest
        self._hash = hashlib.sha256() if digest.startswith("sha256:") else None
        self._buffer = b""
        self._done = False

    def readable(self) -> bool:
        return True

    def readinto(self, target: bytearray | memoryview) -> int:  # type: ignore[override]
        while not self._buffer and not self._done:
            try:
                self._buffer = next(self._chunks)
            except StopIteration:
                self._done = True
                if self._hash is not None and "sha256:" + self._hash.hexdigest() != self._digest:
                    raise errors.InvalidArgument(f"content {self._digest}: stored bytes do not match the digest") from None
                break
            if self._hash is not None:
                self._hash.update(self._buffer)
        count = min(len(target), len(self._buffer))
        target[:count] = self._buffer[:count]
        self._buffer = self._buffer[count:]
        return count


_Writer = Duplex[api.WriteContentRequest, api.WriteContentResponse]


def _open_writer(client: Client, first: api.WriteContentRequest) -> tuple[_Writer, api.WriteContentResponse]:
    """Open a Write stream and send its first STAT, waiting while another writer holds the ref."""
    deadline = time.monotonic() + LOCK_WAIT
    delay = 0.016
    while True:
        stream: _Writer = client.duplex(client.content.Write)
        try:
            return stream, stream.send(first)
        except errors.Unavailable:
            stream.cancel()
            if time.monotonic() > deadline:
                raise
            time.sleep(random.uniform(0, delay))
            delay = min(delay * 2, 2.0)
        except BaseException:
            stream.cancel()
            raise


def write_blob(
    client: Client,
    ref: str,
    source: BinaryIO,
    size: int = 0,
    expected: str = "",
    labels: Mapping[str, str] | None = None,
    progress: Callable[[int], None] | None = None,
) -> Written:
    """Write ``size`` bytes of ``source`` into the content store through ingest ``ref``.

    The protocol is containerd's: STAT with the ref, total and expected digest (the server
    may answer AlreadyExists at once, or report an offset to resume from, in which case that
    many bytes of ``source`` are skipped), WRITE in 1 MiB chunks, then COMMIT. A blob that
    is already stored counts as written. ``size`` 0 means unknown: read ``source`` to its end.
    ``progress`` is called with the number of bytes taken from ``source`` each time.

    Raises InvalidArgument when ``source`` ends before ``size`` bytes, FailedPrecondition
    (from the server) when the bytes do not match ``expected``, and what the server raises
    otherwise; on failure the ingest is aborted.
    """
    first = api.WriteContentRequest(action=api.STAT, ref=ref, total=size, expected=expected)
    try:
        writer, status = _open_writer(client, first)
    except errors.AlreadyExists:
        return Written(expected, size, existed=True)
    digester = hashlib.sha256()
    offset = status.offset
    try:
        if offset:
            if size and offset > size:
                raise errors.FailedPrecondition(f"ingest {ref!r} holds {offset} bytes, more than the {size} expected")
            _skip(source, offset, digester, progress)
        while not size or offset < size:
            want = min(CHUNK, size - offset) if size else CHUNK
            data = source.read(want)
            if not data:
                break
            digester.update(data)
            reply = writer.send(api.WriteContentRequest(action=api.WRITE, offset=offset, data=data))
            if reply.offset != offset + len(data):
                raise errors.Unavailable(f"ingest {ref!r}: short write ({reply.offset - offset} of {len(data)} bytes)")
            offset = reply.offset
            if progress is not None:
                progress(len(data))
        if size and offset != size:
            raise errors.InvalidArgument(f"unexpected end of data: {offset} of {size} bytes")
        try:
            reply = writer.send(api.WriteContentRequest(
                action=api.COMMIT, total=size, offset=offset, expected=expected, labels=dict(labels or {})))
        except errors.AlreadyExists:
            writer.close()
            return Written(expected or "sha256:" + digester.hexdigest(), offset, existed=True)
        local = "sha256:" + digester.hexdigest()
        if size and reply.offset != size:
            raise errors.FailedPrecondition(f"ingest {ref!r}: committed {reply.offset} bytes, expected {size}")
        if expected and reply.digest != expected:
            raise errors.FailedPrecondition(f"ingest {ref!r}: committed {reply.digest}, expected {expected}")
        if reply.digest.startswith("sha256:") and reply.digest != local:
            raise errors.FailedPrecondition(f"ingest {ref!r}: server digest {reply.digest} differs from {local}")
        writer.close()
        return Written(reply.digest, reply.offset)
    except BaseException:
        writer.cancel()
        try:
            abort(client, ref)
        except errors.CtrpyError:
            pass
        raise


def _skip(source: BinaryIO, count: int, digester: hashlib._Hash, progress: Callable[[int], None] | None) -> None:
    """Read and hash ``count`` bytes the server already holds (a resumed ingest)."""
    left = count
    while left:
        data = source.read(min(CHUNK, left))
        if not data:
            raise errors.InvalidArgument(f"unexpected end of data while resuming at {count} bytes")
        digester.update(data)
        left -= len(data)
        if progress is not None:
            progress(len(data))
