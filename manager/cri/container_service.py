"""The container RPCs of runtime.v1.RuntimeService, over :class:`.containers.Containers`.

Conversion and listing only: records to ``Container``/``ContainerStatus`` messages, the filters
of ListContainers and the stats listings (id prefix, state, sandbox id, label selector, all
ANDed, as containerd), batches for the Stream* calls, ExecSync (:mod:`.execsync`), the stats
(:mod:`.stats`) and GetContainerEvents (:mod:`.events`, fed by both the containers and the
sandboxes). :class:`RuntimeServicer <.runtime_service.RuntimeServicer>` delegates here.
:func:`start_containers` builds it all once the sandboxes have been reconciled.
"""

from __future__ import annotations

import asyncio
import json
import os
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from typing import TYPE_CHECKING, Any

from google.protobuf import json_format

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import NotFound

from ..config import Config
from ..events import Exchange
from ..metadata.containers import ContainerStore as MetaContainers
from ..metadata.db import Database
from ..metadata.snapshots import SnapshotStore
from ..tasks.manager import TaskManager
from . import execsync
from .container_store import CREATED, EXITED, RUNNING, ContainerRecord
from .containers import Containers
from .events import ContainerEvents
from .sandbox_service import SandboxCalls, status_message
from .sandbox_store import READY
from .stats import Stats

if TYPE_CHECKING:
    from .images import CriImages

#: Items per Stream* message: far below the kubelet's 16 MiB limit.
STREAM_BATCH = 500

_STATES = {CREATED: api.CONTAINER_CREATED, RUNNING: api.CONTAINER_RUNNING, EXITED: api.CONTAINER_EXITED}


def state_of(record: ContainerRecord) -> api.ContainerState.ValueType:
    return _STATES.get(record.phase, api.CONTAINER_UNKNOWN)


def container_message(record: ContainerRecord) -> api.Container:
    config = api.ContainerConfig.FromString(record.config)
    return api.Container(
        id=record.id, pod_sandbox_id=record.sandbox_id, metadata=config.metadata,
        image=api.ImageSpec(image=record.image, annotations=dict(config.image.annotations),
                            user_specified_image=config.image.image),
        image_ref=record.image_ref, state=state_of(record), created_at=record.created_at_ns,
        labels=dict(config.labels), annotations=dict(config.annotations), image_id=record.image_id,
    )  # fmt: skip


def status_of(record: ContainerRecord) -> api.ContainerStatus:
    config = api.ContainerConfig.FromString(record.config)
    mounts = [api.Mount(container_path=m.container_path, host_path=m.host_path, readonly=m.readonly,
                        selinux_relabel=m.selinux_relabel, propagation=m.propagation,
                        recursive_read_only=m.recursive_read_only) for m in config.mounts]
    status = api.ContainerStatus(
        id=record.id, metadata=config.metadata, state=state_of(record), created_at=record.created_at_ns,
        started_at=record.started_at_ns, finished_at=record.finished_at_ns, exit_code=record.exit_code,
        image=api.ImageSpec(image=record.image, annotations=dict(config.image.annotations),
                            user_specified_image=config.image.image),
        image_ref=record.image_ref, image_id=record.image_id, reason=record.reason, message=record.message,
        labels=dict(config.labels), annotations=dict(config.annotations), mounts=mounts, log_path=record.log_path,
    )  # fmt: skip
    if config.linux.HasField("resources"):
        status.resources.linux.CopyFrom(config.linux.resources)
    status.user.linux.CopyFrom(api.LinuxContainerUser(uid=record.uid, gid=record.gid,
                                                      supplemental_groups=list(record.additional_gids)))
    return status


def _selected(labels: Mapping[str, str], selector: Mapping[str, str]) -> bool:
    return all(labels.get(k) == v for k, v in selector.items())


