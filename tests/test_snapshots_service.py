"""The Snapshots service of ctrpyd: namespaced keys over the backends, driven by the stock ctr.

The store-level tests at the end use ``SnapshotStore`` directly on a native backend, for what
ctr cannot provoke: concurrent calls, crash leftovers, what the backend is given.
"""

from __future__ import annotations

import asyncio
import json
import queue
import sqlite3
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, field_mask_pb2

from ctrpy import errors, namespaces
from ctrpy.api.containerd.events import snapshot_pb2 as snapshot_events
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2 as api
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc as api_grpc
from ctrpy.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound
from ctrpy.manager.metadata import db as metadata_db
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.snapshots import SnapshotStore
from ctrpy.mount import Mount, mount_all, unmount_all
from ctrpy.snapshotter.native import NativeSnapshotter
from ctrpy.snapshotter.overlay import OverlaySnapshotter
from ctrpy.snapshotter.types import Info
from tests.support.ctrpyd import Daemon
from tests.support.polling import wait_until

# --- helpers -----------------------------------------------------------------------------


class Mounts:
    """Mount points made by a test, all undone at the end whatever happened."""

    def __init__(self, base: Path) -> None:
        self.base = base
        self.points: list[Path] = []

    def run_ctr_mount_line(self, daemon: Daemon, key: str, name: str, *flags: str) -> Path:
        """``ctr snapshots mounts DIR KEY`` prints a mount(8) command: run it as it is."""
        return self.run_ctr_mount_line_in(daemon, "default", key, name, *flags)

    def run_ctr_mount_line_in(self, daemon: Daemon, namespace: str, key: str, name: str, *flags: str) -> Path:
        target = self.base / name
        target.mkdir(parents=True, exist_ok=True)
        result = daemon.ctr("snapshots", *flags, "mounts", str(target), key, namespace=namespace)
        assert result.returncode == 0, result.stderr
        assert result.stdout.startswith("mount -t "), result.stdout
        self.points.append(target)
        subprocess.run(["sh", "-c", result.stdout], check=True)
        return target

    def undo(self) -> None:
        for point in reversed(self.points):
            unmount_all(point, detach=True)


@pytest.fixture
def mounts(tmp_path: Path) -> Iterator[Mounts]:
    made = Mounts(tmp_path / "mnt")
    try:
        yield made
    finally:
        made.undo()


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, result.stderr
    return result.stdout


def listing(daemon: Daemon, *flags: str, namespace: str = "default") -> set[tuple[str, ...]]:
    """``ctr snapshots ls`` as a set of (key, [parent,] kind) rows."""
    out = ok(daemon.ctr("snapshots", *flags, "ls", namespace=namespace))
    return {tuple(line.split()) for line in out.splitlines()[1:]}


def stub(daemon: Daemon) -> tuple[grpc.Channel, api_grpc.SnapshotsStub]:
    channel = grpc.insecure_channel(f"unix:{daemon.address}")
    return channel, api_grpc.SnapshotsStub(channel)


def call(method: object, request: object, namespace: str = "default", lease: str | None = None) -> object:
    metadata = [(namespaces.NAMESPACE_HEADER, namespace)]
    if lease:
        metadata.append((namespaces.LEASE_HEADER, lease))
    try:
        return method(request, metadata=metadata, timeout=60)  # type: ignore[operator]
    except grpc.RpcError as exc:
        raise errors.from_grpc(exc) from None


# --- the schema ----------------------------------------------------------------------------


