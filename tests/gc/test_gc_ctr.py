"""Garbage collection as containerd's users see it: the stock ctr against a real ctrpyd.

Each test checks one rule of containerd's collector: images, containers and live leases keep
what they reach; ``--sync`` deletes wait for the collection; a deletion without it is collected
by the scheduler soon after; a blob shared by two namespaces stays while either holds it.
"""

from __future__ import annotations

import dataclasses
import subprocess
import threading
from pathlib import Path

import pytest

from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.content.v1 import content_pb2 as content_api
from ctrpy.testimage import ImageInfo, Layer, busybox_image, file, write_oci_layout_tar
from tests.gc.helpers import (
    BUSYBOX,
    COMMIT,
    EXPIRE,
    STAT,
    WRITE,
    backend_snapshots,
    blob_file,
    collect,
    content,
    create_lease,
    in_seconds,
    ingests,
    leases,
    ok,
    snapshots,
    wait_for,
    write_blob,
)
from tests.support.ctrpyd import Daemon

DERIVED = "example.com/derived:1"


@dataclasses.dataclass(frozen=True)
class Archive:
    path: Path
    info: ImageInfo

    @property
    def blobs(self) -> set[str]:
        """Every blob the image is made of: manifest, config and layers."""
        return {self.info.manifest_digest, self.info.config_digest, *(layer.digest for layer in self.info.layers)}


@pytest.fixture(scope="module")
def images(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Archive]:
    """busybox, and an image made of busybox's layer plus one of its own."""
    base = tmp_path_factory.mktemp("gc-images")
    busybox = busybox_image()
    derived = dataclasses.replace(
        busybox, name=DERIVED, layers=(*busybox.layers, Layer((file("/derived.txt", b"mine\n"),)))
    )
    made = {}
    for key, image in (("busybox", busybox), ("derived", derived)):
        path = base / f"{key}.tar"
        made[key] = Archive(path, write_oci_layout_tar(image, path))
    return made


class EventLog:
    """``ctr events`` running in the background, its lines gathered as they come."""

    def __init__(self, daemon: Daemon) -> None:
        self.daemon = daemon
        self.process = subprocess.Popen(
            [*daemon.ctr_command(), "events"], stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True
        )
        self.lines: list[str] = []
        self.reader = threading.Thread(target=self._read, daemon=True)
        self.reader.start()

    def _read(self) -> None:
        assert self.process.stdout is not None
        for line in self.process.stdout:
            self.lines.append(line)

    def count(self, topic: str) -> int:
        return sum(1 for line in list(self.lines) if f" {topic} " in line)

    def wait_for(self, counts: dict[str, int]) -> None:
        """Wait until each topic of ``counts`` was seen at least that many times."""
        wait_for(lambda: all(self.count(t) >= n for t, n in counts.items()), f"events {counts}")

    def __enter__(self) -> EventLog:
        # Subscribed once an event published now reaches us: label a namespace until one does.
        ok(self.daemon.ctr("namespaces", "create", "events-probe"))

        def probe() -> bool:
            ok(self.daemon.ctr("namespaces", "label", "events-probe", f"n={len(self.lines)}"))
            return self.count("/namespaces/update") > 0

        wait_for(probe, "ctr events subscribed")
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)
        self.reader.join(timeout=30)


def import_image(daemon: Daemon, archive: Archive, namespace: str = "default") -> None:
    ok(daemon.ctr("images", "import", str(archive.path), namespace=namespace))


def test_images_rm_sync_removes_content_and_snapshots(daemon: Daemon, images: dict[str, Archive]) -> None:
    busybox = images["busybox"]
    import_image(daemon, busybox)
    collect(daemon)  # what the import left unreferenced (its index) goes; the image stays
    assert content(daemon) == busybox.blobs
    assert snapshots(daemon) == {busybox.info.chain_ids[-1]: "Committed"}
    assert len(backend_snapshots(daemon)) == 1

    with EventLog(daemon) as events:
        removed = ok(daemon.ctr("images", "rm", "--sync", BUSYBOX))
        assert removed.stdout.split() == [BUSYBOX]
        # Synchronous: everything is gone when ctr returns, from the metadata and from disk.
        assert content(daemon) == set()
        assert snapshots(daemon) == {}
        assert not any(blob_file(daemon, digest).exists() for digest in busybox.blobs)
        assert backend_snapshots(daemon) == []
        events.wait_for({"/images/delete": 1, "/content/delete": len(busybox.blobs), "/snapshot/remove": 1})
        removal = next(line for line in events.lines if " /snapshot/remove " in line)
        assert busybox.info.chain_ids[-1] in removal


