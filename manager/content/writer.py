"""Writers: one open ingest, appended to, verified and committed as a blob.

A :class:`Writer` is what :meth:`ContentStore.writer` returns. It holds the ingest's lock from
open to :meth:`~Writer.commit` or :meth:`~Writer.close`; while it is held, nobody else can open
a writer for the same ref (Unavailable). Data is appended at the current offset only, hashed as
it arrives (sha256), and written straight to the ingest's ``data`` file, so a blob of any size
passes through in chunks.

Resuming: opening a writer for a ref whose ingest exists continues it. The running digest is
rebuilt by hashing the data already on disk (hashlib states cannot be saved), so a resumed
writer's :meth:`~Writer.digest` covers every byte written, before and after the resume.

A full disk (ENOSPC, EDQUOT) while writing, recording or committing drops the whole ingest at
once and raises ResourceExhausted (see :mod:`ctrpy.diskspace`). Keeping it for a resume, as
containerd does until the client's lease goes, would leave the disk full for the next import;
and a client resuming after space was freed simply starts again from offset 0.
"""

from __future__ import annotations

import contextlib
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Self

from ctrpy import diskspace
from ctrpy.errors import FailedPrecondition, InvalidArgument, NotFound, OutOfRange

from .. import failpoints
from . import digests, ingest
from .blobs import BlobDir
from .model import BlobAlreadyExists, IngestStatus


class Writer:
    """An open, locked ingest. Thread-safe; every method blocks on disk, so call it from a thread.

    Use it as a context manager, or call :meth:`close` (keeps the ingest for a later resume)
    or :meth:`commit` (turns it into a blob) exactly once; either releases the lock.
    """

    def __init__(
        self,
        *,
        blobs: BlobDir,
        path: Path,
        state: ingest.State,
        fd: int,
        hasher: digests.Hasher,
        release: Callable[[], None],
    ) -> None:
        self._blobs = blobs
        self._path = path
        self._state = state
        self._fd: int | None = fd
        self._hasher = hasher
        self._release = release
        self._mutex = threading.Lock()

    @property
    def ref(self) -> str:
        """The ref this writer was opened for."""
        return self._state.ref

    @property
    def closed(self) -> bool:
        """Whether the writer has been closed or committed (or a commit failed)."""
        return self._fd is None

    def status(self) -> IngestStatus:
        """The current offset, total, expected digest and times (also after close)."""
        with self._mutex:
            return self._state.status()

    def digest(self) -> str:
        """The sha256 digest of every byte written so far (``sha256:e3b0...`` before any)."""
        with self._mutex:
            return digests.of(self._hasher)

    def write(self, data: bytes) -> int:
        """Append ``data`` at the current offset and return the new offset."""
        with self._mutex, self._out_of_space("writing"):
            fd = self._open_fd()
            self._append(fd, data)
            return self._state.offset

    def write_at(self, offset: int, data: bytes) -> int:
        """Write ``data`` at ``offset``, which must be the current offset; return the new offset.

        Raises OutOfRange (``write @<offset> must occur at current offset <n>``) otherwise:
        ingests only grow at their end.
        """
        with self._mutex, self._out_of_space("writing"):
            fd = self._open_fd()
            if offset != self._state.offset:
                raise OutOfRange(
                    f"write @{offset} must occur at current offset {self._state.offset}"
                )
            self._append(fd, data)
            return self._state.offset

    def truncate(self, size: int = 0) -> None:
        """Throw away everything written and start over at offset 0 (only size 0 is supported)."""
        if size != 0:
            raise InvalidArgument(f"truncate to {size}: only truncating to 0 is supported")
        with self._mutex:
            fd = self._open_fd()
            os.ftruncate(fd, 0)
            self._hasher = digests.new_hasher()
            self._state.offset = 0
            self._state.updated_ns = time.time_ns()

    def set_total(self, total: int) -> None:
        """Record the size the client now announces (0 leaves it as is); stored with the ingest."""
        if total < 0:
            raise InvalidArgument(f"total {total} must not be negative")
        with self._mutex, self._out_of_space("recording the total of"):
            self._open_fd()
            if total and total != self._state.total:
                ingest.write_meta(self._path, "total", str(total))
                self._state.total = total

    def set_expected(self, expected: str) -> None:
        """Record the digest the client now announces ("" keeps the old); stored with the ingest."""
        if expected:
            digests.validate(expected)
        with self._mutex, self._out_of_space("recording the digest of"):
            self._open_fd()
            if expected and expected != self._state.expected:
                ingest.write_meta(self._path, "expected", expected)
                self._state.expected = expected

    def commit(self, size: int = 0, expected: str = "") -> str:
        """Verify the ingest, make it the blob of its digest, and return that digest.

        ``size``, when given (> 0), must equal the bytes written, and ``expected``, when given,
        must equal their digest. The total and digest stored with the ingest are not checked:
        as containerd's local store, only what the committer passes counts (they are what a
        client announced, maybe in an earlier stream, and Content.Status shows them). A
        ``sha512:`` expectation is checked by hashing the data once more with sha512, and the
        blob is then stored under that digest. A mismatch raises FailedPrecondition
        (``unexpected commit size 3, expected 4`` / ``unexpected commit digest ..., expected
        ...``) and keeps the ingest. The data is fsynced, renamed into ``blobs/`` atomically and
        the directory fsynced; the ingest is then removed. If the blob is already stored, the
        ingest is removed as well and BlobAlreadyExists (an AlreadyExists carrying the digest)
        is raised. NotFound if the ingest was aborted meanwhile; FailedPrecondition if the
        writer is closed. The writer is closed afterwards in every case.
        """
        if size < 0:
            raise InvalidArgument(f"commit size {size} must not be negative")
        if expected:
            digests.validate(expected)
        with self._mutex, self._out_of_space("committing"):
            fd = self._open_fd()
            self._fd = None
            try:
                return self._commit(fd, size, expected)
            finally:
                self._release()

    def close(self) -> None:
        """Flush the data, record the update time and release the lock; the ingest stays on disk
        so that a later writer for the same ref resumes it. Closing twice is harmless."""
        with self._mutex, self._out_of_space("closing"):
            fd, self._fd = self._fd, None
            if fd is None:
                return
            try:
                os.fsync(fd)
            finally:
                os.close(fd)
                try:
                    self._save_updated()
                finally:
                    self._release()

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __del__(self) -> None:
        # Safety net for a caller that forgot to close: never leave a ref locked forever.
        fd = getattr(self, "_fd", None)
        if fd is not None:
            self._fd = None
            os.close(fd)
            self._release()

    # -- internals (the caller holds self._mutex) --

    def _out_of_space(self, doing: str) -> contextlib.AbstractContextManager[None]:
        return diskspace.guard(f'{doing} ingest "{self._state.ref}"', self._path, self._discard)

    def _discard(self) -> None:
        """Drop the ingest after the disk filled up: close it, release the lock, delete it."""
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)
            self._release()
        _remove_quietly(self._path)

    def _open_fd(self) -> int:
        if self._fd is None:
            raise FailedPrecondition(f"writer for ref {self._state.ref} is closed")
        return self._fd

    def _append(self, fd: int, data: bytes) -> None:
        start = offset = self._state.offset
        view = memoryview(data)
        try:
            while view:
                written = os.pwrite(fd, view, offset)
                offset += written
                view = view[written:]
        except BaseException:
            # A partial write (ENOSPC, say) is undone, so data and digest never disagree.
            os.ftruncate(fd, start)
            raise
        self._hasher.update(data)
        self._state.offset = offset
        self._state.updated_ns = time.time_ns()

    def _save_updated(self) -> None:
        try:
            ingest.write_meta(self._path, "updatedat", str(self._state.updated_ns))
        except FileNotFoundError:  # aborted meanwhile: nothing left to record
            pass

    def _commit(self, fd: int, size: int, expected: str) -> str:
        ref = self._state.ref
        try:
            os.fsync(fd)  # durable before it can become visible as a blob
            actual = os.fstat(fd).st_size
        finally:
            os.close(fd)
        if size > 0 and size != actual:
            self._save_updated()
            raise FailedPrecondition(f"unexpected commit size {actual}, expected {size}")
        data = self._path / "data"
        algorithm = digests.split(expected)[0] if expected else digests.CANONICAL
        try:
            if algorithm == digests.CANONICAL:
                digest = digests.of(self._hasher)
            else:
                hasher = digests.new_hasher(algorithm)
                with open(data, "rb") as stream:
                    digests.feed(hasher, stream)
                digest = digests.of(hasher, algorithm)
            if expected and digest != expected:
                self._save_updated()
                raise FailedPrecondition(f"unexpected commit digest {digest}, expected {expected}")
            failpoints.hit(failpoints.CONTENT_COMMIT_BEFORE_RENAME)
            try:
                self._blobs.install(data, digest, actual)
            except BlobAlreadyExists:
                _remove_quietly(self._path)
                raise
        except FileNotFoundError:
            raise NotFound(f'ingest ref "{ref}"') from None
        _remove_quietly(self._path)
        return digest


