"""runtime.v1.RuntimeService: the runtime half of the CRI.

Served now: Version, Status, RuntimeConfig and UpdateRuntimeConfig (see :mod:`.runtime`).
Pod sandboxes, containers, exec, stats and events come next; until then each of their methods
is listed below and answers UNIMPLEMENTED by name, so that what is missing is visible here and
a client gets a clear answer rather than grpc's generic one.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from typing import TYPE_CHECKING, NoReturn

from ctrpy import __version__, errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2_grpc as api_grpc

from .runtime import RuntimeState

if TYPE_CHECKING:
    from .sandbox_service import SandboxCalls

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
        conditions, network = await self.state.conditions()
        response = api.StatusResponse(
            status=api.RuntimeStatus(conditions=[
                api.RuntimeCondition(type=c.type, status=c.status, reason=c.reason, message=c.message)
                for c in conditions]),
            # One handler, the default; no optional feature is advertised yet.
            runtime_handlers=[api.RuntimeHandler(name="", features=api.RuntimeHandlerFeatures())],
            features=api.RuntimeFeatures(),
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
        _unimplemented("UpdatePodSandboxResources")

    # -- containers (not yet) ----------------------------------------------------------------

    async def CreateContainer(self, request: api.CreateContainerRequest,
                              context: object) -> api.CreateContainerResponse:
        _unimplemented("CreateContainer")

    async def StartContainer(self, request: api.StartContainerRequest,
                             context: object) -> api.StartContainerResponse:
        _unimplemented("StartContainer")

    async def StopContainer(self, request: api.StopContainerRequest, context: object) -> api.StopContainerResponse:
        _unimplemented("StopContainer")

    async def RemoveContainer(self, request: api.RemoveContainerRequest,
                              context: object) -> api.RemoveContainerResponse:
        _unimplemented("RemoveContainer")

    async def ListContainers(self, request: api.ListContainersRequest,
                             context: object) -> api.ListContainersResponse:
        _unimplemented("ListContainers")

    async def StreamContainers(self, request: api.StreamContainersRequest,
                               context: object) -> AsyncIterator[api.StreamContainersResponse]:
        _unimplemented("StreamContainers")
        yield api.StreamContainersResponse()  # never reached: makes this a stream

    async def ContainerStatus(self, request: api.ContainerStatusRequest,
                              context: object) -> api.ContainerStatusResponse:
        _unimplemented("ContainerStatus")

    async def UpdateContainerResources(self, request: api.UpdateContainerResourcesRequest,
                                       context: object) -> api.UpdateContainerResourcesResponse:
        _unimplemented("UpdateContainerResources")

    async def ReopenContainerLog(self, request: api.ReopenContainerLogRequest,
                                 context: object) -> api.ReopenContainerLogResponse:
        _unimplemented("ReopenContainerLog")

    async def CheckpointContainer(self, request: api.CheckpointContainerRequest,
                                  context: object) -> api.CheckpointContainerResponse:
        _unimplemented("CheckpointContainer")

    async def GetContainerEvents(self, request: api.GetEventsRequest,
                                 context: object) -> AsyncIterator[api.ContainerEventResponse]:
        _unimplemented("GetContainerEvents")
        yield api.ContainerEventResponse()  # never reached: makes this a stream

    # -- exec, attach, port forward (not yet) ------------------------------------------------

    async def ExecSync(self, request: api.ExecSyncRequest, context: object) -> api.ExecSyncResponse:
        _unimplemented("ExecSync")

    async def Exec(self, request: api.ExecRequest, context: object) -> api.ExecResponse:
        _unimplemented("Exec")

    async def Attach(self, request: api.AttachRequest, context: object) -> api.AttachResponse:
        _unimplemented("Attach")

    async def PortForward(self, request: api.PortForwardRequest, context: object) -> api.PortForwardResponse:
        _unimplemented("PortForward")

    # -- stats and metrics (not yet) ---------------------------------------------------------

    async def ContainerStats(self, request: api.ContainerStatsRequest,
                             context: object) -> api.ContainerStatsResponse:
        _unimplemented("ContainerStats")

    async def ListContainerStats(self, request: api.ListContainerStatsRequest,
                                 context: object) -> api.ListContainerStatsResponse:
        _unimplemented("ListContainerStats")

    async def StreamContainerStats(self, request: api.StreamContainerStatsRequest,
                                   context: object) -> AsyncIterator[api.StreamContainerStatsResponse]:
        _unimplemented("StreamContainerStats")
        yield api.StreamContainerStatsResponse()  # never reached: makes this a stream

    async def PodSandboxStats(self, request: api.PodSandboxStatsRequest,
                              context: object) -> api.PodSandboxStatsResponse:
        _unimplemented("PodSandboxStats")

    async def ListPodSandboxStats(self, request: api.ListPodSandboxStatsRequest,
                                  context: object) -> api.ListPodSandboxStatsResponse:
        _unimplemented("ListPodSandboxStats")

    async def StreamPodSandboxStats(self, request: api.StreamPodSandboxStatsRequest,
                                    context: object) -> AsyncIterator[api.StreamPodSandboxStatsResponse]:
        _unimplemented("StreamPodSandboxStats")
        yield api.StreamPodSandboxStatsResponse()  # never reached: makes this a stream

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
