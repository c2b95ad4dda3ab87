"""The content store: blobs by digest, and resumable ingests that become blobs.

Imports point one way: ``ctrpy.errors`` and ``ctrpy.filters`` <- ``digests``, ``model`` <-
``locks``, ``blobs``, ``ingest`` <- ``writer`` <- ``store`` (with ``doctor``) <- ``session``,
``aio``. Nothing here imports generated protobuf code or knows about namespaces; the Content
servicer converts messages to and from the plain values used here, and the metadata database
decides which namespace sees which blob.

On disk, under the daemon's root: ``content/blobs/sha256/<hex>`` for verified blobs and
``content/ingest/<sha256 of ref>/`` for writes in progress (see ``store`` and ``ingest``).
"""

from .digests import EMPTY as EMPTY_DIGEST
from .model import BlobAlreadyExists, BlobInfo, IngestStatus, Leftover
from .session import Committed, WriteAction, WriteReply, WriteRequest, WriteSession
from .store import ContentStore
from .writer import Writer

__all__ = [
    "EMPTY_DIGEST",
    "BlobAlreadyExists",
    "BlobInfo",
    "Committed",
    "ContentStore",
    "IngestStatus",
    "Leftover",
    "WriteAction",
    "WriteReply",
    "WriteRequest",
    "WriteSession",
    "Writer",
]
