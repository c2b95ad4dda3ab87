"""Content in namespaces: which namespace sees which shared blob, and with which labels.

Blobs live once on disk, in the :class:`~ctrpy.manager.content.ContentStore`, whoever wrote
them. A namespace sees a blob only while it holds a row of the ``content`` table for it (the
row also carries that namespace's labels and times), as in containerd's
``core/metadata/content.go``:

- Info, Update, List, Read and Delete see only the namespace's rows; anything else is NotFound
  (``content digest sha256:...: not found``).
- Sharing, containerd's ``content_sharing_policy`` (``[metadata]`` in ctrpyd's config):
  under ``"shared"``, the default, a Write whose first message names an ``expected`` digest
  that another namespace stored (with the announced size, if any) does not need the bytes:
  its STAT answers the blob's size as the offset, and a COMMIT at that offset, without data,
  links the blob into this namespace with the COMMIT's labels and lease (containerd 1.6's
  namespaced writer; see :mod:`ctrpy.manager.content.session`). Until that COMMIT nothing
  is linked, and Status finds no ingest. Under ``"isolated"``, writing is a proof of
  possession: the client sends every byte and the digest must check out, unless a namespace
  labelled ``containerd.io/namespace.shareable=true`` holds the blob (containerd 1.7's
  label; 1.6 ignores it). Server-side pulls link such blobs the same way instead of
  downloading them (:meth:`NamespacedContent.link_stored`).
- A blob the namespace already holds makes a Write naming it fail with AlreadyExists
  (clients take that as "already written").
- Delete removes the namespace's row; the blob file goes only when no namespace holds a row
  for it any more. Removing the file and linking a row both happen on the database thread,
  so they never interleave; a commit that found the blob stored, only to see it deleted
  before its row was linked, fails with Unavailable (retry) rather than link a missing file.
- Ingest refs are per namespace: the client's ref ``r`` is the store's ingest ``<ns>/r`` (a
  namespace name has no ``/``, so no two namespaces share one).
- A call that carries a lease records what it makes in that lease: an open ingest as an
  ``ingests`` resource (named by the client's ref), a committed blob as a ``content`` resource;
  a commit turns the first into the second.

Threading: :class:`NamespacedContent` methods marked *database thread* run through
``Database.run``; the others block on disk and call into the database themselves
(``Database.call``), so run them with ``asyncio.to_thread`` and never on the database thread.
"""

from __future__ import annotations

import base64
import builtins
import dataclasses
import os
import sqlite3
import threading
import time
from collections.abc import Generator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from types import MappingProxyType
from typing import BinaryIO

from ctrpy import fieldmask, filters, namespaces
from ctrpy.errors import AlreadyExists, InvalidArgument, NotFound, Unavailable
from ctrpy.manager.content import (
    BlobAlreadyExists,
    Committed,
    ContentStore,
    IngestStatus,
    WriteAction,
    Writer,
    WriteReply,
    WriteRequest,
    WriteSession,
    digests,
)
from ctrpy.records import Labels, LeaseResource, freeze

from . import leases
from .db import Database
from .ingest_leases import LeasedIngests
from .rows import (
    current_namespace,
    dump_labels,
    ensure_namespace,
    load_labels,
    now_ns,
    to_datetime,
    validate_label_sizes,
    validate_labels,
)

#: The label containerd's differ puts on a compressed layer: the digest of its uncompressed tar.
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"

#: Bytes a :class:`BlobSink` gathers before it appends them to its ingest.
SINK_BUFFER = 1 << 20

#: containerd's content sharing policies (``[metadata] content_sharing_policy``).
SHARED, ISOLATED = "shared", "isolated"
SHARING_POLICIES = (SHARED, ISOLATED)
#: The namespace label that, set to ``true``, shares the namespace's blobs under "isolated".
SHAREABLE_LABEL = "containerd.io/namespace.shareable"

_CONTENT = "content"
_INGESTS = "ingests"


@dataclasses.dataclass(frozen=True)
class ContentInfo:
    """A blob as one namespace sees it: its size, and that namespace's labels and times."""

    digest: str
    size: int
    labels: Labels
    created_at: datetime | None = None
    updated_at: datetime | None = None


