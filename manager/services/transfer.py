"""containerd.services.transfer.v1.Transfer: registry pulls into the image store, and pushes.

The servicer is thin on purpose: the work (:mod:`.transfer_calls`, the registry client behind
it) is imported at the first call, so that a daemon that never pulls does not carry it.
"""

from __future__ import annotations

from google.protobuf import empty_pb2

from ctrpy.api.containerd.services.transfer.v1 import transfer_pb2 as api
from ctrpy.api.containerd.services.transfer.v1 import transfer_pb2_grpc as api_grpc
from ctrpy.manager.transfer import StreamManager, Transfers


class TransferServicer(api_grpc.TransferServicer):
    def __init__(self, transfers: Transfers, streams: StreamManager) -> None:
        self.transfers = transfers
        self.streams = streams

    async def Transfer(self, request: api.TransferRequest, context: object) -> empty_pb2.Empty:
        from . import transfer_calls  # at the first call: see the module docstring

        await transfer_calls.transfer(self.transfers, self.streams, request)
        return empty_pb2.Empty()
