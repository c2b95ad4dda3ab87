"""5,000 metadata RPCs from 20 concurrent clients (each its own channel and thread) over
Containers, Images, Leases and Namespaces: each client creates, reads, lists, updates and
deletes its own objects, half of them in a namespace all clients share (where they contend for
the same tables) and half in one of its own. Every answer is the expected one, no client hangs
past its deadline, and afterwards ctrpyd's fds, threads and database handles are back where they
were and no object is left.
"""

from __future__ import annotations

import concurrent.futures
import secrets
from collections import Counter

from google.protobuf import empty_pb2, field_mask_pb2

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from ctrpy.api.containerd.types import descriptor_pb2
from ctrpy.client import Client
from ctrpy.errors import NotFound
from tests.hostile import probes
from tests.hostile.conftest import configured_daemon
from tests.hostile.specs import RUNTIME, runtime_spec, spec_any
from tests.support.ctrpyd import Daemon

CLIENTS = 20
ROUNDS = 10  # each round is 25 calls: 20 clients x 10 rounds x 25 = 5,000
CALLS_PER_ROUND = 25
DEADLINE = 600.0
SLACK = 6
TARGET = descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.manifest.v1+json",
                                   digest="sha256:" + "ab" * 32, size=100)


class Worker:
    """One client's share of the load; ``calls`` counts what it sent, by method."""

    def __init__(self, daemon: Daemon, index: int, shared: str) -> None:
        self.daemon, self.index, self.shared = daemon, index, shared
        self.own = f"load-own-{index}-{secrets.token_hex(2)}"
        self.calls: Counter[str] = Counter()

    def call(self, client: Client, method: str, request: object) -> object:
        self.calls[method] += 1
        service, name = method.split(".")
        return client.call(getattr(getattr(client, service), name), request)

    def round(self, client: Client, n: int) -> None:
        """25 calls on objects of this worker's own, in the client's namespace."""
        tag = f"w{self.index}-r{n}"
        container = containers_pb2.Container(id=f"c-{tag}", runtime=containers_pb2.Container.Runtime(name=RUNTIME),
                                             spec=spec_any(runtime_spec(["true"], f"/x/{tag}")), labels={"n": "0"})
        self.call(client, "containers.Create", containers_pb2.CreateContainerRequest(container=container))
        got = self.call(client, "containers.Get", containers_pb2.GetContainerRequest(id=container.id))
        assert got.container.id == container.id  # type: ignore[attr-defined]
        container.labels["n"] = "1"
        updated = self.call(client, "containers.Update", containers_pb2.UpdateContainerRequest(
            container=container, update_mask=field_mask_pb2.FieldMask(paths=["labels.n"])))
        assert updated.container.labels["n"] == "1"  # type: ignore[attr-defined]
        listed = self.call(client, "containers.List", containers_pb2.ListContainersRequest(
            filters=[f"id=={container.id}"]))
        assert [c.id for c in listed.containers] == [container.id]  # type: ignore[attr-defined]

        image = images_pb2.Image(name=f"example.com/load/{tag}:latest", target=TARGET)
        self.call(client, "images.Create", images_pb2.CreateImageRequest(image=image))
        got_image = self.call(client, "images.Get", images_pb2.GetImageRequest(name=image.name))
        assert got_image.image.target.digest == TARGET.digest  # type: ignore[attr-defined]
        image.labels["x"] = "y"
        self.call(client, "images.Update", images_pb2.UpdateImageRequest(image=image))
        listed_images = self.call(client, "images.List", images_pb2.ListImagesRequest(filters=[f"name=={image.name}"]))
        assert len(listed_images.images) == 1  # type: ignore[attr-defined]

        lease = f"lease-{tag}"
        self.call(client, "leases.Create", leases_pb2.CreateRequest(id=lease, labels={"k": "v"}))
        resource = leases_pb2.Resource(id=f"key-{tag}", type="snapshots/overlayfs")
        self.call(client, "leases.AddResource", leases_pb2.AddResourceRequest(id=lease, resource=resource))
        resources = self.call(client, "leases.ListResources", leases_pb2.ListResourcesRequest(id=lease))
        assert [r.id for r in resources.resources] == [resource.id]  # type: ignore[attr-defined]
        self.call(client, "leases.DeleteResource", leases_pb2.DeleteResourceRequest(id=lease, resource=resource))
        leases = self.call(client, "leases.List", leases_pb2.ListRequest(filters=[f"id=={lease}"]))
        assert [x.id for x in leases.leases] == [lease]  # type: ignore[attr-defined]

        extra = f"{self.own}-{n}"
        self.call(client, "namespaces.Create", namespace_pb2.CreateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=extra, labels={"a": "b"})))
        got_ns = self.call(client, "namespaces.Get", namespace_pb2.GetNamespaceRequest(name=extra))
        assert got_ns.namespace.labels["a"] == "b"  # type: ignore[attr-defined]
        self.call(client, "namespaces.Update", namespace_pb2.UpdateNamespaceRequest(
            namespace=namespace_pb2.Namespace(name=extra, labels={"a": "c"}),
            update_mask=field_mask_pb2.FieldMask(paths=["labels.a"])))
        got_ns = self.call(client, "namespaces.Get", namespace_pb2.GetNamespaceRequest(name=extra))
        assert got_ns.namespace.labels["a"] == "c"  # type: ignore[attr-defined]
        self.call(client, "namespaces.List", namespace_pb2.ListNamespacesRequest())
        self.call(client, "containers.List", containers_pb2.ListContainersRequest())

        # And everything goes again.
        self.call(client, "containers.Delete", containers_pb2.DeleteContainerRequest(id=container.id))
        self.call(client, "images.Delete", images_pb2.DeleteImageRequest(name=image.name, sync=False))
        self.call(client, "leases.Delete", leases_pb2.DeleteRequest(id=lease))
        self.call(client, "namespaces.Delete", namespace_pb2.DeleteNamespaceRequest(name=extra))
        try:
            self.call(client, "containers.Get", containers_pb2.GetContainerRequest(id=container.id))
        except NotFound:
            pass
        else:
            raise AssertionError(f"container {container.id} still there after Delete")
        self.call(client, "version.Version", empty_pb2.Empty())

    def run(self, rounds: int) -> Counter[str]:
        for n in range(rounds):
            namespace = self.shared if n % 2 == 0 else self.own
            with Client(str(self.daemon.address), namespace, timeout=60) as client:
                self.round(client, n)
        return self.calls


