"""The rules of the mark, checked on record graphs, and the mark and sweep over a real
metadata database."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from ctrpy import namespaces
from ctrpy.manager.gc import labels as gclabels
from ctrpy.manager.gc.mark import Graph, SnapshotRecord, load, mark
from ctrpy.manager.gc.sweep import sweep, unheld_blobs
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.images import ImageStore
from ctrpy.manager.metadata.leases import LeaseStore
from ctrpy.records import Descriptor, Image, LeaseResource

NOW = datetime(2030, 1, 1, tzinfo=UTC)
REF = "containerd.io/gc.ref.content"
SNAP_REF = "containerd.io/gc.ref.snapshot.overlayfs"


def later(seconds: float) -> str:
    return (NOW + timedelta(seconds=seconds)).strftime("%Y-%m-%dT%H:%M:%SZ")


class Builder:
    """A :class:`Graph` put together record by record."""

    def __init__(self) -> None:
        self.graph = Graph()

    def content(self, digest: str, ns: str = "ns", **labels: str) -> Builder:
        self.graph.content[(ns, digest)] = labels
        return self

    def snapshot(
        self, key: str, parent: str = "", ns: str = "ns", committing: bool = False, **labels: str
    ) -> Builder:
        record = SnapshotRecord(ns, "overlayfs", key, parent, labels, committing)
        self.graph.snapshots[(ns, record.node_key)] = record
        return self

    def image(self, name: str, target: str, ns: str = "ns", **labels: str) -> Builder:
        self.graph.images[(ns, name)] = (target, labels)
        return self

    def container(self, cid: str, snapshot: str = "", ns: str = "ns", **labels: str) -> Builder:
        self.graph.containers[(ns, cid)] = ("overlayfs" if snapshot else "", snapshot, labels)
        return self

    def lease(self, lid: str, *resources: tuple[str, str], ns: str = "ns", **labels: str) -> Builder:
        self.graph.leases[(ns, lid)] = labels
        self.graph.resources[(ns, lid)] = list(resources)
        return self

    def swept(self) -> tuple[set[str], list[str]]:
        """(digests of content rows to delete, snapshot keys to delete in order)."""
        marked = mark(self.graph, NOW)
        return {digest for _, digest in marked.content}, [r.key for r in marked.snapshots]


def test_an_image_keeps_its_manifest_config_layers_and_unpacked_chain() -> None:
    graph = (
        Builder()
        .image("img", "m")
        .content("m", **{f"{REF}.config": "c", f"{REF}.l.0": "l0", f"{REF}.l.1": "l1"})
        .content("c", **{SNAP_REF: "chain1"})
        .content("l0")
        .content("l1")
        .content("orphan")
        .snapshot("chain0")
        .snapshot("chain1", parent="chain0")
        .snapshot("lonely")
        .snapshot("lonely-child", parent="lonely")
    )
    content, snapshots = graph.swept()
    assert content == {"orphan"}
    assert snapshots == ["lonely-child", "lonely"]  # children before parents


def test_reference_label_names() -> None:
    found = list(
        gclabels.references(
            {
                REF: "a",
                f"{REF}.named": "b",
                f"{REF}/slashed": "c",
                f"{REF}x": "not-a-reference",
                f"{SNAP_REF}": "s1",
                f"{SNAP_REF}/named": "s2",
                "containerd.io/gc.ref.snapshot.": "no-snapshotter",
                f"{REF}.empty": "",
            }
        )
    )
    assert sorted(found) == [
        ("content", "a"),
        ("content", "b"),
        ("content", "c"),
        ("snapshot", "overlayfs/s1"),
        ("snapshot", "overlayfs/s2"),
    ]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2030-01-01T00:00:00Z", NOW),
        ("2030-01-01T02:00:00+02:00", NOW),
        ("2029-12-31T19:00:00-05:00", NOW),
        ("2030-01-01T00:00:00.123456789Z", NOW + timedelta(microseconds=123456)),
        ("2030-01-01 00:00:00Z", None),
        ("tomorrow", None),
        ("2030-13-01T00:00:00Z", None),
    ],
)
def test_expiry_times_are_read_as_rfc3339(text: str, expected: datetime | None) -> None:
    parsed = gclabels.parse_time(text)
    assert parsed == expected
    if parsed is not None:
        assert parsed.tzinfo is not None


def test_roots_labels_and_commits_keep_what_they_reach() -> None:
    graph = (
        Builder()
        .content("root", **{"containerd.io/gc.root": "x", REF: "from-root"})
        .content("from-root")
        .snapshot("rooted", **{"containerd.io/gc.root": "", REF: "from-snapshot"})
        .content("from-snapshot")
        .snapshot("committing-parent")
        .snapshot("committing", parent="committing-parent", committing=True)
        .container("c1", snapshot="active", **{f"{REF}.spec": "from-container"})
        .snapshot("active")
        .content("from-container")
        .container("c2")  # no snapshot at all: fine
    )
    assert graph.swept() == (set(), [])


def test_namespaces_do_not_reach_into_each_other() -> None:
    graph = Builder().image("img", "shared", ns="a").content("shared", ns="a").content("shared", ns="b")
    marked = mark(graph.graph, NOW)
    assert marked.content == [("b", "shared")]


def test_leases_in_force_keep_their_resources_and_expired_ones_are_swept() -> None:
    graph = (
        Builder()
        .lease("live", ("content", "held"), ("snapshots/overlayfs", "held-snap"), ("ingests", "ref-1"),
               **{gclabels.EXPIRE: later(60)})
        .lease("forever", ("ingests", "ref-2"))
        .lease("expired", ("content", "was-held"), ("ingests", "ref-3"), ("ingests", "ref-1"),
               **{gclabels.EXPIRE: later(-1)})
        .lease("unreadable", ("content", "kept-anyway"), **{gclabels.EXPIRE: "soon"})
        .content("held", **{REF: "referenced"})
        .content("referenced")
        .content("was-held")
        .content("kept-anyway")
        .snapshot("held-parent")
        .snapshot("held-snap", parent="held-parent")
    )
    marked = mark(graph.graph, NOW)
    assert marked.content == [("ns", "was-held")]
    assert marked.snapshots == []
    assert marked.leases == [("ns", "expired")]
    assert marked.live_ingests == {("ns", "ref-1"), ("ns", "ref-2")}
    assert marked.released_ingests == {("ns", "ref-3")}  # ref-1 is also held by "live"
    assert marked.next_expiry == NOW + timedelta(seconds=60)


def test_a_flat_lease_keeps_only_what_it_lists() -> None:
    graph = (
        Builder()
        .lease("flat", ("content", "listed"), ("snapshots/overlayfs", "child"), **{gclabels.FLAT: ""})
        .content("listed", **{REF: "not-followed"})
        .content("not-followed")
        .snapshot("parent", **{REF: "from-parent"})
        .snapshot("child", parent="parent", **{REF: "from-child"})
        .content("from-parent")
        .content("from-child")
    )
    content, snapshots = graph.swept()
    assert content == {"not-followed", "from-parent", "from-child"}
    assert snapshots == []  # a snapshot's parent is kept even through a flat lease


def test_back_references_attach_an_object_to_another() -> None:
    graph = (
        Builder()
        .image("img", "m")
        .content("m")
        .content("attached", **{"containerd.io/gc.bref.content": "m"})
        .content("attached-to-gone", **{"containerd.io/gc.bref.content.x": "gone"})
        .container("c1")
        .snapshot("for-container", **{"containerd.io/gc.bref.container": "c1"})
        .snapshot("for-image", **{"containerd.io/gc.bref.image": "img"})
        .content("for-snapshot", **{"containerd.io/gc.bref.snapshot.overlayfs": "for-image"})
    )
    assert graph.swept() == ({"attached-to-gone"}, [])


def test_a_deep_chain_is_swept_leaf_first() -> None:
    graph = Builder()
    for number in range(30):
        graph.snapshot(f"s{number:02}", parent=f"s{number - 1:02}" if number else "")
    _, snapshots = graph.swept()
    assert snapshots == [f"s{number:02}" for number in reversed(range(30))]


# Digests as the stores accept them (containerd validates image targets and content
# resources of leases).
AA, BB = "sha256:" + "a" * 64, "sha256:" + "b" * 64


def test_mark_and_sweep_over_a_real_database(tmp_path: Path) -> None:
    db = Database(tmp_path / "meta.db")
    try:
        with namespaces.using("ns"):
            db.call(ImageStore(db).create, Image("img", Descriptor("application/x", AA, 1)))
            db.call(LeaseStore(db).create, "old", {gclabels.EXPIRE: "2000-01-01T00:00:00Z"})
            db.call(LeaseStore(db).add_resource, "old", LeaseResource(BB, "content"))

        def populate() -> None:
            with db.transaction() as conn:
                for ns, digest in (("ns", AA), ("ns", BB), ("other", BB)):
                    conn.execute("INSERT OR IGNORE INTO namespaces VALUES (?, '{}', 0, 0)", (ns,))
                    conn.execute("INSERT INTO content VALUES (?, ?, '{}', 0, 0)", (ns, digest))
                conn.execute(
                    "INSERT INTO snapshots VALUES ('ns', 'overlayfs', 'p', 'ns/1/p', NULL, 3, '{}', 0, 0, NULL)"
                )
                conn.execute(
                    "INSERT INTO snapshots VALUES ('ns', 'overlayfs', 'c', 'ns/2/c', 'p', 2, '{}', 0, 0, NULL)"
                )

        db.call(populate)

        def collect() -> tuple[list[tuple[str, str]], list[str], list[tuple[str, str]], list[str]]:
            with db.transaction() as conn:
                swept = sweep(conn, mark(load(conn), datetime.now(UTC)))
                unheld = unheld_blobs(conn, (digest for _, digest in swept.content))
            return swept.content, [r.key for r in swept.snapshots], swept.leases, unheld

        content, snapshots, leases, unheld = db.call(collect)
        assert content == [("ns", BB), ("other", BB)]
        assert snapshots == ["c", "p"]
        assert leases == [("ns", "old")]
        assert unheld == [BB]

        def remaining() -> tuple[list[tuple[str, str]], int, int]:
            conn = db.conn
            rows = conn.execute("SELECT namespace, digest FROM content ORDER BY namespace").fetchall()
            snapshot_count = conn.execute("SELECT count(*) FROM snapshots").fetchone()[0]
            resource_count = conn.execute("SELECT count(*) FROM lease_resources").fetchone()[0]
            return rows, snapshot_count, resource_count

        assert db.call(remaining) == ([("ns", AA)], 0, 0)
    finally:
        db.close()
