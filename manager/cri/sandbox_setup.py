"""Putting the pod sandboxes together: called once the task manager has recovered its shims.

Kept out of the composition root so that ``manager/server.py`` only hands over its stores: the
CNI runtime (result cache under ``<root>/cni``, which lives as long as the IPAM's state), the
sandbox image provider (ctrpy's own pause image under the default ``[cri] sandbox_image``,
imported at the first pod; any other name looked up and pulled like any image), and the
start-up reconcile, which runs before the socket serves.
"""

from __future__ import annotations

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


def image_provider(config: Config, images: Callable[[], Awaitable[CriImages]]) -> Callable[[], Awaitable[SandboxImage]]:
    """The sandbox image, made ready at each RunPodSandbox (cheap once it is there)."""
    name = config.cri.sandbox_image
    own = name == CriConfig().sandbox_image
    pause = PauseImages(config.address)

    async def provide() -> SandboxImage:
        if own:
            await pause.ensure(NAMESPACE, name, config.default_snapshotter)
        store = await images()
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
        image=image_provider(config, images), runtimes=config.runtimes,
    )  # fmt: skip
    await sandboxes.reconcile()
    return SandboxCalls(sandboxes)