def not_found(digest: str) -> NotFound:
    """containerd's error for a blob the namespace does not hold."""
    return NotFound(f"content digest {digest}")


def _ingest_ref(namespace: str, ref: str) -> str:
    return f"{namespace}/{ref}"


def unique_ref() -> str:
    """A fresh ingest ref for a write the client did not name (containerd's form)."""
    return f"{time.time_ns()}-{base64.urlsafe_b64encode(os.urandom(9)).decode()}"


class NamespacedContent:
    """The shared blob store seen through the call's namespace."""

    def __init__(self, db: Database, store: ContentStore, sharing: str = SHARED) -> None:
        if sharing not in SHARING_POLICIES:
            raise InvalidArgument(f"content sharing policy {sharing!r} is not one of {SHARING_POLICIES}")
        self.db = db
        self.store = store
        self.sharing = sharing
        #: Ingests opened under a lease, which the collector aborts once the lease is gone.
        self.leased_ingests = LeasedIngests()

    # -- database thread ------------------------------------------------------------------

    def info(self, digest: str) -> ContentInfo:
        """The blob ``digest`` as the namespace holds it. NotFound otherwise. Database thread."""
        return self._info(self.db.conn, current_namespace(), digest)

    def require(self, digest: str) -> None:
        """NotFound unless the namespace holds ``digest``. Database thread."""
        if not self._held(self.db.conn, current_namespace(), digest):
            raise not_found(digest)

    def list(self, filter_expressions: Sequence[str] = ()) -> list[ContentInfo]:
        """The namespace's blobs that match one of the filters (fields ``digest``, ``size``,
        ``labels.<key>``), sorted by digest. InvalidArgument for a bad filter. Database thread."""
        namespace = current_namespace()
        match = filters.parse_all(filter_expressions)
        rows = self.db.conn.execute(
            "SELECT digest, labels, created_at, updated_at FROM content WHERE namespace = ?"
            " ORDER BY digest",
            (namespace,),
        ).fetchall()
        found = []
        for digest, labels, created, updated in rows:
            size = self._size(digest)
            if size is None:  # the file vanished behind our back: not listable
                continue
            info = ContentInfo(digest, size, load_labels(labels), to_datetime(created), to_datetime(updated))
            if match.match(filters.content_adaptor(info.digest, info.size, info.labels)):
                found.append(info)
        return found

    def update(self, digest: str, labels: Mapping[str, str], paths: Sequence[str]) -> ContentInfo:
        """Change the namespace's labels of ``digest`` as the mask ``paths`` says (only
        ``labels`` and ``labels.<key>``; no mask replaces them all). InvalidArgument for another
        path or bad labels, NotFound if the namespace does not hold the blob. Database thread."""
        namespace = current_namespace()
        with self.db.transaction() as conn:
            # containerd looks the blob up before it reads the mask: NotFound comes first.
            current = self._info(conn, namespace, digest)
            fieldmask.CONTENT.validate(paths, digest)
            changed = fieldmask.apply_labels(current.labels, labels, paths)
            validate_labels(changed)
            conn.execute(
                "UPDATE content SET labels = ?, updated_at = ? WHERE namespace = ? AND digest = ?",
                (dump_labels(changed), now_ns(), namespace, digest),
            )
            return self._info(conn, namespace, digest)

    def delete(self, digest: str) -> None:
        """Remove ``digest`` from the namespace (and from the call's lease); delete the blob
        file once no namespace holds it. NotFound if the namespace does not hold it.
        Database thread."""
        namespace = current_namespace()
        digests.validate(digest)
        with self.db.transaction() as conn:
            cursor = conn.execute(
                "DELETE FROM content WHERE namespace = ? AND digest = ?", (namespace, digest)
            )
            if cursor.rowcount == 0:
                raise not_found(digest)
            _unlease(conn, namespace, namespaces.current_lease.get(), LeaseResource(digest, _CONTENT))
            still_held = conn.execute(
                "SELECT 1 FROM content WHERE digest = ? LIMIT 1", (digest,)
            ).fetchone()
        # After the commit, still on the database thread: no link can slip in between.
        if still_held is None:
            try:
                self.store.delete(digest)
            except NotFound:
                pass

    def link_stored(self, digest: str, size: int, labels: Mapping[str, str]) -> bool:
        """Give the namespace ``digest`` without its bytes, as a Write under the sharing policy
        would: True if the namespace holds it now (linked with ``labels``, or held already),
        and the call's lease holds it too; False if the policy or the store does not allow
        it (then the bytes are needed). ``size`` 0 means any. Database thread."""
        namespace = current_namespace()
        lease = namespaces.current_lease.get()
        if self._held_and_leased(namespace, lease, digest):
            return True
        stored = self._shareable_size(namespace, digest, size)
        if stored is None:
            return False
        committed = Committed(digest=digest, size=stored, existed=True, ref="", ingest_ref="",
                              labels=freeze({k: v for k, v in labels.items() if v}))
        try:
            self._link(namespace, lease, committed, True)
        except Unavailable:  # deleted from its last namespace meanwhile: download it
            return False
        return True

    # -- worker threads -------------------------------------------------------------------

    def read(self, digest: str, offset: int = 0, size: int = 0) -> BlobReader:
        """A reader of ``size`` bytes (0: to the end) of ``digest`` from ``offset``.

        NotFound if the namespace does not hold the blob, OutOfRange for an offset past its
        end. Worker thread.
        """
        self.db.call(self.require, digest)
        try:
            return BlobReader(self.store.read(digest, offset, size))
        except NotFound:
            raise not_found(digest) from None

    def open_blob(self, digest: str) -> BinaryIO:
        """The blob ``digest`` as an open binary file (the caller closes it). NotFound if the
        namespace does not hold it. Worker thread."""
        self.db.call(self.require, digest)
        try:
            return self.store.reader(digest)
        except NotFound:
            raise not_found(digest) from None

    def open_shared(self, digest: str, size: int = 0) -> BinaryIO:
        """Like :meth:`open_blob`, also for a blob the namespace does not hold but may link
        without its bytes under the sharing policy (``size`` 0: any size); the caller then
        stores it as usual, which links it. NotFound otherwise. Worker thread."""
        namespace = current_namespace()
        if not self.db.call(self._held, self.db.conn, namespace, digest) and \
                self.db.call(self._shareable_size, namespace, digest, size) is None:
            raise not_found(digest)
        try:
            return self.store.reader(digest)
        except NotFound:
            raise not_found(digest) from None

    def blob_path(self, digest: str) -> Path:
        """Where the blob ``digest`` lies, for a reader in another process (which must be done
        before the blob can be collected: a lease holds it). NotFound if the namespace does not
        hold it. Worker thread."""
        self.db.call(self.require, digest)
        if not self.store.blobs.exists(digest):
            raise not_found(digest)
        return self.store.blobs.path_for(digest)

    def status(self, ref: str) -> IngestStatus:
        """The progress of the namespace's ingest ``ref``. NotFound if there is none.
        Worker thread."""
        namespace = current_namespace()
        try:
            status = self.store.status(_ingest_ref(namespace, ref))
        except NotFound:
            raise NotFound(f"reference {ref}") from None
        return dataclasses.replace(status, ref=ref)

    def list_statuses(self, filter_expressions: Sequence[str] = ()) -> builtins.list[IngestStatus]:
        """The namespace's ingests whose ref matches one of the filters (field ``ref``), by
        ref. InvalidArgument for a bad filter. Worker thread."""
        prefix = _ingest_ref(current_namespace(), "")
        match = filters.parse_all(filter_expressions)
        return [
            dataclasses.replace(status, ref=status.ref[len(prefix):])
            for status in self.store.list_statuses()
            if status.ref.startswith(prefix)
            and match.match(filters.content_status_adaptor(status.ref[len(prefix):]))
        ]

    def abort(self, ref: str) -> None:
        """Remove the namespace's ingest ``ref`` (and it from the call's lease). NotFound if
        there is none. Worker thread."""
        namespace = current_namespace()
        try:
            self.store.abort(_ingest_ref(namespace, ref))
        except NotFound:
            raise NotFound(f"reference {ref}") from None
        self.db.call(self._unlease_ingest, namespace, namespaces.current_lease.get(), ref)

    def forget_ingests(self, namespace: str) -> None:
        """After ``namespace`` is deleted: as containerd, whose metadata forgets the namespace's
        ingests while its store keeps their data, Status, ListStatuses and Abort no longer see
        them, and a write with the same ref in a namespace of that name resumes one (see
        :meth:`ContentStore.detach`). Worker thread."""
        self.store.detach(_ingest_ref(namespace, ""))

    def write_session(self) -> ContentWrite:
        """A Content.Write conversation in the call's namespace and lease (see
        :class:`ContentWrite`). Any thread."""
        return ContentWrite(self, current_namespace(), namespaces.current_lease.get())

    def new_blob(self, ref: str = "", *, resume: bool = False) -> BlobSink:
        """A file-like sink whose bytes become a blob of the namespace (see :class:`BlobSink`).

        ``ref`` names the ingest (a fresh one when empty; an existing one is started over,
        unless ``resume``: then the sink appends at :attr:`BlobSink.offset`, as a registry pull
        resuming a download does). Unavailable if another writer holds ``ref``. Worker thread.
        """
        namespace = current_namespace()
        lease = namespaces.current_lease.get()
        generated = not ref
        ref = ref or unique_ref()
        writer = self.store.writer(_ingest_ref(namespace, ref))
        try:
            if writer.status().offset and not resume:
                writer.truncate(0)
            self.db.call(self._lease_ingest, namespace, lease, ref)
        except BaseException:
            writer.close()
            if generated:
                self.store.abort(writer.ref)
            raise
        return BlobSink(self, writer, namespace, lease, ref, generated)

    # -- internals ------------------------------------------------------------------------

    def _held(self, conn: sqlite3.Connection, namespace: str, digest: str) -> bool:
        digests.validate(digest)
        row = conn.execute(
            "SELECT 1 FROM content WHERE namespace = ? AND digest = ?", (namespace, digest)
        ).fetchone()
        return row is not None

    def _size(self, digest: str) -> int | None:
        try:
            return self.store.info(digest).size
        except NotFound:
            return None

    def _info(self, conn: sqlite3.Connection, namespace: str, digest: str) -> ContentInfo:
        digests.validate(digest)
        row = conn.execute(
            "SELECT labels, created_at, updated_at FROM content WHERE namespace = ? AND digest = ?",
            (namespace, digest),
        ).fetchone()
        size = self._size(digest) if row is not None else None
        if row is None or size is None:
            raise not_found(digest)
        labels, created, updated = row
        return ContentInfo(digest, size, load_labels(labels), to_datetime(created), to_datetime(updated))

    def _held_and_leased(self, namespace: str, lease: str | None, digest: str) -> bool:
        """Whether the namespace holds ``digest``; if it does, the call's lease now holds it too
        (a client told "already exists" relies on the blob staying). Database thread."""
        with self.db.transaction() as conn:
            if not self._held(conn, namespace, digest):
                return False
            leases.attach(conn, namespace, lease, LeaseResource(digest, _CONTENT))
            return True

    def _shareable_size(self, namespace: str, digest: str, size: int) -> int | None:
        """The size of ``digest`` if the namespace may link it without its bytes (containerd's
        test in its metadata Writer): the policy is "shared", or a namespace labelled
        shareable holds it; the store has it; and ``size`` is 0 or the blob's. Database
        thread."""
        if self.sharing != SHARED and not self._in_shareable_namespace(namespace, digest):
            return None
        stored = self._size(digest)
        if stored is None or (size and size != stored):
            return None
        return stored

    def _in_shareable_namespace(self, namespace: str, digest: str) -> bool:
        rows = self.db.conn.execute(
            "SELECT n.labels FROM content c JOIN namespaces n ON n.name = c.namespace"
            " WHERE c.digest = ? AND c.namespace != ?",
            (digest, namespace),
        ).fetchall()
        return any(load_labels(labels).get(SHAREABLE_LABEL) == "true" for (labels,) in rows)

    def _lease_ingest(self, namespace: str, lease: str | None, ref: str) -> None:
        # Opening an ingest is a write into the namespace: containerd creates the namespace
        # then (a later Namespaces.Create of it is AlreadyExists), and so does ctrpyd.
        with self.db.transaction() as conn:
            ensure_namespace(conn, namespace)
            if lease:
                leases.attach(conn, namespace, lease, LeaseResource(ref, _INGESTS))
        if lease:
            self.leased_ingests.add(namespace, ref)

    def _unlease_ingest(self, namespace: str, lease: str | None, ref: str) -> None:
        if lease:
            with self.db.transaction() as conn:
                _unlease(conn, namespace, lease, LeaseResource(ref, _INGESTS))

    def _link(
        self,
        namespace: str,
        lease: str | None,
        committed: Committed,
        fill_labels: bool,
    ) -> bool:
        """Give the namespace its row for a just-committed blob, with the COMMIT's labels, and
        move the lease's hold from the ingest to the blob. Returns False, changing no row,
        when the namespace held the blob already; then, with ``fill_labels``, the labels it
        lacks are added. Database thread."""
        validate_labels({k: v for k, v in committed.labels.items() if v})  # stored: non-empty ones
        with self.db.transaction() as conn:
            ensure_namespace(conn, namespace)
            _unlease(conn, namespace, lease, LeaseResource(committed.ref, _INGESTS))
            leases.attach(conn, namespace, lease, LeaseResource(committed.digest, _CONTENT))
            if self._held(conn, namespace, committed.digest):
                if fill_labels:
                    current = self._info(conn, namespace, committed.digest).labels
                    missing = {k: v for k, v in committed.labels.items() if k not in current and v}
                    if missing:
                        conn.execute(
                            "UPDATE content SET labels = ?, updated_at = ?"
                            " WHERE namespace = ? AND digest = ?",
                            (dump_labels({**current, **missing}), now_ns(), namespace, committed.digest),
                        )
                return False
            if committed.existed and not self.store.exists(committed.digest):
                # Another namespace deleted the last copy between our commit and this link.
                raise Unavailable(f"content {committed.digest} was removed while being committed; retry")
            stamp = now_ns()
            conn.execute(
                "INSERT INTO content (namespace, digest, labels, created_at, updated_at)"
                " VALUES (?, ?, ?, ?, ?)",
                (namespace, committed.digest, dump_labels({k: v for k, v in committed.labels.items() if v}),
                 stamp, stamp),
            )
            return True


