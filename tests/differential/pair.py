"""Send the same gRPC call to the reference containerd and to ctrpyd, and compare the answers.

containerd defines the wire behaviour: a call that ctrpyd answers differently (status code,
the error message for the kinds clients parse, or the reply) is a divergence, and a bug in
ctrpyd unless it is listed in :data:`ALLOWED` with the reason it is kept (the README's
"Divergences from containerd" table says the same).

What must differ between two daemons is normalised away before comparing: timestamps, pids,
UUIDs, paths under each daemon's own directories, and (per call) generated values such as the
ingest's start time. Replies are compared as plain Python values built from the messages, so
a diff is readable and an ``Any`` whose type is known (event payloads, specs) is compared
decoded rather than as bytes.
"""

from __future__ import annotations

import base64
import contextlib
import difflib
import json
import pprint
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import grpc
from google.protobuf import any_pb2, descriptor_pool, message, message_factory

# Importing the event modules registers their messages, so envelopes decode.
from ctrpy.api.containerd.events import (  # noqa: F401
    container_pb2,
    content_pb2,
    image_pb2,
    namespace_pb2,
    snapshot_pb2,
    task_pb2,
)
from ctrpy.api.containerd.services.containers.v1 import containers_pb2_grpc
from ctrpy.api.containerd.services.content.v1 import content_pb2_grpc
from ctrpy.api.containerd.services.diff.v1 import diff_pb2_grpc
from ctrpy.api.containerd.services.events.v1 import events_pb2, events_pb2_grpc
from ctrpy.api.containerd.services.images.v1 import images_pb2_grpc
from ctrpy.api.containerd.services.introspection.v1 import introspection_pb2_grpc
from ctrpy.api.containerd.services.leases.v1 import leases_pb2_grpc
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2_grpc
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2_grpc
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2_grpc
from ctrpy.api.containerd.services.version.v1 import version_pb2_grpc

STUBS: dict[str, Callable[[grpc.Channel], Any]] = {
    "containers": containers_pb2_grpc.ContainersStub,
    "content": content_pb2_grpc.ContentStub,
    "diff": diff_pb2_grpc.DiffStub,
    "events": events_pb2_grpc.EventsStub,
    "images": images_pb2_grpc.ImagesStub,
    "introspection": introspection_pb2_grpc.IntrospectionStub,
    "leases": leases_pb2_grpc.LeasesStub,
    "namespaces": namespace_pb2_grpc.NamespacesStub,
    "snapshots": snapshots_pb2_grpc.SnapshotsStub,
    "tasks": tasks_pb2_grpc.TasksStub,
    "version": version_pb2_grpc.VersionStub,
}
# The kinds whose message is compared (see same_message); for the others only the code is.
# InvalidArgument messages are not: containerd words the same check differently from call to
# call ('"sha256:zz" failed validation' from Info, 'invalid checksum digest length' from
# Delete), and when several labels are wrong which one it names depends on Go's map order.
MESSAGE_CODES = {"NOT_FOUND", "ALREADY_EXISTS", "FAILED_PRECONDITION"}
PID_FIELDS = {"pid", "pids"}
UUID = re.compile(r"\b[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}\b")


@dataclass
class Outcome:
    """What one daemon answered: ``code`` (``OK`` or a status name), its message, and the
    reply (a message, or the list of streamed messages) as plain values."""

    code: str
    message: str
    reply: Any = None

    def summary(self) -> str:
        return f"{self.code} {self.message!r}" if self.code != "OK" else "OK"


@dataclass
class Split:
    """A request that must differ between the daemons (it carries paths of each: mounts)."""

    reference: Any
    ctrpy: Any


@dataclass
class Call:
    """One call, as the comparator and the allow-list see it."""

    service: str
    method: str
    request: Any
    namespace: str


@dataclass
class Allowed:
    """A divergence that is kept on purpose (also in the README table)."""

    why: str
    applies: Callable[[Call, Outcome, Outcome], bool]


@dataclass
class Side:
    """One daemon: its channel, stubs, and the directories whose paths are normalised."""

    name: str
    address: str
    roots: Sequence[str]
    channel: grpc.Channel = field(init=False)
    stubs: dict[str, Any] = field(init=False)

    def __post_init__(self) -> None:
        self.channel = grpc.insecure_channel(
            f"unix:{self.address}",
            options=[("grpc.max_receive_message_length", 16 << 20),
                     ("grpc.max_send_message_length", 16 << 20)])
        self.stubs = {name: stub(self.channel) for name, stub in STUBS.items()}

    def close(self) -> None:
        self.channel.close()


