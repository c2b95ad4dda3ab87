"""runtime.v1.ImageService: the CRI's images, over the same stores as the containerd API.

Thin on purpose: requests are converted here and the work is :class:`.images.CriImages`,
imported and built at the first image call (see :mod:`.deps`). Every call works in the
``k8s.io`` namespace (the edge sets it for ``/runtime.v1.*``). As the CRI asks, ImageStatus of
an image that is not there answers an empty response, and RemoveImage of one answers OK.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2_grpc as api_grpc
from ctrpy.errors import InvalidArgument, NotFound

from .deps import ImageBackends, PullAuth
from .fsusage import UsageSampler

if TYPE_CHECKING:
    from .images import CriImage, CriImages

#: Images per StreamImages message: far below the kubelet's 16 MiB message limit.
STREAM_BATCH = 500


def image_to_proto(image: CriImage) -> api.Image:
    uid, username = image.uid_and_username()
    message = api.Image(id=image.id, repo_tags=image.repo_tags, repo_digests=image.repo_digests,
                        size=image.facts.size, username=username, spec=api.ImageSpec(image=image.id),
                        pinned=image.pinned)
    if uid is not None:
        message.uid.value = uid
    return message


def auth_from_proto(auth: api.AuthConfig) -> PullAuth:
    return PullAuth(username=auth.username, password=auth.password, auth=auth.auth,
                    server_address=auth.server_address, identity_token=auth.identity_token,
                    registry_token=auth.registry_token)


class ImageServicer(api_grpc.ImageServiceServicer):
    def __init__(self, backends: ImageBackends, filesystem: UsageSampler) -> None:
        self.backends = backends
        self.filesystem = filesystem
        self._images: CriImages | None = None
        self._lock = asyncio.Lock()

    async def images(self) -> CriImages:
        async with self._lock:
            if self._images is None:
                from .images import CriImages  # at the first call: see the module docstring

                self._images = CriImages(self.backends)
            return self._images

    async def _listed(self, request_filter: api.ImageFilter) -> list[api.Image]:
        images = await self.images()
        wanted = request_filter.image.image
        if wanted:  # containerd ignores the filter; one image or none is what a caller means
            try:
                return [image_to_proto(await images.resolve(wanted))]
            except NotFound:
                return []
        return [image_to_proto(image) for image in sorted(await images.list(), key=lambda i: i.id)]

    async def ListImages(self, request: api.ListImagesRequest, context: object) -> api.ListImagesResponse:
        return api.ListImagesResponse(images=await self._listed(request.filter))

    async def StreamImages(self, request: api.StreamImagesRequest,
                           context: object) -> AsyncIterator[api.StreamImagesResponse]:
        found = await self._listed(request.filter)
        for start in range(0, max(len(found), 1), STREAM_BATCH):
            batch = found[start:start + STREAM_BATCH]
            if batch:
                yield api.StreamImagesResponse(images=batch)

    async def ImageStatus(self, request: api.ImageStatusRequest, context: object) -> api.ImageStatusResponse:
        images = await self.images()
        try:
            image = await images.resolve(request.image.image)
        except NotFound:
            return api.ImageStatusResponse()
        info = images.verbose_info(image) if request.verbose else {}
        return api.ImageStatusResponse(image=image_to_proto(image), info=info)

    async def PullImage(self, request: api.PullImageRequest, context: object) -> api.PullImageResponse:
        if not request.image.image:
            raise InvalidArgument("image reference is empty")
        images = await self.images()
        from .auth import credentials  # with the registry client, which images imported

        source = credentials(auth_from_proto(request.auth)) if request.HasField("auth") else None
        return api.PullImageResponse(image_ref=await images.pull(request.image.image, source))

    async def RemoveImage(self, request: api.RemoveImageRequest, context: object) -> api.RemoveImageResponse:
        if not request.image.image:
            raise InvalidArgument("image reference is empty")
        await (await self.images()).remove(request.image.image)
        return api.RemoveImageResponse()

    async def ImageFsInfo(self, request: api.ImageFsInfoRequest, context: object) -> api.ImageFsInfoResponse:
        usage = await self.filesystem.sample()
        filesystem = api.FilesystemUsage(
            timestamp=usage.timestamp_ns, fs_id=api.FilesystemIdentifier(mountpoint=self.filesystem.mountpoint),
            used_bytes=api.UInt64Value(value=usage.used_bytes), inodes_used=api.UInt64Value(value=usage.inodes_used),
        )  # fmt: skip
        # Containers' writable layers live in the same snapshotter: the same filesystem.
        return api.ImageFsInfoResponse(image_filesystems=[filesystem], container_filesystems=[filesystem])
