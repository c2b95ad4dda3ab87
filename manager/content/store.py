"""The content store: blobs addressed by digest, and the ingests that produce them.

On disk, under the daemon's root directory::

    <root>/content/blobs/<algorithm>/<hex>    verified, immutable blobs (see ``blobs``)
    <root>/content/ingest/<hash of ref>/      unfinished writes (see ``ingest``)

Like containerd's local store, this store knows nothing of namespaces or labels: blobs are
shared, and which namespace may see a blob, with which labels, is the metadata database's
business. Every method is synchronous and blocks on disk; it is safe to call from several
threads at once, and ctrpyd calls it through ``asyncio.to_thread`` (see ``aio`` for reads).

One process owns a content root: the writer locks (one writer per ref) are held in memory.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Generator, Iterator, Sequence
from datetime import timedelta
from pathlib import Path
from typing import BinaryIO

from ctrpy import diskspace
from ctrpy import filters as filtering
from ctrpy.errors import InvalidArgument, NotFound

from . import digests, doctor, ingest
from .blobs import BlobDir
from .locks import TABLE
from .model import BlobInfo, IngestStatus, Leftover
from .writer import Writer, open_writer

#: How long :meth:`ContentStore.writer` waits for a busy ref before raising Unavailable.
DEFAULT_LOCK_TIMEOUT = 0.5
#: The file that marks a detached ingest (see :meth:`ContentStore.detach`).
DETACHED = "detached"


class ContentStore:
    """Blobs and ingests under ``<root>/content``, created if missing."""

    def __init__(
        self, root: str | os.PathLike[str], *, lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    ) -> None:
        self.root = Path(root)
        self.path = self.root / "content"
        self.blobs = BlobDir(self.path / "blobs")
        self.ingest_root = self.path / "ingest"
        self.ingest_root.mkdir(parents=True, exist_ok=True)
        self.lock_timeout = lock_timeout
        self._lock_root = os.path.realpath(self.ingest_root)

    # -- blobs --

    def info(self, digest: str) -> BlobInfo:
        """Size and times of a blob. InvalidArgument for a malformed digest, NotFound if absent."""
        return self.blobs.info(digest)

    def exists(self, digest: str) -> bool:
        """Whether a blob is stored. InvalidArgument for a malformed digest."""
        return self.blobs.exists(digest)

    def reader(self, digest: str) -> BinaryIO:
        """An open binary file of the blob; the caller closes it. NotFound if absent."""
        return self.blobs.open(digest)

    def read(
        self, digest: str, offset: int = 0, size: int = 0, chunk_size: int = digests.CHUNK_SIZE
    ) -> Generator[bytes, None, None]:
        """The bytes of a blob from ``offset``, ``size`` of them (0: to the end), in chunks of at
        most ``chunk_size``, as Content.Read streams them.

        Checks happen at the call, not at the first iteration: InvalidArgument for a malformed
        digest, NotFound if absent, OutOfRange if ``offset`` is past the end (an offset equal to
        the size gives no bytes). A window running past the end is cut at the end. Close the
        iterator (or exhaust it) to close the file.
        """
        return self.blobs.read(digest, offset, size, chunk_size)

    def delete(self, digest: str) -> None:
        """Remove a blob. InvalidArgument for a malformed digest, NotFound if absent."""
        self.blobs.delete(digest)

    def walk(self) -> Iterator[BlobInfo]:
        """Every stored blob, in no particular order."""
        return self.blobs.walk()

    # -- ingests --

    def writer(self, ref: str, total: int = 0, expected: str = "") -> Writer:
        """Open the ingest for ``ref``, resuming it if it exists, and lock it.

        ``total`` and ``expected`` are what the client announces (0 and "" for unknown); they
        are kept with the ingest (Status shows them), but a commit checks only what it is given
        (see :meth:`Writer.commit`). An existing ingest that contradicts them is started afresh. Only one writer per ref may be open at a time: if another holds it
        for longer than the store's ``lock_timeout``, this raises Unavailable
        (``ref <ref> locked for ...``), as containerd does. InvalidArgument for a bad ref,
        negative total or malformed digest.

        Unlike containerd's local store this does not refuse an ``expected`` digest that is
        already stored: that check belongs to the caller, who knows which namespace asks
        (:class:`~ctrpy.manager.content.session.WriteSession` does it).
        """
        ingest.validate_ref(ref)
        if total < 0:
            raise InvalidArgument(f"total {total} must not be negative")
        if expected:
            digests.validate(expected)
        key = self._lock_key(ref)
        TABLE.acquire(key, ref, self.lock_timeout)
        try:
            # A writer takes a detached ingest back (see detach).
            with contextlib.suppress(FileNotFoundError, NotADirectoryError):
                os.unlink(self.ingest_root / ingest.dirname_for(ref) / DETACHED)
            # A new ingest that does not fit is never left half-made (ingest.create cleans up).
            with diskspace.guard(f'opening ingest "{ref}"', self.ingest_root):
                return open_writer(
                    self.blobs, self.ingest_root, ref, total, expected, lambda: TABLE.release(key)
                )
        except BaseException:
            TABLE.release(key)
            raise

    def status(self, ref: str) -> IngestStatus:
        """The progress of the ingest ``ref``. NotFound (``ingest ref "<ref>"``) if there is none
        or it is damaged beyond resuming; InvalidArgument for a bad ref."""
        ingest.validate_ref(ref)
        path = self.ingest_root / ingest.dirname_for(ref)
        try:
            if os.path.lexists(path / DETACHED):
                raise ingest.Broken("detached")
            return ingest.load(path, ref).status()
        except ingest.Broken:
            raise NotFound(f'ingest ref "{ref}"') from None

    def list_statuses(self, filters: Sequence[str] = ()) -> list[IngestStatus]:
        """All resumable ingests matching ``filters`` (containerd filter syntax, field ``ref``),
        sorted by ref. InvalidArgument for a malformed filter."""
        matcher = filtering.parse_all(list(filters))
        statuses = []
        for path in self._ingest_dirs():
            if os.path.lexists(path / DETACHED):
                continue
            try:
                status = ingest.load(path).status()
            except ingest.Broken:
                continue
            if matcher.match(filtering.content_status_adaptor(status.ref)):
                statuses.append(status)
        return sorted(statuses, key=lambda status: status.ref)

    def abort(self, ref: str) -> None:
        """Remove the ingest ``ref`` and its data. NotFound if there is none.

        As in containerd, this does not wait for an open writer: that writer's commit then
        fails with NotFound.
        """
        ingest.validate_ref(ref)
        path = self.ingest_root / ingest.dirname_for(ref)
        try:
            if os.path.lexists(path / DETACHED):
                raise FileNotFoundError(path)
            ingest.remove(path)
        except FileNotFoundError:
            raise NotFound(f'ingest ref "{ref}"') from None

    def detach(self, prefix: str) -> None:
        """Hide the ingests whose ref starts with ``prefix`` from status, listing and abort,
        keeping their data until a writer opens one again (which resumes it) or a cleanup
        removes it for its age.

        This is what containerd does when a namespace is deleted: its metadata forgets the
        namespace's ingests, its local store keeps their data, and a later write with the
        same ref in a namespace of that name resumes where it stopped."""
        for path in self._ingest_dirs():
            try:
                ref = ingest.load(path).ref
            except ingest.Broken:
                continue
            if ref.startswith(prefix):
                with contextlib.suppress(FileNotFoundError):
                    ingest.write_meta(path, DETACHED, "")

    def is_locked(self, ref: str) -> bool:
        """Whether a writer for ``ref`` is open in this process."""
        return TABLE.is_held(self._lock_key(ref))

    # -- housekeeping --

    def cleanup_ingests(self, older_than: timedelta | None = None) -> list[Leftover]:
        """Remove ingests nobody is writing that were last updated more than ``older_than`` ago
        (all of them when None), damaged ingests, and temporary leftovers; return what went."""
        return doctor.cleanup(self, older_than)

    def leftovers(
        self, stale_after: timedelta = doctor.DEFAULT_STALE_AFTER, verify: bool = False
    ) -> list[Leftover]:
        """Report, without changing anything, what crashes and abandoned clients left behind
        (see :func:`doctor.find_leftovers`)."""
        return doctor.find_leftovers(self, stale_after, verify)

    def ingest_lock_key(self, dirname: str) -> tuple[str, str]:
        """The writer-lock key of the ingest directory ``dirname`` (for ``doctor``)."""
        return self._lock_root, dirname

    # -- internals --

    def _lock_key(self, ref: str) -> tuple[str, str]:
        return self.ingest_lock_key(ingest.dirname_for(ref))

    def _ingest_dirs(self) -> Iterator[Path]:
        for entry in os.scandir(self.ingest_root):
            if not ingest.is_temp(entry.name):
                yield Path(entry.path)

