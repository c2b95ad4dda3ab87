"""GetContainerEvents and a subscriber that does not read: its backlog is bounded (in events and in
bytes), ctrpyd's memory does not grow with the events it misses, and its stream ends with
RESOURCE_EXHAUSTED once it reads what was queued before the overflow."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

import grpc
import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager.cri.events import QUEUE_BYTES, ContainerEvents
from tests.cri_container.support import make_pod
from tests.cri_sandbox.support import PodDaemon

#: Containers in the pod (each event carries all their statuses) and the size of each one's
#: annotation: an event is then about NOTE * MEMBERS bytes.
MEMBERS = 20
NOTE = 32 * 1024
#: Create + remove pairs made while the subscriber does not read (two events each): unbounded,
#: ctrpyd would hold PAIRS * 2 * NOTE * MEMBERS = 128 MiB of them.
PAIRS = 100
#: What ctrpyd's RSS may grow meanwhile: the queue's byte bound, gRPC's window, slack.
GROWTH = 48 << 20


def test_the_byte_bound_cuts_off_before_the_count() -> None:
    async def scenario() -> tuple[list[str], str]:
        def big(c: str, s: str, t: int) -> api.ContainerEventResponse:
            return api.ContainerEventResponse(container_id=c + "x" * 1000, container_event_type=t)  # type: ignore[arg-type]

        hub = ContainerEvents(big, queue_size=100, queue_bytes=3500)
        stream = hub.subscribe()
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)
        for n in range(10):
            hub.publish(f"c{n}", "s", api.CONTAINER_CREATED_EVENT)
        got = [(await first).container_id[:2]]
        error = ""
        try:
            async for event in stream:
                got.append(event.container_id[:2])
        except errors.ResourceExhausted as exc:
            error = exc.message
        return got, error

    got, error = asyncio.run(scenario())
    assert got == ["c0", "c1", "c2"] and "cut off" in error  # three of ~1 kB fit in 3500 bytes


def _rss(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) * 1024
    raise AssertionError("no VmRSS")


def _config(name: str) -> api.ContainerConfig:
    return api.ContainerConfig(metadata=api.ContainerMetadata(name=name),
                               image=api.ImageSpec(image="docker.io/library/busybox:cri-container"),
                               command=["true"], annotations={"note": "n" * NOTE})


def test_a_subscriber_that_never_reads_costs_bounded_memory(pods: PodDaemon, tmp_path: Path) -> None:
    assert PAIRS * 2 * NOTE * MEMBERS > 2 * (GROWTH + QUEUE_BYTES)
    pod = make_pod(pods, tmp_path)
    assert pods.process is not None
    client = pods.cri(timeout=None)  # type: ignore[arg-type]
    stream: Any = None
    try:
        for n in range(MEMBERS):
            pod.create(_config(f"m{n}"))
        stream = client.runtime.GetContainerEvents(api.GetEventsRequest())
        probe = pod.create(_config("probe"))  # the subscription is in place once its event arrives
        assert next(stream).container_id == probe
        before = _rss(pods.process.pid)
        peak = before
        with pod.cri() as c:
            for n in range(PAIRS):
                made = c.create_container(pod.id, _config(f"churn{n}"), pod.config)
                c.remove_container(made)
                peak = max(peak, _rss(pods.process.pid))
        print(f"\nctrpyd RSS {before >> 20} MiB -> peak {peak >> 20} MiB over {2 * PAIRS} missed events "
              f"of ~{NOTE * MEMBERS >> 10} KiB each")
        assert peak - before < GROWTH
        received = 0
        with pytest.raises(errors.ResourceExhausted):
            try:
                for _ in stream:
                    received += 1
            except grpc.RpcError as exc:
                raise errors.from_grpc(exc) from None
        assert received < 2 * PAIRS
    finally:
        if stream is not None:
            stream.cancel()
        client.close()
        pod.cleanup()
