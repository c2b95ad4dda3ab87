"""The puller and pusher of the daemon, made when the first transfer asks for them.

Importing the registry client (httpx, h11, the image model) costs ctrpyd about 4 MiB of resident
memory; a daemon that is never asked to pull should not pay it, so the composition root hands
the Transfer servicer a :class:`Transfers` that holds only what the puller and pusher will need,
and builds them (and the HTTP session they share) on first use. :meth:`Transfers.aclose` closes
the session at shutdown, if there is one.
"""

from __future__ import annotations

import asyncio
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from ctrpy.manager.diff import Limits
from ctrpy.manager.events import Exchange
from ctrpy.manager.metadata.content import NamespacedContent
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.images import ImageStore
from ctrpy.manager.metadata.leases import LeaseStore
from ctrpy.manager.metadata.snapshots import SnapshotStore

if TYPE_CHECKING:
    from ctrpy.manager.registry import Session

    from .pull import Puller
    from .push import Pusher


@dataclass(frozen=True)
class TransferSettings:
    """The daemon's ``[transfer]`` configuration and the default snapshotter."""

    default_snapshotter: str
    config_path: str = ""
    max_concurrent_downloads: int = 3
    stall_timeout: float = 60.0


class Transfers:
    """What the Transfer service works with, built at its first call."""

    def __init__(self, *, db: Database, content: NamespacedContent, snapshots: Mapping[str, SnapshotStore],
                 events: Exchange, tmp_root: Path, limits: Limits, settings: TransferSettings) -> None:
        self.db = db
        self.content = content
        self.snapshots = snapshots
        self.events = events
        self.tmp_root = tmp_root
        self.limits = limits
        self.settings = settings
        self._lock = asyncio.Lock()
        self._session: Session | None = None
        self._puller: Puller | None = None
        self._pusher: Pusher | None = None

    async def puller(self) -> Puller:
        await self._build()
        assert self._puller is not None
        return self._puller

    async def pusher(self) -> Pusher:
        await self._build()
        assert self._pusher is not None
        return self._pusher

    async def _build(self) -> None:
        async with self._lock:
            if self._session is not None:
                return
            from ctrpy.manager.registry import Options, Session

            from .pull import Puller
            from .push import Pusher

            settings = self.settings
            session = Session(Options(stall_timeout=settings.stall_timeout))
            images = ImageStore(self.db)
            self._puller = Puller(
                db=self.db, content=self.content, images=images, leases=LeaseStore(self.db),
                snapshots=self.snapshots, session=session, events=self.events, tmp_root=self.tmp_root,
                limits=self.limits, default_snapshotter=settings.default_snapshotter,
                config_path=settings.config_path, max_concurrent_downloads=settings.max_concurrent_downloads,
            )  # fmt: skip
            self._pusher = Pusher(db=self.db, content=self.content, images=images, session=session,
                                  config_path=settings.config_path,
                                  max_concurrent_uploads=settings.max_concurrent_downloads)
            self._session = session

    async def aclose(self) -> None:
        """Close the HTTP session, if one was made."""
        if self._session is not None:
            await self._session.aclose()
