"""Snapshots as the namespaces see them: per-namespace keys over namespace-unaware snapshotters.

A backend snapshotter (overlayfs, native, a proxy) knows nothing of namespaces. ctrpyd keeps,
in the ``snapshots`` table of meta.db, each namespace's keys for each snapshotter, and maps
every one to a *backend key* of the form ``<namespace>/<number>/<key>`` (containerd's form; the
number comes from ``snapshot_sequences`` and is never reused), so the same key can live in two
namespaces and a committed name belongs to one namespace. The parent relation, the labels and
the times are kept here too; the backend gets only the labels it must see (those under
``containerd.io/snapshot/`` and ``containerd.io/snapshot.ref``, as containerd passes them).
containerd: ``core/metadata/snapshot.go``.

Two stores, and the order of writes
===================================

meta.db and the backend's own database cannot change in one transaction, so every change is
ordered such that a crash between the two leaves nothing worse than a backend snapshot that
no row references, which :meth:`SnapshotStore.cleanup` removes (ctrpyd runs it at start-up;
the Cleanup call runs it too):

- **prepare / view**: check the namespace's key and parent and take a backend key (one
  transaction); create the snapshot in the backend; record the row (a second transaction).
  If the record fails, the backend snapshot is removed again.
- **commit**: check, and write a *commit intent* on the active row (the new name, its backend
  name and labels); commit in the backend; replace the active row by the committed one and
  drop the intent (one transaction). At start-up :meth:`SnapshotStore.recover` finishes an
  intent whose backend commit happened, and drops one whose did not.
- **remove**: delete the row (refused while the namespace has children of it) and answer;
  the backend snapshot is removed right after, in a background task of the store (containerd
  too leaves the bytes to its collector). A failure there is only logged: the snapshot is
  garbage for cleanup. Background removals run one at a time in the order of the calls, so a
  parent removed right after its child goes after it; cleanup() first waits for those already
  queued and never touches a backend snapshot still queued, nor its ancestors. At shutdown
  :meth:`SnapshotStore.aclose` waits a little for them; what is left then is an unreferenced
  backend snapshot, which the start-up cleanup removes.

Within the process, decisions are serialized by one lock per snapshotter, and what is being
created is *claimed* in memory until recorded (keys and names, parents in use, backend keys in
flight), so concurrent calls never race between the two stores and a cleanup never takes an
in-flight backend snapshot for garbage. Backend work itself runs outside the lock, in worker
threads, and is shielded from the caller's cancellation, so a client hanging up cannot leave a
change half done.
"""

from __future__ import annotations

import asyncio
import collections
from collections.abc import Callable, Coroutine, Iterable, Mapping, Sequence
from typing import Any, TypeVar

import structlog

from ctrpy import fieldmask, filters, identifiers, namespaces
from ctrpy.errors import AlreadyExists, CtrpyError, FailedPrecondition, InvalidArgument, NotFound
from ctrpy.mount import Mount
from ctrpy.snapshotter.base import Snapshotter
from ctrpy.snapshotter.storage import check_key
from ctrpy.snapshotter.types import Info, Kind, Usage

from .db import Database
from .rows import validate_label_sizes, validate_labels
from .snapshot_tables import Plan, SnapshotRow, SnapshotTables

__all__ = ["NAMESPACE_OWNER", "SnapshotStore", "inherited_labels"]

log = structlog.get_logger(__name__)

T = TypeVar("T")

# Labels the backend sees too (containerd's snapshots.FilterInheritedLabels).
INHERITED_PREFIX = "containerd.io/snapshot/"
SNAPSHOT_REF_LABEL = "containerd.io/snapshot.ref"
# For NamespaceStore.extra_owners: a namespace holding snapshots cannot be deleted.
NAMESPACE_OWNER = ("snapshots", "snapshots")
# How long aclose() waits for queued backend removals before leaving them to the next start.
CLOSE_GRACE = 10.0


