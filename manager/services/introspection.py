"""containerd.services.introspection.v1.Introspection: what is loaded, and the server's UUID."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

from google.protobuf import empty_pb2
from google.rpc import status_pb2

from ctrpy import filters
from ctrpy.api.containerd.services.introspection.v1 import introspection_pb2 as api
from ctrpy.api.containerd.services.introspection.v1 import introspection_pb2_grpc as api_grpc
from ctrpy.api.containerd.types import platform_pb2


@dataclass(frozen=True)
class Plugin:
    """One loaded piece of ctrpyd, named the way containerd names its plugins."""

    type: str
    id: str
    requires: tuple[str, ...] = ()
    platforms: tuple[tuple[str, str], ...] = ()  # (os, architecture)
    exports: dict[str, str] = field(default_factory=dict)
    capabilities: tuple[str, ...] = ()
    # Set for a plugin that is registered but not usable; a message containing "skip plugin"
    # makes ctr show it as "skip" rather than "error".
    init_error: str = ""


def _to_proto(plugin: Plugin) -> api.Plugin:
    message = api.Plugin(
        type=plugin.type,
        id=plugin.id,
        requires=list(plugin.requires),
        platforms=[platform_pb2.Platform(os=os, architecture=arch) for os, arch in plugin.platforms],
        exports=plugin.exports,
        capabilities=list(plugin.capabilities),
    )
    if plugin.init_error:
        message.init_err.CopyFrom(status_pb2.Status(code=12, message=plugin.init_error))
    return message


def _adaptor(plugin: Plugin) -> filters.Adaptor:
    def field_value(path: Sequence[str]) -> tuple[str, bool]:
        if len(path) == 1 and path[0] in ("type", "id"):
            return getattr(plugin, path[0]), True
        if len(path) == 1 and path[0] == "capabilities":
            return ",".join(plugin.capabilities), bool(plugin.capabilities)
        return "", False

    return field_value


class IntrospectionServicer(api_grpc.IntrospectionServicer):
    def __init__(self, plugins: Sequence[Plugin], server_uuid: str) -> None:
        self.plugins = list(plugins)
        self.server_uuid = server_uuid

    async def Plugins(self, request: api.PluginsRequest, context: object) -> api.PluginsResponse:
        match = filters.parse_all(request.filters)
        return api.PluginsResponse(
            plugins=[_to_proto(p) for p in self.plugins if match.match(_adaptor(p))]
        )

    async def Server(self, request: empty_pb2.Empty, context: object) -> api.ServerResponse:
        return api.ServerResponse(uuid=self.server_uuid)
