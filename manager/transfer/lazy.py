"""The puller and pusher of the daemon, made when the first transfer asks for them.

Importing the registry client (httpx, h11, the image model) costs ctrpyd about 4 MiB of resident
memory; a daemon that is never asked to pull should not pay it, so the composition root hands
the Transfer servicer a :class:`Transfers` that holds only what the puller and pusher will need,
and builds them (and the HTTP session they share) on first use. :meth:`Transfers.aclose` closes
the session at shutdown, if there is one.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import structlog

from ctrpy.errors import FailedPrecondition, InvalidArgument
from ctrpy.manager.diff import Limits
from ctrpy.manager.events import Exchange
from ctrpy.manager.metadata.content import NamespacedContent
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.images import ImageStore
from ctrpy.manager.metadata.leases import LeaseStore
from ctrpy.manager.metadata.snapshots import SnapshotStore

if TYPE_CHECKING:
    from ctrpy.manager.registry import DockerConfigCredentials, Session

    from .pull import Puller
    from .push import Pusher


log = structlog.get_logger(__name__)


@dataclass(frozen=True)
class TransferSettings:
    """The daemon's ``[transfer]`` configuration and the default snapshotter."""

    default_snapshotter: str
    config_path: str = ""
    max_concurrent_downloads: int = 3
    stall_timeout: float = 60.0
    credentials_file: str = ""
    #: Processes that unpack layers beside the event loop (0: unpack in threads instead).
    unpack_workers: int = 2


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
        self._file_credentials: tuple[tuple[int, int], DockerConfigCredentials | None] | None = None

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
            from ctrpy.manager.diff.pool import UnpackPool
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
                unpack_pool=UnpackPool(settings.unpack_workers) if settings.unpack_workers else None,
            )  # fmt: skip
            self._pusher = Pusher(db=self.db, content=self.content, images=images, session=session,
                                  config_path=settings.config_path,
                                  max_concurrent_uploads=settings.max_concurrent_downloads)
            self._session = session

    async def file_credentials(self) -> DockerConfigCredentials | None:
        """The credentials of ``[transfer] credentials_file`` (None when none is configured or
        the file is absent), read again whenever the file changes, so that a ``docker login``
        into it needs no daemon restart. FailedPrecondition naming the file when it is malformed
        (the daemon's configuration is wrong, not the request)."""
        path = self.settings.credentials_file
        if not path:
            return None
        return await asyncio.to_thread(self._load_credentials, path)

    def _load_credentials(self, path: str) -> DockerConfigCredentials | None:
        from ctrpy.manager.registry import DockerConfigCredentials

        try:
            info = os.stat(path)
        except FileNotFoundError:
            if self._file_credentials is None or self._file_credentials[1] is not None:
                log.warning("registry credentials file is absent: pulling anonymously", file=path)
            self._file_credentials = ((0, 0), None)
            return None
        stamp = (info.st_mtime_ns, info.st_size)
        if self._file_credentials is not None and self._file_credentials[0] == stamp:
            return self._file_credentials[1]
        try:
            loaded = DockerConfigCredentials.load(path)
        except InvalidArgument as error:
            raise FailedPrecondition(f"[transfer] credentials_file: {error.message}") from None
        except OSError as error:
            raise FailedPrecondition(f"[transfer] credentials_file {path}: {error.strerror}") from None
        self._file_credentials = (stamp, loaded)
        return loaded

    async def aclose(self) -> None:
        """Close the HTTP session and end the unpack workers, if they were made."""
        if self._session is not None:
            await self._session.aclose()
        if self._puller is not None and self._puller.unpack_pool is not None:
            await self._puller.unpack_pool.aclose()
