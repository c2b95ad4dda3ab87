"""The CRI, registered with the gRPC server at start-up but built at its first call.

The CRI's code (its generated ``runtime.v1`` API, the pod and container managers, the CNI
runtime, the streaming server with ``websockets``) costs an idle daemon about 5 MiB of resident
memory, and most ctrpyd daemons never see a kubelet. So the composition root registers the two
services here with handlers of their own: grpc only needs each method's name and kind at
registration, which :data:`METHODS` lists (tests check it against the generated API). The first
call of a service imports and builds it:

- ImageService: the image servicer (which itself imports the registry client at its first
  image call, see :mod:`.deps`);
- RuntimeService: the image servicer, then the runtime servicer with the pod sandboxes and the
  containers, reconciled as at start-up;
- the streaming server (an HTTP listener) starts at the first Exec, Attach or PortForward.

A daemon that has CRI state on disk (:func:`state_present`: records, CNI cache entries, netns
files, scratch directories) builds the RuntimeService at start-up, before the socket serves, so
that a crash is reconciled, and exited containers noticed, as soon as ctrpyd is back.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

import grpc

from ctrpy.errors import Unavailable

from ..config import Config, duration_seconds
from ..events import Exchange
from ..gc import GcTrigger
from ..metadata.containers import ContainerStore
from ..metadata.content import NamespacedContent
from ..metadata.db import Database
from ..metadata.images import ImageStore
from ..metadata.snapshots import SnapshotStore
from ..tasks.manager import TaskManager
from ..transfer import Transfers

if TYPE_CHECKING:
    from .image_service import ImageServicer
    from .runtime_service import RuntimeServicer

RUNTIME_SERVICE = "runtime.v1.RuntimeService"
IMAGE_SERVICE = "runtime.v1.ImageService"

#: Every method of the two services, in the API's order; the server-streaming ones in
#: :data:`STREAMING`. No method streams requests.
METHODS: Mapping[str, tuple[str, ...]] = {
    RUNTIME_SERVICE: (
        "Version", "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus", "ListPodSandbox",
        "StreamPodSandboxes", "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer",
        "ListContainers", "StreamContainers", "ContainerStatus", "UpdateContainerResources", "ReopenContainerLog",
        "ExecSync", "Exec", "Attach", "PortForward", "ContainerStats", "ListContainerStats", "StreamContainerStats",
        "PodSandboxStats", "ListPodSandboxStats", "StreamPodSandboxStats", "UpdateRuntimeConfig", "Status",
        "CheckpointContainer", "GetContainerEvents", "ListMetricDescriptors", "ListPodSandboxMetrics",
        "StreamPodSandboxMetrics", "RuntimeConfig", "UpdatePodSandboxResources",
    ),
    IMAGE_SERVICE: ("ListImages", "StreamImages", "ImageStatus", "PullImage", "RemoveImage", "ImageFsInfo"),
}  # fmt: skip
STREAMING = frozenset({
    (RUNTIME_SERVICE, "StreamPodSandboxes"), (RUNTIME_SERVICE, "StreamContainers"),
    (RUNTIME_SERVICE, "StreamContainerStats"), (RUNTIME_SERVICE, "StreamPodSandboxStats"),
    (RUNTIME_SERVICE, "GetContainerEvents"), (RUNTIME_SERVICE, "StreamPodSandboxMetrics"),
    (IMAGE_SERVICE, "StreamImages"),
})  # fmt: skip
#: The calls that answer a URL on the streaming server.
STREAMING_SERVER_CALLS = frozenset({"Exec", "Attach", "PortForward"})


def state_present(config: Config) -> bool:
    """Whether the CRI left anything on disk that its start-up reconcile would look at: a file
    anywhere under ``<root>/cri`` (records), ``<root>/cni`` (CNI results), ``<state>/cri`` (shm
    mounts, scratch) or ``<state>/netns`` (pinned network namespaces). Empty directories do not
    count: they are what a daemon whose pods were all removed keeps."""
    for top in (config.root / "cri", config.root / "cni", config.state / "cri", config.state / "netns"):
        for directory, subdirs, files in os.walk(top):
            if files:
                return True
            for name in subdirs:  # a mount point (shm) is a directory that is not empty inside
                if os.path.ismount(os.path.join(directory, name)):
                    return True
    return False


def _request_class(service: str, method: str) -> Callable[[bytes], Any]:
    """The request message's ``FromString``, importing the generated API."""
    from ctrpy.api.k8s.cri.runtime.v1 import api_pb2

    short = service.rpartition(".")[2]
    descriptor = api_pb2.DESCRIPTOR.services_by_name[short].methods_by_name[method].input_type
    parse: Callable[[bytes], Any] = getattr(api_pb2, descriptor.name).FromString
    return parse


def _deserializer(service: str, method: str) -> Callable[[bytes], Any]:
    parse: list[Callable[[bytes], Any]] = []

    def deserialize(data: bytes) -> Any:
        if not parse:
            parse.append(_request_class(service, method))
        return parse[0](data)

    return deserialize


def _serialize(message: Any) -> bytes:
    data: bytes = message.SerializeToString()
    return data