def _metadata(namespace: str | None, lease: str | None) -> list[tuple[str, str]]:
    meta = []
    if namespace is not None:
        meta.append(("containerd-namespace", namespace))
    if lease:
        meta.append(("containerd-lease", lease))
    return meta


def invoke(side: Side, service: str, method: str, request: Any, namespace: str | None,
           lease: str | None = None, timeout: float = 20.0, limit: int = 10_000) -> Outcome:
    """Make one call on ``side``: unary, server-streaming (read to the end), or, when
    ``request`` is a list, a client/bidirectional stream of those messages."""
    rpc = getattr(side.stubs[service], method)
    meta = _metadata(namespace, lease)
    streamed = isinstance(rpc, grpc.UnaryStreamMultiCallable | grpc.StreamStreamMultiCallable)
    replies: list[Any] = []
    try:
        if isinstance(request, list):
            call = rpc(iter(request), metadata=meta, timeout=timeout)
        else:
            call = rpc(request, metadata=meta, timeout=timeout)
        if not streamed:
            return Outcome("OK", "", to_plain(call))
        for reply in call:
            replies.append(to_plain(reply))
            if len(replies) >= limit:
                call.cancel()
                break
        return Outcome("OK", "", replies)
    except grpc.RpcError as error:
        return Outcome(error.code().name, error.details() or "", replies if streamed else None)


# ---------------------------------------------------------------------------------------------
# Messages as plain values


def _decode_any(value: any_pb2.Any) -> Any:
    name = value.type_url.rpartition("/")[2]
    try:
        desc = descriptor_pool.Default().FindMessageTypeByName(name)
    except KeyError:
        desc = None
    if desc is not None:
        decoded = message_factory.GetMessageClass(desc)()
        with contextlib.suppress(message.DecodeError):
            decoded.ParseFromString(value.value)
            return {"@type": value.type_url, **to_plain(decoded)}
    try:
        return {"@type": value.type_url, "json": json.loads(value.value)}
    except ValueError:
        return {"@type": value.type_url, "bytes": base64.b64encode(value.value).decode()}


def to_plain(msg: message.Message) -> Any:
    """A message as dicts, lists and scalars; unset fields are left out (proto3 cannot tell an
    unset field from its zero value on the wire), Timestamps become ``(seconds, nanos)``."""
    if isinstance(msg, any_pb2.Any):
        return _decode_any(msg)
    full = msg.DESCRIPTOR.full_name
    if full == "google.protobuf.Timestamp":
        return ("<time>", msg.seconds, msg.nanos)  # type: ignore[attr-defined]
    out: dict[str, Any] = {}
    for fd, value in msg.ListFields():
        if fd.message_type is not None and fd.message_type.GetOptions().map_entry:
            vfd = fd.message_type.fields_by_name["value"]
            out[fd.name] = {k: (to_plain(v) if vfd.message_type is not None else v)
                            for k, v in sorted(value.items())}
        elif fd.is_repeated:
            out[fd.name] = [to_plain(v) if fd.message_type is not None else v for v in value]
        elif fd.message_type is not None:
            out[fd.name] = to_plain(value)
        elif isinstance(value, bytes):
            out[fd.name] = value
        else:
            out[fd.name] = value
    return out


# ---------------------------------------------------------------------------------------------
# Normalising


class Normaliser:
    """Replaces what must differ between the daemons by placeholders."""

    def __init__(self, roots: Sequence[str]) -> None:
        self.roots = sorted(roots, key=len, reverse=True)

    def text(self, value: str) -> str:
        for root in self.roots:
            value = value.replace(root, "<root>")
        return UUID.sub("<uuid>", value)

    def mount(self, mount: dict[str, Any]) -> dict[str, Any]:
        """A mount with its paths (which differ in layout between the daemons) replaced by
        ``<path>``; for an option holding colon-separated paths (``lowerdir=``), how many."""
        def path(value: str) -> str:
            return "<path>" if value.startswith(("/", "<root>")) else value

        options = []
        for option in mount.get("options", []):
            key, sep, value = option.partition("=")
            if sep and value.startswith(("/", "<root>")):
                option = f"{key}=<{len(value.split(':'))} path(s)>"
            options.append(option)
        out = {**mount, "options": options}
        if "source" in mount:
            out["source"] = path(mount["source"])
        if "target" in mount:
            out["target"] = path(mount["target"])
        return out

    def __call__(self, value: Any, key: str = "") -> Any:
        if isinstance(value, tuple) and value[:1] == ("<time>",):
            return "<time>"
        if key in PID_FIELDS:
            return "<pid>" if not isinstance(value, list) else ["<pid>"] * len(value)
        if key in ("mounts", "left", "right", "rootfs") and isinstance(value, list):
            return [self.mount(self(m)) for m in value]
        if isinstance(value, dict):
            return {k: self(v, k) for k, v in value.items()}
        if isinstance(value, list):
            return [self(v, key) for v in value]
        if isinstance(value, str):
            return self.text(value)
        return value


