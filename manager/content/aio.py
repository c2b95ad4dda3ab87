"""Reading blobs from asyncio without blocking the event loop.

Everything in the content store blocks on disk. For one-shot calls, ``asyncio.to_thread`` is
all that is needed (``await asyncio.to_thread(store.info, digest)``); a streamed read needs a
thread hop per chunk, which :func:`read_chunks` provides.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator

from . import digests
from .store import ContentStore


async def read_chunks(
    store: ContentStore,
    digest: str,
    offset: int = 0,
    size: int = 0,
    chunk_size: int = digests.CHUNK_SIZE,
) -> AsyncIterator[bytes]:
    """The chunks of :meth:`ContentStore.read`, each read in a worker thread.

    The same errors as ``read`` (InvalidArgument, NotFound, OutOfRange) are raised at the first
    ``__anext__``, before any data. Closing or abandoning the iterator closes the file.
    """
    chunks = await asyncio.to_thread(store.read, digest, offset, size, chunk_size)
    try:
        while (chunk := await asyncio.to_thread(next, chunks, None)) is not None:
            yield chunk
    finally:
        chunks.close()  # closes the file; no disk wait worth a thread