def inherited_labels(labels: Mapping[str, str]) -> dict[str, str]:
    """The labels a backend snapshotter is given: the ``containerd.io/snapshot/`` ones and
    ``containerd.io/snapshot.ref``."""
    return {k: v for k, v in labels.items() if k == SNAPSHOT_REF_LABEL or k.startswith(INHERITED_PREFIX)}


def _clean_labels(labels: Mapping[str, str] | None) -> dict[str, str]:
    """Validated labels without empty values (an empty value means no label)."""
    validate_labels(labels or {})
    return {k: v for k, v in (labels or {}).items() if v}


def _translated(error: CtrpyError, names: Mapping[str, str]) -> CtrpyError:
    """``error`` with backend keys in its message replaced by the namespace's keys."""
    message = error.message
    for backend_key in sorted(names, key=len, reverse=True):  # longest first: no partial hits
        if backend_key:
            message = message.replace(backend_key, names[backend_key])
    return type(error)(message)


def _with_ancestors(keys: Iterable[str], parents: Mapping[str, str]) -> set[str]:
    """``keys`` and every ancestor of them by ``parents`` (backend key to parent key)."""
    found: set[str] = set()
    for key in keys:
        while key and key not in found:
            found.add(key)
            key = parents.get(key, "")
    return found


def _report_orphaned(task: asyncio.Future[Any]) -> None:
    # The outcome of work whose caller went away: nobody else will see a failure.
    if not task.cancelled() and (error := task.exception()) is not None:
        log.warning("snapshot change failed after its caller left", error=str(error))


async def _shielded(work: Coroutine[Any, Any, T]) -> T:
    """Run ``work`` to its end even if the caller is cancelled (a client hanging up)."""
    task = asyncio.ensure_future(work)
    try:
        return await asyncio.shield(task)
    except asyncio.CancelledError:
        task.add_done_callback(_report_orphaned)
        raise