# ---------------------------------------------------------------------------------------------
# The pair


class Divergence(AssertionError):
    """ctrpyd answered a call differently from containerd."""


@dataclass
class Pair:
    """The reference containerd and ctrpyd, driven with the same calls.

    ``check`` makes a call on both and raises :class:`Divergence` with a readable diff when
    the normalised outcomes differ and no :data:`ALLOWED` entry covers it. ``log`` keeps the
    calls of the current example, so a failure shows the sequence that led to it.
    """

    reference: Side
    ctrpy: Side
    allowed: list[Allowed] = field(default_factory=list)
    log: list[str] = field(default_factory=list)
    # When a list, divergences are appended to it instead of raised (CTRPY_DIFF_COLLECT).
    collect: list[str] | None = None
    # Not-yet-fixed divergences tolerated for the current example (see known.PENDING), and
    # those met, reported at the end of the session.
    pending: list[Allowed] = field(default_factory=list)
    pending_seen: list[str] = field(default_factory=list)
    pending_always: list[Allowed] = field(default_factory=list)
    # The raw outcomes of the last call (before normalising), reference first.
    raw: tuple[Outcome, Outcome] | None = None

    def both(self, service: str, method: str, request: Any, namespace: str | None,
             lease: str | None = None, timeout: float = 20.0) -> tuple[Outcome, Outcome]:
        """The raw outcomes of one call on each daemon (reference first); kept in ``raw``."""
        ref_req, our_req = ((request.reference, request.ctrpy) if isinstance(request, Split)
                            else (request, request))
        self.raw = (invoke(self.reference, service, method, ref_req, namespace, lease, timeout),
                    invoke(self.ctrpy, service, method, our_req, namespace, lease, timeout))
        return self.raw

    def check(self, service: str, method: str, request: Any, namespace: str | None,
              lease: str | None = None, *, keep: Callable[[Any], Any] | None = None,
              unordered: bool = False, timeout: float = 20.0,
              ignore: Iterable[str] = ()) -> tuple[Outcome, Outcome]:
        """Call both daemons, compare, and return both outcomes (normalised).

        ``keep`` post-processes both replies (e.g. keeps only this example's namespaces in a
        listing of all of them); ``unordered`` sorts a streamed or repeated reply first;
        ``ignore`` names reply keys (at any depth) that differ by nature for this call.
        """
        ref, ours = self.both(service, method, request, namespace, lease, timeout)
        ref = self._normal(self.reference, ref, keep, unordered, set(ignore))
        ours = self._normal(self.ctrpy, ours, keep, unordered, set(ignore))
        self.log.append(f"{service}.{method}({_brief(request)}) ns={namespace!r} -> {ref.summary()}")
        problem = compare(ref, ours)
        if problem:
            call = Call(service, method, request, namespace or "")
            for entry in self.allowed:
                if entry.applies(call, ref, ours):
                    return ref, ours
            for entry in [*self.pending, *self.pending_always]:
                if entry.applies(call, ref, ours):
                    self.pending_seen.append(f"{service}.{method}: {entry.why}")
                    return ref, ours
            history = "\n".join(self.log[-25:])
            if self.collect is not None:  # inventory mode: note it and go on
                self.collect.append(f"{service}.{method}\nrequest: {_brief(request, 500)}\n{problem}\n"
                                    f"history:\n" + "\n".join(self.log[-12:-1]))
                return ref, ours
            raise Divergence(f"{service}.{method} diverges\nrequest: {_brief(request, 2000)}\n"
                             f"namespace: {namespace!r}\n{problem}\ncalls so far:\n{history}")
        return ref, ours

    @staticmethod
    def _normal(side: Side, outcome: Outcome, keep: Callable[[Any], Any] | None,
                unordered: bool, ignore: set[str]) -> Outcome:
        norm = Normaliser(side.roots)
        reply = norm(outcome.reply)
        if ignore:
            reply = _drop(reply, ignore)
        if keep is not None and reply is not None:
            reply = keep(reply)
        if unordered and isinstance(reply, list):
            reply = sorted(reply, key=repr)
        return Outcome(outcome.code, norm.text(outcome.message), reply)

    def close(self) -> None:
        self.reference.close()
        self.ctrpy.close()


