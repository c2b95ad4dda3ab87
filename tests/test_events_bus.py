"""Events published by the metadata services reach subscribers, in order, from every namespace."""

from __future__ import annotations

import threading
import time

from ctrpy.api.containerd.events import container_pb2, namespace_pb2
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2 as ns_api
from tests.support.ctrpyd import Daemon
from tests.test_containers_service import api, make_container


def collect(daemon: Daemon, count: int, filters: list[str] | None = None) -> tuple[list[events_pb2.Envelope], threading.Thread]:
    received: list[events_pb2.Envelope] = []
    client = daemon.client(timeout=None)

    def run() -> None:
        stream = client.events.Subscribe(events_pb2.SubscribeRequest(filters=filters or []), metadata=client.metadata)
        for envelope in stream:
            received.append(envelope)
            if len(received) == count:
                stream.cancel()
                break
        client.close()

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    time.sleep(0.5)  # let the subscription reach the server before anything is published
    return received, thread


def test_metadata_events_in_order_across_namespaces(daemon: Daemon) -> None:
    received, thread = collect(daemon, 4)
    with daemon.client("ns-one") as client:
        client.call(client.containers.Create, api.CreateContainerRequest(container=make_container("c1")))
        client.call(client.containers.Delete, api.DeleteContainerRequest(id="c1"))
    with daemon.client() as client:
        client.call(client.namespaces.Create, ns_api.CreateNamespaceRequest(namespace=ns_api.Namespace(name="two")))
        client.call(client.namespaces.Delete, ns_api.DeleteNamespaceRequest(name="two"))
    thread.join(10)
    assert [(e.namespace, e.topic) for e in received] == [
        ("ns-one", "/containers/create"),
        ("ns-one", "/containers/delete"),
        # containerd stamps a create with the caller's namespace, a delete with the deleted one.
        ("default", "/namespaces/create"),
        ("two", "/namespaces/delete"),
    ]
    assert received[0].event.type_url == "containerd.events.ContainerCreate"
    created = container_pb2.ContainerCreate.FromString(received[0].event.value)
    assert created.id == "c1" and created.runtime.name == "io.containerd.runc.v2"
    assert namespace_pb2.NamespaceDelete.FromString(received[3].event.value).name == "two"


def test_subscribe_filters_and_ctr_events(daemon: Daemon) -> None:
    received, thread = collect(daemon, 1, filters=['topic~="/namespaces/.*"'])
    with daemon.client() as client:
        client.call(client.containers.Create, api.CreateContainerRequest(container=make_container("c1")))
        client.call(client.namespaces.Create, ns_api.CreateNamespaceRequest(namespace=ns_api.Namespace(name="x")))
    thread.join(10)
    assert [e.topic for e in received] == ["/namespaces/create"]


def test_publish_rejects_bad_topic(daemon: Daemon) -> None:
    from google.protobuf import any_pb2

    from ctrpy.errors import InvalidArgument

    with daemon.client() as client:
        try:
            client.call(
                client.events.Publish,
                events_pb2.PublishRequest(topic="no-slash", event=any_pb2.Any(type_url="x.Y", value=b"")),
            )
        except InvalidArgument:
            pass
        else:
            raise AssertionError("a topic without a leading slash was accepted")