def _unlease(conn: sqlite3.Connection, namespace: str, lease: str | None, resource: LeaseResource) -> None:
    if lease:
        conn.execute(
            "DELETE FROM lease_resources WHERE namespace = ? AND lease_id = ? AND type = ?"
            " AND resource_id = ?",
            (namespace, lease, resource.type, resource.id),
        )


class ContentWrite:
    """One Content.Write stream in a namespace: a :class:`WriteSession` whose ingest refs,
    ``expected`` checks and commits go through the namespace and the lease.

    Its methods block (disk and database): call them from a worker thread, one at a time.
    """

    def __init__(self, content: NamespacedContent, namespace: str, lease: str | None) -> None:
        self._content = content
        self._namespace = namespace
        self._lease = lease
        db = content.db
        self._session = WriteSession(
            content.store,
            ingest_ref=self._open_ref,
            blob_exists=lambda digest: db.call(content._held_and_leased, namespace, lease, digest),
            shared_size=lambda digest, total: db.call(content._shareable_size, namespace, digest, total),
            on_commit=self._commit,
        )

    @property
    def done(self) -> bool:
        """True once the write committed, failed or was closed."""
        return self._session.done

    def handle(self, request: WriteRequest) -> WriteReply:
        """Apply one request (see :mod:`ctrpy.manager.content.session` for the rules).

        Labels sent with COMMIT are checked before anything is committed (InvalidArgument);
        a COMMIT of a blob the namespace already holds raises AlreadyExists.
        """
        if request.action == WriteAction.COMMIT and request.labels:
            try:
                # Sizes here; an empty key fails where containerd's store fails, at the link
                # after the blob is committed (the ingest is gone then).
                validate_label_sizes(request.labels)
            except InvalidArgument:
                # containerd writes the data before it checks the labels (when it commits):
                # the ingest keeps the data for a retry.
                if request.data:
                    self._session.handle(dataclasses.replace(
                        request, action=WriteAction.WRITE, labels=MappingProxyType({})))
                raise
        return self._session.handle(request)

    def close(self) -> None:
        """End the stream; an uncommitted ingest stays for a later resume. Idempotent."""
        self._session.close()

    def _open_ref(self, ref: str) -> str:
        self._content.db.call(self._content._lease_ingest, self._namespace, self._lease, ref)
        return _ingest_ref(self._namespace, ref)

    def _commit(self, committed: Committed) -> None:
        linked = self._content.db.call(
            self._content._link, self._namespace, self._lease, committed, False
        )
        if not linked:
            raise AlreadyExists(f"content {committed.digest}")


