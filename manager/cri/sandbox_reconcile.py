"""Start-up reconcile of the pod sandboxes: finish or undo what a crash cut short.

Runs once, after the task manager has recovered its shims and before the socket serves, in
``k8s.io``. With the records reloaded (:mod:`.sandbox_store`):

- a sandbox still being made (phase ``creating``) is undone, every step its record lists, last
  first (task, shm, CNI DEL, netns, snapshot, container, files, record): a kill -9 anywhere in
  RunPodSandbox leaves nothing, and the kubelet's retry makes the pod afresh;
- a stop that was cut short (phase ``stopped`` with stop steps left) is finished;
- a ready sandbox is kept as it is: its state is read live (a pause process that died while
  ctrpyd was down makes it NOTREADY), its IPs come from its record;
- what no record claims goes: netns files under ``<state>/netns`` (also one pinned between
  ``netns.create`` and the record naming its path), CNI cache entries (DEL with the cached
  configuration, so the IPAM frees the address), sandbox containers with their tasks and
  snapshots, sandbox file directories and shm mounts.

Each piece is bounded (:data:`RECONCILE_TIMEOUT`) and its failure logged, not raised: a stuck
plugin or shim cannot keep ctrpyd from starting; what is left is tried again at the next start
and reported by ``ctrpy doctor``.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import os
import shutil
from collections.abc import Coroutine
from typing import Any

import structlog

from ctrpy import namespaces
from ctrpy.errors import CtrpyError, NotFound

from . import netns as netns_mod
from .cni import PodRequest
from .sandbox_store import CREATING, STOPPED, SandboxRecord
from .sandboxes import KIND_LABEL, KIND_SANDBOX, NAMESPACE, STOP_STEPS, Sandboxes, unmount_shm

log = structlog.get_logger(__name__)

RECONCILE_TIMEOUT = 60.0


async def reconcile(sandboxes: Sandboxes) -> None:
    """See the module docstring."""
    with namespaces.using(NAMESPACE):
        records = await asyncio.to_thread(sandboxes.store.load)
        for record in records:
            if record.phase == CREATING:
                log.info("half-made sandbox undone", id=record.id, steps=list(record.steps))
                await _bounded(sandboxes.teardown(record, remove=True, best_effort=True), record.id)
            elif record.phase == STOPPED and any(s in STOP_STEPS for s in record.steps):
                await _bounded(_finish_stop(sandboxes, record), record.id)
        known = {r.id for r in sandboxes.store.all()}
        claimed = [r.netns for r in sandboxes.store.all() if r.netns]
        for leftover in await asyncio.to_thread(netns_mod.list_leftovers, sandboxes.state, claimed):
            log.info("leftover netns removed", path=leftover.path)
            with contextlib.suppress(CtrpyError):
                await asyncio.to_thread(netns_mod.remove, leftover.path)
        for path in await asyncio.to_thread(sandboxes.cni.sweep_cache):
            log.info("temporary CNI cache file of a cut-short write removed", path=path)
        for sandbox_id in sorted(await asyncio.to_thread(sandboxes.cni.cached_sandboxes) - known):
            log.info("leftover CNI attachment torn down", id=sandbox_id)
            await _bounded(sandboxes.cni.teardown(PodRequest(sandbox_id, "")), sandbox_id)
        await _bounded(_stray_containers(sandboxes, known), "containers")
        for directory in await asyncio.to_thread(sandboxes.store.stray_dirs):
            await asyncio.to_thread(shutil.rmtree, directory, True)
        await asyncio.to_thread(_stray_shm, sandboxes.state, known)


async def _finish_stop(sandboxes: Sandboxes, record: SandboxRecord) -> None:
    await sandboxes.stop_steps(record)
    steps = tuple(s for s in record.steps if s not in STOP_STEPS)
    await sandboxes.put(dataclasses.replace(record, steps=steps))


async def _bounded(work: Coroutine[Any, Any, None], what: str) -> None:
    try:
        await asyncio.wait_for(work, RECONCILE_TIMEOUT)
    except (CtrpyError, OSError, TimeoutError) as exc:
        log.error("sandbox reconcile failed (left for the next start and ctrpy doctor)", id=what, error=str(exc))


async def _stray_containers(sandboxes: Sandboxes, known: set[str]) -> None:
    """Sandbox containers that no record names (the record comes first, so only a record lost
    by hand leaves one): their task, snapshot and record go."""
    found = await sandboxes.db.run(sandboxes.containers.list, [f'labels."{KIND_LABEL}"=={KIND_SANDBOX}'])
    for container in found:
        if container.id in known:
            continue
        log.info("sandbox container without a record removed", id=container.id)
        await sandboxes.kill_task(container.id)
        store = sandboxes.snapshots.get(container.snapshotter)
        if store is not None and container.snapshot_key:
            with contextlib.suppress(NotFound):
                await store.remove(container.snapshot_key)
        await sandboxes.delete_container(container.id)


def _stray_shm(state: str, known: set[str]) -> None:
    """``<state>/cri/sandboxes/<id>`` (the shm mounts) of sandboxes without a record."""
    base = os.path.join(state, "cri", "sandboxes")
    try:
        names = os.listdir(base)
    except FileNotFoundError:
        return
    for name in names:
        if name not in known:
            unmount_shm(os.path.join(base, name, "shm"))
            shutil.rmtree(os.path.join(base, name), ignore_errors=True)
