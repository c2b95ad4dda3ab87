"""Server-side pushes: an image of the namespace to a registry (``ImageStore`` -> ``OCIRegistry``).

The order is the one a registry needs to accept every manifest: for each platform manifest, its
layers and config (a HEAD first: what the registry has is not sent again; a cross-repository
mount when the blob's ``containerd.io/distribution.source.<host>`` label names another
repository of the same registry), then the manifest by digest; the root (manifest or index)
last, under the reference's tag. Blobs stream from the content store and are never held whole
in memory; documents are read whole (they are small).
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable, Mapping, Sequence

import structlog

from ctrpy.errors import FailedPrecondition
from ctrpy.images import mediatypes
from ctrpy.images import platforms as platform_matchers
from ctrpy.images.model import Descriptor, Platform, parse_index, parse_manifest
from ctrpy.manager.metadata.content import NamespacedContent
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.images import ImageStore
from ctrpy.manager.registry import (
    CredentialSource,
    ImageRef,
    Remote,
    Session,
    Uploaded,
    parse,
    put_manifest,
    select,
    upload_blob,
)
from ctrpy.manager.registry.debug import HttpTap

from .pull import DISTRIBUTION_SOURCE, ProgressFn

log = structlog.get_logger(__name__)


class Pusher:
    """Pushes images for the Transfer service."""

    def __init__(self, *, db: Database, content: NamespacedContent, images: ImageStore, session: Session,
                 config_path: str = "", max_concurrent_uploads: int = 3) -> None:
        self.db = db
        self.content = content
        self.images = images
        self.session = session
        self.config_path = config_path
        self.max_concurrent_uploads = max(1, max_concurrent_uploads)

    async def push(self, name: str, reference: str, platforms: Sequence[Platform], progress: ProgressFn, *,
                   host_dir: str = "", plain_http: bool = False, credentials: CredentialSource | None = None,
                   headers: Mapping[str, str] | None = None, tap: HttpTap | None = None) -> Descriptor:
        """Push the namespace's image ``name`` to ``reference``; return the root pushed.
        ``headers`` go with every registry request; ``tap`` dumps them (``http_debug``)."""
        image = await self.db.run(self.images.get, name)
        ref = parse(reference)
        remote = Remote(self.session, config_path=host_dir or self.config_path or None, plain_http=plain_http,
                        credentials=credentials, headers=headers, tap=tap)
        root = Descriptor(image.target.media_type, image.target.digest, image.target.size)
        matcher = (platform_matchers.only(platforms[0]) if len(platforms) == 1
                   else platform_matchers.ordered(platforms) if platforms else None)
        semaphore = asyncio.Semaphore(self.max_concurrent_uploads)
        await self._push_tree(remote, ref, root, matcher, progress, semaphore, top=True)
        return root

    async def _push_tree(self, remote: Remote, ref: ImageRef, desc: Descriptor,
                         matcher: platform_matchers.Matcher | None, progress: ProgressFn,
                         semaphore: asyncio.Semaphore, top: bool) -> None:
        data = await self._document(desc)
        target = ref if top else ImageRef(ref.host, ref.repository)  # children by digest
        if mediatypes.is_index(desc.media_type):
            index = parse_index(data, desc.media_type, f"{ref}: {desc.digest}")
            entries = select(index.manifests, matcher) if top and matcher is not None else index.manifests
            for entry in entries:
                if await self._held(entry.digest):
                    await self._push_tree(remote, ref, entry, None, progress, semaphore, top=False)
                else:
                    log.info("index entry not held locally: not pushed", digest=entry.digest)
        elif mediatypes.is_manifest(desc.media_type):
            manifest = parse_manifest(data, desc.media_type, f"{ref}: {desc.digest}")
            blobs = [*manifest.layers, manifest.config]
            await asyncio.gather(*(self._push_blob(remote, ref, blob, progress, semaphore) for blob in blobs))
        else:
            raise FailedPrecondition(f"{desc.digest}: cannot push media type {desc.media_type!r}")
        progress("pushing", desc.digest, 0, desc.size, desc)
        await put_manifest(remote, target, desc, data)
        progress("complete", desc.digest, desc.size, desc.size, desc)

    async def _push_blob(self, remote: Remote, ref: ImageRef, desc: Descriptor, progress: ProgressFn,
                         semaphore: asyncio.Semaphore) -> None:
        async with semaphore:
            info = await self.db.run(self.content.info, desc.digest)
            mount_from = info.labels.get(DISTRIBUTION_SOURCE + ref.host)
            progress("pushing", desc.digest, 0, desc.size, desc)
            how = await upload_blob(remote, ref, desc, self._chunks(desc.digest), mount_from=mount_from)
            event = {Uploaded.EXISTED: "already exists", Uploaded.MOUNTED: "mounted"}.get(how, "complete")
            progress(event, desc.digest, desc.size, desc.size, desc)

    def _chunks(self, digest: str) -> Callable[[], AsyncIterator[bytes]]:
        async def chunks() -> AsyncIterator[bytes]:
            reader = await asyncio.to_thread(self.content.read, digest)
            try:
                while (chunk := await asyncio.to_thread(reader.next_chunk)) is not None:
                    yield chunk
            finally:
                await asyncio.shield(asyncio.to_thread(reader.close))

        return chunks

    async def _held(self, digest: str) -> bool:
        try:
            await self.db.run(self.content.info, digest)
        except Exception:  # NotFound, or a malformed digest in the index: not ours to push
            return False
        return True

    async def _document(self, desc: Descriptor) -> bytes:
        if desc.size > self.session.options.max_document:
            raise FailedPrecondition(f"{desc.digest}: a document of {desc.size} bytes is too large to push")
        return bytes(b"".join([chunk async for chunk in self._chunks(desc.digest)()]))
