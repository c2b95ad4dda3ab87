"""The generated runtime.v1 API has cri-api v0.36's wire shape: package, services, method paths
and streaming kinds, and the field numbers clients trip over. (The whole file was compared
with upstream's, descriptor by descriptor, when it was written; these pin what matters most.)"""

from __future__ import annotations

from typing import cast

import grpc
from google.protobuf.descriptor import FieldDescriptor

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2_grpc as api_grpc

UNARY, SERVER_STREAM = (False, False), (False, True)
RUNTIME_METHODS = {
    **{name: UNARY for name in (
        "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus", "ListPodSandbox",
        "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer", "ListContainers",
        "ContainerStatus", "UpdateContainerResources", "ReopenContainerLog", "ExecSync", "Exec", "Attach",
        "PortForward", "ContainerStats", "ListContainerStats", "PodSandboxStats", "ListPodSandboxStats",
        "UpdateRuntimeConfig", "Status", "CheckpointContainer", "ListMetricDescriptors",
        "ListPodSandboxMetrics", "RuntimeConfig", "UpdatePodSandboxResources")},
    **{name: SERVER_STREAM for name in (
        "StreamPodSandboxes", "StreamContainers", "StreamContainerStats", "StreamPodSandboxStats",
        "GetContainerEvents", "StreamPodSandboxMetrics")},
}
IMAGE_METHODS = {**{name: UNARY for name in ("ListImages", "ImageStatus", "PullImage", "RemoveImage",
                                             "ImageFsInfo")},
                 "StreamImages": SERVER_STREAM}


def _numbers(message: type) -> dict[str, int]:
    return {f.name: f.number for f in message.DESCRIPTOR.fields}  # type: ignore[attr-defined]


def test_package_and_services() -> None:
    assert api.DESCRIPTOR.package == "runtime.v1"
    runtime = api.DESCRIPTOR.services_by_name["RuntimeService"]
    images = api.DESCRIPTOR.services_by_name["ImageService"]
    assert runtime.full_name == "runtime.v1.RuntimeService" and images.full_name == "runtime.v1.ImageService"
    assert {m.name: (m.client_streaming, m.server_streaming) for m in runtime.methods} == RUNTIME_METHODS
    assert {m.name: (m.client_streaming, m.server_streaming) for m in images.methods} == IMAGE_METHODS
    assert len(RUNTIME_METHODS) == 35 and len(IMAGE_METHODS) == 6


def test_stub_method_paths() -> None:
    class Recorder:
        def __init__(self) -> None:
            self.paths: list[str] = []

        def unary_unary(self, path: str, **_: object) -> None:
            self.paths.append(path)

        unary_stream = stream_unary = stream_stream = unary_unary

    channel = Recorder()
    api_grpc.RuntimeServiceStub(cast(grpc.Channel, channel))
    api_grpc.ImageServiceStub(cast(grpc.Channel, channel))
    assert "/runtime.v1.RuntimeService/RunPodSandbox" in channel.paths
    assert "/runtime.v1.ImageService/PullImage" in channel.paths
    assert len(channel.paths) == 41


def test_field_numbers_that_jump() -> None:
    assert _numbers(api.ImageSpec) == {"image": 1, "annotations": 2, "user_specified_image": 18,
                                       "runtime_handler": 19, "image_ref": 20}
    sandbox = _numbers(api.LinuxSandboxSecurityContext)
    assert (sandbox["seccomp_profile_path"], sandbox["run_as_group"], sandbox["seccomp"], sandbox["apparmor"],
            sandbox["supplemental_groups_policy"]) == (7, 8, 9, 10, 11)
    container = _numbers(api.LinuxContainerSecurityContext)
    assert (container["apparmor_profile"], container["seccomp_profile_path"], container["run_as_group"],
            container["seccomp"], container["apparmor"], container["supplemental_groups_policy"]) == (
                9, 10, 12, 15, 16, 17)
    assert _numbers(api.Namespace) == {"options": 2}
    assert _numbers(api.Mount)["uidMappings"] == 6 and _numbers(api.ContainerConfig)["CDI_devices"] == 17
    assert _numbers(api.Image) == {"id": 1, "repo_tags": 2, "repo_digests": 3, "size": 4, "uid": 5,
                                   "username": 6, "spec": 7, "pinned": 8}
    assert _numbers(api.PsiData) == {"Total": 1, "Avg10": 2, "Avg60": 3, "Avg300": 4}


def test_deprecated_and_redacted_fields_keep_their_options() -> None:
    deprecated = api.LinuxContainerSecurityContext.DESCRIPTOR.fields_by_name["apparmor_profile"]
    assert deprecated.GetOptions().deprecated
    password = api.AuthConfig.DESCRIPTOR.fields_by_name["password"]
    assert password.GetOptions().debug_redact


def test_enum_values() -> None:
    assert dict(api.CgroupDriver.items()) == {"SYSTEMD": 0, "CGROUPFS": 1}
    assert dict(api.NamespaceMode.items()) == {"POD": 0, "CONTAINER": 1, "NODE": 2, "TARGET": 3}
    assert dict(api.SecurityProfile.ProfileType.items()) == {"RuntimeDefault": 0, "Unconfined": 1, "Localhost": 2}
    assert api.Signal.Value("SIGRTMAX") == 65 and api.Signal.Value("RUNTIME_DEFAULT") == 0
    assert api.ContainerState.Value("CONTAINER_UNKNOWN") == 3


def test_wrapper_and_timestamp_types() -> None:
    assert api.Int64Value.DESCRIPTOR.fields_by_name["value"].type == FieldDescriptor.TYPE_INT64
    assert api.UInt64Value.DESCRIPTOR.fields_by_name["value"].type == FieldDescriptor.TYPE_UINT64
    assert api.PodSandboxStatus.DESCRIPTOR.fields_by_name["created_at"].type == FieldDescriptor.TYPE_INT64
    assert api.KeyValue.DESCRIPTOR.fields_by_name["value"].type == FieldDescriptor.TYPE_BYTES
