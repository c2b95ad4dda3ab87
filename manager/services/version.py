"""containerd.services.version.v1.Version."""

from __future__ import annotations

from google.protobuf import empty_pb2

from ctrpy import __version__
from ctrpy.api.containerd.services.version.v1 import version_pb2 as api
from ctrpy.api.containerd.services.version.v1 import version_pb2_grpc as api_grpc

REVISION = f"ctrpy-{__version__}"


class VersionServicer(api_grpc.VersionServicer):
    async def Version(self, request: empty_pb2.Empty, context: object) -> api.VersionResponse:
        return api.VersionResponse(version=__version__, revision=REVISION)
