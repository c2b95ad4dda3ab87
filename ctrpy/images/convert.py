"""Conversions between API messages and the image library's dataclasses (and mounts)."""

from __future__ import annotations

from types import MappingProxyType

from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.types import descriptor_pb2, mount_pb2
from ctrpy.images.content import timestamp
from ctrpy.images.model import Descriptor, Image
from ctrpy.mount import Mount


def descriptor_from_proto(message: descriptor_pb2.Descriptor) -> Descriptor:
    """An API descriptor (which has no platform field) as a :class:`Descriptor`."""
    return Descriptor(message.media_type, message.digest, message.size,
                      MappingProxyType(dict(message.annotations)))


def descriptor_to_proto(desc: Descriptor) -> descriptor_pb2.Descriptor:
    """A :class:`Descriptor` as an API message (the platform does not travel)."""
    return descriptor_pb2.Descriptor(media_type=desc.media_type, digest=desc.digest, size=desc.size,
                                     annotations=dict(desc.annotations))


def image_from_proto(message: images_pb2.Image) -> Image:
    return Image(
        name=message.name,
        target=descriptor_from_proto(message.target),
        labels=MappingProxyType(dict(message.labels)),
        created_at=timestamp(message.created_at),
        updated_at=timestamp(message.updated_at),
    )


def image_to_proto(image: Image) -> images_pb2.Image:
    """An image for Create or Update; timestamps are left for the server to set."""
    return images_pb2.Image(name=image.name, labels=dict(image.labels), target=descriptor_to_proto(image.target))


def mount_from_proto(message: mount_pb2.Mount) -> Mount:
    return Mount(message.type, message.source, message.target, tuple(message.options))


def mount_to_proto(mount: Mount) -> mount_pb2.Mount:
    return mount_pb2.Mount(type=mount.type, source=mount.source, target=mount.target, options=list(mount.options))
