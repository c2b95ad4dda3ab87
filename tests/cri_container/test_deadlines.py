"""CRI calls whose client gives up first (the kubelet's deadline passes), and its retries.

runc runs through the fault wrapper (tests/faults/runc-fault) with ``create`` and ``start`` each
waiting on a gate file: the gates are open (the files exist) unless a test closes one to make
that step hang until it opens it again. CreateContainer, which runs no runc, is slowed by a
stall point (``CTRPY_STALLS``) instead. A retry with the same request gets the sandbox or
container that the abandoned call was making (while it is being made, or once it is made), never
"name is reserved"; nothing is made twice or leaked."""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager import failpoints
from tests.crash.support import RUNC_FAULT
from tests.cri_container.support import IMAGE, import_busybox
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until

#: CreateContainer's stall; the clients' deadline is shorter.
CREATE_STALL = 3.0
DEADLINE = 1.0


class Gated(PodDaemon):
    """A pod daemon whose runc ``create`` and ``start`` wait while their gate file is missing."""

    def __init__(self) -> None:
        super().__init__()
        self.gates = {step: self.base / f"gate-{step}" for step in ("create", "start")}
        for gate in self.gates.values():
            gate.touch()
        config = self.base / "ctrpyd.toml"
        config.write_text(config.read_text() + f'\n[runtimes."io.containerd.runc.v2"]\nbinary = "{RUNC_FAULT}"\n')
        self.env = {
            "CTRPY_RUNC_FAULTS": ",".join(f"{step}:until={gate}" for step, gate in self.gates.items()),
            failpoints.STALLS_ENV: f"{failpoints.CRI_CONTAINER_CREATE_AFTER_SNAPSHOT}={CREATE_STALL}",
        }

    def close(self, step: str) -> None:
        self.gates[step].unlink()

    def open(self, step: str) -> None:
        self.gates[step].touch()


@pytest.fixture(scope="module")
def gated(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Gated]:
    daemon = Gated()
    try:
        daemon.start()
        import_busybox(daemon, tmp_path_factory.mktemp("image"))
        yield daemon
    finally:
        for step in daemon.gates:
            daemon.open(step)
        daemon.reap()


def _container(name: str) -> api.ContainerConfig:
    return api.ContainerConfig(metadata=api.ContainerMetadata(name=name), image=api.ImageSpec(image=IMAGE),
                               command=["sleep", "600"])


def _remove_pod(daemon: PodDaemon, sandbox_id: str) -> None:
    daemon.stop_pod(sandbox_id)
    daemon.remove_pod(sandbox_id)


def test_run_pod_sandbox_retried_after_its_deadline_gets_the_pod(gated: Gated) -> None:
    config = gated.pod("late", uid="uid-late")
    gated.close("create")  # the pause container's runc create hangs
    try:
        with pytest.raises(errors.DeadlineExceeded):
            gated.run(config, timeout=DEADLINE)
        with pytest.raises(errors.DeadlineExceeded):  # a retry while it is still being made waits
            gated.run(config, timeout=DEADLINE)
    finally:
        gated.open("create")
    sandbox_id = gated.run(config)
    try:
        assert gated.run(config) == sandbox_id  # and once it is made
        assert gated.status(sandbox_id).status.state == api.SANDBOX_READY
        assert [p.id for p in gated.list() if p.metadata.name == "late"] == [sandbox_id]
        assert len(gated.netns_files()) == 1 and len(gated.net.allocated()) == 1
    finally:
        _remove_pod(gated, sandbox_id)
    assert gated.netns_files() == [] and gated.net.allocated() == []


def test_create_container_retried_after_its_deadline_gets_the_container(gated: Gated) -> None:
    pod = gated.pod("creates")
    sandbox_id = gated.run(pod)
    try:
        with gated.cri() as c:
            request = api.CreateContainerRequest(pod_sandbox_id=sandbox_id, config=_container("slow"),
                                                 sandbox_config=pod)
            with pytest.raises(errors.DeadlineExceeded):
                c.call(c.runtime.CreateContainer, request, timeout=DEADLINE)
            # The retry while the first creation runs waits for it and gets its container.
            first = c.call(c.runtime.CreateContainer, request).container_id
            assert [x.id for x in c.list_containers() if x.metadata.name == "slow"] == [first]
            # The creation's caller got its answer: the name is taken now.
            with pytest.raises(errors.AlreadyExists):
                c.call(c.runtime.CreateContainer, request)

            # A creation that ends after its caller left is kept for the retry that comes later.
            request.config.metadata.name = "later"
            with pytest.raises(errors.DeadlineExceeded):
                c.call(c.runtime.CreateContainer, request, timeout=DEADLINE)
            made = wait_until(lambda: [x.id for x in c.list_containers() if x.metadata.name == "later"],
                              "the abandoned creation to end")
            assert c.call(c.runtime.CreateContainer, request).container_id == made[0]
            c.start_container(made[0])
            assert c.container_status(made[0]).status.state == api.CONTAINER_RUNNING
    finally:
        _remove_pod(gated, sandbox_id)


def test_start_container_whose_caller_gave_up(gated: Gated) -> None:
    pod = gated.pod("starts")
    sandbox_id = gated.run(pod)
    try:
        with gated.cri() as c:
            container_id = c.create_container(sandbox_id, _container("box"), pod)
            gated.close("start")
            try:
                began = time.monotonic()
                with pytest.raises(errors.DeadlineExceeded):
                    c.call(c.runtime.StartContainer, api.StartContainerRequest(container_id=container_id),
                           timeout=DEADLINE)
                assert time.monotonic() - began < 10  # the deadline, not the hang, ended the call
            finally:
                gated.open("start")
            # The start goes on without its caller: the container runs, as the kubelet's
            # next list shows it.
            wait_until(lambda: c.container_status(container_id).status.state == api.CONTAINER_RUNNING,
                       "the abandoned start to finish")
            with pytest.raises(errors.FailedPrecondition):
                c.start_container(container_id)
            c.stop_container(container_id)
            c.remove_container(container_id)
    finally:
        _remove_pod(gated, sandbox_id)
    assert gated.netns_files() == [] and gated.net.allocated() == []