def test_migration_2_adds_the_snapshot_tables_and_keeps_the_data(tmp_path: Path) -> None:
    conn = sqlite3.connect(tmp_path / "meta.db", isolation_level=None)
    conn.execute("PRAGMA foreign_keys = ON")
    assert metadata_db.migrate(conn, metadata_db.MIGRATIONS[:1]) == 1
    conn.execute("INSERT INTO namespaces (name, created_at, updated_at) VALUES ('default', 1, 1)")
    assert metadata_db.migrate(conn, metadata_db.MIGRATIONS[:2]) == 2
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 2
    assert conn.execute("SELECT name FROM namespaces").fetchall() == [("default",)]
    tables = {row[0] for row in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"snapshots", "snapshot_sequences"} <= tables
    insert = (
        "INSERT INTO snapshots (namespace, snapshotter, key, backend_key, parent, kind, created_at,"
        " updated_at) VALUES ('default', 'overlayfs', ?, ?, ?, 3, 1, 1)"
    )
    conn.execute(insert, ("base", "default/1/base", None))
    conn.execute(insert, ("child", "default/2/child", "base"))
    with pytest.raises(sqlite3.IntegrityError):  # a parent must exist in the same namespace
        conn.execute(insert, ("orphan", "default/3/orphan", "missing"))
    with pytest.raises(sqlite3.IntegrityError):  # and cannot go while it has children
        conn.execute("DELETE FROM snapshots WHERE key = 'base'")
    with pytest.raises(sqlite3.IntegrityError):  # one backend key, one row
        conn.execute(insert, ("again", "default/1/base", None))


def test_migration_2_is_one_transaction(tmp_path: Path) -> None:
    """It runs statement by statement (executescript would commit half of it)."""
    conn = sqlite3.connect(tmp_path / "meta.db", isolation_level=None)
    metadata_db.migrate(conn, metadata_db.MIGRATIONS[:1])
    conn.execute("CREATE TABLE snapshot_sequences (x INTEGER)")  # makes migration 2 fail midway
    with pytest.raises(sqlite3.OperationalError):
        metadata_db.migrate(conn, metadata_db.MIGRATIONS[:2])
    assert conn.execute("PRAGMA user_version").fetchone()[0] == 1
    assert not conn.execute("SELECT 1 FROM sqlite_master WHERE name = 'snapshots'").fetchone()


# --- ctr against ctrpyd --------------------------------------------------------------------


def test_ctr_snapshot_life(daemon: Daemon, mounts: Mounts) -> None:
    """prepare, mounts (mounted by the test), commit, view, info, label, usage, ls, tree, rm."""
    ok(daemon.ctr("snapshots", "prepare", "work", ""))
    root = mounts.run_ctr_mount_line(daemon, "work", "work")
    (root / "hello").write_text("from the first layer\n")
    (root / "dir").mkdir()
    unmount_all(root)
    ok(daemon.ctr("snapshots", "commit", "layer1", "work"))
    assert listing(daemon) == {("layer1", "Committed")}

    ok(daemon.ctr("snapshots", "prepare", "work2", "layer1"))
    upper = mounts.run_ctr_mount_line(daemon, "work2", "work2")
    assert (upper / "hello").read_text() == "from the first layer\n"
    (upper / "second").write_text("2\n")
    unmount_all(upper)
    ok(daemon.ctr("snapshots", "commit", "layer2", "work2"))
    ok(daemon.ctr("snapshots", "view", "look", "layer2"))
    view = mounts.run_ctr_mount_line(daemon, "look", "look")
    assert sorted(p.name for p in view.iterdir()) == ["dir", "hello", "second"]
    with pytest.raises(OSError):
        (view / "nope").write_text("read-only")
    unmount_all(view)

    info = json.loads(ok(daemon.ctr("snapshots", "info", "layer2")))
    assert (info["Kind"], info["Name"], info["Parent"]) == ("Committed", "layer2", "layer1")
    assert "containerd.io/gc.root" in info["Labels"]  # ctr's commit sets it; kept as given
    assert info["Created"] == info["Updated"]

    # Labels whose keys hold dots and slashes: the mask splits at the first dot only (G2).
    label = "containerd.io/gc.ref.snapshot.overlayfs/extra.dots"
    printed = ok(daemon.ctr("snapshots", "label", "layer2", f"{label}=v1", "plain=x"))
    assert f"{label}=v1" in printed
    labels = json.loads(ok(daemon.ctr("snapshots", "info", "layer2")))["Labels"]
    assert labels[label] == "v1" and labels["plain"] == "x"
    ok(daemon.ctr("snapshots", "label", "layer2", f"{label}="))  # an empty value removes it
    labels = json.loads(ok(daemon.ctr("snapshots", "info", "layer2")))["Labels"]
    assert label not in labels and labels["plain"] == "x"

    usage = {
        line.split()[0]: line.split()[1:] for line in ok(daemon.ctr("snapshots", "usage")).splitlines()[1:]
    }
    assert set(usage) == {"layer1", "layer2", "look"}
    assert ok(daemon.ctr("snapshots", "tree")).split() == ["layer1", "\\_", "layer2", "\\_", "look"]
    assert listing(daemon) == {
        ("layer1", "Committed"),
        ("layer2", "layer1", "Committed"),
        ("look", "layer2", "View"),
    }

    refused = daemon.ctr("snapshots", "rm", "layer1")
    assert refused.returncode == 1
    assert "failed precondition" in refused.stderr and '"layer1"' in refused.stderr
    missing = daemon.ctr("snapshots", "rm", "never-was")
    assert missing.returncode == 1 and "not found" in missing.stderr
    ok(daemon.ctr("snapshots", "rm", "look", "layer2", "layer1"))
    assert listing(daemon) == set()
    # The backend lets go of everything too, right after the calls (in the background).
    backend = daemon.root / "snapshots" / "overlayfs" / "snapshots"
    wait_until(lambda: not list(backend.iterdir()), "the backend's directories to go")


