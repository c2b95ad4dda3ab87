"""Helpers shared by the content store tests (imported by name: tests/content is on sys.path)."""

from __future__ import annotations

import hashlib

from ctrpy.manager.content import ContentStore


def sha256(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def put(store: ContentStore, data: bytes, ref: str = "put", chunk: int = 1 << 20) -> str:
    """Write ``data`` through a writer in chunks and commit it; return the digest."""
    with store.writer(ref, total=len(data)) as writer:
        for start in range(0, len(data), chunk):
            writer.write_at(start, data[start : start + chunk])
        return writer.commit(len(data), sha256(data))
