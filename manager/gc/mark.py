"""The mark phase: read every namespace's records and find what is still reachable.

Runs on the database thread inside the collection's transaction (see ``collector``), so the
records cannot change between the mark and the sweep. Nodes are ``(kind, namespace, key)``:
content by digest, snapshots by ``<snapshotter>/<key>``, images by name, containers by id.
A lease labelled flat marks its objects as *flat* nodes, which keep their snapshot parents but
follow no labels; an object reached both ways is kept either way.
"""

from __future__ import annotations

import json
import sqlite3
from collections import defaultdict
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import datetime

from ctrpy.records import Labels

from . import labels as gclabels
from .labels import CONTAINER, CONTENT, IMAGE, SNAPSHOT

Node = tuple[str, str, str]  # (kind, namespace, key)

_FLAT = "+flat"  # suffix of the kind of a node reached through a flat lease
_INGESTS = "ingests"
_SNAPSHOTS = "snapshots/"


@dataclass(frozen=True)
class SnapshotRecord:
    """What the mark and the sweep need of one snapshot row."""

    namespace: str
    snapshotter: str
    key: str
    parent: str
    labels: Labels
    committing: bool

    @property
    def node_key(self) -> str:
        return f"{self.snapshotter}/{self.key}"


@dataclass
class Graph:
    """Every record the collector looks at, across all namespaces."""

    content: dict[tuple[str, str], Labels] = field(default_factory=dict)
    snapshots: dict[tuple[str, str], SnapshotRecord] = field(default_factory=dict)
    images: dict[tuple[str, str], tuple[str, Labels]] = field(default_factory=dict)
    containers: dict[tuple[str, str], tuple[str, str, Labels]] = field(default_factory=dict)
    leases: dict[tuple[str, str], Labels] = field(default_factory=dict)
    resources: dict[tuple[str, str], list[tuple[str, str]]] = field(default_factory=dict)


@dataclass(frozen=True)
class Marked:
    """The outcome of the mark: what to sweep, and what the rest of the collection needs."""

    content: list[tuple[str, str]]  # (namespace, digest) rows to delete
    snapshots: list[SnapshotRecord]  # rows to delete, every child before its parent
    leases: list[tuple[str, str]]  # (namespace, id) of expired leases
    live_ingests: frozenset[tuple[str, str]]  # (namespace, ref) held by leases still in force
    released_ingests: frozenset[tuple[str, str]]  # held only by the expired leases
    next_expiry: datetime | None  # the earliest lease expiry still to come


def _labels(text: str) -> Labels:
    loaded = json.loads(text)
    return loaded if isinstance(loaded, dict) else {}


def load(conn: sqlite3.Connection) -> Graph:
    """Read the records the collection works on."""
    graph = Graph()
    for ns, digest, text in conn.execute("SELECT namespace, digest, labels FROM content"):
        graph.content[(ns, digest)] = _labels(text)
    for ns, snapshotter, key, parent, text, intent in conn.execute(
        "SELECT namespace, snapshotter, key, parent, labels, commit_intent FROM snapshots"
    ):
        record = SnapshotRecord(ns, snapshotter, key, parent or "", _labels(text), intent is not None)
        graph.snapshots[(ns, record.node_key)] = record
    for ns, name, text, target in conn.execute("SELECT namespace, name, labels, target_digest FROM images"):
        graph.images[(ns, name)] = (target, _labels(text))
    for ns, cid, text, snapshotter, key in conn.execute(
        "SELECT namespace, id, labels, snapshotter, snapshot_key FROM containers"
    ):
        graph.containers[(ns, cid)] = (snapshotter, key, _labels(text))
    for ns, lid, text in conn.execute("SELECT namespace, id, labels FROM leases"):
        graph.leases[(ns, lid)] = _labels(text)
    for ns, lid, rtype, rid in conn.execute(
        "SELECT namespace, lease_id, type, resource_id FROM lease_resources"
    ):
        graph.resources.setdefault((ns, lid), []).append((rtype, rid))
    return graph


