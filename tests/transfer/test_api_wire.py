"""The Transfer and Streaming API as containerd 1.7/2.x defines it: service and method paths,
message full names (they are the Any type URLs), field names and numbers."""

from __future__ import annotations

import pytest
from google.protobuf.descriptor import Descriptor

from ctrpy.api.containerd.services.streaming.v1 import streaming_pb2
from ctrpy.api.containerd.services.transfer.v1 import transfer_pb2
from ctrpy.api.containerd.types import platform_pb2
from ctrpy.api.containerd.types.transfer import imagestore_pb2, progress_pb2, registry_pb2
from ctrpy.api.containerd.types.transfer import streaming_pb2 as data_pb2


def test_services() -> None:
    transfer = transfer_pb2.DESCRIPTOR.services_by_name["Transfer"]
    assert transfer.full_name == "containerd.services.transfer.v1.Transfer"
    method = transfer.methods_by_name["Transfer"]
    assert (method.client_streaming, method.server_streaming) == (False, False)
    assert method.output_type.full_name == "google.protobuf.Empty"
    streaming = streaming_pb2.DESCRIPTOR.services_by_name["Streaming"]
    assert streaming.full_name == "containerd.services.streaming.v1.Streaming"
    stream = streaming.methods_by_name["Stream"]
    assert (stream.client_streaming, stream.server_streaming) == (True, True)
    assert stream.input_type.full_name == stream.output_type.full_name == "google.protobuf.Any"


MESSAGES: list[tuple[Descriptor, str, dict[str, int]]] = [
    (transfer_pb2.TransferRequest.DESCRIPTOR, "containerd.services.transfer.v1.TransferRequest",
     {"source": 1, "destination": 2, "options": 3}),
    (transfer_pb2.TransferOptions.DESCRIPTOR, "containerd.services.transfer.v1.TransferOptions",
     {"progress_stream": 1}),
    (streaming_pb2.StreamInit.DESCRIPTOR, "containerd.services.streaming.v1.StreamInit", {"id": 1}),
    (registry_pb2.OCIRegistry.DESCRIPTOR, "containerd.types.transfer.OCIRegistry", {"reference": 1, "resolver": 2}),
    (registry_pb2.RegistryResolver.DESCRIPTOR, "containerd.types.transfer.RegistryResolver",
     {"auth_stream": 1, "headers": 2, "host_dir": 3, "default_scheme": 4, "http_debug": 5, "logs_stream": 6}),
    (registry_pb2.AuthRequest.DESCRIPTOR, "containerd.types.transfer.AuthRequest",
     {"host": 1, "reference": 2, "wwwauthenticate": 3}),
    (registry_pb2.AuthResponse.DESCRIPTOR, "containerd.types.transfer.AuthResponse",
     {"authType": 1, "secret": 2, "username": 3, "expire_at": 4}),
    (imagestore_pb2.ImageStore.DESCRIPTOR, "containerd.types.transfer.ImageStore",
     {"name": 1, "labels": 2, "platforms": 3, "all_metadata": 4, "manifest_limit": 5, "extra_references": 6,
      "unpacks": 10}),
    (imagestore_pb2.UnpackConfiguration.DESCRIPTOR, "containerd.types.transfer.UnpackConfiguration",
     {"platform": 1, "snapshotter": 2}),
    (imagestore_pb2.ImageReference.DESCRIPTOR, "containerd.types.transfer.ImageReference",
     {"name": 1, "is_prefix": 2, "allow_overwrite": 3, "add_digest": 4, "skip_named_digest": 5}),
    (progress_pb2.Progress.DESCRIPTOR, "containerd.types.transfer.Progress",
     {"event": 1, "name": 2, "parents": 3, "progress": 4, "total": 5, "desc": 6}),
    (data_pb2.Data.DESCRIPTOR, "containerd.types.transfer.Data", {"data": 1}),
    (data_pb2.WindowUpdate.DESCRIPTOR, "containerd.types.transfer.WindowUpdate", {"update": 1}),
    (platform_pb2.Platform.DESCRIPTOR, "containerd.types.Platform",
     {"os": 1, "architecture": 2, "variant": 3, "os_version": 4, "os_features": 5}),
]


@pytest.mark.parametrize(("message", "full_name", "fields"), MESSAGES, ids=[m[1] for m in MESSAGES])
def test_message_names_and_numbers(message: Descriptor, full_name: str, fields: dict[str, int]) -> None:
    assert message.full_name == full_name
    assert {f.name: f.number for f in message.fields} == fields


def test_enums() -> None:
    assert dict(registry_pb2.AuthType.items()) == {"NONE": 0, "CREDENTIALS": 1, "REFRESH": 2, "HEADER": 3}
    assert dict(registry_pb2.HTTPDebug.items()) == {"DISABLED": 0, "DEBUG": 1, "TRACE": 2, "BOTH": 3}
