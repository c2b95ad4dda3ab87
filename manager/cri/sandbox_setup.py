"""Putting the pod sandboxes together: called once the task manager has recovered its shims.

Kept out of the composition root so that ``manager/server.py`` only hands over its stores: the
CNI runtime (result cache under ``<root>/cni``, which lives as long as the IPAM's state), the
sandbox image provider (ctrpy's own pause image under the default ``[cri] sandbox_image``,
imported at the first pod; any other name looked up and pulled like any image), and the
start-up reconcile, which runs before the socket serves.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Awaitable, Callable, Mapping
from typing import TYPE_CHECKING

from ctrpy.errors import NotFound

from ..config import Config, CriConfig
from ..events import Exchange
from ..metadata.containers import ContainerStore
from ..metadata.db import Database
from ..metadata.snapshots import SnapshotStore
from ..tasks.manager import TaskManager
from .cni import CNI
from .pause import PauseImages
from .sandbox_service import SandboxCalls
from .sandboxes import NAMESPACE, Sandboxes, SandboxImage

if TYPE_CHECKING:
    from .images import CriImages


def image_provider(config: Config, images: Callable[[], Awaitable[CriImages]],
                   snapshots: Mapping[str, SnapshotStore] | None = None) -> Callable[[], Awaitable[SandboxImage]]:
    """The sandbox image, made ready at each RunPodSandbox.

    ctrpy's own pause image is checked through the import client (four calls over ctrpyd's own
    socket, about a tenth of a pod's start) only until it has been found in place once; after
    that a RunPodSandbox only looks up the name in the metadata and the top snapshot in the
    snapshotter, both in-process, and goes the slow way again when the name points at another
    image or the snapshot is gone (``ctr images rm``, a snapshot removed by hand).
    """
    name = config.cri.sandbox_image
    own = name == CriConfig().sandbox_image
    pause = PauseImages(config.address)
    snapshotter = (snapshots or {}).get(config.default_snapshotter)
    ensured = ""  # the image id (config digest) last found in place

    async def in_place(image_id: str, chain_id: str) -> bool:
        if image_id != ensured or snapshotter is None:
            return False
        try:
            await snapshotter.stat(chain_id)
        except NotFound:
            return False
        return True

    async def provide() -> SandboxImage:
        nonlocal ensured
        store = await images()
        if own and ensured:
            with contextlib.suppress(NotFound):
                image = await store.resolve(name)
                if await in_place(image.id, image.facts.chain_id):
                    return SandboxImage(name, image.id, image.facts.chain_id, image.facts.config)
        if own:
            ensured = (await pause.ensure(NAMESPACE, name, config.default_snapshotter)).config_digest
        try:
            image = await store.resolve(name)
        except NotFound:
            await store.pull(name, None)
            image = await store.resolve(name)
        return SandboxImage(name, image.id, image.facts.chain_id, image.facts.config)

    return provide


async def start_sandboxes(
    config: Config,
    db: Database,
    containers: ContainerStore,
    snapshots: Mapping[str, SnapshotStore],
    tasks: TaskManager,
    exchange: Exchange,
    images: Callable[[], Awaitable[CriImages]],
) -> SandboxCalls:
    """Build the sandbox manager, reconcile what a crash left, and return its RPCs."""
    cri = config.cri
    cni = CNI(os.path.join(config.root, "cni"), conf_dir=cri.cni_conf_dir, bin_dirs=cri.cni_bin_dirs)
    sandboxes = Sandboxes(
        root=str(config.root), state=str(config.state), db=db, containers=containers, snapshots=snapshots,
        snapshotter=config.default_snapshotter, tasks=tasks, exchange=exchange, cni=cni,
        image=image_provider(config, images, snapshots), runtimes=config.runtimes,
        unclaimed_timeout=cri.unclaimed_timeout,
    )  # fmt: skip
    await sandboxes.reconcile()
    return SandboxCalls(sandboxes)