def sorted_statuses(reply: Any) -> Any:
    """Content.ListStatuses in a stable order: containerd lists its ingest directories in the
    order the filesystem returns them, which is no order at all."""
    return {**reply, "statuses": sorted(reply.get("statuses", []), key=repr)}


def _drop(value: Any, keys: set[str]) -> Any:
    if isinstance(value, dict):
        return {k: _drop(v, keys) for k, v in value.items() if k not in keys}
    if isinstance(value, list):
        return [_drop(v, keys) for v in value]
    return value


def _brief(request: Any, limit: int = 200) -> str:
    if isinstance(request, Split):
        return "containerd: " + _brief(request.reference, limit) + " / ctrpyd: " + _brief(request.ctrpy, limit)
    if isinstance(request, list):
        text = "[" + ", ".join(_brief(r, limit) for r in request) + "]"
    else:
        text = repr(to_plain(request)) if isinstance(request, message.Message) else repr(request)
    return text if len(text) <= limit else text[:limit] + "..."


KINDS = (": invalid argument", ": not found", ": already exists", ": failed precondition",
         ": not implemented", ": unknown")


def message_core(message: str) -> str:
    """A message without its kind suffixes (containerd sometimes repeats one)."""
    stripped = True
    while stripped:
        stripped = False
        for kind in KINDS:
            if message.endswith(kind):
                message, stripped = message[: -len(kind)], True
    return message


def _unquoted(message: str) -> str:
    """Without double quotes, and without the internal prefix containerd puts before a
    snapshot key in some messages (``"ns/12/key"``)."""
    return re.sub(r'"[^"\s/]+/\d+/', '"', message).replace('"', "")


def same_message(ref: str, ours: str) -> bool:
    """Messages agree when, without their kind suffixes, one contains the other: containerd's
    service layer often prefixes what the store said (``cannot delete container "a" in
    namespace "n": not found``), a user reading ctrpyd's sees the same subject and kind."""
    a, b = (_unquoted(message_core(m)) for m in (ref, ours))
    return a == b or (bool(a) and bool(b) and (a in b or b in a))


def compare(ref: Outcome, ours: Outcome) -> str:
    """An empty string when the outcomes agree, else a readable description of how."""
    if ref.code != ours.code:
        return (f"status: containerd {ref.summary()}\n"
                f"        ctrpyd     {ours.summary()}")
    if ref.code in MESSAGE_CODES and not same_message(ref.message, ours.message):
        return f"message: containerd {ref.message!r}\n         ctrpyd     {ours.message!r}"
    if ref.reply != ours.reply:
        a = pprint.pformat(ref.reply, width=100).splitlines()
        b = pprint.pformat(ours.reply, width=100).splitlines()
        diff = "\n".join(difflib.unified_diff(a, b, "containerd", "ctrpyd", lineterm="", n=2))
        return f"reply differs:\n{diff}"
    return ""


# ---------------------------------------------------------------------------------------------
# Events


class Subscriber:
    """A background ``Events.Subscribe`` on one daemon, collecting envelopes."""

    def __init__(self, side: Side, filters: Sequence[str]) -> None:
        self.envelopes: list[Any] = []
        self.error: str | None = None
        self._call = side.stubs["events"].Subscribe(
            events_pb2.SubscribeRequest(filters=list(filters)), timeout=120)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        try:
            for envelope in self._call:
                self.envelopes.append(to_plain(envelope))
        except grpc.RpcError as error:
            if error.code() != grpc.StatusCode.CANCELLED:
                self.error = f"{error.code().name} {error.details()}"
        except Exception as error:  # shown by wait_for's caller
            self.error = repr(error)

    def wait_for(self, predicate: Callable[[list[Any]], bool], limit: float = 20.0) -> bool:
        deadline = time.monotonic() + limit
        while time.monotonic() < deadline:
            if predicate(self.envelopes) or self.error:
                return predicate(self.envelopes)
            time.sleep(0.01)
        return False

    def close(self) -> None:
        self._call.cancel()
        self._thread.join(5)


@contextlib.contextmanager
def subscribed(pair: Pair, filters: Sequence[str]) -> Iterator[tuple[Subscriber, Subscriber]]:
    subs = (Subscriber(pair.reference, filters), Subscriber(pair.ctrpy, filters))
    try:
        yield subs
    finally:
        for sub in subs:
            sub.close()