class BlobSink:
    """A write-only file whose bytes become a blob of a namespace: write, then :meth:`commit`.

    Made by :meth:`NamespacedContent.new_blob`. Data is gathered in memory up to
    :data:`SINK_BUFFER` bytes and appended to the ingest, so a blob of any size streams
    through. :meth:`close` without a commit drops the ingest when its ref was generated, and
    keeps it (resumable) when the caller named it. Blocking: use from one worker thread.
    """

    def __init__(
        self,
        content: NamespacedContent,
        writer: Writer,
        namespace: str,
        lease: str | None,
        ref: str,
        generated: bool,
    ) -> None:
        self._content = content
        self._writer = writer
        self._namespace = namespace
        self._lease = lease
        self._ref = ref
        self._generated = generated
        self._buffer = bytearray()
        self._committed = False

    @property
    def offset(self) -> int:
        """Bytes the blob holds so far (more than 0 for a resumed ingest before any write)."""
        return self._writer.status().offset + len(self._buffer)

    @property
    def closed(self) -> bool:
        """True once committed, closed, or after a failed commit."""
        return self._committed or self._writer.closed

    def write(self, data: bytes, /) -> int:
        """Append ``data``."""
        self._buffer += data
        if len(self._buffer) >= SINK_BUFFER:
            self.flush()
        return len(data)

    def flush(self) -> None:
        """Append what is buffered to the ingest."""
        if self._buffer:
            self._writer.write(bytes(self._buffer))
            self._buffer.clear()

    def commit(self, labels: Mapping[str, str], expected: str = "") -> ContentInfo:
        """Verify and store the blob, and give the namespace a row for it with ``labels``.

        A blob the namespace holds already is kept as it is, and gets those of ``labels`` it
        lacks (containerd's differ does this for its ``containerd.io/uncompressed`` label).
        InvalidArgument for bad labels; FailedPrecondition (the ingest kept) when ``expected``
        is given and the bytes have another digest.
        """
        validate_labels(labels)
        self.flush()
        size = self._writer.status().offset
        try:
            digest = self._writer.commit(expected=expected)
            existed = False
        except BlobAlreadyExists as error:
            digest, existed = error.digest, True
        self._committed = True
        committed = Committed(
            digest=digest,
            size=size,
            existed=existed,
            ref=self._ref,
            ingest_ref=self._writer.ref,
            labels=freeze(labels),
        )
        db = self._content.db
        db.call(self._content._link, self._namespace, self._lease, committed, True)
        with namespaces.using(self._namespace):
            return db.call(self._content.info, digest)

    def close(self) -> None:
        """Release the ingest; without a commit, drop it if its ref was generated. Idempotent."""
        if self._committed or self._writer.closed:
            return
        self._writer.close()
        if self._generated:
            try:
                self._content.store.abort(self._writer.ref)
            except NotFound:
                pass
            self._content.db.call(self._content._unlease_ingest, self._namespace, self._lease, self._ref)


class BlobReader:
    """A window of a blob, read chunk by chunk from worker threads.

    :meth:`close` waits for a read in progress, so it is safe to call from another thread while
    a :meth:`next_chunk` is still running (a cancelled stream does that).
    """

    def __init__(self, chunks: Generator[bytes, None, None]) -> None:
        self._chunks = chunks
        self._lock = threading.Lock()
        self._closed = False

    def next_chunk(self) -> bytes | None:
        """The next chunk, or None at the end of the window (or after close)."""
        with self._lock:
            if self._closed:
                return None
            return next(self._chunks, None)

    def close(self) -> None:
        """Close the blob file. Idempotent."""
        with self._lock:
            self._closed = True
            self._chunks.close()
