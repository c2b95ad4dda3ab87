"""The Content.Write conversation, over plain values, for the gRPC servicer to drive.

Content.Write is a bidirectional stream: the client sends ``WriteContentRequest`` messages
(action STAT, WRITE or COMMIT, with ref, total, expected, offset, data, labels) and the server
answers each with ``WriteContentResponse`` (action, started_at, updated_at, offset, total,
digest). :class:`WriteSession` holds the rules, as containerd 1.6 applies them, so that the
servicer only converts messages::

    session = WriteSession(store)
    try:
        async for message in request_iterator:
            reply = await asyncio.to_thread(session.handle, to_request(message))
            await context.write(to_response(reply))
            if session.done:
                break
    finally:
        await asyncio.to_thread(session.close)

The rules:

- The first message must carry ``ref`` (else InvalidArgument); it opens, or resumes, the ingest
  of that ref, locking it for the session (Unavailable if another session holds it). Later
  messages' refs are ignored.
- Any message may announce ``total`` (> 0 replaces the known total) and ``expected``; an
  ``expected`` digest that is already stored ends the session with AlreadyExists (the ingest,
  if one was opened, is aborted). ctr treats that as "already written".
- Only this stream's messages announce the total and the digest: as containerd's service, a
  stream resuming an ingest neither reports nor checks the total or digest an earlier stream
  announced (Content.Status still shows them).
- Sharing (containerd's ``content_sharing_policy = "shared"``): when the first message names
  an ``expected`` digest that ``shared_size`` says may be linked without its bytes (stored for
  another namespace, with the announced size if any), no ingest is opened. The session then
  stands at offset = the blob's size with digest = ``expected``; a COMMIT at that offset and
  without data checks the size and digest it is given against the blob (containerd's words:
  ``"<ref>" failed size validation: <size> != <total>``, ``"<ref>" unexpected digest``) and
  hands ``on_commit`` an ``existed`` commit, so the client never sends the bytes. Offset 0
  (a restart) opens a real, empty ingest; data at the blob's offset first copies the blob
  into a real ingest, as containerd's namespaced writer does.
- STAT changes nothing. WRITE and COMMIT with ``offset`` > 0 must be at the current offset
  (OutOfRange otherwise); ``offset`` 0 while data has been written restarts the ingest from
  nothing. Then ``data``, if any, is appended.
- COMMIT then verifies the size against ``total`` and the digest against ``expected`` (both when
  known; FailedPrecondition on a mismatch) and stores the blob. If it is already stored the
  default outcome is AlreadyExists; pass ``on_commit`` to decide otherwise (see below). After a
  successful COMMIT the session is done; nothing more may be sent.
- Every reply carries the current offset, running sha256 digest (the committed digest after
  COMMIT) and the ingest's start and update times; STAT replies the stream's total, and WRITE
  and COMMIT replies repeat the total of the stream's last STAT reply (0 before any), as
  containerd's service, which reuses one reply message for the whole stream.
- Any error ends the session: the writer is closed and the ingest kept for a later resume
  (except where said above). ``close`` is idempotent.

Hooks, for a namespace-aware caller: ``ingest_ref`` maps the client's ref to the store's ingest
ref (to keep namespaces apart); ``blob_exists`` answers the ``expected`` check (default: the
store has the blob); ``shared_size(expected, total)`` gives the size of a blob the session may
link without its bytes, or None (default: never); ``on_commit`` receives every commit,
including ones whose blob already existed (``existed=True``), and may raise (AlreadyExists,
say) to fail the COMMIT.
"""

from __future__ import annotations

import dataclasses
import enum
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from types import MappingProxyType
from typing import BinaryIO, Protocol, Self

from ctrpy.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
)

from . import digests
from .model import BlobAlreadyExists
from .writer import Writer


class WriteAction(enum.IntEnum):
    """``containerd.services.content.v1.WriteAction``, with the same numbers."""

    STAT = 0
    WRITE = 1
    COMMIT = 2


@dataclasses.dataclass(frozen=True)
class WriteRequest:
    """One ``WriteContentRequest``, as plain values (unset fields are 0, "" and empty)."""

    action: int = WriteAction.STAT
    ref: str = ""
    total: int = 0
    expected: str = ""
    offset: int = 0
    data: bytes = b""
    labels: Mapping[str, str] = dataclasses.field(default_factory=lambda: MappingProxyType({}))


