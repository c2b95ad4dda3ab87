"""GetContainerEvents in order (containers and sandboxes), a slow subscriber cut off, and the
container and pod stats."""

from __future__ import annotations

import asyncio
import threading
from pathlib import Path
from typing import Any

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager.cri.events import ContainerEvents
from tests.cri_container.support import Pod, make_pod
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until


class Subscription:
    """GetContainerEvents read on a thread into a list."""

    def __init__(self, daemon: PodDaemon) -> None:
        self.client = daemon.cri(timeout=None)  # type: ignore[arg-type]
        self.call: Any = self.client.runtime.GetContainerEvents(api.GetEventsRequest())
        self.seen: list[api.ContainerEventResponse] = []
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self) -> None:
        try:
            for event in self.call:
                self.seen.append(event)
        except Exception:
            pass

    def of(self, object_id: str) -> list[int]:
        return [e.container_event_type for e in self.seen if e.container_id == object_id]

    def close(self) -> None:
        self.call.cancel()
        self.thread.join(timeout=30)
        self.client.close()


def test_events_in_order(pods: PodDaemon, tmp_path: Path) -> None:
    events = Subscription(pods)
    try:
        # The server has the subscription once an event sent afterwards arrives.
        pod = make_pod(pods, tmp_path)
        wait_until(lambda: len(events.of(pod.id)) >= 2, "the sandbox's events")
        assert events.of(pod.id) == [api.CONTAINER_CREATED_EVENT, api.CONTAINER_STARTED_EVENT]
        container_id = pod.run("box", "sh", "-c", "exit 0")
        wait_until(lambda: len(events.of(container_id)) >= 3, "the container's exit")
        pod.remove(container_id)
        pod.made.remove(container_id)
        order = [api.CONTAINER_CREATED_EVENT, api.CONTAINER_STARTED_EVENT, api.CONTAINER_STOPPED_EVENT,
                 api.CONTAINER_DELETED_EVENT]
        wait_until(lambda: events.of(container_id) == order, "the container's events in order")
        stopped = next(e for e in events.seen
                       if e.container_id == container_id and e.container_event_type == api.CONTAINER_STOPPED_EVENT)
        assert stopped.pod_sandbox_status.id == pod.id
        assert [s.state for s in stopped.containers_statuses if s.id == container_id] == [api.CONTAINER_EXITED]
        pod.cleanup()
        wait_until(lambda: events.of(pod.id)[2:] == [api.CONTAINER_STOPPED_EVENT, api.CONTAINER_DELETED_EVENT],
                   "the sandbox's stop and removal")
    finally:
        events.close()


def test_a_slow_subscriber_is_cut_off() -> None:
    async def scenario() -> tuple[list[str], str]:
        hub = ContainerEvents(lambda c, s, t: api.ContainerEventResponse(container_id=c, container_event_type=t),
                              queue_size=3)
        stream = hub.subscribe()
        first = asyncio.ensure_future(stream.__anext__())
        await asyncio.sleep(0)  # subscribed
        for n in range(6):
            hub.publish(f"c{n}", "s", api.CONTAINER_CREATED_EVENT)
        got = [(await first).container_id]
        error = ""
        try:
            async for event in stream:
                got.append(event.container_id)
        except errors.ResourceExhausted as exc:
            error = exc.message
        assert hub.subscribers == 0
        return got, error

    got, error = asyncio.run(scenario())
    assert got == ["c0", "c1", "c2"] and "cut off" in error  # everything before the overflow


def test_container_and_pod_stats(pod: Pod) -> None:
    container_id = pod.run("box", "sh", "-c", "head -c 2000000 /dev/urandom > /blob; exec sleep 600")
    wait_until(lambda: pod.exec_sync(container_id, "sh", "-c", "test -s /blob && wc -c < /blob")
               .stdout.strip() == b"2000000", "the blob")
    with pod.cri() as c:
        stats = c.call(c.runtime.ContainerStats, api.ContainerStatsRequest(container_id=container_id)).stats
        listed = c.call(c.runtime.ListContainerStats, api.ListContainerStatsRequest(
            filter=api.ContainerStatsFilter(pod_sandbox_id=pod.id))).stats
        pod_stats = c.call(c.runtime.PodSandboxStats, api.PodSandboxStatsRequest(pod_sandbox_id=pod.id)).stats
        all_pods = c.call(c.runtime.ListPodSandboxStats, api.ListPodSandboxStatsRequest(
            filter=api.PodSandboxStatsFilter(id=pod.id))).stats
    assert stats.attributes.id == container_id and stats.attributes.metadata.name == "box"
    assert stats.cpu.usage_core_nano_seconds.value > 0
    assert 0 < stats.memory.working_set_bytes.value <= stats.memory.usage_bytes.value
    assert stats.writable_layer.used_bytes.value >= 2_000_000
    assert [s.attributes.id for s in listed] == [container_id]
    assert pod_stats.attributes.id == pod.id
    linux = pod_stats.linux
    assert linux.cpu.usage_core_nano_seconds.value >= stats.cpu.usage_core_nano_seconds.value
    assert linux.memory.usage_bytes.value > 0
    assert linux.network.default_interface.name == "eth0"
    assert [s.attributes.id for s in linux.containers] == [container_id]
    assert [s.attributes.id for s in all_pods] == [pod.id]


@pytest.mark.parametrize("bogus", ["0123456789ab"])
def test_stats_of_unknown_container(pod: Pod, bogus: str) -> None:
    with pod.cri() as c, pytest.raises(errors.NotFound):
        c.call(c.runtime.ContainerStats, api.ContainerStatsRequest(container_id=bogus))
