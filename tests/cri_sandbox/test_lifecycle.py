"""RunPodSandbox, PodSandboxStatus, ListPodSandbox, StreamPodSandboxes, StopPodSandbox and
RemovePodSandbox through the generated CRI client against a real ctrpyd, real runc and the real
CNI plugins; the pause container as ``ctr -n k8s.io`` shows it."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import threading
from pathlib import Path
from typing import Any

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from tests.crash.support import alive, kill_and_wait, mounts_under
from tests.cri_net.conftest import Listener, connect
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until


def _info(pods: PodDaemon, sandbox_id: str) -> dict[str, Any]:
    return dict(json.loads(pods.status(sandbox_id, verbose=True).info["info"]))


def _pause_pid(pods: PodDaemon, sandbox_id: str) -> int:
    pid = int(_info(pods, sandbox_id)["pid"])
    assert pid > 0 and alive(pid)
    return pid


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _cleanup(pods: PodDaemon, sandbox_id: str) -> None:
    pods.stop_pod(sandbox_id)
    pods.remove_pod(sandbox_id)


def test_run_status_list_stop_remove(pods: PodDaemon) -> None:
    config = pods.pod("web", labels={"app": "web"}, annotations={"note": "n1"})
    sandbox_id = pods.run(config)
    status = pods.status(sandbox_id).status
    assert status.id == sandbox_id
    assert status.state == api.SANDBOX_READY
    assert status.metadata == config.metadata
    assert status.labels == {"app": "web"} and status.annotations == {"note": "n1"}
    assert status.created_at > 0
    assert status.network.ip in [str(ip) for ip in pods.net.subnet.hosts()]
    assert status.linux.namespaces.options.network == api.POD
    assert pods.net.allocated() == [status.network.ip]

    info = _info(pods, sandbox_id)
    assert info["processStatus"] == "running" and info["netNamespaceClosed"] is False
    spec = info["runtimeSpec"]
    assert spec["process"]["user"]["uid"] == 65535  # the pause image's USER
    assert spec["process"]["oomScoreAdj"] >= 0  # clamped: this kernel refuses negatives
    assert spec["linux"]["cgroupsPath"] == f"{pods.cgroup_parent}/{sandbox_id}"
    assert info["cniResult"]

    # ctr sees the pause container and its task in k8s.io, labelled as containerd's CRI does.
    listed = pods.ctr("containers", "ls", namespace="k8s.io").stdout
    assert sandbox_id in listed
    labels = json.loads(pods.ctr("containers", "info", sandbox_id, namespace="k8s.io").stdout)["Labels"]
    assert labels["io.cri-containerd.kind"] == "sandbox" and labels["app"] == "web"
    assert "RUNNING" in pods.ctr("tasks", "ls", namespace="k8s.io").stdout

    items = pods.list()
    assert [i.id for i in items if i.id == sandbox_id] == [sandbox_id]
    pid = _pause_pid(pods, sandbox_id)

    pods.stop_pod(sandbox_id)
    assert not alive(pid)
    stopped = pods.status(sandbox_id).status
    assert stopped.state == api.SANDBOX_NOTREADY
    assert pods.net.allocated() == []  # CNI DEL freed the address
    assert _info(pods, sandbox_id)["netNamespaceClosed"] is True
    assert pods.netns_files() == []
    assert sandbox_id not in pods.ctr("tasks", "ls", namespace="k8s.io").stdout

    pods.remove_pod(sandbox_id)
    assert sandbox_id not in [i.id for i in pods.list()]
    assert sandbox_id not in pods.ctr("containers", "ls", namespace="k8s.io").stdout
    with pytest.raises(errors.NotFound):
        pods.status(sandbox_id)
    assert not (pods.root / "cri" / "sandboxes" / sandbox_id).exists()
    assert [m for m in mounts_under(pods.state) if sandbox_id in m] == []


def test_stop_and_remove_are_idempotent(pods: PodDaemon) -> None:
    pods.stop_pod("0" * 64)  # never existed: OK, as the CRI asks
    pods.remove_pod("0" * 64)
    sandbox_id = pods.run(pods.pod("idem"))
    pods.stop_pod(sandbox_id)
    pods.stop_pod(sandbox_id)
    pods.remove_pod(sandbox_id)
    pods.remove_pod(sandbox_id)
    pods.stop_pod(sandbox_id)


def test_remove_of_a_ready_pod_stops_it_first(pods: PodDaemon) -> None:
    sandbox_id = pods.run(pods.pod("rm-ready"))
    pid = _pause_pid(pods, sandbox_id)
    pods.remove_pod(sandbox_id)
    assert not alive(pid)
    assert pods.netns_files() == [] and pods.net.allocated() == []


def test_list_filters_and_stream(pods: PodDaemon) -> None:
    a = pods.run(pods.pod("fa", labels={"tier": "front", "app": "a"}))
    b = pods.run(pods.pod("fb", labels={"tier": "back"}))
    try:
        pods.stop_pod(b)
        ids = {i.id for i in pods.list()}
        assert {a, b} <= ids
        assert [i.id for i in pods.list(api.PodSandboxFilter(id=a[:12]))] == [a]
        ready = pods.list(api.PodSandboxFilter(state=api.PodSandboxStateValue(state=api.SANDBOX_READY)))
        assert a in [i.id for i in ready] and b not in [i.id for i in ready]
        notready = pods.list(api.PodSandboxFilter(state=api.PodSandboxStateValue(state=api.SANDBOX_NOTREADY)))
        assert b in [i.id for i in notready]
        assert [i.id for i in pods.list(api.PodSandboxFilter(label_selector={"tier": "front", "app": "a"}))] == [a]
        assert pods.list(api.PodSandboxFilter(label_selector={"tier": "nowhere"})) == []
        with pods.cri() as c:
            streamed = [p.id for batch in c.stream(c.runtime.StreamPodSandboxes, api.StreamPodSandboxesRequest())
                        for p in batch.pod_sandboxes]
            assert sorted(streamed) == sorted(i.id for i in pods.list())
            # a prefix of the id also finds the pod for status
            assert c.call(c.runtime.PodSandboxStatus,
                          api.PodSandboxStatusRequest(pod_sandbox_id=a[:16])).status.id == a
    finally:
        _cleanup(pods, a)
        _cleanup(pods, b)


def test_pod_ip_answers_from_the_host_and_dns_and_hostname(pods: PodDaemon) -> None:
    dns = api.DNSConfig(servers=["10.254.0.10"], searches=["svc.example", "example"], options=["ndots:5"])
    sandbox_id = pods.run(pods.pod("net", hostname="pod-host-1", dns=dns))
    listener = None
    try:
        info = _info(pods, sandbox_id)
        netns = info["runtimeSpec"]["linux"]["namespaces"]
        path = next(n["path"] for n in netns if n["type"] == "network")
        listener = Listener(path, 8080)
        ip = pods.status(sandbox_id).status.network.ip
        assert connect(ip, 8080) == b"pong"

        pid = _pause_pid(pods, sandbox_id)
        resolv = Path(f"/proc/{pid}/root/etc/resolv.conf").read_text()
        assert resolv == "search svc.example example\nnameserver 10.254.0.10\noptions ndots:5\n"
        assert Path(f"/proc/{pid}/root/etc/hostname").read_text() == "pod-host-1\n"
        uts = os.readlink(f"/proc/{pid}/ns/uts")
        assert uts != os.readlink("/proc/self/ns/uts")
        assert info["runtimeSpec"]["hostname"] == "pod-host-1"
    finally:
        if listener is not None:
            listener.stop()
        _cleanup(pods, sandbox_id)


def test_resolv_conf_is_the_hosts_without_dns_config(pods: PodDaemon) -> None:
    sandbox_id = pods.run(pods.pod("nodns"))
    try:
        pid = _pause_pid(pods, sandbox_id)
        host = Path("/etc/resolv.conf").read_bytes() if Path("/etc/resolv.conf").exists() else b""
        assert Path(f"/proc/{pid}/root/etc/resolv.conf").read_bytes() == host
    finally:
        _cleanup(pods, sandbox_id)


def test_host_port_reaches_a_listener_in_the_pod(pods: PodDaemon) -> None:
    host_port = _free_port()
    sandbox_id = pods.run(pods.pod("ports", ports=[(8081, host_port, "127.0.0.1")]))
    listener = None
    try:
        spec = _info(pods, sandbox_id)["runtimeSpec"]
        path = next(n["path"] for n in spec["linux"]["namespaces"] if n["type"] == "network")
        listener = Listener(path, 8081)
        assert connect("127.0.0.1", host_port) == b"pong"
    finally:
        if listener is not None:
            listener.stop()
        _cleanup(pods, sandbox_id)
    assert pods.net.nat_rules() == []  # portmap's DEL removed its rules


def test_host_network_pod(pods: PodDaemon) -> None:
    sandbox_id = pods.run(pods.pod("hostnet", host_network=True))
    try:
        status = pods.status(sandbox_id).status
        assert status.state == api.SANDBOX_READY
        assert status.network.ip == ""
        assert status.linux.namespaces.options.network == api.NODE
        pid = _pause_pid(pods, sandbox_id)
        assert os.readlink(f"/proc/{pid}/ns/net") == os.readlink("/proc/self/ns/net")
        assert os.readlink(f"/proc/{pid}/ns/uts") == os.readlink("/proc/self/ns/uts")
        assert pods.netns_files() == []
    finally:
        _cleanup(pods, sandbox_id)


def test_pause_death_makes_the_pod_notready(pods: PodDaemon) -> None:
    sandbox_id = pods.run(pods.pod("dies"))
    pid = _pause_pid(pods, sandbox_id)
    kill_and_wait(pid)
    wait_until(lambda: pods.status(sandbox_id).status.state == api.SANDBOX_NOTREADY, "the pod to be NOTREADY")
    ready = pods.list(api.PodSandboxFilter(state=api.PodSandboxStateValue(state=api.SANDBOX_READY)))
    assert sandbox_id not in [i.id for i in ready]
    _cleanup(pods, sandbox_id)
    assert pods.net.allocated() == [] and pods.netns_files() == []


def test_same_name_gets_the_same_pod_and_a_different_config_is_refused(pods: PodDaemon) -> None:
    config = pods.pod("again", uid="uid-again")
    first = pods.run(config)
    try:
        assert pods.run(config) == first  # a kubelet retry after a timeout
        other = pods.pod("again", uid="uid-again", labels={"x": "y"})
        with pytest.raises(errors.AlreadyExists):
            pods.run(other)
    finally:
        _cleanup(pods, first)
    second = pods.run(config)  # the name is free again
    assert second != first
    _cleanup(pods, second)


def test_bad_requests(pods: PodDaemon) -> None:
    with pytest.raises(errors.InvalidArgument):
        pods.run(api.PodSandboxConfig(metadata=api.PodSandboxMetadata(name="x")))
    with pytest.raises(errors.NotFound):
        pods.status("no-such-sandbox")
    with pods.cri() as c, pytest.raises(errors.InvalidArgument):
        c.call(c.runtime.RunPodSandbox, api.RunPodSandboxRequest(config=pods.pod("h"), runtime_handler="nope"))


def test_sandbox_events_are_published(pods: PodDaemon) -> None:
    events = pods.spawn("events")  # ctr events (all namespaces)
    lines: list[str] = []
    reader = threading.Thread(target=lambda: lines.extend(iter(events.stdout.readline, "")), daemon=True)  # type: ignore[union-attr]
    reader.start()
    marker = f"mark-{os.getpid()}"
    try:
        # A marker event first: once it arrives, ctr's subscription is in place.
        def marked() -> bool:
            pods.ctr("namespaces", "create", marker)
            pods.ctr("namespaces", "rm", marker)
            return any(marker in line for line in list(lines))

        wait_until(marked, "ctr events to subscribe", interval=0.3)
        sandbox_id = pods.run(pods.pod("events"))
        _cleanup(pods, sandbox_id)
        wanted = ("/containers/create", "/snapshot/prepare", "/tasks/create", "/tasks/start", "/tasks/exit",
                  "/tasks/delete", "/snapshot/remove", "/containers/delete")

        def topics() -> list[str]:
            words = [line.split() for line in list(lines)]
            return [w[w.index("k8s.io") + 1] for w in words if "k8s.io" in w[:-1] and sandbox_id in " ".join(w)]

        wait_until(lambda: all(t in topics() for t in wanted), "the sandbox's events")
    finally:
        # SIGTERM, not SIGINT: a shell that starts the suite in the background leaves SIGINT
        # ignored for its children, and ctr keeps an ignored SIGINT ignored.
        events.send_signal(signal.SIGTERM)
        events.wait(timeout=30)
        reader.join(timeout=10)


def test_host_pid_ipc_sysctls_and_security_context(pods: PodDaemon) -> None:
    config = pods.pod("opts")
    options = config.linux.security_context.namespace_options
    options.pid = api.NODE
    options.ipc = api.NODE
    config.linux.sysctls["net.ipv4.ping_group_range"] = "0 2147483647"
    config.linux.security_context.run_as_user.value = 1234
    config.linux.security_context.run_as_group.value = 4321
    sandbox_id = pods.run(config)
    try:
        status = pods.status(sandbox_id).status
        assert status.linux.namespaces.options.pid == api.NODE
        assert status.linux.namespaces.options.ipc == api.NODE
        pid = _pause_pid(pods, sandbox_id)
        for kind in ("pid", "ipc"):
            assert os.readlink(f"/proc/{pid}/ns/{kind}") == os.readlink(f"/proc/self/ns/{kind}")
        assert os.readlink(f"/proc/{pid}/ns/net") != os.readlink("/proc/self/ns/net")
        spec = _info(pods, sandbox_id)["runtimeSpec"]
        netns = next(n["path"] for n in spec["linux"]["namespaces"] if n["type"] == "network")
        inside = subprocess.run(["nsenter", f"--net={netns}", "cat", "/proc/sys/net/ipv4/ping_group_range"],
                                capture_output=True, text=True, check=True).stdout.split()
        assert inside == ["0", "2147483647"]
        status_lines = Path(f"/proc/{pid}/status").read_text().splitlines()
        uid = next(line for line in status_lines if line.startswith("Uid:")).split()[1]
        gid = next(line for line in status_lines if line.startswith("Gid:")).split()[1]
        assert (uid, gid) == ("1234", "4321")
        assert spec["mounts"][-4]["source"] == "/dev/shm"  # hostIPC: the host's /dev/shm
    finally:
        _cleanup(pods, sandbox_id)


def test_privileged_pod(pods: PodDaemon) -> None:
    config = pods.pod("priv")
    config.linux.security_context.privileged = True
    sandbox_id = pods.run(config)
    try:
        spec = _info(pods, sandbox_id)["runtimeSpec"]
        assert "CAP_SYS_ADMIN" in spec["process"]["capabilities"]["bounding"]
        assert "maskedPaths" not in spec["linux"]
        assert pods.status(sandbox_id).status.state == api.SANDBOX_READY
    finally:
        _cleanup(pods, sandbox_id)


def test_pods_run_at_the_same_time(pods: PodDaemon) -> None:
    from concurrent.futures import ThreadPoolExecutor

    configs = [pods.pod(f"par-{n}") for n in range(4)]
    with ThreadPoolExecutor(4) as pool:
        ids = list(pool.map(pods.run, configs))
    try:
        assert len(set(ids)) == 4
        statuses = [pods.status(i).status for i in ids]
        assert all(s.state == api.SANDBOX_READY for s in statuses)
        assert len({s.network.ip for s in statuses}) == 4
    finally:
        with ThreadPoolExecutor(4) as pool:
            list(pool.map(lambda i: _cleanup(pods, i), ids))
    assert pods.net.allocated() == [] and pods.netns_files() == []
