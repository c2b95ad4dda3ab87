"""Containers over the real socket: opaque Any payloads, masks, filters, timestamps, events."""

from __future__ import annotations

import json

import pytest
from google.protobuf import any_pb2, field_mask_pb2, timestamp_pb2

from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as api
from ctrpy.errors import AlreadyExists, InvalidArgument, NotFound
from tests.support.ctrpyd import Daemon

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"
GO_ZERO = timestamp_pb2.Timestamp(seconds=-62135596800)


def make_container(container_id: str, **labels: str) -> api.Container:
    spec = json.dumps({"ociVersion": "1.0.2", "root": {"path": "rootfs"}, "process": {"args": ["sh"]}})
    container = api.Container(
        id=container_id,
        labels=labels,
        image="docker.io/library/busybox:latest",
        spec=any_pb2.Any(type_url=SPEC_URL, value=spec.encode()),
        snapshotter="overlayfs",
        snapshot_key=container_id,
        created_at=GO_ZERO,
        updated_at=GO_ZERO,
    )
    container.runtime.name = "io.containerd.runc.v2"
    container.runtime.options.type_url = "containerd.runc.v1.Options"
    container.runtime.options.value = b"\x32\x04runc"  # binary_name = "runc"
    container.extensions["ext"].CopyFrom(any_pb2.Any(type_url="example.com/Ext", value=b"\x00\x01\xff"))
    return container


def test_create_get_round_trips_opaque_payloads(daemon: Daemon) -> None:
    with daemon.client() as client:
        sent = make_container("c1", a="b")
        created = client.call(client.containers.Create, api.CreateContainerRequest(container=sent)).container
        got = client.call(client.containers.Get, api.GetContainerRequest(id="c1")).container
    for container in (created, got):
        assert container.spec == sent.spec
        assert container.runtime == sent.runtime
        assert container.extensions["ext"] == sent.extensions["ext"]
        assert dict(container.labels) == {"a": "b"}
        # Go's zero time was treated as unset: the server stamped real times.
        assert container.created_at.seconds > 1_600_000_000
        assert container.updated_at == container.created_at


def test_create_twice_is_already_exists_and_missing_is_not_found(daemon: Daemon) -> None:
    with daemon.client() as client:
        client.call(client.containers.Create, api.CreateContainerRequest(container=make_container("c1")))
        with pytest.raises(AlreadyExists, match='container "c1": already exists'):
            client.call(client.containers.Create, api.CreateContainerRequest(container=make_container("c1")))
        with pytest.raises(NotFound, match='container "nope" in namespace "default": not found'):
            client.call(client.containers.Get, api.GetContainerRequest(id="nope"))
        with pytest.raises(NotFound):
            client.call(client.containers.Delete, api.DeleteContainerRequest(id="nope"))


def test_create_requires_runtime_and_spec(daemon: Daemon) -> None:
    with daemon.client() as client:
        no_runtime = make_container("c1")
        no_runtime.runtime.name = ""
        with pytest.raises(InvalidArgument, match="runtime name"):
            client.call(client.containers.Create, api.CreateContainerRequest(container=no_runtime))
        no_spec = make_container("c2")
        no_spec.ClearField("spec")
        with pytest.raises(InvalidArgument, match="spec"):
            client.call(client.containers.Create, api.CreateContainerRequest(container=no_spec))
        assert not client.call(client.containers.List, api.ListContainersRequest()).containers


def test_update_applies_only_masked_paths(daemon: Daemon) -> None:
    with daemon.client() as client:
        client.call(
            client.containers.Create,
            api.CreateContainerRequest(container=make_container("c1", keep="1", drop="2")),
        )
        # As ctr sends it: the label to set, junk (an empty runtime) in unmasked fields.
        update = api.Container(id="c1", labels={"containerd.io/x.y": "z"})
        mask = field_mask_pb2.FieldMask(paths=["labels.containerd.io/x.y", "labels.drop"])
        updated = client.call(
            client.containers.Update, api.UpdateContainerRequest(container=update, update_mask=mask)
        ).container
        assert dict(updated.labels) == {"keep": "1", "containerd.io/x.y": "z"}
        assert updated.runtime.name == "io.containerd.runc.v2"
        assert updated.image == "docker.io/library/busybox:latest"
        assert updated.updated_at.ToNanoseconds() >= updated.created_at.ToNanoseconds()

        bad = field_mask_pb2.FieldMask(paths=["runtime"])
        with pytest.raises(InvalidArgument, match='cannot update "runtime" field on "c1"'):
            client.call(client.containers.Update, api.UpdateContainerRequest(container=update, update_mask=bad))

        # No mask: a full replace, but the runtime name is immutable.
        replaced = make_container("c1", only="this")
        replaced.runtime.name = "io.containerd.other"
        with pytest.raises(InvalidArgument, match="immutable"):
            client.call(client.containers.Update, api.UpdateContainerRequest(container=replaced))
        replaced = make_container("c1", only="this")
        replaced.image = "example.com/other:1"
        result = client.call(client.containers.Update, api.UpdateContainerRequest(container=replaced)).container
        assert dict(result.labels) == {"only": "this"} and result.image == "example.com/other:1"


def test_list_filters_and_list_stream(daemon: Daemon) -> None:
    with daemon.client() as client:
        for cid, labels in (("web-1", {"app": "web"}), ("web-2", {"app": "web"}), ("db", {"app": "db"})):
            client.call(client.containers.Create, api.CreateContainerRequest(container=make_container(cid, **labels)))

        def ids(*filters: str) -> list[str]:
            response = client.call(client.containers.List, api.ListContainersRequest(filters=list(filters)))
            return [c.id for c in response.containers]

        assert ids() == ["db", "web-1", "web-2"]
        assert ids("labels.app==web") == ["web-1", "web-2"]
        assert ids("id~=^web-[2-9]$") == ["web-2"]
        assert ids("labels.app==db", "id==web-1") == ["db", "web-1"]
        assert ids("labels.app==web,id!=web-1") == ["web-2"]
        assert ids('runtime.name=="io.containerd.runc.v2"') == ["db", "web-1", "web-2"]
        with pytest.raises(InvalidArgument):
            ids("labels.app===")
        streamed = [
            message.container.id
            for message in client.stream(client.containers.ListStream, api.ListContainersRequest(filters=["labels.app==web"]))
        ]
        assert streamed == ["web-1", "web-2"]


def test_containers_are_per_namespace(daemon: Daemon) -> None:
    with daemon.client("ns-a") as a, daemon.client("ns-b") as b:
        a.call(a.containers.Create, api.CreateContainerRequest(container=make_container("same")))
        b.call(b.containers.Create, api.CreateContainerRequest(container=make_container("same")))
        a.call(a.containers.Delete, api.DeleteContainerRequest(id="same"))
        assert [c.id for c in b.call(b.containers.List, api.ListContainersRequest()).containers] == ["same"]
        assert not a.call(a.containers.List, api.ListContainersRequest()).containers
