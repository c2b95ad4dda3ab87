"""Identifiers, refs, keys, names and filters built to escape, at every place they enter ctrpyd.

Each hostile value carries a unique marker, so that afterwards the test can prove that nothing
was written because of it: no file or directory named after it anywhere below the daemon's
directories or at the places a traversal would reach (``/``, ``/tmp``, the directory around
the daemon's), and, when the call was refused, no metadata row holding it.

Identifiers (namespaces, container ids, exec ids, lease ids) must be refused with
InvalidArgument (NotFound where containerd looks them up first). Snapshot keys, content refs
and image names are free-form strings in containerd's API: refusing them is fine, and so is
accepting them, as long as nothing on disk is named after them. Malformed filters are refused.
"""

from __future__ import annotations

import os
import secrets
import sqlite3
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2

from ctrpy import errors
from ctrpy.api.containerd.services.containers.v1 import containers_pb2
from ctrpy.api.containerd.services.content.v1 import content_pb2
from ctrpy.api.containerd.services.diff.v1 import diff_pb2
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.api.containerd.services.images.v1 import images_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from ctrpy.api.containerd.services.snapshots.v1 import snapshots_pb2
from ctrpy.api.containerd.services.tasks.v1 import tasks_pb2
from ctrpy.api.containerd.types import descriptor_pb2, mount_pb2
from ctrpy.client import Client
from ctrpy.errors import CtrpyError, InvalidArgument, NotFound
from tests.hostile import probes
from tests.hostile.conftest import configured_daemon
from tests.hostile.specs import RUNTIME, runtime_spec, spec_any
from tests.support.ctrpyd import Daemon
from tests.test_content_service import Content, digest_of

# How each hostile value is built around its marker.
SHAPES: dict[str, Callable[[str], str]] = {
    "dotdot": lambda m: f"../{m}",
    "deep-traversal": lambda m: f"../../../../../../../../tmp/{m}",
    "absolute": lambda m: f"/tmp/{m}",
    "slash": lambda m: f"a/{m}",
    "up-from-inside": lambda m: f"{m}/../../..",
    "nul": lambda m: f"{m}\x00x",
    "10k": lambda m: m + "x" * 10_000,
    "rtl-override": lambda m: f"{m}\u202e",
    "emoji": lambda m: f"{m}🐳",
    "accent": lambda m: f"é{m}",
    "dotfile": lambda m: f".{m}",
    "space": lambda m: f"{m} x",
    "newline": lambda m: f"{m}\n",
    "double-dot-inside": lambda m: f"{m}..x",
}
# Values without a marker: only the answer is checked.
BARE = {"empty": "", "dot": ".", "dotdot-bare": "..", "root": "/"}


@dataclass
class Place:
    """One way a value enters: ``call(ctx, value)`` makes the request.

    ``kind`` says what is right: an ``identifier`` is refused with InvalidArgument; a
    ``lookup`` with InvalidArgument or NotFound (a bare value like ``.`` may name something an
    earlier case created, and may then be found); a ``free`` string is refused with
    InvalidArgument or accepted.
    """

    call: Callable[[Ctx, str], object]
    kind: str = "identifier"


@dataclass
class Ctx:
    daemon: Daemon
    client: Client
    blob: str

    def with_header(self, key: str, value: str) -> Client:
        client = Client(str(self.daemon.address), "default", 30)
        if key == "containerd-namespace":
            client.namespace = value
        else:
            client.lease_id = value
        return client


def _container(container_id: str) -> containers_pb2.Container:
    return containers_pb2.Container(
        id=container_id, runtime=containers_pb2.Container.Runtime(name=RUNTIME),
        spec=spec_any(runtime_spec(["true"], "/ctrpy-hostile/x")))


def _create_container_in_namespace(ctx: Ctx, value: str) -> object:
    with ctx.with_header("containerd-namespace", value) as c:
        return c.call(c.containers.Create, containers_pb2.CreateContainerRequest(container=_container("c1")))


