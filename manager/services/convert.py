"""Conversions between API messages and domain records, shared by every servicer.

The per-service conversions are small, so they live together here; each function is named after
the record it converts (``container_to_proto``, ``container_from_proto``).
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

from google.protobuf import any_pb2, timestamp_pb2

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.content.v1 import content_pb2
from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from ctrpy.api.containerd.types import descriptor_pb2, mount_pb2
from ctrpy.errors import InvalidArgument
from ctrpy.manager.content import IngestStatus, WriteReply, WriteRequest
from ctrpy.manager.metadata.content import ContentInfo
from ctrpy.mount import Mount
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


# The last second a datetime can hold (9999-12-31T23:59:59Z).
MAX_SECONDS = 253402300799


def timestamp_to_datetime(stamp: timestamp_pb2.Timestamp | None) -> datetime | None:
    """None for an absent, empty or Go-zero timestamp; otherwise an aware UTC datetime.

    Raises InvalidArgument for a timestamp past year 9999 or with nanos outside 0..999999999.
    """
    if stamp is None or stamp.seconds <= GO_ZERO_SECONDS or (stamp.seconds == 0 and stamp.nanos == 0):
        return None
    if stamp.seconds > MAX_SECONDS or not 0 <= stamp.nanos < 1_000_000_000:
        raise InvalidArgument(f"timestamp {stamp.seconds}s {stamp.nanos}ns is out of range")
    return datetime.fromtimestamp(stamp.seconds, tz=UTC) + timedelta(microseconds=stamp.nanos // 1000)


_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)


def datetime_to_timestamp(value: datetime | None) -> timestamp_pb2.Timestamp | None:
    if value is None:
        return None
    # Plain arithmetic: Timestamp.FromDatetime is several times slower, and List calls convert
    # thousands of these.
    delta = value - _EPOCH
    return timestamp_pb2.Timestamp(
        seconds=delta.days * 86400 + delta.seconds, nanos=delta.microseconds * 1000
    )


def set_timestamp(stamp: timestamp_pb2.Timestamp, value: datetime | None) -> None:
    """Fill a message's Timestamp field in place (``None`` leaves it unset).

    Cheaper than building a Timestamp and copying it in: List responses hold thousands.
    """
    if value is not None:
        delta = value - _EPOCH
        stamp.seconds = delta.days * 86400 + delta.seconds
        stamp.nanos = delta.microseconds * 1000


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
    # Sub-messages are filled in place rather than built and copied: about a third faster,
    # which List of thousands of containers notices.
    message = containers_pb2.Container(
        id=container.id,
        labels=container.labels,
        image=container.image,
        snapshotter=container.snapshotter,
        snapshot_key=container.snapshot_key,
    )
    set_timestamp(message.created_at, container.created_at)
    set_timestamp(message.updated_at, container.updated_at)
    runtime = message.runtime
    runtime.name = container.runtime.name
    options = container.runtime.options
    if options is not None:
        runtime.options.type_url = options.type_url
        runtime.options.value = options.value
    spec = container.spec
    if spec is not None:
        message.spec.type_url = spec.type_url
        message.spec.value = spec.value
    for key, value in container.extensions.items():
        extension = message.extensions[key]
        extension.type_url = value.type_url
        extension.value = value.value
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
    message = images_pb2.Image(
        name=image.name,
        labels=image.labels,
        target=descriptor_to_proto(image.target),
    )
    set_timestamp(message.created_at, image.created_at)
    set_timestamp(message.updated_at, image.updated_at)
    return message


def lease_to_proto(lease: Lease) -> leases_pb2.Lease:
    return leases_pb2.Lease(
        id=lease.id, labels=dict(lease.labels), created_at=datetime_to_timestamp(lease.created_at)
    )


def resource_from_proto(message: leases_pb2.Resource) -> LeaseResource:
    return LeaseResource(id=message.id, type=message.type)


def resource_to_proto(resource: LeaseResource) -> leases_pb2.Resource:
    return leases_pb2.Resource(id=resource.id, type=resource.type)


def mount_from_proto(message: mount_pb2.Mount) -> Mount:
    return Mount(type=message.type, source=message.source, target=message.target, options=tuple(message.options))


def mount_to_proto(mount: Mount) -> mount_pb2.Mount:
    return mount_pb2.Mount(type=mount.type, source=mount.source, target=mount.target, options=list(mount.options))


def content_info_to_proto(info: ContentInfo) -> content_pb2.Info:
    return content_pb2.Info(
        digest=info.digest,
        size=info.size,
        labels=dict(info.labels),
        created_at=datetime_to_timestamp(info.created_at),
        updated_at=datetime_to_timestamp(info.updated_at),
    )


def ingest_status_to_proto(status: IngestStatus) -> content_pb2.Status:
    return content_pb2.Status(
        ref=status.ref,
        offset=status.offset,
        total=status.total,
        expected=status.expected,
        started_at=datetime_to_timestamp(status.started_at),
        updated_at=datetime_to_timestamp(status.updated_at),
    )


def write_request_from_proto(message: content_pb2.WriteContentRequest) -> WriteRequest:
    return WriteRequest(
        action=int(message.action),
        ref=message.ref,
        total=message.total,
        expected=message.expected,
        offset=message.offset,
        data=message.data,
        labels=freeze(message.labels),
    )


def write_reply_to_proto(reply: WriteReply) -> content_pb2.WriteContentResponse:
    return content_pb2.WriteContentResponse(
        action=content_pb2.WriteAction.ValueType(int(reply.action)),
        started_at=datetime_to_timestamp(reply.started_at),
        updated_at=datetime_to_timestamp(reply.updated_at),
        offset=reply.offset,
        # The session already gives containerd's total: the stream's in STAT replies, the last
        # STAT reply's in the others.
        total=reply.total,
        digest=reply.digest,
    )