class ContainerCalls:
    """CreateContainer ... GetContainerEvents."""

    def __init__(self, containers: Containers, stats: Stats, exec_dir: str) -> None:
        self.containers = containers
        self.stats = stats
        self.events = ContainerEvents(self.describe)
        self.exec_dir = exec_dir

    # -- lifecycle ----------------------------------------------------------------------------

    async def create(self, request: api.CreateContainerRequest) -> api.CreateContainerResponse:
        sandbox_config = request.sandbox_config if request.HasField("sandbox_config") else None
        container_id = await self.containers.create(request.pod_sandbox_id, request.config, sandbox_config)
        return api.CreateContainerResponse(container_id=container_id)

    async def start(self, request: api.StartContainerRequest) -> api.StartContainerResponse:
        await self.containers.start(request.container_id)
        return api.StartContainerResponse()

    async def stop(self, request: api.StopContainerRequest) -> api.StopContainerResponse:
        await self.containers.stop(request.container_id, float(max(0, request.timeout)))
        return api.StopContainerResponse()

    async def remove(self, request: api.RemoveContainerRequest) -> api.RemoveContainerResponse:
        await self.containers.remove(request.container_id)
        return api.RemoveContainerResponse()

    async def update(self, request: api.UpdateContainerResourcesRequest) -> api.UpdateContainerResourcesResponse:
        await self.containers.update_resources(request.container_id, request.linux, dict(request.annotations))
        return api.UpdateContainerResourcesResponse()

    async def reopen_log(self, request: api.ReopenContainerLogRequest) -> api.ReopenContainerLogResponse:
        await self.containers.reopen_log(request.container_id)
        return api.ReopenContainerLogResponse()

    # -- reading ------------------------------------------------------------------------------

    async def status(self, request: api.ContainerStatusRequest) -> api.ContainerStatusResponse:
        record = self.containers.get(request.container_id)
        response = api.ContainerStatusResponse(status=status_of(record))
        if request.verbose:
            response.info["info"] = json.dumps(await self._verbose(record))
        return response

    async def _verbose(self, record: ContainerRecord) -> dict[str, Any]:
        """containerd's verbose info keys, those ctrpy has."""
        containers = self.containers
        info: dict[str, Any] = {
            "sandboxID": record.sandbox_id,
            "pid": record.pid if record.phase == RUNNING else 0,
            "removing": False,
            "snapshotKey": record.id,
            "snapshotter": record.snapshotter,
            "config": json_format.MessageToDict(containers.config_of(record)),
        }
        try:
            container = await containers.db.run(containers.meta.get, record.id)
        except NotFound:
            container = None
        if container is not None:
            info["runtimeType"] = container.runtime.name
            if container.spec is not None:
                info["runtimeSpec"] = json.loads(container.spec.value)
        return info

    def _listed(self, wanted: api.ContainerFilter | None) -> list[api.Container]:
        records = self.containers.list()
        if wanted is not None:
            if wanted.id:
                records = [r for r in records if r.id.startswith(wanted.id)]
            if wanted.pod_sandbox_id:
                records = [r for r in records if r.sandbox_id.startswith(wanted.pod_sandbox_id)]
        items = [container_message(r) for r in records]
        if wanted is not None:
            if wanted.HasField("state"):
                items = [i for i in items if i.state == wanted.state.state]
            items = [i for i in items if _selected(i.labels, wanted.label_selector)]
        return items

    async def list_containers(self, request: api.ListContainersRequest) -> api.ListContainersResponse:
        return api.ListContainersResponse(containers=self._listed(request.filter if request.HasField("filter")
                                                                  else None))

    async def stream(self, request: api.StreamContainersRequest) -> AsyncIterator[api.StreamContainersResponse]:
        items = self._listed(request.filter if request.HasField("filter") else None)
        for start in range(0, len(items), STREAM_BATCH):
            yield api.StreamContainersResponse(containers=items[start:start + STREAM_BATCH])

    # -- exec ---------------------------------------------------------------------------------

    async def exec_sync(self, request: api.ExecSyncRequest) -> api.ExecSyncResponse:
        record = self.containers.get(request.container_id)
        os.makedirs(self.exec_dir, mode=0o700, exist_ok=True)
        result = await execsync.exec_sync(self.containers.tasks, self.containers.db, self.containers.meta, record.id,
                                          list(request.cmd), float(max(0, request.timeout)), self.exec_dir)
        return api.ExecSyncResponse(stdout=result.stdout, stderr=result.stderr, exit_code=result.exit_code)

    # -- stats --------------------------------------------------------------------------------

    async def container_stats(self, request: api.ContainerStatsRequest) -> api.ContainerStatsResponse:
        record = self.containers.get(request.container_id)
        return api.ContainerStatsResponse(stats=await self.stats.container(record))

    async def _container_stats(self, wanted: api.ContainerStatsFilter | None) -> list[api.ContainerStats]:
        every = self.containers.list()
        self.stats.layers.keep_only(r.id for r in every)
        records = [r for r in every if r.phase == RUNNING]
        if wanted is not None:
            records = [r for r in records if r.id.startswith(wanted.id)
                       and r.sandbox_id.startswith(wanted.pod_sandbox_id)
                       and _selected(self.containers.config_of(r).labels, wanted.label_selector)]
        return await self.stats.many(records)

    async def list_container_stats(self, request: api.ListContainerStatsRequest) -> api.ListContainerStatsResponse:
        return api.ListContainerStatsResponse(stats=await self._container_stats(
            request.filter if request.HasField("filter") else None))

    async def stream_container_stats(self, request: api.StreamContainerStatsRequest
                                     ) -> AsyncIterator[api.StreamContainerStatsResponse]:
        items = await self._container_stats(request.filter if request.HasField("filter") else None)
        for start in range(0, len(items), STREAM_BATCH):
            yield api.StreamContainerStatsResponse(container_stats=items[start:start + STREAM_BATCH])

    async def pod_stats(self, request: api.PodSandboxStatsRequest) -> api.PodSandboxStatsResponse:
        sandboxes = self.containers.sandboxes
        record = sandboxes.get(request.pod_sandbox_id)
        ready = await sandboxes.ready(record)
        members = [r for r in self.containers.list() if r.sandbox_id == record.id]
        return api.PodSandboxStatsResponse(stats=await self.stats.pod(record, ready, members))

    async def _pod_stats(self, wanted: api.PodSandboxStatsFilter | None) -> list[api.PodSandboxStats]:
        sandboxes = self.containers.sandboxes
        records = [r for r in sandboxes.list() if r.phase == READY]
        if wanted is not None:
            records = [r for r in records if r.id.startswith(wanted.id) and _selected(
                api.PodSandboxConfig.FromString(r.config).labels, wanted.label_selector)]
        ready = [sandboxes.ready_now(r) for r in records]
        members = self.containers.list()
        return list(await asyncio.gather(*(
            self.stats.pod(r, up, [c for c in members if c.sandbox_id == r.id])
            for r, up in zip(records, ready, strict=True) if up)))

    async def list_pod_stats(self, request: api.ListPodSandboxStatsRequest) -> api.ListPodSandboxStatsResponse:
        return api.ListPodSandboxStatsResponse(stats=await self._pod_stats(
            request.filter if request.HasField("filter") else None))

    async def stream_pod_stats(self, request: api.StreamPodSandboxStatsRequest
                               ) -> AsyncIterator[api.StreamPodSandboxStatsResponse]:
        items = await self._pod_stats(request.filter if request.HasField("filter") else None)
        for start in range(0, len(items), STREAM_BATCH):
            yield api.StreamPodSandboxStatsResponse(pod_sandbox_stats=items[start:start + STREAM_BATCH])

    # -- events -------------------------------------------------------------------------------

    def describe(self, container_id: str, sandbox_id: str, event_type: int) -> api.ContainerEventResponse:
        """The event message: the pod's status and its containers' statuses, from the records
        as they are now (no shim is asked: publishing never waits)."""
        message = api.ContainerEventResponse(container_id=container_id,
                                             container_event_type=event_type,  # type: ignore[arg-type]
                                             created_at=time.time_ns())
        sandboxes = self.containers.sandboxes
        try:
            sandbox = sandboxes.store.get(sandbox_id)
        except NotFound:
            sandbox = None
        if sandbox is not None:
            message.pod_sandbox_status.CopyFrom(status_message(sandbox, sandbox.phase == READY))
        message.containers_statuses.extend(
            status_of(r) for r in self.containers.list() if r.sandbox_id == sandbox_id)
        return message

    async def subscribe(self, request: api.GetEventsRequest) -> AsyncIterator[api.ContainerEventResponse]:
        async for event in self.events.subscribe():
            yield event