def _prepare_under_lease(ctx: Ctx, value: str) -> object:
    with ctx.with_header("containerd-lease", value) as c:
        request = snapshots_pb2.PrepareSnapshotRequest(snapshotter="overlayfs", key=f"leased-{secrets.token_hex(4)}")
        return c.call(c.snapshots.Prepare, request)


def _write_ref(ctx: Ctx, value: str) -> object:
    content = Content(ctx.client)
    try:
        return content.write(content_pb2.WriteContentRequest(action=content_pb2.WriteAction.STAT, ref=value))
    finally:
        try:
            content.call("Abort", content_pb2.AbortRequest(ref=value))
        except CtrpyError:
            pass


def _list_all(ctx: Ctx, value: str) -> object:
    c = ctx.client
    c.call(c.containers.List, containers_pb2.ListContainersRequest(filters=[value]))
    c.call(c.images.List, images_pb2.ListImagesRequest(filters=[value]))
    c.call(c.leases.List, leases_pb2.ListRequest(filters=[value]))
    c.call(c.namespaces.List, namespace_pb2.ListNamespacesRequest(filter=value))
    c.call(c.tasks.List, tasks_pb2.ListTasksRequest(filter=value))
    list(c.stream(c.content.List, content_pb2.ListContentRequest(filters=[value])))
    list(c.stream(c.snapshots.List, snapshots_pb2.ListSnapshotsRequest(snapshotter="overlayfs", filters=[value])))
    return None


def _subscribe(ctx: Ctx, value: str) -> object:
    c = ctx.client
    stream = c.events.Subscribe(events_pb2.SubscribeRequest(filters=[value]), metadata=c.metadata, timeout=1)
    try:
        next(stream)
    except grpc.RpcError as exc:
        if exc.code() != grpc.StatusCode.DEADLINE_EXCEEDED:  # type: ignore[attr-defined]
            raise errors.from_grpc(exc) from None
    return None


def _exec(ctx: Ctx, value: str) -> object:
    c = ctx.client
    process = any_pb2.Any(type_url="types.containerd.io/opencontainers/runtime-spec/1/Process", value=b'{"args":["true"]}')
    return c.call(c.tasks.Exec, tasks_pb2.ExecProcessRequest(container_id="seeded", exec_id=value, spec=process))


def _apply_digest(ctx: Ctx, value: str) -> object:
    c = ctx.client
    target = ctx.daemon.base / "apply-target"
    target.mkdir(exist_ok=True)
    request = diff_pb2.ApplyRequest(
        diff=descriptor_pb2.Descriptor(media_type="application/vnd.oci.image.layer.v1.tar", digest=value, size=1),
        mounts=[mount_pb2.Mount(type="bind", source=str(target), options=["rw", "rbind"])])
    return c.call(c.diff.Apply, request)


