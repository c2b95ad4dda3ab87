"""What the CRI's image service is built from, kept light: the composition root makes these
without importing the registry client and the image model, which :mod:`.images` brings in at
the first image call (about 5 MiB of memory that a daemon nobody asks for images need not pay).
"""

from __future__ import annotations

from dataclasses import dataclass

from ctrpy.manager.events import Exchange
from ctrpy.manager.gc import GcTrigger
from ctrpy.manager.metadata.content import NamespacedContent
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.metadata.images import ImageStore
from ctrpy.manager.transfer import Transfers


@dataclass(frozen=True)
class ImageSettings:
    """How the CRI pulls: the hosts directory, the progress timeout, the pinned sandbox image."""

    config_path: str = ""
    progress_timeout: float = 300.0  # seconds without progress before a pull is cancelled (0: none)
    sandbox_image: str = ""


@dataclass(frozen=True)
class ImageBackends:
    """The stores the CRI's images live in, shared with the containerd API."""

    db: Database
    images: ImageStore
    content: NamespacedContent
    transfers: Transfers
    events: Exchange
    gc: GcTrigger | None
    settings: ImageSettings


@dataclass(frozen=True)
class PullAuth:
    """A PullImage's AuthConfig (see :mod:`.auth` for how each field is used)."""

    username: str = ""
    password: str = ""
    auth: str = ""
    server_address: str = ""
    identity_token: str = ""
    registry_token: str = ""

    def __repr__(self) -> str:  # never print a secret into a log
        return f"PullAuth(username={self.username!r}, server_address={self.server_address!r})"