def test_ctr_native_snapshotter(daemon: Daemon, mounts: Mounts) -> None:
    native = ("--snapshotter", "native")
    ok(daemon.ctr("snapshots", *native, "prepare", "n-work", ""))
    root = mounts.run_ctr_mount_line(daemon, "n-work", "n-work", *native)
    (root / "file").write_text("native\n")
    unmount_all(root)
    ok(daemon.ctr("snapshots", *native, "commit", "n-layer", "n-work"))
    ok(daemon.ctr("snapshots", *native, "view", "n-look", "n-layer"))
    view = mounts.run_ctr_mount_line(daemon, "n-look", "n-look", *native)
    assert (view / "file").read_text() == "native\n"
    unmount_all(view)
    assert listing(daemon, *native) == {("n-layer", "Committed"), ("n-look", "n-layer", "View")}
    assert listing(daemon) == set()  # overlayfs has none of them
    assert (daemon.root / "snapshots" / "native" / "metadata.db").exists()
    unknown = daemon.ctr("snapshots", "--snapshotter", "zfs", "ls")
    assert unknown.returncode == 1
    assert "snapshotter not loaded: zfs: invalid argument" in unknown.stderr


def test_namespaces_are_isolated(daemon: Daemon, mounts: Mounts) -> None:
    # The same key in two namespaces: two snapshots, each with its own content and name.
    for ns in ("team-a", "team-b"):
        ok(daemon.ctr("snapshots", "prepare", "same-key", "", namespace=ns))
    for ns in ("team-a", "team-b"):
        root = mounts.run_ctr_mount_line_in(daemon, ns, "same-key", f"{ns}-work")
        (root / "owner").write_text(ns)
        unmount_all(root)
        ok(daemon.ctr("snapshots", "commit", "shared-name", "same-key", namespace=ns))
    for ns in ("team-a", "team-b"):
        assert listing(daemon, namespace=ns) == {("shared-name", "Committed")}
        ok(daemon.ctr("snapshots", "view", "peek", "shared-name", namespace=ns))
        view = mounts.run_ctr_mount_line_in(daemon, ns, "peek", f"{ns}-peek")
        assert (view / "owner").read_text() == ns
        unmount_all(view)
    assert listing(daemon) == set()
    assert daemon.ctr("snapshots", "info", "shared-name").returncode == 1

    blocked = daemon.ctr("namespaces", "rm", "team-a")
    assert blocked.returncode == 1 and "still has snapshots" in blocked.stderr
    ok(daemon.ctr("snapshots", "rm", "peek", "shared-name", namespace="team-a"))
    assert listing(daemon, namespace="team-a") == set()
    assert listing(daemon, namespace="team-b") == {
        ("shared-name", "Committed"),
        ("peek", "shared-name", "View"),
    }
    ok(daemon.ctr("namespaces", "rm", "team-a"))


