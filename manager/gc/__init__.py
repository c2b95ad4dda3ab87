"""Garbage collection: containerd's mark-and-sweep over the metadata database.

What is kept, and why (containerd: ``core/metadata/gc.go``, ``docs/garbage-collection.md``):

- **Roots**: every image (it keeps its target content), every container (it keeps its
  snapshot), every lease that has not expired (``containerd.io/gc.expire`` in the past means
  expired) with all its resources, content and snapshots labelled ``containerd.io/gc.root``,
  and snapshots in the middle of a commit.
- **References**: ``containerd.io/gc.ref.content[.<name>]`` labels point at content and
  ``containerd.io/gc.ref.snapshot.<snapshotter>[/<name>]`` labels at snapshots, on content,
  snapshots, images and containers; a snapshot keeps its parent; a
  ``containerd.io/gc.bref.*`` label on content or a snapshot attaches it to the object it
  names (kept while that object is kept). A lease labelled ``containerd.io/gc.flat`` keeps
  only what it names (and snapshots' parents), not what they reference.
- **Sweep**: content rows, snapshot rows and expired leases that are not reachable go, in one
  transaction with the mark; then blob files no namespace holds any more, backend snapshots
  no row references (through each snapshotter's own cleanup), and ingests that no live lease
  holds and nobody has written to for a day.

Modules: ``labels`` (what the labels mean) <- ``mark`` (the graph, on the database thread)
<- ``collector`` (one collection: mark, sweep, clean up, publish) <- ``scheduler`` (when to
collect: thresholds, delays, requests). Imports point that way only; ``services`` and
``server`` use the scheduler.
"""

from .collector import CollectionStats, Collector
from .scheduler import GcTrigger, Scheduler

__all__ = ["CollectionStats", "Collector", "GcTrigger", "Scheduler"]
