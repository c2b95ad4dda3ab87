"""Empty and delete one namespace on one daemon through its API (best effort), so that the
session's daemons do not pile up objects, tasks or mounts from example to example."""

from __future__ import annotations

import contextlib

import grpc

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.content.v1 import content_pb2
from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from tests.differential.pair import Side

SNAPSHOTTER = "overlayfs"


def _quiet(fn, request, meta, timeout: float = 20.0):  # type: ignore[no-untyped-def]
    try:
        return fn(request, metadata=meta, timeout=timeout)
    except grpc.RpcError:
        return None


def remove_tasks(side: Side, ns: str) -> None:
    meta = [("containerd-namespace", ns)]
    tasks = side.stubs["tasks"]
    listed = _quiet(tasks.List, tasks_pb2.ListTasksRequest(), meta)
    for task in listed.tasks if listed else ():
        _quiet(tasks.Kill, tasks_pb2.KillRequest(container_id=task.id, signal=9, all=True), meta)
        with contextlib.suppress(grpc.RpcError):
            tasks.Wait(tasks_pb2.WaitRequest(container_id=task.id), metadata=meta, timeout=10)
        _quiet(tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=task.id), meta)


def remove_namespace(side: Side, ns: str) -> None:
    meta = [("containerd-namespace", ns)]
    remove_tasks(side, ns)
    stubs = side.stubs
    listed = _quiet(stubs["containers"].List, containers_pb2.ListContainersRequest(), meta)
    for container in listed.containers if listed else ():
        _quiet(stubs["containers"].Delete, containers_pb2.DeleteContainerRequest(id=container.id), meta)
    listed = _quiet(stubs["images"].List, images_pb2.ListImagesRequest(), meta)
    for image in listed.images if listed else ():
        _quiet(stubs["images"].Delete, images_pb2.DeleteImageRequest(name=image.name), meta)
    listed = _quiet(stubs["leases"].List, leases_pb2.ListRequest(), meta)
    for lease in listed.leases if listed else ():
        _quiet(stubs["leases"].Delete, leases_pb2.DeleteRequest(id=lease.id), meta)
    for _ in range(10):  # children before parents
        try:
            infos = [info for reply in stubs["snapshots"].List(
                snapshots_pb2.ListSnapshotsRequest(snapshotter=SNAPSHOTTER), metadata=meta, timeout=20)
                for info in reply.info]
        except grpc.RpcError:
            break
        if not infos:
            break
        parents = {info.parent for info in infos}
        for info in infos:
            if info.name not in parents:
                _quiet(stubs["snapshots"].Remove,
                       snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=info.name), meta)
    try:
        statuses = _quiet(stubs["content"].ListStatuses, content_pb2.ListStatusesRequest(), meta)
        for status in statuses.statuses if statuses else ():
            _quiet(stubs["content"].Abort, content_pb2.AbortRequest(ref=status.ref), meta)
        infos = [info for reply in stubs["content"].List(
            content_pb2.ListContentRequest(), metadata=meta, timeout=20) for info in reply.info]
    except grpc.RpcError:
        infos = []
    for info in infos:
        _quiet(stubs["content"].Delete, content_pb2.DeleteContentRequest(digest=info.digest), meta)
    _quiet(stubs["namespaces"].Delete, namespace_pb2.DeleteNamespaceRequest(name=ns), meta)