@dataclasses.dataclass(frozen=True)
class WriteReply:
    """One ``WriteContentResponse``, as plain values."""

    action: WriteAction
    started_at: datetime
    updated_at: datetime
    offset: int
    total: int
    digest: str


@dataclasses.dataclass(frozen=True)
class Committed:
    """What a COMMIT stored: the blob's digest and size, whether it was already there, the
    client's and the store's refs, and the labels the COMMIT message carried."""

    digest: str
    size: int
    existed: bool
    ref: str
    ingest_ref: str
    labels: Mapping[str, str]


class Ingester(Protocol):
    """What a write session needs from a store (``ContentStore`` provides it)."""

    def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        """Open or resume the ingest ``ref``, locked; Unavailable if it is locked already."""
        ...

    def abort(self, ref: str) -> None:
        """Remove the ingest ``ref``; NotFound if there is none."""
        ...

    def exists(self, digest: str) -> bool:
        """Whether the blob ``digest`` is stored."""
        ...

    def reader(self, digest: str) -> BinaryIO:
        """The blob ``digest`` as an open binary file; NotFound if absent."""
        ...

    def is_locked(self, ref: str) -> bool:
        """Whether a writer holds the ingest ``ref``."""
        ...


@dataclasses.dataclass(frozen=True)
class _Shared:
    """A blob a session links without its bytes: its digest and size, and when the session
    began (its replies' times)."""

    digest: str
    size: int
    started_at: datetime


def refuse_existing(committed: Committed) -> None:
    """The default ``on_commit``: AlreadyExists (``content <digest>``) if the blob was there."""
    if committed.existed:
        raise AlreadyExists(f"content {committed.digest}")


