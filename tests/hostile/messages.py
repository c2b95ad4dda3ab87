"""Hypothesis strategies for hostile protobuf messages, built from the message descriptors.

Every field may be set or not; strings lean towards what escapes (``..``, absolute paths, NUL,
10,000 characters, odd unicode, filter syntax), integers towards their bounds, enums towards
undefined values, timestamps past what a datetime can hold, ``Any`` towards wrong type URLs and
garbage payloads. Fields that the daemon hands to the host as paths or programs (mount sources
and targets, stdio paths, runtime binaries) get only values that name nothing on this host, so
that a fuzzer can never point ctrpyd at a real file: the fuzz is about ctrpyd's own handling.
"""

from __future__ import annotations

import json
import os
from typing import Any

from google.protobuf import descriptor as pb_descriptor
from google.protobuf import message_factory
from google.protobuf.message import Message
from hypothesis import strategies as st

FD = pb_descriptor.FieldDescriptor
MAX_DEPTH = 3
SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

# Names that the tests seed the daemon with, so that some requests reach real objects.
SEEDED = ("default", "fuzz", "fuzz-ns")

ESCAPES = (
    "",
    ".",
    "..",
    "../..",
    "../../../../../../../../etc/shadow",
    "/etc/passwd",
    "/",
    "a/b",
    "a/../../b",
    "./a",
    ".hidden",
    "a..b",
    "-a",
    "a-",
    "\x00",
    "a\x00b",
    "fuzz\x00",
    "\n",
    " default",
    "x" * 77,
    "x" * 10_000,
    "é",
    "\u202edefault",
    "\ufeff",
    "🐳",
    "\U0010ffff",
    "\u0301",
    "CON",
    "%s%n",
    "${HOME}",
    "\\",
    "sha256:" + "0" * 64,
    "sha256:../../../../etc",
    "sha512:" + "f" * 128,
    "sha256:",
    ":",
    "labels.x",
    "labels.\"a\"",
    "name==x",
    "name~=(",
    "id~=[",
    "labels.\"",
    ",,,",
    "*",
)

# Paths that must not exist on the host, in every spelling a path field may take.
NOWHERE = (
    "",
    "../nonexistent-ctrpy-fuzz",
    "/nonexistent-ctrpy-fuzz/../../nonexistent-ctrpy-fuzz",
    "/nonexistent-ctrpy-fuzz\x00/etc/passwd",
    "\x00",
    "nonexistent-ctrpy-fuzz/" + "x" * 10_000,
    "fifo:///nonexistent-ctrpy-fuzz",
    "binary:///nonexistent-ctrpy-fuzz?a=b",
    "file:///nonexistent-ctrpy-fuzz\x00",
    "🐳/nonexistent",
)

PATH_FIELDS = frozenset({
    "source", "target", "options", "stdin", "stdout", "stderr", "binary_name", "root", "criu_path",
    "criu_image_path", "criu_work_path", "shim_cgroup", "io_uid", "path", "work_dir", "parent_path",
})


def _exists_anywhere(text: str) -> bool:
    if "\x00" in text:
        return False
    for candidate in (text, os.path.join("/", text)):
        try:
            if os.path.lexists(candidate):
                return True
        except (OSError, ValueError):
            return True
    # A URI that names a path: file://x, binary:///x, fifo://x.
    _, sep, rest = text.partition("://")
    return bool(sep) and _exists_anywhere(rest.lstrip("/") or "/")


def strings() -> st.SearchStrategy[str]:
    # Seeded names twice as often as the others, so that calls get past lookups.
    return st.one_of(
        st.sampled_from(ESCAPES),
        st.sampled_from(SEEDED),
        st.sampled_from(SEEDED),
        st.text(max_size=30),
        st.text(alphabet="a0._-/:=~\"", max_size=20),
    )


