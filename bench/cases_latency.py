"""Run latency: one short-lived container, start to finish, one at a time.

Two clients, each against both daemons:

- the stock ``ctr run --rm IMAGE ID true`` (a new ctr process each time, as people use it);
- the same lifecycle from Python straight to the API over one connection (``ctrpy.client``):
  Leases.Create, Images.Get, Snapshots.Prepare, Containers.Create, Tasks.Create, Tasks.Start
  with a Wait already in flight, Tasks.Delete, Snapshots.Remove, Containers.Delete,
  Leases.Delete, each RPC timed. Like ctr, everything is made under a lease, so that
  containerd's garbage collector leaves the new snapshot alone.

Both use the same OCI spec, the one ctr generates for the image (taken from a container ctr
created), with no stdio.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from typing import TypeVar

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from ctrpy.client import EXPIRE_LABEL, Client

from .harness import WHICH, Daemons, Measurement, Settings, Target, order, progress

T = TypeVar("T")

CASE_CTR = "run latency (ctr)"
CASE_API = "run latency (API)"
SNAPSHOTTER = "overlayfs"
STEPS = (
    "Leases.Create",
    "Images.Get",
    "Snapshots.Prepare",
    "Containers.Create",
    "Tasks.Create",
    "Tasks.Start + Wait",
    "Tasks.Delete",
    "Snapshots.Remove",
    "Containers.Delete",
    "Leases.Delete",
)
# CPU read this long after ctr returned, so that the shim's own exit is counted too.
SETTLE = 0.1


def ctr_run(d: Daemons, s: Settings) -> list[Measurement]:
    """``ctr run --rm`` latency and its CPU cost (daemon + shim + runc), ``s.runs`` each."""
    image = d.busybox()
    for which in WHICH:  # warm-up: first-use costs in either daemon are not what we compare
        d.ctr(which, "run", "--rm", *d.run_flags(which), image, d.container_id(which, "warm"), "true")
    wall = Measurement(CASE_CTR, "ctr run --rm busybox true", "ms", target=Target(1.10))  # issue 13
    cpu = Measurement(CASE_CTR, "CPU per ctr run --rm (daemon + shim + runc)", "ms")
    for number in range(s.runs):
        for which in order(number):
            args = ("run", "--rm", *d.run_flags(which), image, d.container_id(which, "run", number), "true")
            before = d.cpu[which].usage_ns()
            start = time.perf_counter()
            d.ctr(which, *args)
            getattr(wall, which).append((time.perf_counter() - start) * 1000)
            time.sleep(SETTLE)
            getattr(cpu, which).append((d.cpu[which].usage_ns() - before) / 1e6)
    return [wall, cpu]


def _spec_template(d: Daemons, image: str) -> containers_pb2.Container:
    """The container record ctr makes for ``ctr containers create IMAGE ID true``."""
    container = d.container_id("containerd", "spec-source")
    d.ctr("containerd", "containers", "create", image, container, "true")
    try:
        with d.client("containerd") as client:
            found = client.call(client.containers.Get, containers_pb2.GetContainerRequest(id=container))
    finally:
        d.ctr("containerd", "containers", "rm", container)
    return found.container


def _container(template: containers_pb2.Container, namespace: str, container_id: str) -> containers_pb2.Container:
    spec = json.loads(template.spec.value)
    spec["linux"]["cgroupsPath"] = f"/{namespace}/{container_id}"
    message = containers_pb2.Container()
    message.CopyFrom(template)
    message.ClearField("created_at")
    message.ClearField("updated_at")
    message.id = container_id
    message.snapshot_key = container_id
    message.spec.value = json.dumps(spec).encode()
    return message


def lifecycle(client: Client, template: containers_pb2.Container, namespace: str, image: str, chain: str,
              container_id: str) -> dict[str, float]:
    """One container's life through the API; returns milliseconds per step and in total."""
    times: dict[str, float] = {}

    def step(name: str, action: Callable[[], T]) -> T:
        start = time.perf_counter()
        result = action()
        times[name] = (time.perf_counter() - start) * 1000
        return result

    lease = f"bench-{container_id}"
    step("Leases.Create", lambda: client.call(client.leases.Create, leases_pb2.CreateRequest(
        id=lease, labels={EXPIRE_LABEL: "2100-01-01T00:00:00Z"})))
    with client.using_lease(lease):
        step("Images.Get", lambda: client.call(client.images.Get, images_pb2.GetImageRequest(name=image)))
        prepared = step("Snapshots.Prepare", lambda: client.call(
            client.snapshots.Prepare,
            snapshots_pb2.PrepareSnapshotRequest(snapshotter=SNAPSHOTTER, key=container_id, parent=chain)))
        container = _container(template, namespace, container_id)
        step("Containers.Create", lambda: client.call(
            client.containers.Create, containers_pb2.CreateContainerRequest(container=container)))
        step("Tasks.Create", lambda: client.call(
            client.tasks.Create, tasks_pb2.CreateTaskRequest(container_id=container_id, rootfs=prepared.mounts)))

        def start_and_wait() -> None:
            waiting = client.tasks.Wait.future(
                tasks_pb2.WaitRequest(container_id=container_id), metadata=client.metadata, timeout=60)
            client.call(client.tasks.Start, tasks_pb2.StartRequest(container_id=container_id))
            waiting.result()

        step("Tasks.Start + Wait", start_and_wait)
        step("Tasks.Delete", lambda: client.call(
            client.tasks.Delete, tasks_pb2.DeleteTaskRequest(container_id=container_id)))
        step("Snapshots.Remove", lambda: client.call(
            client.snapshots.Remove, snapshots_pb2.RemoveSnapshotRequest(snapshotter=SNAPSHOTTER, key=container_id)))
        step("Containers.Delete", lambda: client.call(
            client.containers.Delete, containers_pb2.DeleteContainerRequest(id=container_id)))
    step("Leases.Delete", lambda: client.call(client.leases.Delete, leases_pb2.DeleteRequest(id=lease)))
    times["total"] = sum(times.values())
    return times


def api_run(d: Daemons, s: Settings) -> list[Measurement]:
    """The container lifecycle from Python, per RPC, ``s.runs`` each."""
    image = d.busybox()
    template = _spec_template(d, image)
    total = Measurement(CASE_API, "whole lifecycle (sum of the RPCs)", "ms", target=Target(1.0))
    steps = {name: Measurement(CASE_API, name, "ms") for name in STEPS}
    clients = {which: d.client(which) for which in WHICH}
    try:
        for which in WHICH:
            lifecycle(clients[which], template, d.namespace, image, d.busybox_chain, d.container_id(which, "api-warm"))
        for number in range(s.runs):
            for which in order(number):
                container = d.container_id(which, "api", number)
                times = lifecycle(clients[which], template, d.namespace, image, d.busybox_chain, container)
                getattr(total, which).append(times["total"])
                for name in STEPS:
                    getattr(steps[name], which).append(times[name])
    finally:
        for client in clients.values():
            client.close()
    progress("api lifecycle done")
    return [total, *steps.values()]