def test_a_second_image_keeps_the_layers_it_shares(daemon: Daemon, images: dict[str, Archive]) -> None:
    busybox, derived = images["busybox"], images["derived"]
    import_image(daemon, busybox)
    import_image(daemon, derived)
    shared_layer = busybox.info.layers[0].digest
    assert derived.info.layers[0].digest == shared_layer
    assert derived.info.chain_ids[0] == busybox.info.chain_ids[0]

    ok(daemon.ctr("images", "rm", "--sync", BUSYBOX))
    assert content(daemon) == derived.blobs
    assert blob_file(daemon, shared_layer).exists()
    assert snapshots(daemon) == {derived.info.chain_ids[0]: "Committed", derived.info.chain_ids[1]: "Committed"}
    check = ok(daemon.ctr("images", "check")).stdout
    assert DERIVED in check and "complete" in check

    # A second name for the same image holds it just as well.
    ok(daemon.ctr("images", "tag", DERIVED, "example.com/derived:alias"))
    ok(daemon.ctr("images", "rm", "--sync", DERIVED))
    assert content(daemon) == derived.blobs
    ok(daemon.ctr("images", "rm", "--sync", "example.com/derived:alias"))
    assert content(daemon) == set()
    assert snapshots(daemon) == {}


def test_a_container_keeps_its_snapshot_until_it_is_removed(
    daemon: Daemon, images: dict[str, Archive]
) -> None:
    busybox = images["busybox"]
    import_image(daemon, busybox)
    ok(daemon.ctr("containers", "create", BUSYBOX, "c1"))
    ok(daemon.ctr("images", "rm", "--sync", BUSYBOX))
    # The image's blobs go; the container's snapshot, and the layer under it, stay.
    assert content(daemon) == set()
    assert snapshots(daemon) == {"c1": "Active", busybox.info.chain_ids[-1]: "Committed"}
    collect(daemon)
    assert set(snapshots(daemon)) == {"c1", busybox.info.chain_ids[-1]}

    # A container deleted without removing its snapshot (ctr removes it itself) leaves the
    # snapshot to the collector.
    with daemon.client() as client:
        client.call(client.containers.Delete, containers_pb2.DeleteContainerRequest(id="c1"))
    collect(daemon)
    assert snapshots(daemon) == {}
    assert backend_snapshots(daemon) == []


def test_ctr_containers_rm_lets_the_image_layers_go(daemon: Daemon, images: dict[str, Archive]) -> None:
    busybox = images["busybox"]
    import_image(daemon, busybox)
    ok(daemon.ctr("containers", "create", BUSYBOX, "c2"))
    ok(daemon.ctr("images", "rm", "--sync", BUSYBOX))
    ok(daemon.ctr("containers", "rm", "c2"))  # ctr removes the container's snapshot
    assert snapshots(daemon) == {busybox.info.chain_ids[-1]: "Committed"}
    collect(daemon)
    assert snapshots(daemon) == {}


def test_a_lease_holds_what_was_written_under_it(daemon: Daemon) -> None:
    ok(daemon.ctr("leases", "create", "--id", "hold"))  # ctr gives it a day to live
    held = write_blob(daemon, b"held by a lease\n", lease="hold")
    loose = write_blob(daemon, b"held by nothing\n")
    collect(daemon)
    assert content(daemon) == {held}
    assert not blob_file(daemon, loose).exists()

    ok(daemon.ctr("leases", "rm", "--sync", "hold"))
    assert content(daemon) == set()
    assert not blob_file(daemon, held).exists()


def test_an_expired_lease_holds_nothing_and_is_collected(daemon: Daemon) -> None:
    create_lease(daemon, "old", **{EXPIRE: in_seconds(-60)})
    create_lease(daemon, "forever")
    expired = write_blob(daemon, b"under an expired lease\n", lease="old")
    kept = write_blob(daemon, b"under a lease without expiry\n", lease="forever")
    collect(daemon)
    assert content(daemon) == {kept}
    assert leases(daemon) == {"forever"}
    assert not blob_file(daemon, expired).exists()


def test_a_lease_expiring_later_is_collected_when_it_expires(daemon: Daemon) -> None:
    ok(daemon.ctr("leases", "create", "--id", "brief", "--expires", "4s"))
    digest = write_blob(daemon, b"until the lease expires\n", lease="brief")
    collect(daemon)
    # Still in force (a slow machine may already have passed the expiry: then it is gone).
    present = content(daemon)
    assert present == {digest} or "brief" not in leases(daemon)
    # Nobody deletes anything now: the scheduler collects when the lease expires.
    wait_for(lambda: content(daemon) == set(), "content of the expired lease collected")
    assert leases(daemon) == set()


def test_gc_root_content_and_what_it_references_survive(daemon: Daemon) -> None:
    child = write_blob(daemon, b"referenced by a root\n")
    root = write_blob(
        daemon,
        b"a root\n",
        labels={"containerd.io/gc.root": "2024-01-01T00:00:00Z", "containerd.io/gc.ref.content.x": child},
    )
    loose = write_blob(daemon, b"nobody's\n")
    collect(daemon)
    assert content(daemon) == {root, child}
    assert not blob_file(daemon, loose).exists()

    ok(daemon.ctr("content", "label", root, "containerd.io/gc.root="))  # the label removed
    collect(daemon)
    assert content(daemon) == set()


