"""The values the content store hands out: blob facts, ingest progress, leftovers."""

from __future__ import annotations

import dataclasses
from datetime import UTC, datetime, timedelta

from ctrpy.errors import AlreadyExists


@dataclasses.dataclass(frozen=True)
class BlobInfo:
    """A committed blob.

    ``created_at`` is the commit time. Blobs never change after commit, and labels live in the
    metadata database, so ``updated_at`` equals ``created_at`` here; the metadata layer keeps
    its own update times for labels.
    """

    digest: str
    size: int
    created_at: datetime
    updated_at: datetime


@dataclasses.dataclass(frozen=True)
class IngestStatus:
    """The progress of one ingest (an unfinished write), as Content.Status reports it.

    ``offset`` is the number of bytes written so far, which is where a resumed write continues.
    ``total`` is the size announced by the client (0 when unknown); ``expected`` the digest it
    announced ("" when unknown).
    """

    ref: str
    offset: int
    total: int
    expected: str
    started_at: datetime
    updated_at: datetime


@dataclasses.dataclass(frozen=True)
class Leftover:
    """Something on disk that a crash or an abandoned client left behind.

    ``kind`` is one of:

    - ``temp``: a temporary directory or file of an interrupted operation;
    - ``broken-ingest``: an ingest directory missing its ``ref`` or ``data`` file, or whose name
      does not match its ref (a writer for that ref starts it afresh);
    - ``stale-ingest``: a complete ingest no writer has touched for a long time;
    - ``stray``: an entry under ``blobs/`` that is not a blob of a known algorithm;
    - ``corrupt-blob``: a blob whose content no longer matches its digest (only when verifying).

    ``ref`` is the ingest's ref when it is known, else "".
    """

    kind: str
    path: str
    detail: str = ""
    ref: str = ""


class BlobAlreadyExists(AlreadyExists):
    """A commit found its blob already stored; the ingest is gone, the stored blob is unchanged.

    Carries the committed ``digest`` and ``size`` so that a namespace-aware layer can still link
    the existing blob into the caller's namespace (containerd's metadata store does this).
    """

    def __init__(self, digest: str, size: int) -> None:
        self.digest = digest
        self.size = size
        super().__init__(f"content {digest}")


def ns_to_datetime(ns: int) -> datetime:
    """Integer nanoseconds since the epoch as an aware UTC datetime (microsecond precision)."""
    seconds, rest = divmod(ns, 1_000_000_000)
    return datetime.fromtimestamp(seconds, UTC) + timedelta(microseconds=rest // 1000)