def test_lease_attachment(daemon: Daemon) -> None:
    with daemon.client() as client:
        client.call(client.leases.Create, leases_pb2.CreateRequest(id="unpack"))
        channel, snapshots = stub(daemon)
        try:
            call(
                snapshots.Prepare,
                api.PrepareSnapshotRequest(snapshotter="overlayfs", key="extract-1 sha256:aa"),
                lease="unpack",
            )
            call(snapshots.View, api.ViewSnapshotRequest(snapshotter="native", key="v1"), lease="unpack")

            def held() -> set[tuple[str, str]]:
                found = client.call(client.leases.ListResources, leases_pb2.ListResourcesRequest(id="unpack"))
                return {(r.type, r.id) for r in found.resources}

            assert held() == {("snapshots/overlayfs", "extract-1 sha256:aa"), ("snapshots/native", "v1")}
            call(
                snapshots.Commit,
                api.CommitSnapshotRequest(
                    snapshotter="overlayfs", name="sha256:aa", key="extract-1 sha256:aa"
                ),
                lease="unpack",
            )
            # As in containerd: the name joins the lease, the gone key leaves it.
            assert held() == {("snapshots/overlayfs", "sha256:aa"), ("snapshots/native", "v1")}
            call(snapshots.Remove, api.RemoveSnapshotRequest(snapshotter="native", key="v1"), lease="unpack")
            assert held() == {("snapshots/overlayfs", "sha256:aa")}
            # A lease that does not exist: NotFound, and nothing is created anywhere.
            with pytest.raises(NotFound, match="lease does not exist"):
                call(
                    snapshots.Prepare,
                    api.PrepareSnapshotRequest(snapshotter="overlayfs", key="k2"),
                    lease="nope",
                )
            assert listing(daemon) == {("sha256:aa", "Committed")}
            assert len(list((daemon.root / "snapshots" / "overlayfs" / "snapshots").iterdir())) == 1
        finally:
            channel.close()


def test_events_are_published_after_each_change(daemon: Daemon) -> None:
    received: queue.Queue[events_pb2.Envelope] = queue.Queue()
    client = daemon.client(timeout=None)
    stream = client.events.Subscribe(
        events_pb2.SubscribeRequest(filters=['topic~="^/(snapshot|test)/"']), metadata=client.metadata
    )

    def read() -> None:
        try:
            for envelope in stream:
                received.put(envelope)
        except grpc.RpcError:
            pass  # cancelled at the end

    reader = threading.Thread(target=read, daemon=True)
    reader.start()
    try:
        # Publish markers until one arrives: then the subscription is certainly in place.
        while True:
            marker = events_pb2.PublishRequest(topic="/test/ready", event=any_pb2.Any(type_url="test.Ready"))
            client.call(client.events.Publish, marker)
            try:
                if received.get(timeout=0.2).topic == "/test/ready":
                    break
            except queue.Empty:
                continue
        ok(daemon.ctr("snapshots", "prepare", "k", ""))
        ok(daemon.ctr("snapshots", "view", "v", ""))  # no event for a view, as in containerd
        ok(daemon.ctr("snapshots", "commit", "n", "k"))
        ok(daemon.ctr("snapshots", "rm", "n"))
        refused = daemon.ctr("snapshots", "rm", "n")  # a failure publishes nothing
        assert refused.returncode == 1
        got: list[events_pb2.Envelope] = []
        while len(got) < 3:
            envelope = received.get(timeout=30)
            if envelope.topic != "/test/ready":
                got.append(envelope)
    finally:
        stream.cancel()
        client.close()
    assert [(e.namespace, e.topic, e.event.type_url) for e in got] == [
        ("default", "/snapshot/prepare", "containerd.events.SnapshotPrepare"),
        ("default", "/snapshot/commit", "containerd.events.SnapshotCommit"),
        ("default", "/snapshot/remove", "containerd.events.SnapshotRemove"),
    ]
    prepare = snapshot_events.SnapshotPrepare.FromString(got[0].event.value)
    assert (prepare.key, prepare.parent, prepare.snapshotter) == ("k", "", "overlayfs")
    commit = snapshot_events.SnapshotCommit.FromString(got[1].event.value)
    assert (commit.key, commit.name, commit.snapshotter) == ("k", "n", "overlayfs")
    remove = snapshot_events.SnapshotRemove.FromString(got[2].event.value)
    assert (remove.key, remove.snapshotter) == ("n", "overlayfs")