def test_a_blob_shared_by_two_namespaces_stays_while_either_holds_it(
    daemon: Daemon, images: dict[str, Archive]
) -> None:
    busybox = images["busybox"]
    import_image(daemon, busybox, namespace="ns-a")
    import_image(daemon, busybox, namespace="ns-b")
    ok(daemon.ctr("images", "rm", "--sync", BUSYBOX, namespace="ns-a"))
    assert content(daemon, "ns-a") == set()
    assert snapshots(daemon, "ns-a") == {}
    assert busybox.blobs <= content(daemon, "ns-b")
    assert all(blob_file(daemon, digest).exists() for digest in busybox.blobs)
    check = ok(daemon.ctr("images", "check", namespace="ns-b")).stdout
    assert "complete" in check
    assert snapshots(daemon, "ns-b") == {busybox.info.chain_ids[-1]: "Committed"}

    ok(daemon.ctr("images", "rm", "--sync", BUSYBOX, namespace="ns-b"))
    assert not any(blob_file(daemon, digest).exists() for digest in busybox.blobs)
    assert backend_snapshots(daemon) == []


def test_ingests_in_progress_survive_a_collection(daemon: Daemon) -> None:
    data = b"0123456789" * 1000
    create_lease(daemon, "writing")
    create_lease(daemon, "lapsed", **{EXPIRE: in_seconds(-60)})
    with daemon.client() as client:
        # One stream left open half-way, one ingest left behind by a closed stream, one held
        # by a lease that has expired.
        with client.using_lease("writing"):
            open_stream = client.duplex(client.content.Write)
        open_stream.send(content_api.WriteContentRequest(action=STAT, ref="open", total=len(data)))
        open_stream.send(content_api.WriteContentRequest(action=WRITE, data=data[:4000]))
        resting = client.duplex(client.content.Write)
        resting.send(content_api.WriteContentRequest(action=STAT, ref="resting", total=len(data)))
        resting.send(content_api.WriteContentRequest(action=WRITE, data=data[:10]))
        resting.close()
        with client.using_lease("lapsed"):
            lapsed = client.duplex(client.content.Write)
        lapsed.send(content_api.WriteContentRequest(action=STAT, ref="lapsed", total=len(data)))
        lapsed.send(content_api.WriteContentRequest(action=WRITE, data=data[:10]))
        lapsed.close()
        assert ingests(daemon) == {"open", "resting", "lapsed"}

        collect(daemon)
        assert ingests(daemon) == {"open", "resting"}
        # The open write goes on and commits.
        open_stream.send(content_api.WriteContentRequest(action=WRITE, offset=4000, data=data[4000:]))
        reply = open_stream.send(
            content_api.WriteContentRequest(action=COMMIT, total=len(data), offset=len(data))
        )
        open_stream.close()
    assert reply.digest in content(daemon)
    collect(daemon)
    assert reply.digest in content(daemon)  # the lease "writing" holds it now
    assert ingests(daemon) == {"resting"}


def test_a_deletion_is_collected_by_the_scheduler(daemon: Daemon, images: dict[str, Archive]) -> None:
    import_image(daemon, images["busybox"])
    ok(daemon.ctr("images", "rm", BUSYBOX))  # no --sync: the scheduler does it, soon
    wait_for(lambda: content(daemon) == set(), "content of the removed image collected")
    wait_for(lambda: snapshots(daemon) == {}, "snapshots of the removed image collected")
    wait_for(lambda: backend_snapshots(daemon) == [], "backend snapshots removed")


def test_garbage_left_before_a_restart_is_collected_at_start(daemon: Daemon) -> None:
    kept = write_blob(daemon, b"a root\n", labels={"containerd.io/gc.root": "yes"})
    loose = write_blob(daemon, b"left behind\n")
    daemon.restart()
    wait_for(lambda: not blob_file(daemon, loose).exists(), "start-up collection")
    assert content(daemon) == {kept}


def test_stats_are_reported_in_introspection(daemon: Daemon) -> None:
    write_blob(daemon, b"garbage\n")
    collect(daemon)
    details = ok(daemon.ctr("plugins", "ls", "-d", "id==scheduler")).stdout.splitlines()
    assert "io.containerd.gc.v1" in details[0]
    table = details[details.index(next(line for line in details if line.startswith("Exports:"))) + 1 :]
    exports = dict(line.split(None, 1) for line in table if line.strip())
    assert int(exports["Collections"]) >= 1
    assert "LastCollection" in exports and "LastDuration" in exports
    assert int(exports["LastRemoved"]) >= 0
