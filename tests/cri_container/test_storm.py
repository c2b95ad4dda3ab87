"""A pod start storm, as a kubelet makes one: 20 pods at once, 4 busybox containers each, on the
pod network, while ListPodSandbox, ListContainers and ListContainerStats are polled every second
(as the PLEG and the stats provider poll). No call fails; the slowest answer of each polled call is
printed (the 1 s figure is the bench's to measure; here only a liveness bound is asserted, CI being
a loaded 2-core machine); every container's and pod's events arrive in order; and after removal
nothing is left: netns pins, host-local addresses, mounts, shims, bundles, cgroups."""

from __future__ import annotations

import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from tests.crash.support import cgroup_dirs, processes_naming
from tests.cri_container.support import IMAGE, busybox_daemon
from tests.cri_container.test_events_stats import Subscription
from tests.cri_sandbox.support import PodDaemon
from tests.support.podstorm import Poller, running, start_pods, tear_down
from tests.support.polling import wait_until

PODS = 20
PER_POD = 4
#: Pod workers at once: all of them, as a kubelet with 20 new pods has 20 pod workers.
CONCURRENCY = PODS
#: A polled call slower than this is a hang, not slowness (the figure of interest is printed).
LIVENESS = 5.0
ORDER = [api.CONTAINER_CREATED_EVENT, api.CONTAINER_STARTED_EVENT, api.CONTAINER_STOPPED_EVENT,
         api.CONTAINER_DELETED_EVENT]


@pytest.fixture(scope="module")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodDaemon]:
    """The module's ctrpyd, with containerd's default writable-layer sampling period (the other
    CRI tests measure at every call) so that the stats are answered as on a node."""
    def configure(daemon: PodDaemon) -> None:
        config = daemon.base / "ctrpyd.toml"
        config.write_text(config.read_text().replace("stats_collect_period = 0", "stats_collect_period = 10"))

    with busybox_daemon(tmp_path_factory.mktemp("image"), configure) as daemon:
        yield daemon


def _containers(config: api.PodSandboxConfig) -> list[api.ContainerConfig]:
    return [api.ContainerConfig(metadata=api.ContainerMetadata(name=f"c{n}"), image=api.ImageSpec(image=IMAGE),
                                command=["sleep", "3600"], log_path=f"c{n}.log")
            for n in range(PER_POD)]


@pytest.mark.slow
def test_pod_start_storm(pods: PodDaemon, tmp_path: Path) -> None:
    configs = []
    for n in range(PODS):
        config = pods.pod(f"storm-{n}")
        config.log_directory = str(tmp_path / "logs" / f"storm-{n}")
        configs.append(config)
    address = str(pods.address)
    events = Subscription(pods)
    mounts_before = set(pods.leftover_mounts())
    poller = Poller(address).start()
    started = []
    try:
        began = time.monotonic()
        started = start_pods(address, configs, _containers, CONCURRENCY)
        assert [p.error for p in started if p.error] == []
        wait_until(lambda: running(address) == PODS * PER_POD, "every container to run", timeout=120)
        up = time.monotonic() - began
    finally:
        failed = tear_down(address, started, CONCURRENCY)
        poller.stop()
    print(f"\nstorm: {PODS} pods x {PER_POD} containers running in {up:.1f} s; {poller.summary()}")
    assert failed == []
    assert poller.errors == []
    assert all(n > 0 for n in poller.calls.values())
    assert max(poller.slowest.values()) < LIVENESS, poller.summary()

    ids = [p.id for p in started] + [c for p in started for c in p.containers]
    try:
        wait_until(lambda: all(len(events.of(i)) >= len(ORDER) for i in ids), "every deletion's event")
        wrong = {i: events.of(i) for i in ids if events.of(i) != ORDER}
        assert wrong == {}
    finally:
        events.close()

    # Nothing left of the pods: network, pins, mounts, shims and bundles, cgroups.
    assert pods.net.allocated() == [] and pods.netns_files() == []
    with pods.cri() as c:
        assert c.list_pod_sandbox() == [] and c.list_containers() == []
    bundles = pods.state / "tasks" / "k8s.io"
    wait_until(lambda: not processes_naming(str(bundles) + "/"), "every shim of the pods to exit")
    assert sorted(bundles.iterdir()) == [] if bundles.exists() else True
    assert set(pods.leftover_mounts()) - mounts_before == set()
    assert [d for top in cgroup_dirs(pods.cgroup_parent) for d in top.iterdir() if d.is_dir()] == []