def test_update_masks_and_list_batches(daemon: Daemon) -> None:
    channel, snapshots = stub(daemon)
    # Everything under a lease: unleased snapshots are the collector's to take, and the
    # start-up collection may run in the middle of the test (as containerd's would).
    with daemon.client() as client:
        client.call(client.leases.Create, leases_pb2.CreateRequest(id="masks"))
    try:
        call(
            snapshots.Prepare,
            api.PrepareSnapshotRequest(snapshotter="overlayfs", key="a", labels={"x": "1", "y": "2"}),
            lease="masks",
        )
        junk = api.Info(
            name="a", parent="zzz", kind=api.COMMITTED, labels={"x": "changed", "new.key/with.dots": "v"}
        )
        masked = field_mask_pb2.FieldMask(paths=["labels.x", "labels.new.key/with.dots", "labels.y"])
        updated = call(
            snapshots.Update,
            api.UpdateSnapshotRequest(snapshotter="overlayfs", info=junk, update_mask=masked),
        )
        info = updated.info  # type: ignore[attr-defined]
        assert (info.name, info.parent, info.kind) == ("a", "", api.ACTIVE)
        assert dict(info.labels) == {"x": "changed", "new.key/with.dots": "v"}
        for path in ("kind", "parent", "name", "labels."):
            with pytest.raises(InvalidArgument, match="cannot update"):
                call(
                    snapshots.Update,
                    api.UpdateSnapshotRequest(
                        snapshotter="overlayfs",
                        info=api.Info(name="a"),
                        update_mask=field_mask_pb2.FieldMask(paths=[path]),
                    ),
                )
        with pytest.raises(NotFound):
            call(
                snapshots.Update,
                api.UpdateSnapshotRequest(snapshotter="overlayfs", info=api.Info(name="gone")),
            )
        with pytest.raises(InvalidArgument, match="snapshotter argument missing"):
            call(snapshots.Stat, api.StatSnapshotRequest(key="a"))

        for i in range(230):
            call(snapshots.View, api.ViewSnapshotRequest(snapshotter="overlayfs", key=f"view-{i:03d}"), lease="masks")
        batches = list(
            snapshots.List(
                api.ListSnapshotsRequest(snapshotter="overlayfs"),
                metadata=[(namespaces.NAMESPACE_HEADER, "default")],
            )
        )
        assert [len(b.info) for b in batches] == [100, 100, 31]
        only = list(
            snapshots.List(
                api.ListSnapshotsRequest(snapshotter="overlayfs", filters=["kind==active"]),
                metadata=[(namespaces.NAMESPACE_HEADER, "default")],
            )
        )
        assert [i.name for b in only for i in b.info] == ["a"]
        usage = call(snapshots.Usage, api.UsageRequest(snapshotter="overlayfs", key="a"))
        assert usage.inodes >= 1  # type: ignore[attr-defined]
    finally:
        channel.close()


def test_restart_keeps_everything(daemon: Daemon, mounts: Mounts) -> None:
    ok(daemon.ctr("snapshots", "prepare", "w", ""))
    root = mounts.run_ctr_mount_line(daemon, "w", "w")
    (root / "kept").write_text("across restarts\n")
    unmount_all(root)
    ok(daemon.ctr("snapshots", "commit", "base", "w"))
    ok(daemon.ctr("snapshots", "prepare", "active", "base"))
    ok(daemon.ctr("snapshots", "label", "base", "k=v"))
    ok(daemon.ctr("snapshots", "prepare", "other-ns-key", "", namespace="elsewhere"))
    before = (listing(daemon), json.loads(ok(daemon.ctr("snapshots", "info", "base"))))
    daemon.restart()
    assert (listing(daemon), json.loads(ok(daemon.ctr("snapshots", "info", "base")))) == before
    assert listing(daemon, namespace="elsewhere") == {("other-ns-key", "Active")}
    again = mounts.run_ctr_mount_line(daemon, "active", "again")
    assert (again / "kept").read_text() == "across restarts\n"
    unmount_all(again)
    ok(daemon.ctr("snapshots", "commit", "top", "active"))
    assert listing(daemon) == {("base", "Committed"), ("top", "base", "Committed")}