def path_strings() -> st.SearchStrategy[str]:
    """Hostile strings that name nothing on the host (relative to ``/`` or to any cwd)."""
    return st.one_of(
        st.sampled_from(NOWHERE),
        st.text(max_size=20).map(lambda s: "nonexistent-ctrpy-fuzz/" + s),
        strings().filter(lambda s: not _exists_anywhere(s) and not s.startswith("binary:")
                         and not s.startswith("file:")),
    )


def metadata_values() -> st.SearchStrategy[str]:
    """What a gRPC client can put in an ASCII header: printable characters only."""
    printable = st.text(alphabet=st.characters(min_codepoint=0x20, max_codepoint=0x7E), max_size=100)
    ascii_escapes = [s for s in ESCAPES if s.isascii() and s.isprintable() and s.strip() == s]
    return st.one_of(st.sampled_from(ascii_escapes), st.sampled_from(SEEDED), printable)


def metadata() -> st.SearchStrategy[tuple[tuple[str, str], ...]]:
    """Mostly no header or a seeded namespace (so calls get past the edge); else a hostile
    namespace, a hostile lease, or both."""
    plain = st.one_of(st.just(()), st.sampled_from(SEEDED).map(lambda ns: (("containerd-namespace", ns),)))
    ns = st.tuples(st.just("containerd-namespace"), metadata_values())
    lease = st.tuples(st.just("containerd-lease"), metadata_values())
    return st.one_of(plain, plain, st.lists(st.one_of(ns, lease), min_size=1, max_size=2).map(tuple))


_INT_BOUNDS = {
    FD.TYPE_INT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SINT32: (-(2**31), 2**31 - 1),
    FD.TYPE_SFIXED32: (-(2**31), 2**31 - 1),
    FD.TYPE_INT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SINT64: (-(2**63), 2**63 - 1),
    FD.TYPE_SFIXED64: (-(2**63), 2**63 - 1),
    FD.TYPE_UINT32: (0, 2**32 - 1),
    FD.TYPE_FIXED32: (0, 2**32 - 1),
    FD.TYPE_UINT64: (0, 2**64 - 1),
    FD.TYPE_FIXED64: (0, 2**64 - 1),
}


def ints(lo: int, hi: int) -> st.SearchStrategy[int]:
    edges = [v for v in (lo, hi, -1, 0, 1, 2**31 - 1, 2**31, 2**32 - 1, 2**53, 2**62, 2**63 - 1) if lo <= v <= hi]
    return st.one_of(st.sampled_from(edges), st.integers(lo, hi), st.integers(max(lo, -100), min(hi, 100)))


def spec_json() -> st.SearchStrategy[bytes]:
    """OCI specs that are broken in one way or another; never a runnable one (no rootfs)."""
    broken_values = st.one_of(st.none(), st.integers(), strings(), st.lists(strings(), max_size=3),
                              st.dictionaries(strings(), strings(), max_size=3))
    spec = st.fixed_dictionaries(
        {},
        optional={
            "ociVersion": broken_values,
            "root": st.one_of(broken_values, st.fixed_dictionaries({"path": path_strings()})),
            "process": st.one_of(broken_values, st.fixed_dictionaries(
                {"args": st.lists(path_strings(), max_size=3), "cwd": strings()})),
            "hostname": broken_values,
        },
    )
    return st.one_of(
        spec.map(lambda d: json.dumps(d).encode()),
        st.sampled_from([b"", b"null", b"[]", b"{", b"\xff\xfe", b'"string"', b"1e999", b'{"root": {}}']),
        st.binary(max_size=64),
    )


