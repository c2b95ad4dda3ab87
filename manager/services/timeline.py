"""``/ctrpy.timeline.v1.Timeline/Get``: the start-up timelines of tasks (and CRI pods and
containers) that ctrpyd keeps in memory (:mod:`ctrpy.manager.timeline`).

Why a call of ctrpy's own, outside containerd's API, and why this shape:

- the answer must outlive the task: ``ctr run`` deletes its task before anyone can ask, and
  Tasks.Get then answers NotFound; nothing in Tasks.Get or List can carry extra data anyway;
- task labels or container extensions are the user's data, stored on disk in a transaction:
  writing timings there would add a write to every start; events are seen by every subscriber
  (ctr events, Docker) and gone once sent;
- a generic handler whose messages are protobuf's well-known ``google.protobuf.Struct``, both
  ways, needs no proto file, no generated code and no buf exception; stock clients never see it;
  against containerd the call is UNIMPLEMENTED, which the CLI says in words.

The request is ``{"kind": "task" | "cri", "id": ID}``. ``task`` looks the id up in the call's
namespace and answers :meth:`Timeline.to_dict`. ``cri`` (in ``k8s.io``, an id or a unique
prefix of one) answers ``{"id", "calls": [the CRI calls' steps], "task": the task's timeline or
null}``: a container's CreateContainer and StartContainer, a pod's RunPodSandbox and its pause
container's task.
"""

from __future__ import annotations

from typing import Any

import grpc
from google.protobuf import struct_pb2

from ctrpy import namespaces
from ctrpy.errors import InvalidArgument, NotFound

from ..cri import steptimes
from ..timeline import Timelines, timelines
from .edge import CRI_NAMESPACE

SERVICE = "ctrpy.timeline.v1.Timeline"
METHOD = f"/{SERVICE}/Get"


def _resolve(given: str, known: set[str]) -> str:
    """The id ``given`` names: itself, or the one known id it is a prefix of."""
    if given in known:
        return given
    found = sorted(k for k in known if k.startswith(given))
    if len(found) > 1:
        raise InvalidArgument(f"id prefix {given!r} is ambiguous ({len(found)} ids)")
    if not found:
        raise NotFound(f"timeline of {given}")
    return found[0]


def answer(store: Timelines, kind: str, given: str) -> dict[str, Any]:
    """What :data:`METHOD` answers, as a dict (see the module docstring)."""
    if not given:
        raise InvalidArgument("an id is required")
    if kind == "task":
        found = store.get(namespaces.require(), given)
        if found is None:
            raise NotFound(f"timeline of task {given}")
        return found.to_dict()
    if kind == "cri":
        full = _resolve(given, set(steptimes.kept_ids()) | set(store.ids(CRI_NAMESPACE)))
        task = store.get(CRI_NAMESPACE, full)
        return {"id": full, "calls": steptimes.kept(full), "task": task.to_dict() if task is not None else None}
    raise InvalidArgument(f"unknown timeline kind {kind!r} (task or cri)")


def handler(store: Timelines = timelines) -> grpc.GenericRpcHandler:
    """The generic handler to add to ctrpyd's server."""

    async def get(request: struct_pb2.Struct, context: object) -> struct_pb2.Struct:
        kind = request.fields["kind"].string_value if "kind" in request.fields else "task"
        given = request.fields["id"].string_value if "id" in request.fields else ""
        response = struct_pb2.Struct()
        response.update(answer(store, kind or "task", given))
        return response

    method = grpc.unary_unary_rpc_method_handler(
        get, request_deserializer=struct_pb2.Struct.FromString,
        response_serializer=struct_pb2.Struct.SerializeToString,
    )
    return grpc.method_handlers_generic_handler(SERVICE, {"Get": method})
