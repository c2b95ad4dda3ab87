"""Conversions between API messages and domain records, shared by every servicer.

The per-service conversions are small, so they live together here; each function is named after
the record it converts (``container_to_proto``, ``container_from_proto``).
"""

from __future__ import annotations

from datetime import UTC, datetime

from google.protobuf import any_pb2, timestamp_pb2

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from ctrpy.api.containerd.types import descriptor_pb2
from ctrpy.records import (
    AnyValue,
    Container,
    Descriptor,
    Image,
    Lease,
    LeaseResource,
    Namespace,
    Runtime,
    freeze,
)

# Go's zero time.Time, which containerd's clients send for timestamps they leave unset (G1).
GO_ZERO_SECONDS = -62135596800


def timestamp_to_datetime(stamp: timestamp_pb2.Timestamp | None) -> datetime | None:
    """None for an absent, empty or Go-zero timestamp; otherwise an aware UTC datetime."""
    if stamp is None or stamp.seconds <= GO_ZERO_SECONDS or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    return datetime.fromtimestamp(stamp.seconds + stamp.nanos / 1e9, tz=UTC)


def datetime_to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    stamp = timestamp_pb2.Timestamp()
    stamp.FromDatetime(value)
    return stamp


def any_from_proto(message: any_pb2.Any, present: bool = True) -> AnyValue | None:
    if not present:
        return None
    return AnyValue(type_url=message.type_url, value=message.value)


def any_to_proto(value: AnyValue) -> any_pb2.Any:
    return any_pb2.Any(type_url=value.type_url, value=value.value)


def namespace_to_proto(namespace: Namespace) -> namespace_pb2.Namespace:
    return namespace_pb2.Namespace(name=namespace.name, labels=dict(namespace.labels))


def namespace_from_proto(message: namespace_pb2.Namespace) -> Namespace:
    return Namespace(name=message.name, labels=freeze(message.labels))


def container_from_proto(message: containers_pb2.Container) -> Container:
    runtime = Runtime(
        name=message.runtime.name,
        options=any_from_proto(message.runtime.options, message.runtime.HasField("options")),
    )
    return Container(
        id=message.id,
        labels=freeze(message.labels),
        image=message.image,
        runtime=runtime,
        spec=any_from_proto(message.spec, message.HasField("spec")),
        snapshotter=message.snapshotter,
        snapshot_key=message.snapshot_key,
        extensions={key: AnyValue(value.type_url, value.value) for key, value in message.extensions.items()},
    )


def container_to_proto(container: Container) -> containers_pb2.Container:
    message = containers_pb2.Container(
        id=container.id,
        labels=dict(container.labels),
        image=container.image,
        snapshotter=container.snapshotter,
        snapshot_key=container.snapshot_key,
        created_at=datetime_to_timestamp(container.created_at),
        updated_at=datetime_to_timestamp(container.updated_at),
    )
    message.runtime.name = container.runtime.name
    if container.runtime.options is not None:
        message.runtime.options.CopyFrom(any_to_proto(container.runtime.options))
    if container.spec is not None:
        message.spec.CopyFrom(any_to_proto(container.spec))
    for key, value in container.extensions.items():
        message.extensions[key].CopyFrom(any_to_proto(value))
    return message


def descriptor_from_proto(message: descriptor_pb2.Descriptor) -> Descriptor:
    return Descriptor(
        media_type=message.media_type,
        digest=message.digest,
        size=message.size,
        annotations=freeze(message.annotations),
    )


def descriptor_to_proto(descriptor: Descriptor) -> descriptor_pb2.Descriptor:
    return descriptor_pb2.Descriptor(
        media_type=descriptor.media_type,
        digest=descriptor.digest,
        size=descriptor.size,
        annotations=dict(descriptor.annotations),
    )


def image_from_proto(message: images_pb2.Image) -> Image:
    return Image(
        name=message.name,
        labels=freeze(message.labels),
        target=descriptor_from_proto(message.target),
    )


def image_to_proto(image: Image) -> images_pb2.Image:
    return images_pb2.Image(
        name=image.name,
        labels=dict(image.labels),
        target=descriptor_to_proto(image.target),
        created_at=datetime_to_timestamp(image.created_at),
        updated_at=datetime_to_timestamp(image.updated_at),
    )


def lease_to_proto(lease: Lease) -> leases_pb2.Lease:
    return leases_pb2.Lease(
        id=lease.id, labels=dict(lease.labels), created_at=datetime_to_timestamp(lease.created_at)
    )


def resource_from_proto(message: leases_pb2.Resource) -> LeaseResource:
    return LeaseResource(id=message.id, type=message.type)


def resource_to_proto(resource: LeaseResource) -> leases_pb2.Resource:
    return leases_pb2.Resource(id=resource.id, type=resource.type)


