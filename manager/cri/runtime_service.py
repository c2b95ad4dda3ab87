"""runtime.v1.RuntimeService: the runtime half of the CRI.

Served now: Version, Status, RuntimeConfig and UpdateRuntimeConfig (see :mod:`.runtime`), pod
sandboxes (:mod:`.sandbox_service`), and containers, ExecSync, stats and GetContainerEvents
(:mod:`.container_service`), Exec, Attach and PortForward (:mod:`.streaming.server`). The rest
are listed below and answer UNIMPLEMENTED by name, so that what is missing is visible here and a client
gets a clear answer rather than grpc's generic one.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn

from ctrpy import __version__, errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2_grpc as api_grpc

from .runtime import RuntimeState

if TYPE_CHECKING:
    from .container_service import ContainerCalls
    from .sandbox_service import SandboxCalls
    from .streaming.server import StreamServer

#: What containerd answers for the kubelet runtime API version and the CRI version.
KUBE_API_VERSION = "0.1.0"
RUNTIME_API_VERSION = "v1"
RUNTIME_NAME = "ctrpy"


def _unimplemented(method: str) -> NoReturn:
    raise errors.NotImplemented(f"runtime.v1.RuntimeService/{method}")


class RuntimeServicer(api_grpc.RuntimeServiceServicer):
    def __init__(self, state: RuntimeState) -> None:
        self.state = state

    # -- served ------------------------------------------------------------------------------

    async def Version(self, request: api.VersionRequest, context: object) -> api.VersionResponse:
        return api.VersionResponse(version=KUBE_API_VERSION, runtime_name=RUNTIME_NAME,
                                   runtime_version=__version__, runtime_api_version=RUNTIME_API_VERSION)

    async def Status(self, request: api.StatusRequest, context: object) -> api.StatusResponse:
        from .containerspec import host_facts  # runc is asked once, at the first Status

        conditions, network = await self.state.conditions()
        facts = await asyncio.to_thread(host_facts)
        response = api.StatusResponse(
            status=api.RuntimeStatus(conditions=[
                api.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
                for c in conditions]),
            # One handler, the default. User namespaces: pods in POD mode with one mapping line
            # (see .userns; runc 1.1 is enough since ctrpyd remaps the root filesystem itself).
            # Recursive read-only mounts: exactly when CreateContainer accepts them (runc's
            # ``rro`` and mount_setattr, see .containerspec.host_facts).
            runtime_handlers=[api.RuntimeHandler(name="", features=api.RuntimeHandlerFeatures(
                user_namespaces=True, recursive_read_only_mounts=facts.rro))],
            # SupplementalGroupsPolicy Merge and Strict (see .security), with ContainerStatus.user.
            features=api.RuntimeFeatures(supplemental_groups_policy=True),
        )  # fmt: skip
        if request.verbose:
            response.info.update(self.state.verbose_info(network))
        return response

    async def RuntimeConfig(self, request: api.RuntimeConfigRequest, context: object) -> api.RuntimeConfigResponse:
        driver = api.SYSTEMD if self.state.config.cgroup_driver == "systemd" else api.CGROUPFS
        return api.RuntimeConfigResponse(linux=api.LinuxRuntimeConfiguration(cgroup_driver=driver))

    async def UpdateRuntimeConfig(self, request: api.UpdateRuntimeConfigRequest,
                                  context: object) -> api.UpdateRuntimeConfigResponse:
        cidr = request.runtime_config.network_config.pod_cidr
        if cidr:
            self.state.pod_cidr = cidr
        return api.UpdateRuntimeConfigResponse()

    # -- pod sandboxes (see .sandbox_service; attached once the task manager has recovered) ----

    sandboxes: SandboxCalls | None = None

    def _sandboxes(self) -> SandboxCalls:
        if self.sandboxes is None:
            raise errors.Unavailable("pod sandboxes are not ready yet: ctrpyd is starting")
        return self.sandboxes

    async def RunPodSandbox(self, request: api.RunPodSandboxRequest, context: object) -> api.RunPodSandboxResponse:
        return await self._sandboxes().run(request)

    async def StopPodSandbox(self, request: api.StopPodSandboxRequest,
                             context: object) -> api.StopPodSandboxResponse:
        return await self._sandboxes().stop(request)

    async def RemovePodSandbox(self, request: api.RemovePodSandboxRequest,
                               context: object) -> api.RemovePodSandboxResponse:
        return await self._sandboxes().remove(request)

    async def PodSandboxStatus(self, request: api.PodSandboxStatusRequest,
                               context: object) -> api.PodSandboxStatusResponse:
        return await self._sandboxes().status(request)

    async def ListPodSandbox(self, request: api.ListPodSandboxRequest,
                             context: object) -> api.ListPodSandboxResponse:
        return await self._sandboxes().list_sandboxes(request)

    async def StreamPodSandboxes(self, request: api.StreamPodSandboxesRequest,
                                 context: object) -> AsyncIterator[api.StreamPodSandboxesResponse]:
        async for batch in self._sandboxes().stream(request):
            yield batch

    async def UpdatePodSandboxResources(self, request: api.UpdatePodSandboxResourcesRequest,
                                        context: object) -> api.UpdatePodSandboxResourcesResponse:
        return await self._sandboxes().update_resources(request)

    # -- containers (see .container_service; attached after the sandboxes) --------------------

    containers: ContainerCalls | None = None

    def _containers(self) -> ContainerCalls:
        if self.containers is None:
            raise errors.Unavailable("containers are not ready yet: ctrpyd is starting")
        return self.containers

    async def CreateContainer(self, request: api.CreateContainerRequest,
                              context: object) -> api.CreateContainerResponse:
        return await self._containers().create(request)

    async def StartContainer(self, request: api.StartContainerRequest,
                             context: object) -> api.StartContainerResponse:
        return await self._containers().start(request)

    async def StopContainer(self, request: api.StopContainerRequest, context: object) -> api.StopContainerResponse:
        return await self._containers().stop(request)

    async def RemoveContainer(self, request: api.RemoveContainerRequest,
                              context: object) -> api.RemoveContainerResponse:
        return await self._containers().remove(request)

    async def ListContainers(self, request: api.ListContainersRequest,
                             context: object) -> api.ListContainersResponse:
        return await self._containers().list_containers(request)

    async def StreamContainers(self, request: api.StreamContainersRequest,
                               context: object) -> AsyncIterator[api.StreamContainersResponse]:
        async for batch in self._containers().stream(request):
            yield batch

    async def ContainerStatus(self, request: api.ContainerStatusRequest,
                              context: object) -> api.ContainerStatusResponse:
        return await self._containers().status(request)

    async def UpdateContainerResources(self, request: api.UpdateContainerResourcesRequest,
                                       context: object) -> api.UpdateContainerResourcesResponse:
        return await self._containers().update(request)

    async def ReopenContainerLog(self, request: api.ReopenContainerLogRequest,
                                 context: object) -> api.ReopenContainerLogResponse:
        return await self._containers().reopen_log(request)

    async def CheckpointContainer(self, request: api.CheckpointContainerRequest,
                                  context: object) -> api.CheckpointContainerResponse:
        _unimplemented("CheckpointContainer")

    async def GetContainerEvents(self, request: api.GetEventsRequest,
                                 context: object) -> AsyncIterator[api.ContainerEventResponse]:
        async for event in self._containers().subscribe(request):
            yield event

    # -- exec, attach and port forward (the URLs of the streaming server, attached after the
    # containers) -----------------------------------------------------------------------------

    streaming: StreamServer | None = None

    async def ExecSync(self, request: api.ExecSyncRequest, context: object) -> api.ExecSyncResponse:
        return await self._containers().exec_sync(request)

    async def Exec(self, request: api.ExecRequest, context: object) -> api.ExecResponse:
        if self.streaming is None:
            raise errors.Unavailable("the streaming server is not ready yet: ctrpyd is starting")
        return await self.streaming.exec(request)

    async def Attach(self, request: api.AttachRequest, context: object) -> api.AttachResponse:
        if self.streaming is None:
            raise errors.Unavailable("the streaming server is not ready yet: ctrpyd is starting")
        return await self.streaming.attach(request)

    async def PortForward(self, request: api.PortForwardRequest, context: object) -> api.PortForwardResponse:
        if self.streaming is None:
            raise errors.Unavailable("the streaming server is not ready yet: ctrpyd is starting")
        return await self.streaming.port_forward(request)

    # -- stats (see .stats) and metrics (not served, as containerd) ---------------------------

    async def ContainerStats(self, request: api.ContainerStatsRequest,
                             context: object) -> api.ContainerStatsResponse:
        return await self._containers().container_stats(request)

    async def ListContainerStats(self, request: api.ListContainerStatsRequest,
                                 context: object) -> api.ListContainerStatsResponse:
        return await self._containers().list_container_stats(request)

    async def StreamContainerStats(self, request: api.StreamContainerStatsRequest,
                                   context: object) -> AsyncIterator[api.StreamContainerStatsResponse]:
        async for batch in self._containers().stream_container_stats(request):
            yield batch

    async def PodSandboxStats(self, request: api.PodSandboxStatsRequest,
                              context: object) -> api.PodSandboxStatsResponse:
        return await self._containers().pod_stats(request)

    async def ListPodSandboxStats(self, request: api.ListPodSandboxStatsRequest,
                                  context: object) -> api.ListPodSandboxStatsResponse:
        return await self._containers().list_pod_stats(request)

    async def StreamPodSandboxStats(self, request: api.StreamPodSandboxStatsRequest,
                                    context: object) -> AsyncIterator[api.StreamPodSandboxStatsResponse]:
        async for batch in self._containers().stream_pod_stats(request):
            yield batch

    async def ListMetricDescriptors(self, request: api.ListMetricDescriptorsRequest,
                                    context: object) -> api.ListMetricDescriptorsResponse:
        _unimplemented("ListMetricDescriptors")

    async def ListPodSandboxMetrics(self, request: api.ListPodSandboxMetricsRequest,
                                    context: object) -> api.ListPodSandboxMetricsResponse:
        _unimplemented("ListPodSandboxMetrics")

    async def StreamPodSandboxMetrics(self, request: api.StreamPodSandboxMetricsRequest,
                                      context: object) -> AsyncIterator[api.StreamPodSandboxMetricsResponse]:
        _unimplemented("StreamPodSandboxMetrics")
        yield api.StreamPodSandboxMetricsResponse()  # never reached: makes this a stream
