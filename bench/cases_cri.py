"""The CRI case: pods and containers through ``runtime.v1``, ctrpyd against containerd's CRI plugin.

Both runtimes are started for this case (:mod:`bench.cri_setup`: the same CNI conflist, pause
image and busybox) and driven with the project's CRI client, as the kubelet drives them. In each
round, each daemon in turn (A B A B, as the harness alternates):

- pod lifecycles one after another: RunPodSandbox (pause container, netns, CNI ADD), then
  StopPodSandbox (CNI DEL, pause killed), then RemovePodSandbox, each call timed, and the CPU the
  daemon's cgroup (daemon, shims, CNI plugins; not the pods) spent per lifecycle;
- when the daemon serves containers: a pod of two busybox ``sleep`` containers from nothing to
  running (RunPodSandbox, then CreateContainer + StartContainer twice), and its teardown;
- memory with ``pods`` pods running, each without containers and (where served) with two: the
  PSS and Private_Dirty of the daemon's shims plus the pods' pause processes, per pod.
  containerd runs one shim per pod, and so does ctrpyd (``[cri] shim_per_pod``, the default), and
  its shim template's memory is shared out over the pods. The containers' own processes are the
  workload and are not counted.

A daemon that answers CreateContainer with an error (ctrpyd while its containers are being
written says UNIMPLEMENTED) gets only the pod measurements, and a note says why; the run goes on.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import partial
from typing import TypeVar

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri.client import CriClient

from .cri_setup import CriPair, cri_pair
from .harness import BUSYBOX, WHICH, Daemons, Measurement, Settings, Target, order, progress
from .procs import smaps

CASE = "CRI"
MIB = 1024.0
#: Pods running at once in the memory measurement (at most ``--containers``).
MEMORY_PODS = 10
SETTLE = 1.0  # seconds before memory is read, so that start-up garbage is collected
T = TypeVar("T")


def clock(action: Callable[[], T]) -> tuple[T, float]:
    """``action()`` and the seconds it took."""
    start = time.perf_counter()
    result = action()
    return result, time.perf_counter() - start


#: The masked and read-only paths the kubelet sends for every unprivileged container (its
#: defaults for the Default proc mount). Sent to both: containerd 1.6 masks nothing it is not
#: told to, ctrpyd masks these same defaults when told nothing; each is a mount runc makes.
KUBELET_MASKED_PATHS = ("/proc/asound", "/proc/acpi", "/proc/kcore", "/proc/keys", "/proc/latency_stats",
                        "/proc/timer_list", "/proc/timer_stats", "/proc/sched_debug", "/proc/scsi", "/sys/firmware",
                        "/sys/devices/virtual/powercap")
KUBELET_READONLY_PATHS = ("/proc/bus", "/proc/fs", "/proc/irq", "/proc/sys", "/proc/sysrq-trigger")


def container_config(which: str, name: str) -> api.ContainerConfig:
    """A busybox ``sleep 3600`` as the kubelet would create it (log file in the pod's directory,
    the kubelet's masked and read-only paths)."""
    del which  # the same for both daemons
    return api.ContainerConfig(
        metadata=api.ContainerMetadata(name=name, attempt=0),
        image=api.ImageSpec(image=BUSYBOX), command=["sleep", "3600"], log_path=f"{name}.log",
        linux=api.LinuxContainerConfig(security_context=api.LinuxContainerSecurityContext(
            namespace_options=api.NamespaceOption(network=api.POD, pid=api.CONTAINER, ipc=api.POD),
            masked_paths=KUBELET_MASKED_PATHS, readonly_paths=KUBELET_READONLY_PATHS)),
    )  # fmt: skip


def start_container(client: CriClient, pod_id: str, pod: api.PodSandboxConfig, config: api.ContainerConfig
                    ) -> tuple[float, float]:
    """CreateContainer then StartContainer; the seconds each took."""
    request = api.CreateContainerRequest(pod_sandbox_id=pod_id, config=config, sandbox_config=pod)
    response, create = clock(lambda: client.call(client.runtime.CreateContainer, request))
    start_request = api.StartContainerRequest(container_id=response.container_id)
    _, start = clock(lambda: client.call(client.runtime.StartContainer, start_request))
    return create, start


def remove_pod(client: CriClient, pod_id: str) -> None:
    client.stop_pod_sandbox(pod_id)
    client.remove_pod_sandbox(pod_id)


@dataclass
class Found:
    """What the case measures."""

    run: Measurement
    stop: Measurement
    remove: Measurement
    cpu: Measurement
    create: Measurement
    start: Measurement
    create_start: Measurement
    pod_of_two: Measurement
    teardown_two: Measurement
    pss: Measurement
    private: Measurement
    pause: Measurement
    pss_two: Measurement
    private_two: Measurement
    shims: Measurement
    shims_two: Measurement
    daemon_rss: Measurement
    template: Measurement

    @classmethod
    def make(cls, pods: int) -> Found:
        def m(metric: str, unit: str, target: bool = False) -> Measurement:
            return Measurement(CASE, metric, unit, target=Target(1.0) if target else None)

        return cls(
            run=m("RunPodSandbox (pause, netns, CNI ADD)", "ms", True),
            stop=m("StopPodSandbox (CNI DEL, pause killed)", "ms"),
            remove=m("RemovePodSandbox", "ms"),
            cpu=m("CPU per pod lifecycle (run, stop, remove)", "ms"),
            create=m("CreateContainer (busybox sleep)", "ms"),
            start=m("StartContainer", "ms"),
            create_start=m("CreateContainer + StartContainer", "ms", True),
            pod_of_two=m("pod of two containers to running (RunPodSandbox, 2 x Create+Start)", "ms", True),
            teardown_two=m("  its teardown (StopPodSandbox + RemovePodSandbox)", "ms"),
            # Memory per pod is reported, not held to a target (the targets are the latencies).
            pss=m(f"shims + pause PSS per pod ({pods} pods, no containers)", "MiB"),
            private=m(f"shims + pause Private_Dirty per pod ({pods} pods, no containers)", "MiB"),
            pss_two=m(f"shims + pause PSS per pod ({pods} pods of two containers)", "MiB"),
            private_two=m(f"shims + pause Private_Dirty per pod ({pods} pods of two containers)", "MiB"),
            pause=m("  of which: the pause process's PSS", "MiB"),
            shims=m("shims per pod (no containers)", "shims"),
            shims_two=m("shims per pod (two containers)", "shims"),
            daemon_rss=m(f"daemon RSS with {pods} pods running", "MiB"),
            template=m("ctrpyd's shim template PSS (shared out in the per-pod figures)", "MiB"),
        )

    def measurements(self) -> list[Measurement]:
        return list(vars(self).values())


def warm_up(pair: CriPair, which: str) -> None:
    """One untimed pod with a container: ctrpyd imports its pause image at the first pod, both
    load the plugins' binaries into the page cache. Records whether containers are served."""
    with pair.cri(which) as client:
        pod = pair.pod(which, "warm-up")
        pod_id = client.run_pod_sandbox(pod)
        try:
            start_container(client, pod_id, pod, container_config(which, "warm"))
            pair.containers[which] = True
        except errors.CtrpyError as exc:
            if which == "containerd":
                raise
            pair.containers[which] = False
            kind = "UNIMPLEMENTED" if isinstance(exc, errors.NotImplemented) else type(exc).__name__
            pair.unsupported[which] = f"{kind}: {str(exc)[:160]}"
            progress(f"cri: {which} does not run containers ({pair.unsupported[which]}): pods only")
        finally:
            remove_pod(client, pod_id)


def pod_lifecycles(pair: CriPair, which: str, number: int, count: int, found: Found) -> None:
    group = pair.cpu[which]
    with pair.cri(which) as client:
        before = group.usage_ns()
        for i in range(count):
            pod = pair.pod(which, f"life-{number}-{i}")
            pod_id, seconds = clock(partial(client.run_pod_sandbox, pod))
            getattr(found.run, which).append(seconds * 1000)
            _, seconds = clock(partial(client.stop_pod_sandbox, pod_id))
            getattr(found.stop, which).append(seconds * 1000)
            _, seconds = clock(partial(client.remove_pod_sandbox, pod_id))
            getattr(found.remove, which).append(seconds * 1000)
        getattr(found.cpu, which).append((group.usage_ns() - before) / 1e6 / count)


def pods_of_two(pair: CriPair, which: str, number: int, count: int, found: Found) -> None:
    with pair.cri(which) as client:
        for i in range(count):
            began = time.perf_counter()
            pod = pair.pod(which, f"two-{number}-{i}")
            pod_id = client.run_pod_sandbox(pod)
            for name in ("a", "b"):
                create, start = start_container(client, pod_id, pod, container_config(which, name))
                getattr(found.create, which).append(create * 1000)
                getattr(found.start, which).append(start * 1000)
                getattr(found.create_start, which).append((create + start) * 1000)
            getattr(found.pod_of_two, which).append((time.perf_counter() - began) * 1000)
            _, seconds = clock(partial(remove_pod, client, pod_id))
            getattr(found.teardown_two, which).append(seconds * 1000)


def memory(pair: CriPair, which: str, number: int, pods: int, containers: int, found: Found) -> None:
    """Start ``pods`` pods of ``containers`` containers, read the memory, remove them."""
    with pair.cri(which) as client:
        started: list[str] = []
        try:
            for i in range(pods):
                pod = pair.pod(which, f"mem-{containers}-{number}-{i}")
                pod_id = client.run_pod_sandbox(pod)
                started.append(pod_id)
                for c in range(containers):
                    start_container(client, pod_id, pod, container_config(which, f"c{c}"))
            time.sleep(SETTLE)
            shims = pair.shim_pids(which)
            outside = [pid for pid in shims if not pair.cpu[which].holds(pid)]
            if outside:  # their CPU is not in the per-lifecycle figure: say so
                found.cpu.note = f"{which}: {len(outside)} of {len(shims)} shims were outside the daemon's CPU cgroup"
            pauses = [pid for pid in (pair.pause_pid(which, pod_id) for pod_id in started) if pid is not None]
            if len(pauses) != pods:
                progress(f"cri: {which}: found {len(pauses)} pause processes for {pods} pods")
            figures = [f for f in map(smaps, shims + pauses) if f]
            pss = sum(f.get("Pss", 0) for f in figures)
            if containers == 0:
                pause_pss = sum(smaps(pid).get("Pss", 0) for pid in pauses)
                getattr(found.pause, which).append(pause_pss / MIB / max(1, len(pauses)))
            private = sum(f.get("Private_Dirty", 0) for f in figures)
            template = pair.template_pid() if which == "ctrpyd" else None
            if template is not None:
                shared = smaps(template)
                pss += shared.get("Pss", 0)
                private += shared.get("Private_Dirty", 0)
                if containers == 0:
                    found.template.ctrpyd.append(shared.get("Pss", 0) / MIB)
            pss_m, private_m, shims_m = ((found.pss, found.private, found.shims) if containers == 0 else
                                         (found.pss_two, found.private_two, found.shims_two))
            getattr(pss_m, which).append(pss / MIB / pods)
            getattr(private_m, which).append(private / MIB / pods)
            getattr(shims_m, which).append(len(shims) / pods)
            if containers == 0:
                getattr(found.daemon_rss, which).append(smaps(pair.daemon_pid(which)).get("Rss", 0) / MIB)
        finally:
            for pod_id in started:
                remove_pod(client, pod_id)


def containers(pair: CriPair, which: str, measure: Callable[[], None]) -> None:
    """Run a measurement that needs containers; when ctrpyd fails it (its containers are new), say
    so, stop asking it for containers and go on (containerd's failures end the run)."""
    try:
        measure()
    except errors.CtrpyError as exc:
        if which == "containerd":
            raise
        pair.containers[which] = False
        pair.unsupported[which] = f"{type(exc).__name__}: {str(exc)[:160]}"
        progress(f"cri: {which} failed with containers ({pair.unsupported[which]}): pods only from now on")


def cri(d: Daemons, s: Settings) -> list[Measurement]:
    """The CRI case (see the module docstring); ``runs`` pod lifecycles per daemon over ``rounds``."""
    rounds = max(1, s.rounds)
    per_round = max(2, s.runs // rounds)
    pods = max(2, min(MEMORY_PODS, s.containers))
    found = Found.make(pods)
    with cri_pair(d.work / "cri") as pair:
        for which in WHICH:
            warm_up(pair, which)
        for number in range(rounds):
            for which in order(number):
                pod_lifecycles(pair, which, number, per_round, found)
                if pair.containers[which]:
                    containers(pair, which, partial(pods_of_two, pair, which, number, max(2, per_round // 2), found))
                memory(pair, which, number, pods, 0, found)
                if pair.containers[which]:
                    containers(pair, which, partial(memory, pair, which, number, pods, 2, found))
                two = getattr(found.pod_of_two, which)
                progress(f"cri round {number} {which}: RunPodSandbox {getattr(found.run, which)[-1]:.0f} ms"
                         + (f", pod of two {two[-1]:.0f} ms" if two else ""))
    found.pss.note = ("per pod: PSS of the daemon's shims and the pods' pause processes over the pods; "
                      "containerd and ctrpyd run one shim per pod (ctrpyd: [cri] shim_per_pod), "
                      "and ctrpyd's figure includes its shim template's PSS, shared out; PSS shares pages "
                      "with other processes of the same binaries on the machine (other ctrpyd and shims)")
    for which, reason in pair.unsupported.items():
        found.create.note = (f"{which} answered CreateContainer with {reason}: its container and "
                             "two-container figures are missing, only its pods were measured")
    return found.measurements()