class WriteSession:
    """One Content.Write stream's state. Its methods block: call them from a thread, in turn."""

    def __init__(
        self,
        store: Ingester,
        *,
        ingest_ref: Callable[[str], str] | None = None,
        blob_exists: Callable[[str], bool] | None = None,
        shared_size: Callable[[str, int], int | None] | None = None,
        on_commit: Callable[[Committed], None] = refuse_existing,
    ) -> None:
        self._store = store
        self._ingest_ref = ingest_ref or (lambda ref: ref)
        self._blob_exists = blob_exists or store.exists
        self._shared_size = shared_size or (lambda expected, total: None)
        self._on_commit = on_commit
        self._writer: Writer | None = None
        #: The blob this session links without its bytes (see "Sharing"), until a real ingest
        #: replaces it; and when the session began, for its replies.
        self._shared: _Shared | None = None
        self._ref = ""
        self._store_ref = ""
        self._total = 0
        self._stat_total = 0  # the total the last STAT reply carried
        self._expected = ""
        self._done = False
        self._mutex = threading.Lock()

    @property
    def done(self) -> bool:
        """True once the session committed, failed or was closed: the stream should end."""
        return self._done

    @property
    def ref(self) -> str:
        """The client's ref, once the first message named it."""
        return self._ref

    def handle(self, request: WriteRequest) -> WriteReply:
        """Apply one request and return the reply (see the module docstring for the rules)."""
        with self._mutex:
            if self._done:
                raise FailedPrecondition(f"write session for ref {self._ref} is finished")
            try:
                return self._handle(request)
            except BaseException:
                self._finish()
                raise

    def close(self) -> None:
        """End the session; an uncommitted ingest stays for a later resume. Idempotent."""
        with self._mutex:
            self._finish()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- internals (self._mutex held) --

    def _handle(self, request: WriteRequest) -> WriteReply:
        try:
            action = WriteAction(request.action)
        except ValueError:
            raise InvalidArgument(f"unknown write action {request.action}") from None
        if request.total < 0 or request.offset < 0:
            raise InvalidArgument("total and offset must not be negative")
        if request.expected:
            digests.validate(request.expected)

        if self._writer is None and self._shared is None:
            self._open(request)
        elif request.expected:
            self._expected = request.expected
            if self._blob_exists(request.expected):
                self._finish()
                try:
                    self._store.abort(self._store_ref)
                except NotFound:  # aborted by someone else already (or never on disk: shared)
                    pass
                # containerd's words for an expected digest named after the first message.
                raise AlreadyExists(f"blob with expected digest {request.expected} exists")
            if self._writer is not None:
                self._writer.set_expected(request.expected)
        if request.total > 0:
            self._total = request.total
            if self._writer is not None:
                self._writer.set_total(request.total)

        if action is WriteAction.STAT:
            self._stat_total = self._total
            return self._reply(action)

        current = self._offset()
        if request.offset > 0 and request.offset != current:
            raise OutOfRange(f"write @{request.offset} must occur at current offset {current}")
        if request.offset == 0 and current > 0:
            self._real_writer(copy=False).truncate(0)  # offset 0 after data means: start again
        if request.data:
            self._real_writer(copy=True).write(request.data)
        if action is WriteAction.WRITE:
            return self._reply(action)
        if self._shared is not None:
            return self._commit_shared(action, self._shared, request)
        assert self._writer is not None
        return self._commit(action, self._writer, request)

    def _open(self, request: WriteRequest) -> None:
        if not request.ref:
            raise InvalidArgument("first message must have a reference")
        self._ref = request.ref
        # Only what this stream announces counts (containerd ignores an ingest's stored total
        # and digest once a new stream resumes it).
        self._total = request.total
        self._expected = request.expected
        shared_size = None
        if request.expected:
            if self._blob_exists(request.expected):
                raise AlreadyExists(f"content {request.expected}")
            shared_size = self._shared_size(request.expected, request.total)
        self._store_ref = self._ingest_ref(request.ref)
        if shared_size is not None:
            self._shared = _Shared(request.expected, shared_size, datetime.now(UTC))
            return
        self._writer = self._store.writer(self._store_ref, request.total, request.expected)

    def _offset(self) -> int:
        if self._shared is not None:
            return self._shared.size
        assert self._writer is not None
        return self._writer.status().offset

    def _real_writer(self, copy: bool) -> Writer:
        """The session's ingest; a shared session opens one now (with the blob's bytes in it
        when ``copy``), as containerd's namespaced writer does before it changes anything."""
        if self._writer is not None:
            return self._writer
        assert self._shared is not None
        writer = self._store.writer(self._store_ref)
        self._writer = writer
        if writer.status().offset:
            writer.truncate(0)
        if copy and self._shared.size:
            with self._store.reader(self._shared.digest) as blob:
                while chunk := blob.read(digests.CHUNK_SIZE):
                    writer.write(chunk)
        self._shared = None
        return writer

    def _commit(self, action: WriteAction, writer: Writer, request: WriteRequest) -> WriteReply:
        size = writer.status().offset
        try:
            digest = writer.commit(self._total, self._expected)
            existed = False
        except BlobAlreadyExists as error:
            digest, existed = error.digest, True
        self._done = True
        self._on_commit(
            Committed(
                digest=digest,
                size=size,
                existed=existed,
                ref=self._ref,
                ingest_ref=writer.ref,
                labels=MappingProxyType(dict(request.labels)),
            )
        )
        return self._reply(action, digest)

    def _commit_shared(self, action: WriteAction, shared: _Shared, request: WriteRequest) -> WriteReply:
        # containerd's namespaced writer, committing a blob it never opened an ingest for.
        if self._total and self._total != shared.size:
            raise FailedPrecondition(f'"{self._ref}" failed size validation: {shared.size} != {self._total}')
        if self._expected and self._expected != shared.digest:
            raise FailedPrecondition(f'"{self._ref}" unexpected digest')
        self._done = True
        # An ingest an earlier stream left under this ref is done with too.
        if not self._store.is_locked(self._store_ref):
            try:
                self._store.abort(self._store_ref)
            except NotFound:
                pass
        self._on_commit(
            Committed(
                digest=shared.digest,
                size=shared.size,
                existed=True,
                ref=self._ref,
                ingest_ref=self._store_ref,
                labels=MappingProxyType(dict(request.labels)),
            )
        )
        return self._reply(action)

    def _reply(self, action: WriteAction, digest: str = "") -> WriteReply:
        total = self._stat_total if action is not WriteAction.STAT else self._total
        if self._shared is not None:
            shared = self._shared
            return WriteReply(action=action, started_at=shared.started_at, updated_at=shared.started_at,
                              offset=shared.size, total=total, digest=shared.digest)
        assert self._writer is not None
        status = self._writer.status()
        return WriteReply(
            action=action,
            started_at=status.started_at,
            updated_at=status.updated_at,
            offset=status.offset,
            total=total,
            digest=digest or self._writer.digest(),
        )

    def _finish(self) -> None:
        self._done = True
        if self._writer is not None:
            self._writer.close()
