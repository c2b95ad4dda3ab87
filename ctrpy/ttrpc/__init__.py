"""ttrpc: containerd's light RPC protocol for its shims, over a unix socket.

Why not gRPC between ctrpyd and its shims: a gRPC server and channel in every shim cost about
2 MiB of private memory and milliseconds of start-up per container, for calls that never leave
the machine, carry no streams and need no HTTP/2. containerd speaks ttrpc to its shims for the
same reason; this is that protocol, wire-compatible with github.com/containerd/ttrpc for unary
calls: frames of a 10-byte header (:mod:`.wire`) and the protobuf ``ttrpc.Request`` /
``ttrpc.Response`` of ``proto/ttrpc``. Streams are not implemented.

Errors cross it as status codes of ctrpy.errors, as over gRPC: a handler raises a
:class:`~ctrpy.errors.CtrpyError` kind and the caller gets the same kind back.
"""

from .client import Client, socket_path
from .server import Context, Handler, Method, Server
from .wire import MAX_MESSAGE

__all__ = ["MAX_MESSAGE", "Client", "Context", "Handler", "Method", "Server", "socket_path"]