def test_crash_leftovers_are_cleaned_at_start(daemon: Daemon) -> None:
    """A backend snapshot without a row (a prepare cut short) is removed when ctrpyd starts;
    an interrupted commit is finished or dropped, according to what the backend did."""
    ok(daemon.ctr("snapshots", "prepare", "keep", ""))
    ok(daemon.ctr("snapshots", "prepare", "half-committed", ""))
    ok(daemon.ctr("snapshots", "prepare", "never-committed", ""))
    daemon.stop()
    backend_root = daemon.root / "snapshots" / "overlayfs"
    with OverlaySnapshotter(backend_root) as backend:
        backend.prepare("default/900/crashed-prepare", "")
        backend.commit("default/901/crashed-child-base", "default/900/crashed-prepare")
        backend.prepare("default/902/crashed-child", "default/901/crashed-child-base")
        keys = {i.name: i for i in backend.walk()}
        half = next(k for k in keys if k.endswith("/half-committed"))
        backend.commit("default/903/done", half)
    with sqlite3.connect(daemon.root / "meta.db") as conn:
        for key, name, backend_name in (
            ("half-committed", "done", "default/903/done"),
            ("never-committed", "not-done", "default/904/not-done"),
        ):
            # gc.root, as ctr's own commit sets it: without it the collector at start-up would
            # rightly remove the unreferenced result.
            labels = {"l": key, "containerd.io/gc.root": "2026-01-01T00:00:00Z"}
            intent = json.dumps({"name": name, "backend_key": backend_name, "labels": labels})
            conn.execute("UPDATE snapshots SET commit_intent = ? WHERE key = ?", (intent, key))
    daemon.start()
    assert listing(daemon) == {("keep", "Active"), ("done", "Committed"), ("never-committed", "Active")}
    assert json.loads(ok(daemon.ctr("snapshots", "info", "done")))["Labels"]["l"] == "half-committed"
    ok(daemon.ctr("snapshots", "commit", "later", "never-committed"))  # its intent was dropped
    daemon.stop()
    with OverlaySnapshotter(backend_root) as backend:
        names = {i.name.split("/", 2)[2] for i in backend.walk()}
    assert names == {"keep", "done", "later"}


def test_unusable_overlayfs_is_a_skipped_plugin(tmp_path: Path) -> None:
    """With its root on overlayfs, the overlayfs snapshotter cannot work: ctrpyd says so and
    serves the rest."""
    daemon = Daemon()
    try:
        layers = daemon.base / "layers"
        for name in ("lower", "upper", "work"):
            (layers / name).mkdir(parents=True)
        daemon.root.mkdir()
        mount_all(
            [
                Mount(
                    "overlay",
                    "overlay",
                    options=(
                        f"lowerdir={layers / 'lower'}",
                        f"upperdir={layers / 'upper'}",
                        f"workdir={layers / 'work'}",
                    ),
                )
            ],
            daemon.root,
        )
        daemon.start()
        plugins = ok(daemon.ctr("plugins", "ls"))
        rows = {tuple(line.split()[:2]): line.split()[-1] for line in plugins.splitlines()[1:]}
        assert rows[("io.containerd.snapshotter.v1", "overlayfs")] == "skip"
        assert rows[("io.containerd.snapshotter.v1", "native")] == "ok"
        assert rows[("io.containerd.grpc.v1", "snapshots")] == "ok"
        refused = daemon.ctr("snapshots", "prepare", "x", "")
        assert refused.returncode == 1 and "snapshotter not loaded: overlayfs" in refused.stderr
        ok(daemon.ctr("snapshots", "--snapshotter", "native", "prepare", "x", ""))
    finally:
        daemon.cleanup()


# --- the store itself ------------------------------------------------------------------------


@pytest.fixture
def store(tmp_path: Path) -> Iterator[SnapshotStore]:
    db = Database(tmp_path / "meta.db")
    backend = NativeSnapshotter(tmp_path / "native")
    try:
        yield SnapshotStore(db, "native", backend)
    finally:
        backend.close()
        db.close()


def run(namespace: str, work: object) -> object:
    with namespaces.using(namespace):
        return asyncio.run(work)  # type: ignore[arg-type]


