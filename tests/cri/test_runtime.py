"""runtime.v1.RuntimeService as served now: Version, Status (with the network's readiness read
from the CNI configuration directory at each call), RuntimeConfig, UpdateRuntimeConfig, and
UNIMPLEMENTED by name for every other method; the CRI switched off by configuration."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import empty_pb2

from ctrpy import __version__
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri import CriClient
from ctrpy.errors import NotImplemented as Unimplemented
from tests.cri.conftest import CriDaemon
from tests.support.ctrpyd import Daemon

SERVED = {"Version", "Status", "RuntimeConfig", "UpdateRuntimeConfig",
          # pod sandboxes: tests/cri_sandbox
          "RunPodSandbox", "StopPodSandbox", "RemovePodSandbox", "PodSandboxStatus", "ListPodSandbox",
          "StreamPodSandboxes",
          # containers, exec, stats and events: tests/cri_container
          "CreateContainer", "StartContainer", "StopContainer", "RemoveContainer", "ListContainers",
          "StreamContainers", "ContainerStatus", "UpdateContainerResources", "ReopenContainerLog", "ExecSync",
          "ContainerStats", "ListContainerStats", "StreamContainerStats", "PodSandboxStats", "ListPodSandboxStats",
          "StreamPodSandboxStats", "GetContainerEvents",
          # pod resources: tests/cri_sandbox/test_userns.py
          "UpdatePodSandboxResources",
          # the streaming server: tests/cri_streaming
          "Exec", "Attach", "PortForward"}
CONFLIST = {"cniVersion": "1.0.0", "name": "ctrpy-test",
            "plugins": [{"type": "bridge", "bridge": "cni0"}, {"type": "loopback"}]}


def _conditions(status: api.StatusResponse) -> dict[str, api.RuntimeCondition]:
    return {c.type: c for c in status.status.conditions}


def test_version(cri: CriClient) -> None:
    answer = cri.version()
    assert (answer.version, answer.runtime_name, answer.runtime_version, answer.runtime_api_version) == (
        "0.1.0", "ctrpy", __version__, "v1")


@pytest.fixture
def conflist(cri_daemon: CriDaemon) -> Iterator[Path]:
    path = cri_daemon.cni_conf_dir / "10-test.conflist"
    try:
        yield path
    finally:
        path.unlink(missing_ok=True)


def test_status_network_ready_follows_the_cni_conf_dir(cri: CriClient, conflist: Path) -> None:
    conditions = _conditions(cri.status())
    assert conditions["RuntimeReady"].status
    network = conditions["NetworkReady"]
    assert not network.status and network.reason == "NetworkPluginNotReady"
    assert "no network config found" in network.message
    conflist.write_text(json.dumps(CONFLIST))
    conditions = _conditions(cri.status())
    assert conditions["RuntimeReady"].status and conditions["NetworkReady"].status
    assert conditions["NetworkReady"].reason == ""
    conflist.write_text("{not json")  # the first file is broken: not ready, and says why
    network = _conditions(cri.status())["NetworkReady"]
    assert not network.status and str(conflist) in network.message


def test_status_verbose_info_and_handlers(cri: CriClient, cri_daemon: CriDaemon) -> None:
    quiet = cri.status()
    assert dict(quiet.info) == {}
    assert [h.name for h in quiet.runtime_handlers] == [""]
    verbose = cri.status(verbose=True)
    config = json.loads(verbose.info["config"])
    assert config["cni_conf_dir"] == str(cri_daemon.cni_conf_dir)
    assert config["sandbox_image"] == "registry.k8s.io/pause:3.10"
    assert json.loads(verbose.info["cniconfig"])["PluginConfDir"] == str(cri_daemon.cni_conf_dir)
    assert verbose.info["lastCNILoadStatus"] != "OK"


def test_runtime_config_and_pod_cidr(cri: CriClient) -> None:
    assert cri.runtime_config().linux.cgroup_driver == api.CGROUPFS
    cri.update_runtime_config("10.88.0.0/16")
    assert cri.status(verbose=True).info["podCIDR"] == "10.88.0.0/16"


def _request_of(method_name: str) -> object:
    method = api.DESCRIPTOR.services_by_name["RuntimeService"].methods_by_name[method_name]
    return getattr(api, method.input_type.name)()


UNSERVED = sorted(m.name for m in api.DESCRIPTOR.services_by_name["RuntimeService"].methods if m.name not in SERVED)


@pytest.mark.parametrize("method", UNSERVED)
def test_every_other_runtime_method_answers_unimplemented_by_name(cri: CriClient, method: str) -> None:
    descriptor = api.DESCRIPTOR.services_by_name["RuntimeService"].methods_by_name[method]
    stub_method = getattr(cri.runtime, method)
    with pytest.raises(Unimplemented, match=f"runtime.v1.RuntimeService/{method}"):
        if descriptor.server_streaming:
            list(cri.stream(stub_method, _request_of(method)))
        else:
            cri.call(stub_method, _request_of(method))


def test_namespace_header_does_not_move_the_cri_out_of_k8s_io(cri_daemon: CriDaemon) -> None:
    """A CRI call that carries a containerd namespace still works in k8s.io."""
    with cri_daemon.client() as cri:
        call = cri.images.ListImages
        with_header = call(api.ListImagesRequest(), metadata=(("containerd-namespace", "default"),), timeout=30)
        assert {i.id for i in with_header.images} == {i.id for i in cri.list_images()}


def test_cri_can_be_switched_off(tmp_path: Path) -> None:
    config = tmp_path / "ctrpyd.toml"
    config.write_text("version = 1\n[cri]\nenabled = false\n")
    daemon = Daemon(extra_args=("--config", str(config)))
    try:
        daemon.start()
        with CriClient(str(daemon.address), 30) as cri, pytest.raises(Unimplemented):
            cri.version()
        with daemon.client() as client:  # the containerd API is still there
            client.call(client.version.Version, empty_pb2.Empty())
    finally:
        daemon.cleanup()


def test_cri_services_report_serving_to_health_checks(cri_daemon: CriDaemon) -> None:
    from grpc_health.v1 import health_pb2, health_pb2_grpc

    with grpc.insecure_channel(f"unix:{cri_daemon.daemon.address}") as channel:
        health = health_pb2_grpc.HealthStub(channel)
        for service in ("runtime.v1.RuntimeService", "runtime.v1.ImageService"):
            answer = health.Check(health_pb2.HealthCheckRequest(service=service), timeout=30)
            assert answer.status == health_pb2.HealthCheckResponse.SERVING
