"""Metadata RPC rate: Containers.Create, Get, List and Delete with many containers.

A Python client (``ctrpy.client``, one connection) makes the calls one after another, as a
controller would: ``s.metadata`` creates, a Get of each, a few Lists of all of them, and a
Delete of each. Each container looks like one ctr would make: a small OCI spec, an image
name, a runtime, a snapshot key and two labels. Rates are calls per second.
"""

from __future__ import annotations

import json
import time

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.client import Client

from .harness import Daemons, Measurement, Settings, Target, order, progress

CASE = "metadata RPC rate"
LISTS = 5
SPEC = json.dumps({
    "ociVersion": "1.0.2-dev",
    "process": {"args": ["sleep", "3600"], "cwd": "/", "env": ["PATH=/usr/bin:/bin"]},
    "root": {"path": "rootfs"},
    "linux": {"namespaces": [{"type": "pid"}, {"type": "mount"}, {"type": "ipc"}, {"type": "uts"}]},
}).encode()


def _container(container_id: str) -> containers_pb2.Container:
    message = containers_pb2.Container(
        id=container_id,
        image="docker.io/library/busybox:latest",
        labels={"io.containerd.image.config.stop-signal": "SIGTERM", "app": "bench"},
        snapshotter="overlayfs",
        snapshot_key=container_id,
    )
    message.runtime.name = "io.containerd.runc.v2"
    message.spec.type_url = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
    message.spec.value = SPEC
    return message


def one_round(client: Client, ids: list[str]) -> dict[str, float]:
    """Create, Get, List and Delete ``ids`` through ``client``; calls per second of each."""
    n = len(ids)
    start = time.perf_counter()
    for cid in ids:
        client.call(client.containers.Create, containers_pb2.CreateContainerRequest(container=_container(cid)))
    created = time.perf_counter()
    for cid in ids:
        client.call(client.containers.Get, containers_pb2.GetContainerRequest(id=cid))
    got = time.perf_counter()
    for _ in range(LISTS):
        found = client.call(client.containers.List, containers_pb2.ListContainersRequest())
        if len(found.containers) != n:
            raise RuntimeError(f"List found {len(found.containers)} containers, not {n}")
    listed = time.perf_counter()
    for cid in ids:
        client.call(client.containers.Delete, containers_pb2.DeleteContainerRequest(id=cid))
    deleted = time.perf_counter()
    return {
        "Create": n / (created - start),
        "Get": n / (got - created),
        "List": LISTS / (listed - got),
        "Delete": n / (deleted - listed),
    }


def metadata(d: Daemons, s: Settings) -> list[Measurement]:
    n = s.metadata
    # Issue 13's targets: Get is held to 0.65, the rate of grpc.aio's per-call floor.
    floors = {"Get": 0.65}
    rates = {
        name: Measurement(CASE, f"Containers.{name}{suffix}", "calls/s",
                          target=Target(floors.get(name, 1.0), higher_is_better=True))
        for name, suffix in (("Create", ""), ("Get", ""), ("List", f" of {n:,}"), ("Delete", ""))
    }
    for number in range(s.rounds):
        for which in order(number):
            with d.client(which, f"{d.namespace}-meta") as client:
                measured = one_round(client, [d.container_id(which, "meta", number, i) for i in range(n)])
            for name, rate in measured.items():
                getattr(rates[name], which).append(rate)
            progress(f"metadata round {number} {which}: " + ", ".join(f"{k} {v:.0f}/s" for k, v in measured.items()))
    return list(rates.values())
