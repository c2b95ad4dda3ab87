"""containerd.services.diff.v1.Diff: layers applied onto mounts, and computed from two of them.

The work is :mod:`ctrpy.manager.diff`'s (containerd's walking differ); this servicer reads the
layer from, or writes the diff into, the content store in the call's namespace, all in a worker
thread: a layer streams through and is never held in memory.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import BinaryIO, cast

from ctrpy.api.containerd.services.diff.v1 import diff_pb2 as api
from ctrpy.api.containerd.services.diff.v1 import diff_pb2_grpc as api_grpc
from ctrpy.manager import diff as layers  # its work is imported at the first call: see its __init__
from ctrpy.manager.diff.limits import NO_LIMITS, Limits
from ctrpy.manager.metadata.content import UNCOMPRESSED_LABEL, ContentInfo, NamespacedContent
from ctrpy.mount import Mount
from ctrpy.records import Descriptor

from . import convert


class DiffServicer(api_grpc.DiffServicer):
    """``tmp_root`` holds the temporary mount points of mounts that must be mounted to be used;
    ``limits`` bounds every layer applied (a layer past them is refused with InvalidArgument)."""

    def __init__(self, content: NamespacedContent, tmp_root: Path, limits: Limits = NO_LIMITS) -> None:
        self.content = content
        self.tmp_root = tmp_root
        self.limits = limits
        tmp_root.mkdir(mode=0o700, parents=True, exist_ok=True)

    async def Apply(self, request: api.ApplyRequest, context: object) -> api.ApplyResponse:
        layer = convert.descriptor_from_proto(request.diff)
        mounts = [convert.mount_from_proto(m) for m in request.mounts]
        applied = await asyncio.to_thread(self._apply, layer, mounts)
        return api.ApplyResponse(applied=convert.descriptor_to_proto(applied))

    async def Diff(self, request: api.DiffRequest, context: object) -> api.DiffResponse:
        info, media_type = await asyncio.to_thread(
            self._diff,
            [convert.mount_from_proto(m) for m in request.left],
            [convert.mount_from_proto(m) for m in request.right],
            request.media_type,
            request.ref,
            dict(request.labels),
        )
        return api.DiffResponse(
            diff=convert.descriptor_to_proto(Descriptor(media_type, info.digest, info.size))
        )

    # -- worker threads --

    def _apply(self, layer: Descriptor, mounts: Sequence[Mount]) -> Descriptor:
        with self.content.open_blob(layer.digest) as stream:
            applied = layers.apply_to_mounts(
                stream, layer.media_type, mounts, tmp_root=self.tmp_root, limits=self.limits
            )
        return Descriptor(layers.OCI_LAYER, applied.digest, applied.size)

    def _diff(
        self,
        left: Sequence[Mount],
        right: Sequence[Mount],
        media_type: str,
        ref: str,
        labels: Mapping[str, str],
    ) -> tuple[ContentInfo, str]:
        compression = layers.diff_compression(media_type)  # NotImplemented before any work
        sink = self.content.new_blob(ref)
        try:
            diff_id, _ = layers.diff_mounts(left, right, cast(BinaryIO, sink), compression, tmp_root=self.tmp_root)
            if compression is not None:
                # As containerd's walking differ: a compressed layer names its diff id.
                labels = {**labels, UNCOMPRESSED_LABEL: diff_id}
            info = sink.commit(labels)
        finally:
            sink.close()
        return info, media_type or layers.OCI_LAYER_GZIP
