"""A typed synchronous client for the CRI: ``runtime.v1.RuntimeService`` and ``ImageService``.

Like :class:`ctrpy.client.Client` it applies the address and a per-call timeout once and turns
failed calls into :mod:`ctrpy.errors` kinds. CRI calls carry no namespace: the runtime decides
(ctrpyd, like containerd, works in ``k8s.io``). The typed methods cover what is served today;
``runtime`` and ``images`` are the raw stubs for everything else (``client.call(client.runtime.
RunPodSandbox, request)``), so that later calls need no change here to be made.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterator, Mapping
from typing import Any, TypeVar

import grpc

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2_grpc as api_grpc
from ctrpy.client import DEFAULT_ADDRESS, MAX_MESSAGE

R = TypeVar("R")

#: The CRI version this client speaks, sent with Version as the kubelet does.
CRI_VERSION = "v1"


def default_address() -> str:
    """The socket: ``$CONTAINER_RUNTIME_ENDPOINT`` (crictl's variable, ``unix://`` optional), else
    ``$CTRPY_ADDRESS``, else ctrpyd's default."""
    endpoint = os.environ.get("CONTAINER_RUNTIME_ENDPOINT", "")
    return endpoint.removeprefix("unix://") or os.environ.get("CTRPY_ADDRESS") or DEFAULT_ADDRESS


class CriClient:
    """A connection to one CRI runtime over its unix socket."""

    def __init__(self, address: str | None = None, timeout: float | None = None) -> None:
        self.address = (address or default_address()).removeprefix("unix://")
        self.timeout = timeout
        self.channel = grpc.insecure_channel(
            f"unix:{self.address}",
            options=[("grpc.max_receive_message_length", MAX_MESSAGE),
                     ("grpc.max_send_message_length", MAX_MESSAGE)],
        )
        self.runtime = api_grpc.RuntimeServiceStub(self.channel)
        self.images = api_grpc.ImageServiceStub(self.channel)

    # -- plumbing ----------------------------------------------------------------------------

    def call(self, method: Callable[..., R], request: Any, timeout: float | None = None) -> R:
        """Make a unary call; a failure raises the matching :class:`ctrpy.errors.CtrpyError`."""
        try:
            return method(request, timeout=timeout if timeout is not None else self.timeout)
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    def stream(self, method: Callable[..., Any], request: Any) -> Iterator[Any]:
        """Make a server-streaming call and yield its messages; errors are mapped the same way."""
        call = method(request, timeout=self.timeout)
        try:
            yield from call
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None
        finally:
            call.cancel()

    def close(self) -> None:
        self.channel.close()

    def __enter__(self) -> CriClient:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    # -- runtime -----------------------------------------------------------------------------

    def version(self) -> api.VersionResponse:
        return self.call(self.runtime.Version, api.VersionRequest(version=CRI_VERSION))

    def status(self, verbose: bool = False) -> api.StatusResponse:
        return self.call(self.runtime.Status, api.StatusRequest(verbose=verbose))

    def runtime_config(self) -> api.RuntimeConfigResponse:
        return self.call(self.runtime.RuntimeConfig, api.RuntimeConfigRequest())

    def update_runtime_config(self, pod_cidr: str) -> None:
        config = api.RuntimeConfig(network_config=api.NetworkConfig(pod_cidr=pod_cidr))
        self.call(self.runtime.UpdateRuntimeConfig, api.UpdateRuntimeConfigRequest(runtime_config=config))

    # -- pod sandboxes -----------------------------------------------------------------------

    def run_pod_sandbox(self, config: api.PodSandboxConfig, runtime_handler: str = "",
                        timeout: float | None = None) -> str:
        """Run a pod sandbox; its id."""
        request = api.RunPodSandboxRequest(config=config, runtime_handler=runtime_handler)
        return self.call(self.runtime.RunPodSandbox, request, timeout=timeout).pod_sandbox_id

    def stop_pod_sandbox(self, sandbox_id: str) -> None:
        self.call(self.runtime.StopPodSandbox, api.StopPodSandboxRequest(pod_sandbox_id=sandbox_id))

    def remove_pod_sandbox(self, sandbox_id: str) -> None:
        self.call(self.runtime.RemovePodSandbox, api.RemovePodSandboxRequest(pod_sandbox_id=sandbox_id))

    def pod_sandbox_status(self, sandbox_id: str, verbose: bool = False) -> api.PodSandboxStatusResponse:
        request = api.PodSandboxStatusRequest(pod_sandbox_id=sandbox_id, verbose=verbose)
        return self.call(self.runtime.PodSandboxStatus, request)

    def list_pod_sandbox(self, wanted: api.PodSandboxFilter | None = None) -> list[api.PodSandbox]:
        return list(self.call(self.runtime.ListPodSandbox, api.ListPodSandboxRequest(filter=wanted)).items)

    def stream_pod_sandboxes(self, wanted: api.PodSandboxFilter | None = None) -> list[api.PodSandbox]:
        request = api.StreamPodSandboxesRequest(filter=wanted)
        return [pod for batch in self.stream(self.runtime.StreamPodSandboxes, request) for pod in batch.pod_sandboxes]

    # -- containers --------------------------------------------------------------------------

    def create_container(self, sandbox_id: str, config: api.ContainerConfig,
                         sandbox_config: api.PodSandboxConfig | None = None) -> str:
        """Create a container in a pod; its id."""
        request = api.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=config, sandbox_config=sandbox_config)
        return self.call(self.runtime.CreateContainer, request).container_id

    def start_container(self, container_id: str) -> None:
        self.call(self.runtime.StartContainer, api.StartContainerRequest(container_id=container_id))

    def stop_container(self, container_id: str, timeout: int = 0) -> None:
        """Stop a container: its stop signal, ``timeout`` seconds, then SIGKILL."""
        self.call(self.runtime.StopContainer, api.StopContainerRequest(container_id=container_id, timeout=timeout))

    def remove_container(self, container_id: str) -> None:
        self.call(self.runtime.RemoveContainer, api.RemoveContainerRequest(container_id=container_id))

    def list_containers(self, wanted: api.ContainerFilter | None = None) -> list[api.Container]:
        return list(self.call(self.runtime.ListContainers, api.ListContainersRequest(filter=wanted)).containers)

    def container_status(self, container_id: str, verbose: bool = False) -> api.ContainerStatusResponse:
        request = api.ContainerStatusRequest(container_id=container_id, verbose=verbose)
        return self.call(self.runtime.ContainerStatus, request)

    def exec_sync(self, container_id: str, cmd: list[str], timeout: int = 0) -> api.ExecSyncResponse:
        """Run ``cmd`` in the container and wait (at most ``timeout`` seconds, 0: no limit)."""
        request = api.ExecSyncRequest(container_id=container_id, cmd=cmd, timeout=timeout)
        call_timeout = None if self.timeout is None or timeout <= 0 else max(self.timeout, timeout + 30.0)
        return self.call(self.runtime.ExecSync, request, timeout=call_timeout)

    def container_stats(self, container_id: str) -> api.ContainerStats:
        request = api.ContainerStatsRequest(container_id=container_id)
        return self.call(self.runtime.ContainerStats, request).stats

    def list_container_stats(self, wanted: api.ContainerStatsFilter | None = None) -> list[api.ContainerStats]:
        request = api.ListContainerStatsRequest(filter=wanted)
        return list(self.call(self.runtime.ListContainerStats, request).stats)

    def pod_sandbox_stats(self, sandbox_id: str) -> api.PodSandboxStats:
        request = api.PodSandboxStatsRequest(pod_sandbox_id=sandbox_id)
        return self.call(self.runtime.PodSandboxStats, request).stats

    def update_container_resources(self, container_id: str, resources: api.LinuxContainerResources) -> None:
        request = api.UpdateContainerResourcesRequest(container_id=container_id, linux=resources)
        self.call(self.runtime.UpdateContainerResources, request)

    def reopen_container_log(self, container_id: str) -> None:
        self.call(self.runtime.ReopenContainerLog, api.ReopenContainerLogRequest(container_id=container_id))

    # -- images ------------------------------------------------------------------------------

    def pull_image(self, image: str, auth: api.AuthConfig | None = None,
                   sandbox_config: api.PodSandboxConfig | None = None, timeout: float | None = None) -> str:
        """Pull ``image``; returns the image reference the runtime answers (ctrpyd: the image id)."""
        request = api.PullImageRequest(image=api.ImageSpec(image=image), auth=auth, sandbox_config=sandbox_config)
        return self.call(self.images.PullImage, request, timeout=timeout).image_ref

    def list_images(self, image: str = "") -> list[api.Image]:
        request = api.ListImagesRequest(filter=api.ImageFilter(image=api.ImageSpec(image=image)) if image else None)
        return list(self.call(self.images.ListImages, request).images)

    def stream_images(self, image: str = "") -> list[api.Image]:
        request = api.StreamImagesRequest(filter=api.ImageFilter(image=api.ImageSpec(image=image)) if image else None)
        return [image for batch in self.stream(self.images.StreamImages, request) for image in batch.images]

    def image_status(self, image: str, verbose: bool = False) -> tuple[api.Image | None, Mapping[str, str]]:
        """The image ``image`` names and the verbose info; (None, {}) when it is not there."""
        response = self.call(self.images.ImageStatus,
                             api.ImageStatusRequest(image=api.ImageSpec(image=image), verbose=verbose))
        return (response.image if response.HasField("image") else None), dict(response.info)

    def remove_image(self, image: str) -> None:
        self.call(self.images.RemoveImage, api.RemoveImageRequest(image=api.ImageSpec(image=image)))

    def image_fs_info(self) -> api.ImageFsInfoResponse:
        return self.call(self.images.ImageFsInfo, api.ImageFsInfoRequest())
