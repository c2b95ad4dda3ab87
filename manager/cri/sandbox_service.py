"""The pod sandbox RPCs of runtime.v1.RuntimeService, over :class:`.sandboxes.Sandboxes`.

Conversion only: records to ``PodSandbox``/``PodSandboxStatus`` messages, the filters of
ListPodSandbox (id prefix, state, label selector, all ANDed, as containerd), batches for
StreamPodSandboxes, and the verbose ``info`` of PodSandboxStatus with containerd's keys.
:class:`RuntimeServicer <.runtime_service.RuntimeServicer>` delegates its sandbox methods here.
"""

from __future__ import annotations

import json
import time
from collections.abc import AsyncIterator, Sequence
from typing import Any

import structlog
from google.protobuf import json_format

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api

from .sandbox_store import SandboxRecord
from .sandboxes import Sandboxes

log = structlog.get_logger(__name__)

#: Sandboxes per StreamPodSandboxes message: far below the kubelet's 16 MiB limit.
STREAM_BATCH = 500


class SandboxCalls:
    """RunPodSandbox ... StreamPodSandboxes."""

    def __init__(self, sandboxes: Sandboxes) -> None:
        self.sandboxes = sandboxes

    async def run(self, request: api.RunPodSandboxRequest) -> api.RunPodSandboxResponse:
        sandbox_id = await self.sandboxes.run(request.config, request.runtime_handler)
        return api.RunPodSandboxResponse(pod_sandbox_id=sandbox_id)

    async def stop(self, request: api.StopPodSandboxRequest) -> api.StopPodSandboxResponse:
        await self.sandboxes.stop(request.pod_sandbox_id)
        return api.StopPodSandboxResponse()

    async def remove(self, request: api.RemovePodSandboxRequest) -> api.RemovePodSandboxResponse:
        await self.sandboxes.remove(request.pod_sandbox_id)
        return api.RemovePodSandboxResponse()

    async def update_resources(self, request: api.UpdatePodSandboxResourcesRequest,
                               ) -> api.UpdatePodSandboxResourcesResponse:
        """UpdatePodSandboxResources: NotFound for an unknown sandbox, else accepted.

        containerd 2.1 only hands the new overhead and resources to its NRI plugins and keeps
        them for them; the pod-level cgroup they describe is the kubelet's (the cgroup parent),
        which the kubelet resizes itself, and ctrpyd has no NRI and owns no pod-level cgroup
        (each container has its own under the parent). So there is nothing to apply here."""
        record = self.sandboxes.get(request.pod_sandbox_id)
        log.info("UpdatePodSandboxResources accepted (nothing to apply: no NRI, no pod cgroup of ctrpyd's)",
                 id=record.id)
        return api.UpdatePodSandboxResourcesResponse()

    async def status(self, request: api.PodSandboxStatusRequest) -> api.PodSandboxStatusResponse:
        record = self.sandboxes.get(request.pod_sandbox_id)
        ready = await self.sandboxes.ready(record)
        response = api.PodSandboxStatusResponse(status=status_message(record, ready), timestamp=time.time_ns())
        if request.verbose:
            response.info["info"] = json.dumps(await self._verbose(record, ready))
        return response

    async def list_sandboxes(self, request: api.ListPodSandboxRequest) -> api.ListPodSandboxResponse:
        return api.ListPodSandboxResponse(items=await self._listed(request.filter if request.HasField("filter")
                                                                   else None))

    async def stream(self, request: api.StreamPodSandboxesRequest) -> AsyncIterator[api.StreamPodSandboxesResponse]:
        items = await self._listed(request.filter if request.HasField("filter") else None)
        for start in range(0, len(items), STREAM_BATCH):
            yield api.StreamPodSandboxesResponse(pod_sandboxes=items[start:start + STREAM_BATCH])

    async def _listed(self, wanted: api.PodSandboxFilter | None) -> list[api.PodSandbox]:
        records = self.sandboxes.list()
        if wanted is not None and wanted.id:
            records = [r for r in records if r.id.startswith(wanted.id)]
        states = [self.sandboxes.ready_now(r) for r in records]  # memory only: PLEG polls this
        items = [sandbox_message(r, ready) for r, ready in zip(records, states, strict=True)]
        if wanted is None:
            return items
        if wanted.HasField("state"):
            items = [i for i in items if i.state == wanted.state.state]
        for key, value in wanted.label_selector.items():
            items = [i for i in items if i.labels.get(key) == value]
        return items

    async def _verbose(self, record: SandboxRecord, ready: bool) -> dict[str, Any]:
        """containerd's verbose info keys, those ctrpy has."""
        sandboxes = self.sandboxes
        config = api.PodSandboxConfig.FromString(record.config)
        info: dict[str, Any] = {
            "pid": record.pid,
            "processStatus": "running" if ready else ("created" if record.phase == "creating" else "stopped"),
            "netNamespaceClosed": sandboxes.network_closed(record),
            "image": record.image,
            "snapshotKey": record.id,
            "snapshotter": record.snapshotter,
            "runtimeHandler": record.runtime_handler,
            "runtimeType": sandboxes.runtime_name(record.runtime_handler),
            "config": json_format.MessageToDict(config),
        }
        try:
            container = await sandboxes.db.run(sandboxes.containers.get, record.id)
        except Exception:  # verbose info is best effort
            container = None
        if container is not None and container.spec is not None:
            info["runtimeSpec"] = json.loads(container.spec.value)
        network = sandboxes.cni.pod_network(record.id) if record.netns else None
        if network is not None:
            info["cniResult"] = {a.network: (a.result.raw if a.result else None) for a in network.attachments}
        return info


def _metadata(config: api.PodSandboxConfig) -> api.PodSandboxMetadata:
    return config.metadata


def _state(ready: bool) -> api.PodSandboxState.ValueType:
    return api.SANDBOX_READY if ready else api.SANDBOX_NOTREADY


def sandbox_message(record: SandboxRecord, ready: bool) -> api.PodSandbox:
    config = api.PodSandboxConfig.FromString(record.config)
    return api.PodSandbox(id=record.id, metadata=_metadata(config), state=_state(ready),
                          created_at=record.created_at_ns, labels=dict(config.labels),
                          annotations=dict(config.annotations), runtime_handler=record.runtime_handler)


def _network(ips: Sequence[str]) -> api.PodSandboxNetworkStatus:
    if not ips:
        return api.PodSandboxNetworkStatus()
    return api.PodSandboxNetworkStatus(ip=ips[0], additional_ips=[api.PodIP(ip=ip) for ip in ips[1:]])


def status_message(record: SandboxRecord, ready: bool) -> api.PodSandboxStatus:
    config = api.PodSandboxConfig.FromString(record.config)
    options = config.linux.security_context.namespace_options
    return api.PodSandboxStatus(
        id=record.id, metadata=_metadata(config), state=_state(ready), created_at=record.created_at_ns,
        network=_network(record.ips),
        linux=api.LinuxPodSandboxStatus(namespaces=api.Namespace(options=api.NamespaceOption(
            network=options.network, pid=options.pid, ipc=options.ipc, target_id=options.target_id,
            userns_options=options.userns_options if options.HasField("userns_options") else None))),
        labels=dict(config.labels), annotations=dict(config.annotations), runtime_handler=record.runtime_handler,
    )  # fmt: skip
