"""The pod start storm: 20 pods of 4 busybox containers started at once, ctrpyd against containerd's CRI.

The two CRI runtimes of :mod:`bench.cri_setup` (one pod network, the same pause and busybox
images). In each round, each daemon in turn (A B A B): :func:`tests.support.podstorm.start_pods`
starts the pods with :data:`CONCURRENCY` pod workers (each one makes its pod, then creates and
starts its containers in order, as a kubelet pod worker does), while a poller calls
ListPodSandbox, ListContainers and ListContainerStats every second, as the kubelet's PLEG and
stats provider do. Measured:

- the time from the first RunPodSandbox to every container listed as running;
- the CPU the daemon's cgroup spent meanwhile (daemon, shims, runc, CNI plugins: what the
  daemon starts inherits its cgroup; the containers' own processes are in the pods' cgroups);
- with the storm up: the daemon's RSS, and per pod the PSS of the daemon's shims and the pods'
  pause processes (ctrpyd's shim template included, shared out), as the CRI case counts them;
- the slowest answer of each polled call during the start (the kubelet's budget: 1 s);
- the teardown: every container stopped and removed, then every pod, with the same workers.
"""

from __future__ import annotations

import time
from functools import partial

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from tests.support.podstorm import POLLED, Poller, running, start_pods, tear_down
from tests.support.polling import wait_until

from .cases_cri import MIB, SETTLE, container_config, warm_up
from .cri_setup import CriPair, cri_pair
from .harness import WHICH, Daemons, Measurement, Settings, Target, order, progress
from .procs import smaps

CASE = "CRI pod start storm"
PODS = 20
PER_POD = 4
#: Pod workers at once: the kubelet syncs each pod in a worker of its own; 10 at a time keeps a
#: storm of 20 from being 20 threads of this harness on two cores.
CONCURRENCY = 10
RUNNING_TIMEOUT = 300.0


def _containers(which: str, pod: api.PodSandboxConfig) -> list[api.ContainerConfig]:
    return [container_config(which, f"c{n}") for n in range(PER_POD)]


def _found() -> dict[str, Measurement]:
    def m(metric: str, unit: str, target: bool = False) -> Measurement:
        return Measurement(CASE, metric, unit, target=Target(1.0) if target else None)

    found = {
        "up": m(f"{PODS} pods x {PER_POD} containers: time to all running", "s", True),
        "cpu": m("  CPU spent (daemon, shims, runc, CNI)", "s", True),
        "rss": m("  daemon RSS with the storm up", "MiB"),
        "pss": m("  shims + pause PSS per pod", "MiB", True),
        "down": m("  teardown (stop, remove every container and pod)", "s"),
    }
    for name in POLLED:
        found[name] = m(f"  slowest {name} during the start (polled every 1 s)", "ms")
    return found


def _memory(pair: CriPair, which: str, pod_ids: list[str]) -> tuple[float, float]:
    """(daemon RSS, shims + pause PSS per pod), in MiB."""
    shims = pair.shim_pids(which)
    pauses = [pid for pid in (pair.pause_pid(which, pod_id) for pod_id in pod_ids) if pid is not None]
    pss = sum(smaps(pid).get("Pss", 0) for pid in shims + pauses)
    template = pair.template_pid() if which == "ctrpyd" else None
    if template is not None:
        pss += smaps(template).get("Pss", 0)
    rss = smaps(pair.daemon_pid(which)).get("Rss", 0)
    return rss / MIB, pss / MIB / max(1, len(pod_ids))


def storm(pair: CriPair, which: str, number: int, found: dict[str, Measurement]) -> None:
    address = pair.address(which)
    configs = [pair.pod(which, f"storm-{number}-{i}") for i in range(PODS)]
    group = pair.cpu[which]
    poller = Poller(address).start()
    cpu_before = group.usage_ns()
    began = time.perf_counter()
    started = []
    try:
        started = start_pods(address, configs, partial(_containers, which), CONCURRENCY)
        failed = [p.error for p in started if p.error]
        if failed:
            raise RuntimeError(f"storm on {which}: {len(failed)} pods failed: {failed[:3]}")
        wait_until(lambda: running(address) == PODS * PER_POD, f"{which}: every storm container to run",
                   timeout=RUNNING_TIMEOUT, interval=0.1)
        up = time.perf_counter() - began
        cpu = (group.usage_ns() - cpu_before) / 1e9
        poller.stop()
        time.sleep(SETTLE)
        rss, pss = _memory(pair, which, [p.id for p in started])
    finally:
        poller.stop()
        down_began = time.perf_counter()
        problems = tear_down(address, started, CONCURRENCY)
        down = time.perf_counter() - down_began
    if problems or poller.errors:
        raise RuntimeError(f"storm on {which}: teardown {problems[:3]}, polled calls {poller.errors[:3]}")
    for key, value in (("up", up), ("cpu", cpu), ("rss", rss), ("pss", pss), ("down", down)):
        getattr(found[key], which).append(value)
    for name in POLLED:
        getattr(found[name], which).append(poller.slowest[name] * 1000)
    progress(f"storm round {number} {which}: all running in {up:.1f} s, CPU {cpu:.1f} s, {poller.summary()}")


def pod_storm(d: Daemons, s: Settings) -> list[Measurement]:
    """The storm case (see the module docstring), ``rounds`` storms per daemon."""
    found = _found()
    with cri_pair(d.work / "storm") as pair:
        for which in WHICH:
            warm_up(pair, which)
            if not pair.containers[which]:
                raise RuntimeError(f"{which} does not run containers: {pair.unsupported.get(which)}")
        for number in range(max(1, s.rounds)):
            for which in order(number):
                storm(pair, which, number, found)
    found["up"].note = (f"{CONCURRENCY} pod workers at once, each: RunPodSandbox, then CreateContainer + "
                        "StartContainer per container in order; ListPodSandbox, ListContainers and "
                        "ListContainerStats polled every second meanwhile")
    found["pss"].note = ("containerd and ctrpyd run one shim per pod (ctrpyd: [cri] shim_per_pod), and ctrpyd's "
                         "shim template's PSS is shared out over the pods")
    return list(found.values())