class _Marker:
    def __init__(self, graph: Graph, now: datetime) -> None:
        self.graph = graph
        self.now = now
        self.back: dict[Node, list[Node]] = defaultdict(list)
        self.live_ingests: set[tuple[str, str]] = set()
        self.released_ingests: set[tuple[str, str]] = set()
        self.expired: list[tuple[str, str]] = []
        self.next_expiry: datetime | None = None

    def roots(self) -> Iterator[Node]:
        graph = self.graph
        for (ns, lease_id), lease_labels in sorted(graph.leases.items()):
            held = graph.resources.get((ns, lease_id), [])
            expiry = gclabels.expires_at(lease_labels)
            if expiry is not None and expiry <= self.now:
                self.expired.append((ns, lease_id))
                self.released_ingests.update((ns, rid) for rtype, rid in held if rtype == _INGESTS)
                continue
            if expiry is not None and (self.next_expiry is None or expiry < self.next_expiry):
                self.next_expiry = expiry
            suffix = _FLAT if gclabels.is_flat(lease_labels) else ""
            for rtype, rid in held:
                if rtype == CONTENT:
                    yield CONTENT + suffix, ns, rid
                elif rtype.startswith(_SNAPSHOTS):
                    yield SNAPSHOT + suffix, ns, f"{rtype[len(_SNAPSHOTS):]}/{rid}"
                elif rtype == _INGESTS:
                    self.live_ingests.add((ns, rid))
        self.released_ingests -= self.live_ingests
        for ns, name in graph.images:
            yield IMAGE, ns, name
        for ns, cid in graph.containers:
            yield CONTAINER, ns, cid
        for (ns, digest), content_labels in graph.content.items():
            self._note_back_references((CONTENT, ns, digest), content_labels)
            if gclabels.is_root(content_labels):
                yield CONTENT, ns, digest
        for (ns, node_key), record in graph.snapshots.items():
            self._note_back_references((SNAPSHOT, ns, node_key), record.labels)
            if record.committing or gclabels.is_root(record.labels):
                yield SNAPSHOT, ns, node_key

    def _note_back_references(self, node: Node, labels: Labels) -> None:
        for kind, key in gclabels.back_references(labels):
            self.back[(kind, node[1], key)].append(node)

    def references(self, node: Node) -> Iterable[Node]:
        kind, ns, key = node
        graph = self.graph
        yield from self.back.get(node, ())
        if kind in (CONTENT, CONTENT + _FLAT):
            content_labels = graph.content.get((ns, key))
            if content_labels is not None and kind == CONTENT:
                yield from _labelled(ns, content_labels)
        elif kind in (SNAPSHOT, SNAPSHOT + _FLAT):
            record = graph.snapshots.get((ns, key))
            if record is None:
                return  # a reference to a snapshot that does not exist: a dead edge
            if record.parent:
                yield kind, ns, f"{record.snapshotter}/{record.parent}"
            if kind == SNAPSHOT:
                yield from _labelled(ns, record.labels)
        elif kind == IMAGE:
            image = graph.images.get((ns, key))
            if image is not None:
                yield CONTENT, ns, image[0]
                yield from _labelled(ns, image[1])
        elif kind == CONTAINER:
            container = graph.containers.get((ns, key))
            if container is not None:
                snapshotter, snapshot_key, container_labels = container
                if snapshotter and snapshot_key:
                    yield SNAPSHOT, ns, f"{snapshotter}/{snapshot_key}"
                yield from _labelled(ns, container_labels)


def _labelled(ns: str, labels: Labels) -> Iterator[Node]:
    for kind, key in gclabels.references(labels):
        yield kind, ns, key


def _children_first(records: list[SnapshotRecord]) -> list[SnapshotRecord]:
    """``records`` ordered so that every snapshot comes before its parent."""
    by_key = {(r.namespace, r.snapshotter, r.key): r for r in records}
    depth: dict[tuple[str, str, str], int] = {}

    def depth_of(ident: tuple[str, str, str]) -> int:
        chain: list[tuple[str, str, str]] = []
        while ident in by_key and ident not in depth and ident not in chain:
            chain.append(ident)
            record = by_key[ident]
            ident = (record.namespace, record.snapshotter, record.parent)
        base = depth.get(ident, -1)
        for step in reversed(chain):
            base += 1
            depth[step] = base
        return depth[chain[0]] if chain else depth[ident]

    for ident in by_key:
        depth_of(ident)
    return sorted(records, key=lambda r: (-depth[(r.namespace, r.snapshotter, r.key)], r.namespace, r.key))


def mark(graph: Graph, now: datetime) -> Marked:
    """Mark what the roots reach in ``graph`` at time ``now``; the rest is for the sweep."""
    marker = _Marker(graph, now)
    reached: set[Node] = set()
    pending = list(marker.roots())
    while pending:
        node = pending.pop()
        if node in reached:
            continue
        reached.add(node)
        pending.extend(n for n in marker.references(node) if n not in reached)
    kept = {(kind.removesuffix(_FLAT), ns, key) for kind, ns, key in reached}
    content = sorted(key for key in graph.content if (CONTENT, *key) not in kept)
    snapshots = [r for (ns, nk), r in graph.snapshots.items() if (SNAPSHOT, ns, nk) not in kept]
    return Marked(
        content=content,
        snapshots=_children_first(snapshots),
        leases=marker.expired,
        live_ingests=frozenset(marker.live_ingests),
        released_ingests=frozenset(marker.released_ingests),
        next_expiry=marker.next_expiry,
    )