def test_backend_sees_backend_keys_and_inherited_labels_only(store: SnapshotStore) -> None:
    labels = {
        "containerd.io/snapshot/remote": "yes",
        "containerd.io/snapshot.ref": "sha256:x",
        "containerd.io/gc.root": "now",
        "mine": "1",
    }
    run("ns1", store.prepare("k", "", labels))
    (info,) = list(store.backend.walk())
    assert info.name == "ns1/1/k"
    assert dict(info.labels) == {
        "containerd.io/snapshot/remote": "yes",
        "containerd.io/snapshot.ref": "sha256:x",
    }
    assert dict(run("ns1", store.stat("k")).labels) == labels  # type: ignore[attr-defined]
    # Changing an inherited label reaches the backend; the others stay in meta.db only.
    run(
        "ns1",
        store.update(
            Info(name="k", labels={"containerd.io/snapshot/remote": ""}),
            ["labels.containerd.io/snapshot/remote", "labels.mine"],
        ),
    )
    assert dict(store.backend.stat("ns1/1/k").labels) == {"containerd.io/snapshot.ref": "sha256:x"}
    assert dict(run("ns1", store.stat("k")).labels) == {  # type: ignore[attr-defined]
        "containerd.io/snapshot.ref": "sha256:x",
        "containerd.io/gc.root": "now",
    }
    # Errors name the namespace's keys, not the backend's.
    with pytest.raises(FailedPrecondition, match='snapshot "c" is not active or view') as caught:
        run("ns1", _commit_then_mounts(store))
    assert "ns1/" not in str(caught.value)


async def _commit_then_mounts(store: SnapshotStore) -> None:
    await store.commit("c", "k")
    await store.mounts("c")


def test_concurrent_prepares_of_one_key_leave_one_snapshot(store: SnapshotStore) -> None:
    async def contend() -> list[str]:
        async def one() -> str:
            try:
                await store.prepare("same", "")
                return "ok"
            except AlreadyExists:
                return "exists"

        return await asyncio.gather(*(one() for _ in range(12)))

    assert sorted(run("default", contend())) == ["exists"] * 11 + ["ok"]  # type: ignore[arg-type]
    assert [i.name for i in store.backend.walk()] == ["default/1/same"]


def test_parent_in_use_by_a_prepare_cannot_be_removed(store: SnapshotStore) -> None:
    async def race() -> tuple[object, object]:
        await store.prepare("base-a", "")
        await store.commit("base", "base-a")
        results = await asyncio.gather(
            store.prepare("child", "base"), store.remove("base"), return_exceptions=True
        )
        return results[0], results[1]

    child, removal = run("default", race())  # type: ignore[misc]
    assert isinstance(child, list)
    assert isinstance(removal, FailedPrecondition)
    assert {i.name for i in run("default", store.walk())} == {"base", "child"}  # type: ignore[attr-defined]


def test_cleanup_spares_in_flight_and_referenced_snapshots(store: SnapshotStore) -> None:
    store.backend.prepare("default/77/orphan-base", "")
    store.backend.commit("default/78/orphan-layer", "default/77/orphan-base")
    store.backend.prepare("default/79/orphan-child", "default/78/orphan-layer")

    async def both() -> int:
        await store.prepare("kept", "")
        _, removed = await asyncio.gather(store.prepare("racing", ""), store.cleanup())
        return removed

    assert run("default", both()) == 2
    assert {i.name for i in store.backend.walk()} == {"default/1/kept", "default/2/racing"}


def test_namespaces_have_their_own_keys(store: SnapshotStore) -> None:
    async def build(tag: str) -> None:
        await store.prepare("k", "", {"tag": tag})
        await store.commit("layer", "k")
        await store.view("v", "layer")

    run("one", build("1"))
    run("two", build("2"))
    with pytest.raises(AlreadyExists):
        run("one", store.prepare("layer", ""))
    with pytest.raises(NotFound):
        run("three", store.stat("layer"))
    assert {i.name for i in run("two", store.walk())} == {"layer", "v"}  # type: ignore[attr-defined]
    assert len(list(store.backend.walk())) == 4
