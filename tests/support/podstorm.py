"""A pod start storm as a node agent makes one: many pods at once, a few containers each, while the
list and stats calls are polled the way the kubelet's PLEG and stats provider poll them.

Plain Python (no pytest): the CRI storm test and the bench's storm case both drive it, against
ctrpyd or containerd, through the project's CRI client.

- :class:`Poller` calls ListPodSandbox, ListContainers and ListContainerStats every ``interval``
  seconds on a thread of its own and keeps each call's slowest answer and every error.
- :func:`start_pods` runs the pods with a bounded number of pod workers (the kubelet runs one
  worker per pod; ``concurrency`` bounds them as its parallel start does), each making its pod
  and then creating and starting its containers in order, as a pod worker does.
- :func:`tear_down` stops and removes the containers, then the pods, with the same concurrency.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Any

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri.client import CriClient

#: What one call may take at most before a storm gives up on it (the kubelet's default is 2 min).
CALL_TIMEOUT = 120.0
POLLED = ("ListPodSandbox", "ListContainers", "ListContainerStats")

#: Builds the container configs of one pod from the pod's config.
Containers = Callable[[api.PodSandboxConfig], Sequence[api.ContainerConfig]]


@dataclass
class Poller:
    """The polled list calls (see the module docstring): slowest answer per call, errors."""

    address: str
    interval: float = 1.0
    slowest: dict[str, float] = field(default_factory=lambda: dict.fromkeys(POLLED, 0.0))
    calls: dict[str, int] = field(default_factory=lambda: dict.fromkeys(POLLED, 0))
    errors: list[str] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> Poller:
        self._thread = threading.Thread(target=self._run, name="storm-poller", daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        with CriClient(self.address, CALL_TIMEOUT) as client:
            requests: dict[str, tuple[Any, Any]] = {
                "ListPodSandbox": (client.runtime.ListPodSandbox, api.ListPodSandboxRequest()),
                "ListContainers": (client.runtime.ListContainers, api.ListContainersRequest()),
                "ListContainerStats": (client.runtime.ListContainerStats, api.ListContainerStatsRequest()),
            }
            while not self._stop.is_set():
                began = time.monotonic()
                for name, (method, request) in requests.items():
                    start = time.monotonic()
                    try:
                        client.call(method, request)
                    except errors.CtrpyError as exc:
                        self.errors.append(f"{name}: {exc}")
                    took = time.monotonic() - start
                    self.calls[name] += 1
                    self.slowest[name] = max(self.slowest[name], took)
                self._stop.wait(max(0.0, self.interval - (time.monotonic() - began)))

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=CALL_TIMEOUT + 10)

    def summary(self) -> str:
        return ", ".join(f"{name} max {self.slowest[name] * 1000:.0f} ms over {self.calls[name]} calls"
                         for name in POLLED)


@dataclass
class StartedPod:
    """A pod of the storm: its config, id and the ids of its containers (in start order)."""

    config: api.PodSandboxConfig
    id: str = ""
    containers: list[str] = field(default_factory=list)
    error: str = ""


def _start_one(address: str, pod: StartedPod, containers: Containers) -> StartedPod:
    with CriClient(address, CALL_TIMEOUT) as client:
        try:
            pod.id = client.run_pod_sandbox(pod.config)
            for config in containers(pod.config):
                container_id = client.create_container(pod.id, config, pod.config)
                pod.containers.append(container_id)
                client.start_container(container_id)
        except errors.CtrpyError as exc:
            pod.error = f"{pod.config.metadata.name}: {type(exc).__name__}: {exc}"
    return pod


def start_pods(address: str, configs: Sequence[api.PodSandboxConfig], containers: Containers,
               concurrency: int) -> list[StartedPod]:
    """Start every pod and its containers (see the module docstring); failures are recorded in
    each :class:`StartedPod`'s ``error``, never raised, so that the caller can clean up all."""
    pods = [StartedPod(config) for config in configs]
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        list(pool.map(lambda pod: _start_one(address, pod, containers), pods))
    return pods


def running(address: str) -> int:
    """How many containers the runtime lists as running."""
    with CriClient(address, CALL_TIMEOUT) as client:
        return sum(1 for c in client.list_containers() if c.state == api.CONTAINER_RUNNING)


def _tear_down_one(address: str, pod: StartedPod) -> list[str]:
    failed: list[str] = []
    with CriClient(address, CALL_TIMEOUT) as client:
        steps: list[tuple[str, Callable[[], None]]] = []
        for container_id in pod.containers:
            steps.append((f"StopContainer {container_id[:12]}",
                          lambda c=container_id: client.stop_container(c, 0)))  # type: ignore[misc]
        for container_id in pod.containers:
            steps.append((f"RemoveContainer {container_id[:12]}",
                          lambda c=container_id: client.remove_container(c)))  # type: ignore[misc]
        if pod.id:
            steps.append((f"StopPodSandbox {pod.id[:12]}", lambda: client.stop_pod_sandbox(pod.id)))
            steps.append((f"RemovePodSandbox {pod.id[:12]}", lambda: client.remove_pod_sandbox(pod.id)))
        for what, step in steps:
            try:
                step()
            except errors.CtrpyError as exc:
                failed.append(f"{what}: {type(exc).__name__}: {exc}")
    return failed


def tear_down(address: str, pods: Sequence[StartedPod], concurrency: int) -> list[str]:
    """Stop and remove every container, then its pod (pods in parallel); the failures."""
    with ThreadPoolExecutor(max(1, concurrency)) as pool:
        return [line for failed in pool.map(lambda pod: _tear_down_one(address, pod), pods) for line in failed]
