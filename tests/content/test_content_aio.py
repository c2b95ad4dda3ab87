"""Reading from asyncio: chunks come from worker threads; errors come before data."""

from __future__ import annotations

import asyncio

import pytest

from ctrpy.errors import NotFound, OutOfRange
from ctrpy.manager.content import ContentStore
from ctrpy.manager.content.aio import read_chunks

from .content_helpers import put, sha256


async def collect(store: ContentStore, digest: str, offset: int = 0, size: int = 0) -> bytes:
    return b"".join([chunk async for chunk in read_chunks(store, digest, offset, size, 1000)])


def test_read_chunks(store: ContentStore) -> None:
    data = bytes(range(256)) * 50
    digest = put(store, data)
    assert asyncio.run(collect(store, digest)) == data
    assert asyncio.run(collect(store, digest, 100, 5000)) == data[100:5100]
    with pytest.raises(OutOfRange):
        asyncio.run(collect(store, digest, len(data) + 1))
    with pytest.raises(NotFound):
        asyncio.run(collect(store, sha256(b"nothing")))
