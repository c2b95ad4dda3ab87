"""Differential state machine over tasks: Create/Start/Get/List/Kill/Wait/Delete/Exec/ListPids
on a small busybox image imported into both daemons (``ctr images import``).

Few rules and few steps: every task is a real runc container. Each daemon gets its own
cgroup path (``Split``: the same cgroup for two runtimes would clash), so container specs are
left out of the comparison. A kill is followed by a Wait on both daemons, so that what comes
next does not depend on how fast each noticed the exit.
"""

from __future__ import annotations

import json
import secrets
import time
from collections.abc import Iterator
from typing import Any

import pytest
from google.protobuf import any_pb2
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, rule, run_state_machine_as_test

from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as ct
from ctrpy.api.containerd.services.leases.v1 import leases_pb2 as ls
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as sn
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2 as tk
from ctrpy.api.containerd.types import mount_pb2
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.differential.cleanup import remove_tasks
from tests.differential.machine import DiffMachine
from tests.differential.pair import Pair, Split
from tests.hostile.specs import RUNTIME, runtime_spec

NAMESPACE = "difftasks"
PROCESS_URL = "types.containerd.io/opencontainers/runtime-spec/1/Process"


@pytest.fixture(scope="module")
def image(pair: Pair, tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """busybox imported into both daemons' task namespace; the top snapshot's name."""
    archive = tmp_path_factory.mktemp("busybox") / "busybox.tar"
    info = write_oci_layout_tar(busybox_image(), archive)
    for run in (lambda *a: pair.ctrd.ctr(*a, namespace=NAMESPACE),  # type: ignore[attr-defined]
                lambda *a: pair.daemon.ctr(*a, namespace=NAMESPACE)):  # type: ignore[attr-defined]
        result = run("images", "import", str(archive))
        assert result.returncode == 0, result.stderr
    yield info.chain_ids[-1]


def _mounts(reply: Any) -> list[mount_pb2.Mount]:
    return [mount_pb2.Mount(type=m.get("type", ""), source=m.get("source", ""), options=m.get("options", []))
            for m in (reply or {}).get("mounts", [])]


def _process(args: list[str]) -> any_pb2.Any:
    spec = runtime_spec(args, "")["process"]
    return any_pb2.Any(type_url=PROCESS_URL, value=json.dumps(spec).encode())


def _no_spec(reply: Any) -> Any:
    """Container replies without their spec (each daemon's holds its own cgroup path)."""
    if isinstance(reply, dict) and "container" in reply:
        return {**reply, "container": {k: v for k, v in reply["container"].items() if k != "spec"}}
    return reply


class TaskMachine(DiffMachine):
    parent: str = ""
    ids = ("t1", "t2")

    def __init__(self) -> None:
        super().__init__()
        self.tag = secrets.token_hex(3)
        self.rootfs: dict[str, tuple[list[mount_pb2.Mount], list[mount_pb2.Mount]]] = {}

    def cid(self, i: int) -> str:
        return f"{self.prefix}-{self.ids[i]}"

    def event_namespaces(self) -> list[str]:
        return [*self.namespaces, NAMESPACE]

    def lease_namespaces(self) -> list[str]:
        return [*self.namespaces, NAMESPACE]

    def namespaces_to_remove(self) -> list[str]:
        # The task namespace holds the image: only this example's tasks, containers and
        # snapshots are removed from it (below), the namespace stays.
        for side in (self.pair.reference, self.pair.ctrpy):
            remove_tasks(side, NAMESPACE)
            meta = [("containerd-namespace", NAMESPACE)]
            for i in range(len(self.ids)):
                for call, request in (
                    (side.stubs["containers"].Delete, ct.DeleteContainerRequest(id=self.cid(i))),
                    (side.stubs["snapshots"].Remove, sn.RemoveSnapshotRequest(snapshotter="overlayfs",
                                                                               key=self.cid(i)))):
                    try:
                        call(request, metadata=meta, timeout=20)
                    except Exception:
                        pass
            try:
                side.stubs["leases"].Delete(ls.DeleteRequest(id=self.lease or ""), metadata=meta, timeout=20)
            except Exception:
                pass
        return list(self.namespaces)

    def tcall(self, method: str, request: Any, **kwargs: Any) -> Any:
        return self.call("tasks", method, request, NAMESPACE, **kwargs)

    @initialize()
    def running_task(self) -> None:
        """Every example starts with one running task (t1), so the rules find one."""
        self.create_container(0)
        self.create(0)
        self.start(0, "")

    @rule(i=st.integers(0, 1))
    def create_container(self, i: int) -> None:
        cid = self.cid(i)
        self.call("snapshots", "Prepare", sn.PrepareSnapshotRequest(
            snapshotter="overlayfs", key=cid, parent=self.parent), NAMESPACE)
        assert self.pair.raw is not None
        ref, ours = self.pair.raw
        if ref.code == ours.code == "OK":
            self.rootfs[cid] = (_mounts(ref.reply), _mounts(ours.reply))

        def container(side: str) -> ct.CreateContainerRequest:
            spec = runtime_spec(["sleep", "1000"], f"/ctrpydiff-{side}-{self.tag}-{cid}")
            return ct.CreateContainerRequest(container=ct.Container(
                id=cid, runtime=ct.Container.Runtime(name=RUNTIME), snapshotter="overlayfs",
                snapshot_key=cid, spec=any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Spec",
                                                   value=json.dumps(spec).encode())))

        self.call("containers", "Create", Split(container("ref"), container("py")), NAMESPACE, keep=_no_spec)

    @rule(i=st.integers(0, 1))
    def create(self, i: int) -> None:
        cid = self.cid(i)
        ref_mounts, our_mounts = self.rootfs.get(cid, ([], []))
        self.tcall("Create", Split(tk.CreateTaskRequest(container_id=cid, rootfs=ref_mounts),
                                   tk.CreateTaskRequest(container_id=cid, rootfs=our_mounts)))

    @rule(i=st.integers(0, 1), exec_id=st.sampled_from(["", "e1"]))
    def start(self, i: int, exec_id: str) -> None:
        self.tcall("Start", tk.StartRequest(container_id=self.cid(i), exec_id=exec_id))

    @rule(i=st.integers(0, 1))
    def get(self, i: int) -> None:
        self.tcall("Get", tk.GetRequest(container_id=self.cid(i)))

    @rule()
    def list_tasks(self) -> None:
        mine = self.prefix

        def keep(reply: Any) -> Any:
            return sorted((t for t in reply.get("tasks", []) if t.get("id", "").startswith(mine)), key=repr)

        self.tcall("List", tk.ListTasksRequest(), keep=keep)

    @rule(i=st.integers(0, 1), signal=st.sampled_from([9, 15, 0]), all_=st.booleans())
    def kill(self, i: int, signal: int, all_: bool) -> None:
        cid = self.cid(i)
        ref, _ = self.tcall("Kill", tk.KillRequest(container_id=cid, signal=signal, all=all_))
        if ref.code == "OK" and signal == 9:  # sleep, as pid 1, ignores SIGTERM: no wait then
            self.tcall("Wait", tk.WaitRequest(container_id=cid), timeout=30)

    @rule(i=st.integers(0, 1))
    def delete(self, i: int) -> None:
        self.tcall("Delete", tk.DeleteTaskRequest(container_id=self.cid(i)))

    @rule(i=st.integers(0, 1), exec_id=st.sampled_from(["e1", "", "bad/id"]))
    def exec_(self, i: int, exec_id: str) -> None:
        self.tcall("Exec", tk.ExecProcessRequest(container_id=self.cid(i), exec_id=exec_id,
                                                 spec=_process(["sleep", "1000"])))

    @rule(i=st.integers(0, 1))
    def list_pids(self, i: int) -> None:
        self.tcall("ListPids", tk.ListPidsRequest(container_id=self.cid(i)),
                   keep=lambda reply: len(reply.get("processes", [])) if isinstance(reply, dict) else reply)

    def _compare_events(self) -> None:
        """containerd's shim publishes an exit through a separate process, so it may reach the
        subscriber after Wait returned and after the closing marker: give the exits a few
        seconds to arrive on both sides before comparing."""
        assert self.subscribers is not None
        subscribers = self.subscribers

        def exits(envelopes: list[Any]) -> int:
            return sum(1 for e in envelopes if e.get("topic") == "/tasks/exit")

        deadline = time.monotonic() + 5.0
        while len({exits(sub.envelopes) for sub in subscribers}) > 1 and time.monotonic() < deadline:
            time.sleep(0.05)
        super()._compare_events()

    def event_view(self, envelope: dict[str, Any]) -> Any:
        view = super().event_view(envelope)
        event = view.get("event", {})
        # Each daemon keeps bundles where it likes: the path is not compared.
        view["event"] = {k: v for k, v in event.items() if k != "bundle"}
        return view


@pytest.mark.slow
def test_tasks(pair: Pair, image: str) -> None:
    class Machine(TaskMachine):
        parent = image

    Machine.pair = pair
    profile = settings.get_profile("differential")
    run_state_machine_as_test(Machine, settings=settings(
        profile, max_examples=max(profile.max_examples // 5, 4), stateful_step_count=12))