PLACES: dict[str, Place] = {
    "namespace header": Place(_create_container_in_namespace),
    "namespace name": Place(lambda ctx, v: ctx.client.call(ctx.client.namespaces.Create, namespace_pb2.CreateNamespaceRequest(
        namespace=namespace_pb2.Namespace(name=v)))),
    # containerd answers any name with empty labels (a lookup that writes nothing).
    "namespace lookup": Place(lambda ctx, v: ctx.client.call(ctx.client.namespaces.Get, namespace_pb2.GetNamespaceRequest(
        name=v)), kind="free"),
    "container id": Place(lambda ctx, v: ctx.client.call(ctx.client.containers.Create, containers_pb2.CreateContainerRequest(
        container=_container(v)))),
    "container lookup": Place(lambda ctx, v: ctx.client.call(ctx.client.containers.Delete, containers_pb2.DeleteContainerRequest(
        id=v)), kind="lookup"),
    "task container id": Place(lambda ctx, v: ctx.client.call(ctx.client.tasks.Create, tasks_pb2.CreateTaskRequest(
        container_id=v)), kind="lookup"),
    # containerd looks the task up before it checks the exec id, and "seeded" has no task:
    # NotFound (tests/differential checks the id's refusal on a running task).
    "exec id": Place(_exec, kind="lookup"),
    # containerd's lease ids are free-form (ctr images mount uses its target path as one).
    "lease id": Place(lambda ctx, v: ctx.client.call(ctx.client.leases.Create, leases_pb2.CreateRequest(id=v)),
                      kind="free"),
    "lease header": Place(_prepare_under_lease, kind="lookup"),
    "lease lookup": Place(lambda ctx, v: ctx.client.call(ctx.client.leases.ListResources, leases_pb2.ListResourcesRequest(
        id=v)), kind="lookup"),
    "snapshot key": Place(lambda ctx, v: ctx.client.call(ctx.client.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
        snapshotter="overlayfs", key=v)), kind="free"),
    "snapshot parent": Place(lambda ctx, v: ctx.client.call(ctx.client.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
        snapshotter="overlayfs", key=f"child-{secrets.token_hex(4)}", parent=v)), kind="lookup"),
    "snapshotter name": Place(lambda ctx, v: ctx.client.call(ctx.client.snapshots.Prepare, snapshots_pb2.PrepareSnapshotRequest(
        snapshotter=v, key=f"key-{secrets.token_hex(4)}")), kind="lookup"),
    "content ref": Place(_write_ref, kind="free"),
    "content digest": Place(lambda ctx, v: ctx.client.call(ctx.client.content.Info, content_pb2.InfoRequest(digest=v)),
                            kind="lookup"),
    "layer digest": Place(_apply_digest, kind="lookup"),
    "image name": Place(lambda ctx, v: ctx.client.call(ctx.client.images.Create, images_pb2.CreateImageRequest(
        image=images_pb2.Image(name=v, target=descriptor_pb2.Descriptor(
            media_type="application/vnd.oci.image.manifest.v1+json", digest=ctx.blob, size=2)))), kind="free"),
    "filters": Place(_list_all, kind="free"),
    "event filters": Place(_subscribe, kind="free"),
}


@pytest.fixture(scope="module")
def ctx() -> Iterator[Ctx]:
    daemon = configured_daemon()
    try:
        daemon.start()
        with daemon.client() as client:
            blob = b"{}"
            Content(client).put("seed", blob)
            client.call(client.containers.Create, containers_pb2.CreateContainerRequest(container=_container("seeded")))
            yield Ctx(daemon, client, digest_of(blob))
    finally:
        probes.kill_leftovers(daemon)
        daemon.cleanup()


def _sendable_header(value: str) -> bool:
    return value.isascii() and value.isprintable() and value.strip() == value and len(value) < 4000


def named_after(marker: str, daemon: Daemon) -> list[str]:
    """Files and directories named after ``marker``: below the daemon's directories, and where
    a traversal out of them would land."""
    found = [str(p) for p in daemon.base.rglob("*") if marker in p.name]
    for place in ("/", "/tmp", "/etc", str(daemon.base.parent), str(daemon.root), str(daemon.state)):
        try:
            found += [os.path.join(place, name) for name in os.listdir(place) if marker in name]
        except OSError:
            continue
    return found