async def start_containers(
    config: Config,
    db: Database,
    containers: MetaContainers,
    snapshots: Mapping[str, SnapshotStore],
    tasks: TaskManager,
    exchange: Exchange,
    images: Callable[[], Awaitable[CriImages]],
    sandboxes: SandboxCalls,
) -> ContainerCalls:
    """Build the container manager, recover the containers' records, and return its RPCs.
    Called after the sandboxes were reconciled (their records are loaded)."""
    manager = Containers(
        root=str(config.root), state=str(config.state), db=db, containers=containers, snapshots=snapshots,
        snapshotter=config.default_snapshotter, tasks=tasks, exchange=exchange, sandboxes=sandboxes.sandboxes,
        images=images, max_log_line_size=config.cri.max_container_log_line_size,
        unclaimed_timeout=config.cri.unclaimed_timeout,
    )  # fmt: skip
    await manager.recover()
    snapshot_root = os.path.join(str(config.root), "snapshots", config.default_snapshotter)
    stats = Stats(manager, tasks, snapshot_root, float(config.cri.stats_collect_period))
    calls = ContainerCalls(manager, stats, os.path.join(str(config.state), "cri", "exec"))
    manager.listeners.append(calls.events.publish)
    manager.sandboxes.listeners.append(calls.events.publish)
    manager.attach()
    return calls