def any_values(depth: int) -> st.SearchStrategy[Message]:
    from google.protobuf import any_pb2

    urls = st.one_of(
        st.sampled_from([
            "",
            SPEC_URL,
            "containerd.runc.v1.Options",
            "types.containerd.io/opencontainers/runtime-spec/1/Process",
            "types.containerd.io/opencontainers/runtime-spec/1/LinuxResources",
            "google.protobuf.Empty",
            "type.googleapis.com/google.protobuf.Empty",
            "containerd.events.TaskExit",
            "/",
        ]),
        strings(),
    )

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        url = draw(urls)
        if url.endswith("runc.v1.Options"):
            # Only options that name no runtime binary: the fuzz must not choose what runs.
            from ctrpy.api.containerd.types.runc.options import oci_pb2

            options = draw(message_of(oci_pb2.Options.DESCRIPTOR, depth + 1))
            options.binary_name = ""
            value = options.SerializeToString()
        else:
            value = draw(st.one_of(spec_json(), st.binary(max_size=64)))
        return any_pb2.Any(type_url=url, value=value)

    return build()


def _scalar(field: FD, depth: int) -> st.SearchStrategy[Any]:
    kind = field.type
    if kind == FD.TYPE_STRING:
        return path_strings() if field.name in PATH_FIELDS else strings()
    if kind == FD.TYPE_BYTES:
        return st.one_of(spec_json(), st.binary(max_size=128))
    if kind == FD.TYPE_BOOL:
        return st.booleans()
    if kind in (FD.TYPE_DOUBLE, FD.TYPE_FLOAT):
        return st.floats(allow_nan=True, allow_infinity=True, width=32 if kind == FD.TYPE_FLOAT else 64)
    if kind == FD.TYPE_ENUM:
        # proto3 enums are open: undefined numbers are legal on the wire.
        return st.one_of(st.sampled_from([v.number for v in field.enum_type.values]), ints(-(2**31), 2**31 - 1))
    if kind in _INT_BOUNDS:
        return ints(*_INT_BOUNDS[kind])
    if kind == FD.TYPE_MESSAGE:
        return message_of(field.message_type, depth + 1)
    raise AssertionError(f"unhandled field type {kind} of {field.full_name}")


def _timestamp() -> st.SearchStrategy[Message]:
    from google.protobuf import timestamp_pb2

    return st.builds(timestamp_pb2.Timestamp, seconds=ints(-(2**63), 2**63 - 1), nanos=ints(-(2**31), 2**31 - 1))


def _field_mask() -> st.SearchStrategy[Message]:
    from google.protobuf import field_mask_pb2

    return st.builds(field_mask_pb2.FieldMask, paths=st.lists(strings(), max_size=4))


def message_of(descriptor: pb_descriptor.Descriptor, depth: int = 0) -> st.SearchStrategy[Message]:
    """Any message of type ``descriptor``, each field set or left unset at random."""
    name = descriptor.full_name
    if name == "google.protobuf.Timestamp":
        return _timestamp()
    if name == "google.protobuf.FieldMask":
        return _field_mask()
    if name == "google.protobuf.Any":
        return any_values(depth)
    cls = message_factory.GetMessageClass(descriptor)

    @st.composite
    def build(draw: st.DrawFn) -> Message:
        message = cls()
        for field in descriptor.fields:
            if field.type == FD.TYPE_MESSAGE and depth >= MAX_DEPTH:
                continue
            if not draw(st.booleans()):
                continue
            if field.message_type is not None and field.message_type.GetOptions().map_entry:
                key_field = field.message_type.fields_by_name["key"]
                value_field = field.message_type.fields_by_name["value"]
                entries = draw(st.dictionaries(_scalar(key_field, depth), _scalar(value_field, depth), max_size=3))
                target = getattr(message, field.name)
                for key, value in entries.items():
                    if value_field.type == FD.TYPE_MESSAGE:
                        target[key].CopyFrom(value)
                    else:
                        target[key] = value
            elif field.is_repeated:
                values = draw(st.lists(_scalar(field, depth), max_size=3))
                target = getattr(message, field.name)
                for value in values:
                    if field.type == FD.TYPE_MESSAGE:
                        target.add().CopyFrom(value)
                    else:
                        target.append(value)
            elif field.type == FD.TYPE_MESSAGE:
                getattr(message, field.name).CopyFrom(draw(_scalar(field, depth)))
            else:
                setattr(message, field.name, draw(_scalar(field, depth)))
        return message

    return build()
