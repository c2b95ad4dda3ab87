"""The sandbox image at first use: ctrpy's own pause image, imported without any registry.

With the default ``[cri] sandbox_image``, a pod's pause container runs the image that
:mod:`ctrpy.pause` builds. :func:`ensure_pause_image` makes sure the namespace has it under the
configured name, unpacked in the snapshotter the pod will use: when the name is missing, points
at another manifest (an older ctrpy, or anything else given that name), or its layers are not
unpacked, it imports the archive exactly as ``ctrpy images import`` / ``ctr images import`` do
(:func:`ctrpy.images.import_archive`, over ctrpyd's own socket), so the content, the GC labels,
the snapshot and the ``/images/create`` event are those of any import. When all is in place it
costs four small calls (a few milliseconds); the archive is built once per name.

The import client and the image builder are imported here, at the first sandbox, not when the
daemon starts (a daemon that never runs a pod does not pay for them). The work is blocking
gRPC, so the async entry point runs it in a worker thread; :class:`PauseImages` serialises the
calls of one daemon so that two pods started together import once.
"""

from __future__ import annotations

import asyncio
import functools
import io
import os
from dataclasses import dataclass
from typing import TYPE_CHECKING

from ctrpy.errors import NotFound

if TYPE_CHECKING:
    from ctrpy.testimage import ImageInfo


@dataclass(frozen=True)
class PauseImage:
    """The pause image as the namespace holds it.

    ``config_digest`` is the image id the CRI reports; ``chain_id`` names the top snapshot, the
    parent of a sandbox's root filesystem; ``imported`` says whether this call imported it.
    """

    name: str
    manifest_digest: str
    config_digest: str
    chain_id: str
    imported: bool


@functools.lru_cache(maxsize=4)
def _archive(name: str) -> tuple[bytes, ImageInfo]:
    """The archive under ``name`` (20 KiB), built once: it is a pure function of the name."""
    from ctrpy.pause.image import pause_archive

    return pause_archive(name)


def ensure_pause_image_sync(address: str | os.PathLike[str], namespace: str, name: str, *,
                            snapshotter: str | None = None, timeout: float = 60.0) -> PauseImage:
    """Make ``name`` in ``namespace`` of the daemon at ``address`` the pause image, unpacked in
    ``snapshotter`` (default: the namespace's, as for any import); blocking.

    Raises what the import raises (:mod:`ctrpy.errors` kinds), ValueError on an architecture
    the pause program does not exist for.
    """
    from ctrpy.client import Client
    from ctrpy.images import import_archive, is_unpacked
    from ctrpy.images import store as image_store

    archive, info = _archive(name)
    assert info.manifest_digest is not None  # an OCI layout always has one
    found = PauseImage(name, info.manifest_digest, info.config_digest, info.chain_ids[-1], imported=False)
    with Client(os.fspath(address), namespace, timeout) as client:
        try:
            current = image_store.get(client, name)
        except NotFound:
            current = None
        if (current is not None and current.target.digest == info.manifest_digest
                and is_unpacked(client, current, snapshotter)):
            return found
        import_archive(client, io.BytesIO(archive), snapshotter=snapshotter)
    return PauseImage(name, info.manifest_digest, info.config_digest, info.chain_ids[-1], imported=True)


class PauseImages:
    """The pause image provider of one daemon: :meth:`ensure` at each sandbox, one at a time."""

    def __init__(self, address: str | os.PathLike[str], *, timeout: float = 60.0) -> None:
        self.address = os.fspath(address)
        self.timeout = timeout
        self._lock = asyncio.Lock()

    async def ensure(self, namespace: str, name: str, snapshotter: str | None = None) -> PauseImage:
        """:func:`ensure_pause_image_sync` in a worker thread, never two at once."""
        async with self._lock:
            return await asyncio.to_thread(ensure_pause_image_sync, self.address, namespace, name,
                                           snapshotter=snapshotter, timeout=self.timeout)


async def ensure_pause_image(address: str | os.PathLike[str], namespace: str, name: str, *,
                             snapshotter: str | None = None, timeout: float = 60.0) -> PauseImage:
    """:func:`ensure_pause_image_sync` in a worker thread (use :class:`PauseImages` to serialise)."""
    return await asyncio.to_thread(ensure_pause_image_sync, address, namespace, name,
                                   snapshotter=snapshotter, timeout=timeout)