class SnapshotStore:
    """The namespaces' snapshots in one backend ``name``; see the module docstring.

    Every method works in the call's namespace (:func:`ctrpy.namespaces.require`) and raises
    the errors of :class:`~ctrpy.snapshotter.base.Snapshotter`, naming the namespace's keys.
    New snapshots are attached to the call's lease as ``snapshots/<name>`` resources.
    """

    def __init__(self, db: Database, name: str, backend: Snapshotter) -> None:
        self.db = db
        self.name = identifiers.validate(name)
        self.backend = backend
        self._tables = SnapshotTables(db, name)
        self._lock = asyncio.Lock()
        self._claimed: set[tuple[str, str]] = set()  # keys and names being created
        self._committing: set[tuple[str, str]] = set()  # active keys being committed
        self._parents: collections.Counter[tuple[str, str]] = collections.Counter()
        self._in_flight: set[str] = set()  # backend keys no row references yet
        self._discarding: set[str] = set()  # backend keys whose row is gone, queued for removal
        self._discards: set[asyncio.Task[None]] = set()  # their tasks (held: not collected)
        self._removing = asyncio.Lock()  # one backend removal (or cleanup sweep) at a time, FIFO

    async def _backend(self, names: Mapping[str, str], fn: Callable[..., T], *args: Any) -> T:
        try:
            return await asyncio.to_thread(fn, *args)
        except CtrpyError as error:
            raise _translated(error, names) from None

    async def _row(self, key: str) -> SnapshotRow:
        return await self.db.run(self._tables.get, namespaces.require(), key)

    def _lookup(self, namespace: str, key: str, parent: str) -> tuple[bool, bool]:
        """Whether ``key`` is taken and ``parent`` (if any) exists: both in one trip to the
        database thread (a trip is a thread switch each way, slow on a busy machine)."""

        def exists(name: str) -> bool:
            try:
                self._tables.get(namespace, name)
            except NotFound:
                return False
            return True

        return bool(key) and exists(key), not parent or exists(parent)

    def _plan(self, namespace: str, key: str, parent: str, labels: Mapping[str, str] | None, lease: str | None,
              claimed: bool) -> tuple[Plan, dict[str, str]]:
        """The checks of a create in containerd's order, then the backend key it takes and its
        labels: one trip to the database thread. ``claimed``: a create of ``key`` is under way."""
        taken, parent_found = self._lookup(namespace, key, parent)
        if taken:
            raise AlreadyExists(f'snapshot "{key}"')
        if not parent_found:
            raise NotFound(f"parent snapshot {parent} does not exist")
        check_key(key)
        if parent:
            check_key(parent, "parent")
        clean = _clean_labels({k: v for k, v in (labels or {}).items() if v})
        if claimed:
            raise AlreadyExists(f'snapshot "{key}"')
        return self._tables.plan_create(namespace, key, parent, lease), clean

    # --- creating ------------------------------------------------------------------------

    async def prepare(
        self, key: str, parent: str = "", labels: Mapping[str, str] | None = None
    ) -> list[Mount]:
        """Create active snapshot ``key`` on committed ``parent``; return its mounts."""
        return await _shielded(self._create(Kind.ACTIVE, key, parent, labels))

    async def view(self, key: str, parent: str = "", labels: Mapping[str, str] | None = None) -> list[Mount]:
        """Create read-only view ``key`` of ``parent``; return its mounts."""
        return await _shielded(self._create(Kind.VIEW, key, parent, labels))

    async def _create(
        self, kind: Kind, key: str, parent: str, labels: Mapping[str, str] | None
    ) -> list[Mount]:
        namespace = namespaces.require()
        # containerd's order: label sizes, the key taken, the parent missing; only then the
        # key itself (an empty one fails in its store). Empty label values are not stored.
        validate_label_sizes(labels or {})
        lease = namespaces.current_lease.get()
        async with self._lock:  # (the lookups too: a Remove of the parent waits for them)
            claimed = (namespace, key) in self._claimed
            plan, clean = await self.db.run(self._plan, namespace, key, parent, labels, lease, claimed)
            self._claimed.add((namespace, key))
            if parent:
                self._parents[(namespace, parent)] += 1
            self._in_flight.add(plan.backend_key)
        try:
            create = self.backend.prepare if kind == Kind.ACTIVE else self.backend.view
            names = {plan.backend_key: key, plan.backend_parent: parent}
            mounts = await self._backend(
                names, create, plan.backend_key, plan.backend_parent, inherited_labels(clean)
            )
            try:
                await self.db.run(
                    self._tables.insert, namespace, key, parent, kind, plan.backend_key, clean, lease
                )
            except BaseException:
                await self._discard(plan.backend_key)
                raise
            return mounts
        finally:
            self._claimed.discard((namespace, key))
            if parent:
                self._parents[(namespace, parent)] -= 1
                if self._parents[(namespace, parent)] <= 0:
                    del self._parents[(namespace, parent)]
            self._in_flight.discard(plan.backend_key)

    async def commit(self, name: str, key: str, labels: Mapping[str, str] | None = None) -> None:
        """Turn active ``key`` into committed ``name`` (with ``labels``); ``key`` is gone after."""
        await _shielded(self._commit(name, key, labels))

    async def _commit(self, name: str, key: str, labels: Mapping[str, str] | None) -> None:
        namespace = namespaces.require()
        validate_label_sizes(labels or {})  # containerd: label sizes, the key, then the name
        check_key(name, "name")
        check_key(key)
        clean = _clean_labels(labels)
        lease = namespaces.current_lease.get()
        async with self._lock:
            if (namespace, name) in self._claimed:
                raise AlreadyExists(f'snapshot "{name}"')
            if (namespace, key) in self._committing:
                raise FailedPrecondition(f'snapshot "{key}" is being committed')
            plan = await self.db.run(self._tables.plan_commit, namespace, name, key, clean, lease)
            self._claimed.add((namespace, name))
            self._committing.add((namespace, key))
            self._in_flight.add(plan.backend_name)
        try:
            names = {plan.backend_name: name, plan.backend_key: key}
            try:
                await self._backend(
                    names, self.backend.commit, plan.backend_name, plan.backend_key, inherited_labels(clean)
                )
            except BaseException:
                await self.db.run(self._tables.abandon_commit, namespace, key)
                raise
            # Should this fail, the intent stays and recover() finishes the commit at start-up.
            await self.db.run(self._tables.finish_commit, namespace, key, lease)
        finally:
            self._claimed.discard((namespace, name))
            self._committing.discard((namespace, key))
            self._in_flight.discard(plan.backend_name)

    # --- removing ------------------------------------------------------------------------

    async def remove(self, key: str) -> None:
        """Remove snapshot ``key``; FailedPrecondition while it has children."""
        await _shielded(self._remove(key))

    async def _remove(self, key: str) -> None:
        namespace = namespaces.require()
        # No check of the key: like containerd, a key that cannot exist is not found.
        lease = namespaces.current_lease.get()
        async with self._lock:
            if (namespace, key) in self._committing:
                raise FailedPrecondition(f'snapshot "{key}" is being committed')
            if self._parents[(namespace, key)] > 0:
                raise FailedPrecondition(f'cannot remove snapshot "{key}" with child')
            backend_key = await self.db.run(self._tables.delete, namespace, key, lease)
            # Still under the lock: a cleanup() reading the rows now sees the key as queued.
            self._discarding.add(backend_key)
            task = asyncio.get_running_loop().create_task(self._discard_queued(backend_key))
            self._discards.add(task)
            task.add_done_callback(self._discards.discard)

    async def _discard_queued(self, backend_key: str) -> None:
        try:
            await self._discard(backend_key)
        finally:
            self._discarding.discard(backend_key)

    async def _discard(self, backend_key: str) -> None:
        """Remove a backend snapshot no row references; a failure leaves it to cleanup()."""
        async with self._removing:
            try:
                await asyncio.to_thread(self.backend.remove, backend_key)
            except NotFound:
                pass
            except Exception as error:
                log.warning(
                    "backend snapshot left for cleanup", snapshotter=self.name, key=backend_key, error=str(error)
                )

    async def aclose(self, grace: float = CLOSE_GRACE) -> None:
        """Wait up to ``grace`` seconds for queued backend removals (ctrpyd stopping); those
        not done are unreferenced backend snapshots for the start-up cleanup."""
        if self._discards:
            _, pending = await asyncio.wait(set(self._discards), timeout=grace)
            if pending:
                log.warning("backend removals left for the next start", snapshotter=self.name, count=len(pending))

    # --- reading and labels ----------------------------------------------------------------

    async def stat(self, key: str) -> Info:
        """The info of snapshot ``key``."""
        row = await self._row(key)
        backend = await self._backend({row.backend_key: key}, self.backend.stat, row.backend_key)
        return row.info(backend)

    async def mounts(self, key: str) -> list[Mount]:
        """The mounts of active or view snapshot ``key``, exactly as the backend gives them."""
        row = await self._row(key)
        return await self._backend({row.backend_key: key}, self.backend.mounts, row.backend_key)

    async def usage(self, key: str) -> Usage:
        """The disk usage of snapshot ``key`` alone."""
        row = await self._row(key)
        return await self._backend({row.backend_key: key}, self.backend.usage, row.backend_key)

    async def update(self, info: Info, paths: Sequence[str] = ()) -> Info:
        """Update the labels of ``info.name`` as ``paths`` say (see ``Snapshotter.update``);
        every other field of ``info`` is ignored."""
        return await _shielded(self._update(info, paths))

    async def _update(self, info: Info, paths: Sequence[str]) -> Info:
        namespace = namespaces.require()
        if not info.name:
            raise InvalidArgument()  # containerd's answer: a bare "invalid argument"
        await self._row(info.name)  # NotFound before a bad mask, as containerd
        fieldmask.SNAPSHOT.validate(paths, info.name)
        before, after = await self.db.run(
            self._tables.update_labels, namespace, info.name, info.labels, list(paths)
        )
        names = {after.backend_key: info.name}
        old, new = inherited_labels(before.labels), inherited_labels(after.labels)
        if old != new:
            changed = sorted(k for k in old.keys() | new.keys() if old.get(k) != new.get(k))
            update = Info(name=after.backend_key, labels=new)
            backend = await self._backend(
                names, self.backend.update, update, [f"labels.{k}" for k in changed]
            )
        else:
            backend = await self._backend(names, self.backend.stat, after.backend_key)
        return after.info(backend)

    async def walk(self, filter_expressions: Sequence[str] = ()) -> list[Info]:
        """The namespace's snapshots matching any of the filters (all for none), by key.

        Rows whose backend snapshot is missing are left out, as containerd does.
        """
        namespace = namespaces.require()
        match = filters.parse_all(list(filter_expressions))
        rows = await self.db.run(self._tables.rows, namespace)
        backend = {i.name: i for i in await asyncio.to_thread(lambda: list(self.backend.walk()))}
        found = [row.info(backend[row.backend_key]) for row in rows if row.backend_key in backend]
        return [
            info
            for info in found
            if match.match(filters.snapshot_adaptor(info.name, info.parent, info.kind.text, info.labels))
        ]

    # --- garbage and recovery --------------------------------------------------------------

    async def cleanup(self) -> int:
        """Remove backend snapshots no namespace references (children first), then the
        backend's own leftovers; return how many snapshots went.

        Backend removals that Remove calls queued before are waited for first; one queued
        meanwhile is left alone, with its ancestors (their removal would fail on it).
        """
        if self._discards:  # (their failures are logged by them, never raised)
            await asyncio.wait(set(self._discards))
        async with self._lock:
            in_flight = set(self._in_flight)  # read before the rows: see the module docstring
            discarding = set(self._discarding)
            referenced = await self.db.run(self._tables.backend_keys) | in_flight
            infos = await asyncio.to_thread(lambda: list(self.backend.walk()))
        referenced |= _with_ancestors(discarding, {i.name: i.parent for i in infos})
        orphans = {i.name: i for i in infos if i.name not in referenced}
        children: dict[str, list[str]] = collections.defaultdict(list)
        for info in orphans.values():
            children[info.parent].append(info.name)
        order: list[str] = []

        def visit(name: str) -> None:  # children before their parent
            for child in children.get(name, ()):
                visit(child)
            order.append(name)

        for name, info in orphans.items():
            if info.parent not in orphans:
                visit(name)
        removed = 0
        async with self._removing:  # the backend's sweep must not meet a removal half done
            for name in order:
                try:
                    await asyncio.to_thread(self.backend.remove, name)
                    removed += 1
                except NotFound:
                    pass
                except CtrpyError as error:
                    log.warning(
                        "cannot remove unreferenced snapshot", snapshotter=self.name, key=name, error=str(error)
                    )
            if removed:
                log.info("removed unreferenced snapshots", snapshotter=self.name, count=removed)
            await asyncio.to_thread(self.backend.cleanup)
        return removed

    async def recover(self) -> None:
        """After a restart: settle commits a crash interrupted, then :meth:`cleanup`."""
        for namespace, key, intent in await self.db.run(self._tables.intents):
            try:
                await asyncio.to_thread(self.backend.stat, intent["backend_key"])
                committed = True
            except NotFound:
                committed = False
            if committed:
                try:
                    await self.db.run(self._tables.finish_commit, namespace, key, None)
                except CtrpyError as error:  # the name was taken meanwhile: keep the active one
                    log.error(
                        "cannot finish an interrupted commit",
                        snapshotter=self.name,
                        ns=namespace,
                        key=key,
                        error=error.message,
                    )
                    committed = False
            if not committed:
                await self.db.run(self._tables.abandon_commit, namespace, key)
            log.info(
                "settled an interrupted commit",
                snapshotter=self.name,
                ns=namespace,
                key=key,
                name=intent["name"],
                committed=committed,
            )
        await self.cleanup()
