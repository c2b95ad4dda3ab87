"""An ingest written under a lease goes with the lease, as in containerd: once the lease is
deleted, the next collection aborts it (an interrupted ``ctr images import`` leaves nothing),
while an ingest written without a lease keeps its day of grace and one still held stays."""

from __future__ import annotations

from ctrpy.api.containerd.services.content.v1 import content_pb2 as content_api
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from tests.gc.helpers import STAT, WRITE, collect, create_lease, ingests
from tests.support.ctrpyd import Daemon


def _leave_ingest(daemon: Daemon, ref: str, lease: str | None) -> None:
    with daemon.client() as client:
        if lease is not None:
            client.lease_id = lease
        stream = client.duplex(client.content.Write)
        stream.send(content_api.WriteContentRequest(action=STAT, ref=ref, total=100))
        stream.send(content_api.WriteContentRequest(action=WRITE, data=b"x" * 10))
        stream.close()


def test_ingests_of_a_deleted_lease_are_collected(daemon: Daemon) -> None:
    create_lease(daemon, "import")
    create_lease(daemon, "kept")
    _leave_ingest(daemon, "partial-layer", "import")
    _leave_ingest(daemon, "still-held", "kept")
    _leave_ingest(daemon, "no-lease", None)
    assert ingests(daemon) == {"partial-layer", "still-held", "no-lease"}

    with daemon.client() as client:
        client.call(client.leases.Delete, leases_pb2.DeleteRequest(id="import"))
    collect(daemon)
    assert ingests(daemon) == {"still-held", "no-lease"}
    collect(daemon)
    assert ingests(daemon) == {"still-held", "no-lease"}