def rows_holding(marker: str, daemon: Daemon) -> list[str]:
    """Tables of ctrpyd's databases (metadata and snapshotters') with a row mentioning ``marker``."""
    found = []
    for db in [daemon.root / "meta.db", *daemon.root.glob("snapshots/*/metadata.db")]:
        conn = sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=30)
        try:
            tables = [r[0] for r in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table'")]
            for table in tables:
                for row in conn.execute(f'SELECT * FROM "{table}"'):
                    text = " ".join(c if isinstance(c, str) else c.decode(errors="replace") if isinstance(c, bytes)
                                    else "" for c in row)
                    if marker in text:
                        found.append(f"{db.name}:{table}")
                        break
        finally:
            conn.close()
    return found


def _attempt(place: Place, ctx: Ctx, value: str) -> CtrpyError | None:
    try:
        place.call(ctx, value)
    except CtrpyError as exc:
        return exc
    return None


CASES = [(place, shape) for place in PLACES for shape in [*SHAPES, *BARE]]


@pytest.mark.parametrize(("place", "shape"), CASES, ids=[f"{p}-{s}" for p, s in CASES])
def test_hostile_value(ctx: Ctx, place: str, shape: str) -> None:
    marker = f"ctrpyevil{secrets.token_hex(4)}"
    value = SHAPES[shape](marker) if shape in SHAPES else BARE[shape]
    where = PLACES[place]
    if "header" in place and not _sendable_header(value):
        pytest.skip("a gRPC client cannot send this in a header")
    if "header" in place and not value:
        pytest.skip("an empty header is no header (the default namespace, no lease)")
    error = _attempt(where, ctx, value)

    allowed: tuple[type[CtrpyError], ...] = (InvalidArgument, NotFound) if where.kind != "identifier" else (
        InvalidArgument,)
    if where.kind == "identifier" or (where.kind == "lookup" and shape in SHAPES) or error is not None:
        assert isinstance(error, allowed), f"{place} {value[:80]!r}: {error!r}"
    if shape in SHAPES:
        assert named_after(marker, ctx.daemon) == []
        if error is not None:
            assert rows_holding(marker, ctx.daemon) == []
    probes.assert_serving(ctx.daemon)


MALFORMED_FILTERS = ['labels."unterminated', "id~=(", "==x", "id==x,,", "id==\x00", "id==", ","]


@pytest.mark.parametrize("expression", MALFORMED_FILTERS)
def test_malformed_filters_are_refused(ctx: Ctx, expression: str) -> None:
    for call in (_list_all, _subscribe):
        with pytest.raises(InvalidArgument):
            call(ctx, expression)


@pytest.mark.parametrize("target", ["..", "../../..", "/../../..", "a/../../..", "../victim", "link", "link/sub"])
def test_mount_targets_stay_inside_the_mount_root(ctx: Ctx, tmp_path: Path, target: str) -> None:
    """Diff.Apply mounts what the client describes below a temporary directory; a mount whose
    target leads out of it (by ``..`` or through a symlink in an earlier mount) is refused
    before anything is mounted."""
    lower = ctx.daemon.base / f"lower-{secrets.token_hex(3)}"
    lower.mkdir()
    (lower / "link").symlink_to("/tmp")
    # Where an escaping target would land: the directories above the temporary mount point.
    escapes = [str(ctx.daemon.root / "tmpmounts"), str(ctx.daemon.root), str(ctx.daemon.base),
               str(ctx.daemon.base.parent), "/tmp", "/"]
    before = {point: mount_count(point) for point in escapes}
    mounts = [
        mount_pb2.Mount(type="bind", source=str(lower), options=["rw", "rbind"]),
        mount_pb2.Mount(type="tmpfs", source="tmpfs", target=target, options=["size=1m"]),
    ]
    request = diff_pb2.DiffRequest(left=[], right=mounts)
    c = ctx.client
    with pytest.raises(InvalidArgument, match="leads outside"):
        c.call(c.diff.Diff, request)
    with pytest.raises(InvalidArgument, match="leads outside"):
        c.call(c.diff.Apply, diff_pb2.ApplyRequest(diff=descriptor_pb2.Descriptor(
            media_type="application/vnd.oci.image.layer.v1.tar", digest=ctx.blob, size=2), mounts=mounts))
    assert {point: mount_count(point) for point in escapes} == before
    assert probes.state_mounts(ctx.daemon) == []


def mount_count(point: str) -> int:
    """How many mounts are stacked exactly on ``point``."""
    with open("/proc/self/mountinfo") as table:
        return sum(1 for line in table if line.split()[4] == point)
