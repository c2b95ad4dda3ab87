"""The Transfer service's work: registry pulls into the namespace's stores, pushes back, and the
named streams (progress, credentials) that clients open on the Streaming service for a transfer.

Imports point one way: ``streams`` (no store) <- ``bytestream`` (Data within the reader's window,
for HTTP debug logs); ``pull``, ``push`` <- the registry client
(:mod:`ctrpy.manager.registry`), the content, snapshot, image and lease stores, and the differ;
``lazy`` makes the puller and pusher at the first transfer (the registry client, httpx and the
image model cost the daemon about 4 MiB of memory, which a daemon that never pulls need not pay).
The servicers in ``manager/services/transfer.py`` and ``streaming.py`` convert messages.
"""

from .lazy import Transfers, TransferSettings
from .streams import Stream, StreamManager

__all__ = ["Stream", "StreamManager", "TransferSettings", "Transfers"]