def run_all(daemon: Daemon, shared: str, rounds: int) -> Counter[str]:
    workers = [Worker(daemon, i, shared) for i in range(CLIENTS)]
    total: Counter[str] = Counter()
    with concurrent.futures.ThreadPoolExecutor(CLIENTS) as pool:
        futures = [pool.submit(worker.run, rounds) for worker in workers]
        done, pending = concurrent.futures.wait(futures, timeout=DEADLINE)
        assert not pending, f"{len(pending)} clients still running after {DEADLINE}s: a deadlock?"
        for future in done:
            total.update(future.result())  # re-raises a client's failure
    # Each worker's own namespace is empty now; remove it (the shared one is the test's).
    with daemon.client() as client:
        for worker in workers:
            client.call(client.namespaces.Delete, namespace_pb2.DeleteNamespaceRequest(name=worker.own))
    return total


def test_five_thousand_metadata_rpcs_from_twenty_clients() -> None:
    daemon = configured_daemon()
    try:
        daemon.start()
        shared = f"load-shared-{secrets.token_hex(2)}"
        run_all(daemon, shared, 2)  # warm-up at full concurrency
        baseline = probes.Usage.of(daemon)

        calls = run_all(daemon, shared, ROUNDS)
        assert sum(calls.values()) == CLIENTS * ROUNDS * CALLS_PER_ROUND == 5000

        probes.assert_serving(daemon)
        with daemon.client(shared) as client:
            assert list(client.call(client.containers.List, containers_pb2.ListContainersRequest()).containers) == []
            assert list(client.call(client.images.List, images_pb2.ListImagesRequest()).images) == []
            assert list(client.call(client.leases.List, leases_pb2.ListRequest()).leases) == []
        assert probes.namespaces(daemon) == [shared]
        after = probes.settle(daemon, baseline, slack=SLACK)
        assert after.fds <= baseline.fds + SLACK, (baseline, after)
        assert after.threads <= baseline.threads + SLACK, (baseline, after)
        assert after.db_fds <= baseline.db_fds, (baseline, after)
        assert probes.zombies(probes.daemon_pid(daemon)) == []
    finally:
        probes.kill_leftovers(daemon)
        daemon.cleanup()