def open_writer(
    blobs: BlobDir,
    root: Path,
    ref: str,
    total: int,
    expected: str,
    release: Callable[[], None],
) -> Writer:
    """Resume or create the ingest of ``ref`` under ``root`` and open a writer on it.

    The caller holds the ingest's lock; ``release`` gives it back and becomes the writer's.
    An ingest that cannot be resumed, or whose stored total or expected digest contradicts the
    ones given, is discarded and started afresh (the client is writing something else now).
    """
    path = root / ingest.dirname_for(ref)
    state: ingest.State | None = None
    if os.path.lexists(path):
        try:
            state = ingest.load(path, ref)
        except ingest.Broken:
            state = None
        if state is not None and (
            (total and state.total and total != state.total)
            or (expected and state.expected and expected != state.expected)
        ):
            state = None
        if state is None:
            _remove_quietly(path)
    if state is None:
        state = ingest.create(root, ref, total, expected)
    else:
        if total and not state.total:
            ingest.write_meta(path, "total", str(total))
            state.total = total
        if expected and not state.expected:
            ingest.write_meta(path, "expected", expected)
            state.expected = expected
    fd = os.open(path / "data", os.O_WRONLY | os.O_CLOEXEC)
    try:
        hasher = digests.new_hasher()
        with open(path / "data", "rb") as stream:
            state.offset = digests.feed(hasher, stream)
    except BaseException:
        os.close(fd)
        raise
    return Writer(blobs=blobs, path=path, state=state, fd=fd, hasher=hasher, release=release)


def _remove_quietly(path: Path) -> None:
    try:
        ingest.remove(path)
    except FileNotFoundError:
        pass
