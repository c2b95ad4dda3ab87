"""The CRI built at its first call (manager/cri/lazy.py): the method table it registers matches
the generated API, a fresh daemon answers CRI calls, lists the services for reflection, and
builds the runtime at start-up only when the CRI left state on disk."""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.cri import CriClient
from ctrpy.manager.config import Config
from ctrpy.manager.cri import lazy
from tests.support.ctrpyd import Daemon


def test_method_table_matches_the_generated_api() -> None:
    for full_name, methods in lazy.METHODS.items():
        service = api.DESCRIPTOR.services_by_name[full_name.rpartition(".")[2]]
        assert service.full_name == full_name
        assert [m.name for m in service.methods] == list(methods)
        for method in service.methods:
            assert not method.client_streaming
            assert ((full_name, method.name) in lazy.STREAMING) == method.server_streaming
    assert set(api.DESCRIPTOR.services_by_name) == {"RuntimeService", "ImageService"}


def test_state_present(tmp_path: Path) -> None:
    config = Config().with_overrides(root=tmp_path / "root", state=tmp_path / "state")
    assert not lazy.state_present(config)
    for empty in ("root/cri/sandboxes", "root/cri/containers", "root/cni", "state/cri/exec", "state/netns"):
        (tmp_path / empty).mkdir(parents=True)
    assert not lazy.state_present(config)  # what a daemon whose pods were all removed keeps
    for record in ("root/cri/containers/abc.json", "root/cni/results/x", "state/netns/cni-1"):
        path = tmp_path / record
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("{}")
        assert lazy.state_present(config), record
        os.unlink(path)


@pytest.fixture(scope="module")
def fresh() -> Iterator[Daemon]:
    daemon = Daemon()
    try:
        daemon.start()
        yield daemon
    finally:
        daemon.cleanup()


def test_a_fresh_daemon_serves_both_services_and_lists_them(fresh: Daemon) -> None:
    with grpc.insecure_channel(f"unix:{fresh.address}") as channel:
        stub = reflection_pb2_grpc.ServerReflectionStub(channel)
        responses = stub.ServerReflectionInfo(iter([reflection_pb2.ServerReflectionRequest(list_services="")]))
        services = {s.name for r in responses for s in r.list_services_response.service}
    assert {"runtime.v1.RuntimeService", "runtime.v1.ImageService"} <= services
    with CriClient(str(fresh.address)) as cri:
        images = cri.call(cri.images.ListImages, api.ListImagesRequest())
        assert list(images.images) == []
        version = cri.call(cri.runtime.Version, api.VersionRequest())
        assert version.runtime_name == "ctrpy"
        assert list(cri.call(cri.runtime.ListPodSandbox, api.ListPodSandboxRequest()).items) == []
        batches = list(cri.stream(cri.runtime.StreamContainers, api.StreamContainersRequest()))
        assert [c for b in batches for c in b.containers] == []
