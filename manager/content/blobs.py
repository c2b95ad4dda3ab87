"""Verified blobs on disk: ``blobs/<algorithm>/<hex>``, one immutable file per digest.

A blob gets there only by :meth:`BlobDir.install`, which renames an ingest's fully written,
fsynced data file into place and then fsyncs the directory, so a blob that is visible is
complete and survives a crash. Blobs are made read-only (mode 0444) and their modification
time is the commit time.
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Generator, Iterator
from pathlib import Path
from typing import BinaryIO

from ctrpy.errors import NotFound, OutOfRange

from . import digests
from .model import BlobAlreadyExists, BlobInfo, ns_to_datetime

# Serialises the exists-check and rename of commits in this process, so that of two writers
# that produce the same blob exactly one wins and the other gets AlreadyExists.
_INSTALL_LOCK = threading.Lock()


def fsync_dir(path: Path) -> None:
    """Flush a directory's entries (a rename into it) to disk."""
    fd = os.open(path, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


class BlobDir:
    """The ``blobs`` directory of a content store."""

    def __init__(self, path: Path) -> None:
        self.path = path
        path.mkdir(parents=True, exist_ok=True)

    def path_for(self, digest: str) -> Path:
        """Where blob ``digest`` lives (whether or not it exists); InvalidArgument if malformed."""
        algorithm, encoded = digests.split(digest)
        return self.path / algorithm / encoded

    def info(self, digest: str) -> BlobInfo:
        """Facts about a stored blob; NotFound if it is not stored."""
        try:
            st = os.stat(self.path_for(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}") from None
        return _info(digest, st)

    def exists(self, digest: str) -> bool:
        """Whether the blob is stored; InvalidArgument for a malformed digest."""
        return self.path_for(digest).is_file()

    def open(self, digest: str) -> BinaryIO:
        """Open a blob for reading (the caller closes it); NotFound if it is not stored."""
        try:
            return open(self.path_for(digest), "rb")
        except FileNotFoundError:
            raise NotFound(f"content {digest}") from None

    def read(
        self, digest: str, offset: int, size: int, chunk_size: int
    ) -> Generator[bytes, None, None]:
        """Open the blob now and return an iterator over the window's bytes, in chunks.

        The checks happen before this returns, so errors surface before any data is sent:
        NotFound if the blob is absent, OutOfRange if ``offset`` lies beyond its end. A negative
        offset counts as 0, and ``size`` <= 0, or a window running past the end, means "to the
        end", as in containerd's Read. The file is closed when the iterator is exhausted or
        closed.
        """
        stream = self.open(digest)
        try:
            length = os.fstat(stream.fileno()).st_size
            offset = max(offset, 0)
            if offset > length:
                raise OutOfRange(f"read past object length {length} bytes")
            if size <= 0 or offset + size > length:
                size = length - offset
        except BaseException:
            stream.close()
            raise
        return _chunks(stream, offset, size, max(chunk_size, 1))

    def install(self, source: Path, digest: str, size: int) -> None:
        """Move the fsynced file ``source`` (of ``size`` bytes) into place as blob ``digest``.

        Raises BlobAlreadyExists (leaving ``source`` where it is) when the blob is already stored,
        FileNotFoundError when ``source`` is gone.
        """
        target = self.path_for(digest)
        if not target.parent.is_dir():  # the first blob of its algorithm
            target.parent.mkdir(exist_ok=True)
            fsync_dir(self.path)
        now = time.time_ns()
        with _INSTALL_LOCK:
            if target.exists():
                raise BlobAlreadyExists(digest, size)
            # Set the final mode and times before the rename, so the blob appears complete.
            os.chmod(source, 0o444)
            os.utime(source, ns=(now, now))
            os.rename(source, target)
        fsync_dir(target.parent)

    def delete(self, digest: str) -> None:
        """Remove a blob; NotFound if it is not stored."""
        try:
            os.unlink(self.path_for(digest))
        except FileNotFoundError:
            raise NotFound(f"content {digest}") from None

    def walk(self) -> Iterator[BlobInfo]:
        """Every stored blob of every known algorithm, in no particular order.

        Entries that are not well-formed blobs are skipped (:func:`strays` reports them), and a
        blob deleted while the walk runs is simply not reported.
        """
        for algorithm in digests.ALGORITHMS:
            try:
                entries = list(os.scandir(self.path / algorithm))
            except FileNotFoundError:
                continue
            for entry in entries:
                if not digests.is_valid_encoded(algorithm, entry.name):
                    continue
                try:
                    st = entry.stat(follow_symlinks=False)
                except FileNotFoundError:
                    continue
                if stat.S_ISREG(st.st_mode):
                    yield _info(f"{algorithm}:{entry.name}", st)

    def strays(self) -> Iterator[tuple[Path, str]]:
        """Entries under ``blobs/`` that are not blobs: ``(path, why)`` pairs."""
        for entry in os.scandir(self.path):
            path = Path(entry.path)
            if entry.name not in digests.ALGORITHMS or not entry.is_dir(follow_symlinks=False):
                yield path, "not a known digest algorithm directory"
                continue
            for blob in os.scandir(path):
                if not digests.is_valid_encoded(entry.name, blob.name):
                    yield Path(blob.path), "name is not a valid digest"
                elif not blob.is_file(follow_symlinks=False):
                    yield Path(blob.path), "not a regular file"


def _info(digest: str, st: os.stat_result) -> BlobInfo:
    when = ns_to_datetime(st.st_mtime_ns)
    return BlobInfo(digest=digest, size=st.st_size, created_at=when, updated_at=when)


def _chunks(
    stream: BinaryIO, offset: int, size: int, chunk_size: int
) -> Generator[bytes, None, None]:
    with stream:
        fd = stream.fileno()
        end = offset + size
        while offset < end:
            chunk = os.pread(fd, min(chunk_size, end - offset), offset)
            if not chunk:  # only a blob damaged behind our back is shorter than its size
                return
            offset += len(chunk)
            yield chunk