@dataclass(frozen=True)
class CriParts:
    """What the composition root hands the CRI: the daemon's stores, puller and exit stack."""

    config: Config
    db: Database
    content: NamespacedContent
    transfers: Transfers
    exchange: Exchange
    gc: GcTrigger
    stack: contextlib.AsyncExitStack


class LazyCri:
    """The two CRI services behind :meth:`handlers`, built at their first call (see module)."""

    def __init__(self, parts: CriParts) -> None:
        self.parts = parts
        self._image: ImageServicer | None = None
        self._runtime: RuntimeServicer | None = None
        self._attached: tuple[TaskManager, ContainerStore, dict[str, SnapshotStore]] | None = None
        self._lock = asyncio.Lock()
        self._streaming_lock = asyncio.Lock()

    # -- building ------------------------------------------------------------------------------

    async def attach(self, tasks: TaskManager, containers: ContainerStore,
                     snapshots: dict[str, SnapshotStore]) -> None:
        """Hand over what the runtime needs once the task manager has recovered its shims;
        build it now when the CRI left state behind (see :func:`state_present`)."""
        self._attached = (tasks, containers, snapshots)
        if await asyncio.to_thread(state_present, self.parts.config):
            await self.runtime()

    async def images(self) -> ImageServicer:
        if self._image is None:
            from .deps import ImageBackends, ImageSettings
            from .fsusage import UsageSampler
            from .image_service import ImageServicer

            config, cri = self.parts.config, self.parts.config.cri
            settings = ImageSettings(config.cri_registry_config_path,
                                     duration_seconds(cri.image_pull_progress_timeout), cri.sandbox_image)
            backends = ImageBackends(db=self.parts.db, images=ImageStore(self.parts.db), content=self.parts.content,
                                     transfers=self.parts.transfers, events=self.parts.exchange, gc=self.parts.gc,
                                     settings=settings)  # fmt: skip
            snapshot_root = config.root / "snapshots" / config.default_snapshotter
            filesystem = UsageSampler(snapshot_root if config.default_snapshotter not in config.proxy_plugins
                                      else None, float(cri.stats_collect_period))
            self._image = ImageServicer(backends, filesystem)
        return self._image

    async def runtime(self) -> RuntimeServicer:
        async with self._lock:
            if self._runtime is not None:
                return self._runtime
            if self._attached is None:
                raise Unavailable("the CRI is not ready yet: ctrpyd is starting")
            from .container_service import start_containers
            from .runtime import RuntimeState
            from .runtime_service import RuntimeServicer
            from .sandbox_setup import start_sandboxes

            tasks, containers, snapshots = self._attached
            config, exchange = self.parts.config, self.parts.exchange
            images = (await self.images()).images
            servicer = RuntimeServicer(RuntimeState(config.cri))
            servicer.sandboxes = await start_sandboxes(config, self.parts.db, containers, snapshots, tasks,
                                                       exchange, images)
            servicer.containers = await start_containers(config, self.parts.db, containers, snapshots, tasks,
                                                         exchange, images, servicer.sandboxes)
            self._runtime = servicer
            return servicer

    async def _streaming(self, servicer: RuntimeServicer) -> None:
        """Start the streaming server for ``servicer``, once."""
        async with self._streaming_lock:
            if servicer.streaming is None and servicer.containers is not None:
                from .streaming.server import start_streaming

                server = await start_streaming(self.parts.config.cri, servicer.containers)
                self.parts.stack.push_async_callback(server.close)
                servicer.streaming = server

    async def _servicer(self, service: str, method: str) -> Any:
        if service == IMAGE_SERVICE:
            return await self.images()
        servicer = await self.runtime()
        if method in STREAMING_SERVER_CALLS:
            await self._streaming(servicer)
        return servicer

    # -- serving -------------------------------------------------------------------------------

    def handlers(self) -> list[grpc.GenericRpcHandler]:
        """One generic handler per service, every method delegating to the built servicer."""
        found: list[grpc.GenericRpcHandler] = []
        for service, methods in METHODS.items():
            table: dict[str, grpc.RpcMethodHandler[Any, Any]] = {}
            for method in methods:
                codec: dict[str, Any] = {"request_deserializer": _deserializer(service, method),
                                         "response_serializer": _serialize}
                if (service, method) in STREAMING:
                    table[method] = grpc.unary_stream_rpc_method_handler(self._stream(service, method), **codec)
                else:
                    table[method] = grpc.unary_unary_rpc_method_handler(self._unary(service, method), **codec)
            found.append(grpc.method_handlers_generic_handler(service, table))
        return found

    def _unary(self, service: str, method: str) -> Callable[[Any, Any], Any]:
        async def call(request: Any, context: Any) -> Any:
            servicer = await self._servicer(service, method)
            return await getattr(servicer, method)(request, context)

        return call

    def _stream(self, service: str, method: str) -> Callable[[Any, Any], Any]:
        async def call(request: Any, context: Any) -> AsyncIterator[Any]:
            servicer = await self._servicer(service, method)
            async for item in getattr(servicer, method)(request, context):
                yield item

        return call

