"""The Content service over the real socket: the stock ctr, and a Python client for what ctr
cannot do (interrupted writes, wrong offsets, expected digests, leases)."""

from __future__ import annotations

import hashlib
import json
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest
from google.protobuf import any_pb2, field_mask_pb2

from ctrpy import errors
from ctrpy.api.containerd.events import content_pb2 as content_events
from ctrpy.api.containerd.services.content.v1 import content_pb2 as api
from ctrpy.api.containerd.services.content.v1 import content_pb2_grpc
from ctrpy.api.containerd.services.events.v1 import events_pb2
from ctrpy.api.containerd.services.leases.v1 import leases_pb2
from ctrpy.client import Client
from ctrpy.errors import AlreadyExists, FailedPrecondition, InvalidArgument, NotFound, OutOfRange
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.support.ctrpyd import Daemon

STAT, WRITE, COMMIT = api.WriteAction.STAT, api.WriteAction.WRITE, api.WriteAction.COMMIT


def digest_of(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def blob_path(daemon: Daemon, digest: str) -> Path:
    return daemon.root / "content" / "blobs" / "sha256" / digest.split(":", 1)[1]


class Content:
    """A Content stub in one namespace, optionally inside a lease."""

    def __init__(self, client: Client, lease: str | None = None) -> None:
        self.client = client
        self.stub = content_pb2_grpc.ContentStub(client.channel)
        self.metadata = client.metadata + ((("containerd-lease", lease),) if lease else ())

    def call(self, method: str, request: object) -> object:
        try:
            return getattr(self.stub, method)(request, metadata=self.metadata, timeout=30)
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    def info(self, digest: str) -> api.Info:
        response = self.call("Info", api.InfoRequest(digest=digest))
        assert isinstance(response, api.InfoResponse)
        return response.info

    def list_infos(self, *filters: str) -> list[list[api.Info]]:
        """Every List message's infos (to see the batching)."""
        try:
            stream = self.stub.List(api.ListContentRequest(filters=list(filters)), metadata=self.metadata, timeout=30)
            return [list(message.info) for message in stream]
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    def read(self, digest: str, offset: int = 0, size: int = 0) -> list[api.ReadContentResponse]:
        try:
            request = api.ReadContentRequest(digest=digest, offset=offset, size=size)
            return list(self.stub.Read(request, metadata=self.metadata, timeout=30))
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    def write(self, *requests: api.WriteContentRequest) -> list[api.WriteContentResponse]:
        """One Write stream sending ``requests`` and then half-closing; every reply."""
        try:
            return list(self.stub.Write(iter(requests), metadata=self.metadata, timeout=30))
        except grpc.RpcError as exc:
            raise errors.from_grpc(exc) from None

    def put(self, ref: str, data: bytes, **labels: str) -> api.WriteContentResponse:
        """Write ``data`` as ctr does: STAT with the ref, WRITE, COMMIT with total."""
        replies = self.write(
            api.WriteContentRequest(action=STAT, ref=ref, total=len(data)),
            api.WriteContentRequest(action=WRITE, data=data),
            api.WriteContentRequest(action=COMMIT, total=len(data), offset=len(data), labels=labels),
        )
        return replies[-1]


@pytest.fixture
def client(daemon: Daemon) -> Iterator[Client]:
    with daemon.client() as instance:
        yield instance


def test_ctr_content_ingest_ls_get_label_rm(daemon: Daemon) -> None:
    data = b"hello from ctr\n" * 1000
    digest = digest_of(data)
    result = daemon.ctr("content", "ingest", "ref1", input=data)
    assert result.returncode == 0, result.stderr
    listed = daemon.ctr("content", "ls")
    assert f"{digest}\t15kB\t" in listed.stdout  # ctr prints sizes in SI units
    assert daemon.ctr("content", "get", digest).stdout == data.decode()

    labelled = daemon.ctr("content", "label", digest, "a=b", "containerd.io/gc.ref.content.l.0=sha256:x")
    assert labelled.returncode == 0, labelled.stderr
    row = next(line for line in daemon.ctr("content", "ls").stdout.splitlines() if digest in line)
    assert "a=b" in row and "containerd.io/gc.ref.content.l.0=sha256:x" in row
    daemon.ctr("content", "label", digest, "a")  # no value: removes the label
    row = next(line for line in daemon.ctr("content", "ls").stdout.splitlines() if digest in line)
    assert "a=b" not in row and "gc.ref.content.l.0" in row

    # Rewriting is "already written" for ctr: exit 0, nothing changes.
    again = daemon.ctr("content", "ingest", "ref2", input=data)
    assert again.returncode == 0, again.stderr

    removed = daemon.ctr("content", "rm", digest)
    assert removed.returncode == 0, removed.stderr
    assert digest not in daemon.ctr("content", "ls").stdout
    assert not blob_path(daemon, digest).exists()
    missing = daemon.ctr("content", "label", digest, "a=b")
    assert missing.returncode == 1
    assert f"content digest {digest}: not found" in missing.stderr


def test_interrupted_write_is_active_and_resumes(daemon: Daemon, client: Client) -> None:
    content = Content(client)
    data = bytes(range(256)) * 4096  # 1 MiB
    first, rest = data[:300_000], data[300_000:]
    replies = content.write(
        api.WriteContentRequest(action=STAT, ref="resume-me", total=len(data)),
        api.WriteContentRequest(action=WRITE, data=first),
    )
    assert [r.offset for r in replies] == [0, len(first)]
    assert replies[0].digest == digest_of(b"") and replies[1].digest == digest_of(first)
    assert replies[1].total == len(data)  # containerd repeats the total of the stream's last STAT

    active = daemon.ctr("content", "active")
    assert active.returncode == 0, active.stderr
    assert "resume-me" in active.stdout
    status = content.call("Status", api.StatusRequest(ref="resume-me"))
    assert isinstance(status, api.StatusResponse)
    assert (status.status.ref, status.status.offset, status.status.total) == ("resume-me", len(first), len(data))

    # A wrong offset is refused and changes nothing.
    with pytest.raises(OutOfRange, match=f"must occur at current offset {len(first)}"):
        content.write(
            api.WriteContentRequest(action=STAT, ref="resume-me"),
            api.WriteContentRequest(action=WRITE, offset=len(first) + 1, data=rest),
        )

    replies = content.write(
        api.WriteContentRequest(action=STAT, ref="resume-me"),
        api.WriteContentRequest(action=WRITE, offset=len(first), data=rest),
        api.WriteContentRequest(action=COMMIT, offset=len(data), total=len(data), expected=digest_of(data)),
    )
    assert replies[0].offset == len(first) and replies[0].digest == digest_of(first)
    assert replies[-1].offset == len(data) and replies[-1].digest == digest_of(data)
    assert content.info(digest_of(data)).size == len(data)
    assert "resume-me" not in daemon.ctr("content", "active").stdout
    with pytest.raises(NotFound, match="reference resume-me: not found"):
        content.call("Status", api.StatusRequest(ref="resume-me"))


def test_one_writer_per_ref(client: Client) -> None:
    content = Content(client)
    release = threading.Event()

    def held_open() -> Iterator[api.WriteContentRequest]:
        yield api.WriteContentRequest(action=STAT, ref="busy")
        release.wait(60)

    first = content.stub.Write(held_open(), metadata=content.metadata, timeout=60)
    try:
        assert next(first).offset == 0  # the first stream holds the ref now
        with pytest.raises(errors.Unavailable, match="ref default/busy locked"):
            content.write(api.WriteContentRequest(action=STAT, ref="busy"))
        # Another ref, or the same ref in another namespace, is free.
        content.put("not-busy", b"free")
        with Client(client.address, "elsewhere") as other:
            Content(other).put("busy", b"in another namespace")
    finally:
        release.set()
        assert list(first) == []
    # Once the first stream has ended, the ref can be written again.
    content.put("busy", b"now free")

    # A stream the client cancels half-way releases its ref too, and keeps what it wrote.
    release.clear()

    def cancelled() -> Iterator[api.WriteContentRequest]:
        yield api.WriteContentRequest(action=STAT, ref="cancelled")
        yield api.WriteContentRequest(action=WRITE, data=b"kept")
        release.wait(60)

    stream = content.stub.Write(cancelled(), metadata=content.metadata, timeout=60)
    assert [next(stream).offset, next(stream).offset] == [0, 4]
    stream.cancel()
    release.set()
    for _ in range(100):  # the server notices the cancellation on its own schedule
        try:
            replies = content.write(api.WriteContentRequest(action=STAT, ref="cancelled"))
            break
        except errors.Unavailable:
            continue
    assert replies[0].offset == 4 and replies[0].digest == digest_of(b"kept")


def test_commit_checks_expected_digest_and_size(client: Client) -> None:
    content = Content(client)
    data = b"some bytes"
    wrong = digest_of(b"other bytes")
    with pytest.raises(FailedPrecondition, match=f"unexpected commit digest {digest_of(data)}, expected {wrong}"):
        content.write(
            api.WriteContentRequest(action=STAT, ref="mismatch"),
            api.WriteContentRequest(action=WRITE, data=data),
            api.WriteContentRequest(action=COMMIT, offset=len(data), expected=wrong),
        )
    with pytest.raises(FailedPrecondition, match="unexpected commit size 10, expected 11"):
        content.write(
            api.WriteContentRequest(action=STAT, ref="mismatch"),
            api.WriteContentRequest(action=COMMIT, total=11, offset=len(data)),
        )
    with pytest.raises(NotFound):
        content.info(digest_of(data))
    # The ingest survived both failures; Abort removes it.
    statuses = content.call("ListStatuses", api.ListStatusesRequest(filters=["ref==mismatch"]))
    assert isinstance(statuses, api.ListStatusesResponse)
    assert [s.offset for s in statuses.statuses] == [len(data)]
    content.call("Abort", api.AbortRequest(ref="mismatch"))
    with pytest.raises(NotFound, match="reference mismatch"):
        content.call("Abort", api.AbortRequest(ref="mismatch"))
    with pytest.raises(InvalidArgument, match="first message must have a reference"):
        content.write(api.WriteContentRequest(action=STAT))


def test_rewrite_is_already_exists(client: Client) -> None:
    content = Content(client)
    data = b"written twice"
    content.put("one", data)
    with pytest.raises(AlreadyExists, match=f"content {digest_of(data)}: already exists"):
        content.put("two", data)
    # Announcing the digest up front is answered at once, before any data.
    with pytest.raises(AlreadyExists):
        content.write(api.WriteContentRequest(action=STAT, ref="three", expected=digest_of(data)))
    listed = content.call("ListStatuses", api.ListStatusesRequest())
    assert isinstance(listed, api.ListStatusesResponse) and list(listed.statuses) == []


def test_ranged_reads(client: Client) -> None:
    content = Content(client)
    data = hashlib.sha256(b"seed").digest() * 10_000  # 320,000 bytes: not a multiple of 32 KiB
    digest = digest_of(data)
    content.put("ranged", data)
    window = 32 * 1024
    pieces = []
    for offset in range(0, len(data), window):
        messages = content.read(digest, offset, window)
        chunk = b"".join(m.data for m in messages)
        assert chunk == data[offset : offset + window]
        assert messages[0].offset == 0  # counted from the read's start, as containerd does
        pieces.append(chunk)
    assert b"".join(pieces) == data
    whole = content.read(digest)
    assert b"".join(m.data for m in whole) == data
    assert content.read(digest, len(data)) == []
    assert b"".join(m.data for m in content.read(digest, 100)) == data[100:]
    with pytest.raises(OutOfRange):
        content.read(digest, len(data) + 1)
    # Big reads come in 1 MiB chunks, each at its offset.
    big = bytes(3 * 1024 * 1024 + 5)
    content.put("big", big)
    messages = content.read(digest_of(big))
    assert [len(m.data) for m in messages] == [1 << 20] * 3 + [5]
    assert [m.offset for m in messages] == [0, 1 << 20, 2 << 20, 3 << 20]


def test_update_masks_and_list_filters(client: Client) -> None:
    content = Content(client)
    a, b = b"blob a", b"blob bb"
    content.put("a", a, kind="x", keep="1")
    content.put("b", b)
    assert dict(content.info(digest_of(a)).labels) == {"kind": "x", "keep": "1"}

    def update(labels: dict[str, str], *paths: str) -> api.Info:
        request = api.UpdateRequest(
            info=api.Info(digest=digest_of(a), labels=labels, size=999),
            update_mask=field_mask_pb2.FieldMask(paths=list(paths)),
        )
        response = content.call("Update", request)
        assert isinstance(response, api.UpdateResponse)
        return response.info

    info = update({"containerd.io/gc.ref.content.l.0": "sha256:y", "ignored": "z"}, "labels.containerd.io/gc.ref.content.l.0")
    assert dict(info.labels) == {"kind": "x", "keep": "1", "containerd.io/gc.ref.content.l.0": "sha256:y"}
    assert info.size == len(a)
    assert dict(update({}, "labels.kind").labels) == {"keep": "1", "containerd.io/gc.ref.content.l.0": "sha256:y"}
    assert dict(update({"only": "this"}, "labels").labels) == {"only": "this"}
    assert dict(update({"no": "mask"}).labels) == {"no": "mask"}
    with pytest.raises(InvalidArgument, match=f'cannot update "size" field on content info "{digest_of(a)}"'):
        update({}, "size")

    assert [i.digest for batch in content.list_infos("labels.no==mask") for i in batch] == [digest_of(a)]
    assert [i.digest for batch in content.list_infos(f"size=={len(b)}", "labels.nothing") for i in batch] == [
        digest_of(b)
    ]
    with pytest.raises(InvalidArgument):
        content.list_infos("labels.a==")


def test_list_is_streamed_in_batches(client: Client) -> None:
    content = Content(client)
    for i in range(150):
        content.put(f"blob-{i}", f"blob number {i}".encode())
    batches = content.list_infos()
    assert [len(batch) for batch in batches] == [100, 50]
    assert len({i.digest for batch in batches for i in batch}) == 150


def test_namespaces_see_only_their_blobs(daemon: Daemon) -> None:
    data = b"shared between namespaces" * 100
    digest = digest_of(data)
    with daemon.client("ns-a") as client_a, daemon.client("ns-b") as client_b:
        in_a, in_b = Content(client_a), Content(client_b)
        in_a.put("x", data, owner="a")
        with pytest.raises(NotFound, match=f"content digest {digest}: not found"):
            in_b.info(digest)
        with pytest.raises(NotFound):
            in_b.read(digest)
        assert in_b.list_infos() == []
        assert daemon.ctr("content", "get", digest, namespace="ns-b").returncode == 1

        # Under the default sharing policy B need not send the bytes when it names the digest:
        # its STAT answers the blob's size (and nothing is linked before a COMMIT). B sends
        # them anyway here, from offset 0.
        replies = in_b.write(api.WriteContentRequest(action=STAT, ref="x", expected=digest, total=len(data)))
        assert replies[0].offset == len(data)
        with pytest.raises(NotFound):
            in_b.info(digest)
        final = in_b.write(
            api.WriteContentRequest(action=STAT, ref="x", expected=digest),
            api.WriteContentRequest(action=WRITE, data=data),
            api.WriteContentRequest(action=COMMIT, offset=len(data), labels={"owner": "b"}),
        )[-1]
        assert final.digest == digest and final.offset == len(data)
        assert dict(in_b.info(digest).labels) == {"owner": "b"}
        assert dict(in_a.info(digest).labels) == {"owner": "a"}

        # A's delete leaves B's blob; B's delete removes the file.
        assert daemon.ctr("content", "rm", digest, namespace="ns-a").returncode == 0
        with pytest.raises(NotFound):
            in_a.info(digest)
        assert b"".join(m.data for m in in_b.read(digest)) == data
        assert blob_path(daemon, digest).exists()
        assert daemon.ctr("content", "rm", digest, namespace="ns-b").returncode == 0
        assert not blob_path(daemon, digest).exists()

        # Ingests are per namespace too.
        in_a.write(api.WriteContentRequest(action=STAT, ref="same"), api.WriteContentRequest(action=WRITE, data=b"aa"))
        in_b.write(api.WriteContentRequest(action=STAT, ref="same"), api.WriteContentRequest(action=WRITE, data=b"b"))
        status_a = in_a.call("Status", api.StatusRequest(ref="same"))
        status_b = in_b.call("Status", api.StatusRequest(ref="same"))
        assert isinstance(status_a, api.StatusResponse) and isinstance(status_b, api.StatusResponse)
        assert (status_a.status.offset, status_b.status.offset) == (2, 1)
        assert "same" in daemon.ctr("content", "active", namespace="ns-a").stdout
        assert "same" not in daemon.ctr("content", "active", namespace="default").stdout
        in_a.call("Abort", api.AbortRequest(ref="same"))
        status_b = in_b.call("Status", api.StatusRequest(ref="same"))
        assert isinstance(status_b, api.StatusResponse) and status_b.status.offset == 1


def test_writes_are_held_by_the_calls_lease(daemon: Daemon) -> None:
    created = daemon.ctr("leases", "create", "--id", "l1", namespace="leased")
    assert created.returncode == 0, created.stderr
    with daemon.client("leased") as client:
        content = Content(client, lease="l1")

        def resources() -> set[tuple[str, str]]:
            listed = client.call(client.leases.ListResources, leases_pb2.ListResourcesRequest(id="l1"))
            return {(r.type, r.id) for r in listed.resources}

        data = b"held by a lease"
        content.write(api.WriteContentRequest(action=STAT, ref="leased-ref"), api.WriteContentRequest(action=WRITE, data=data))
        assert resources() == {("ingests", "leased-ref")}
        content.write(
            api.WriteContentRequest(action=STAT, ref="leased-ref"),
            api.WriteContentRequest(action=COMMIT, offset=len(data)),
        )
        assert resources() == {("content", digest_of(data))}

        # ctr content ingest has no lease flag: its blob is in the namespace, not the lease.
        other = b"not leased"
        assert daemon.ctr("content", "ingest", "plain", input=other, namespace="leased").returncode == 0
        assert ("content", digest_of(other)) not in resources()

        # A blob the namespace holds already joins the lease when announced again.
        Content(client, lease=None).put("second", b"second blob")
        with pytest.raises(AlreadyExists):
            content.write(api.WriteContentRequest(action=STAT, ref="again", expected=digest_of(b"second blob")))
        assert ("content", digest_of(b"second blob")) in resources()

        # Deleting the blob inside the lease drops it from the lease.
        content.call("Delete", api.DeleteContentRequest(digest=digest_of(data)))
        assert ("content", digest_of(data)) not in resources()

        with pytest.raises(NotFound, match="lease does not exist"):
            Content(client, lease="nope").put("x", b"no such lease")


def test_delete_publishes_content_delete(daemon: Daemon, client: Client) -> None:
    data = b"about to go"
    Content(client).put("gone", data)
    received: list[events_pb2.Envelope] = []
    subscribed = threading.Event()
    done = threading.Event()
    listener = daemon.client(timeout=None)
    stream = listener.events.Subscribe(
        events_pb2.SubscribeRequest(filters=['topic~="^/(content|test)/"']), metadata=listener.metadata
    )

    def run() -> None:
        try:
            for envelope in stream:
                if envelope.topic == "/test/probe":
                    subscribed.set()
                    continue
                received.append(envelope)
                done.set()
                return
        except grpc.RpcError:
            pass

    thread = threading.Thread(target=run, daemon=True)
    thread.start()
    try:
        # Probe until the subscription is live, so that the delete below cannot be missed.
        probe = any_pb2.Any(type_url="containerd.events.ContentDelete", value=b"")
        while not subscribed.wait(0.1):
            client.call(client.events.Publish, events_pb2.PublishRequest(topic="/test/probe", event=probe))
        Content(client).call("Delete", api.DeleteContentRequest(digest=digest_of(data)))
        assert done.wait(30)
    finally:
        stream.cancel()
        thread.join(10)
        listener.close()
    (envelope,) = received
    assert (envelope.namespace, envelope.topic) == ("default", "/content/delete")
    assert envelope.event.type_url == "containerd.events.ContentDelete"
    assert content_events.ContentDelete.FromString(envelope.event.value).digest == digest_of(data)


def _blob_digests(archive: Path) -> set[str]:
    with tarfile.open(archive) as tf:
        return {name.replace("blobs/sha256/", "sha256:") for name in tf.getnames() if name.startswith("blobs/sha256/")}


def test_ctr_images_import_no_unpack_ls_export(daemon: Daemon, tmp_path: Path) -> None:
    archive = tmp_path / "busybox.tar"
    info = write_oci_layout_tar(busybox_image(), archive)
    assert info.manifest_digest and info.manifest_size and info.config_digest and info.config_size
    imported = daemon.ctr("images", "import", "--no-unpack", "--base-name", "docker.io/library/busybox", str(archive))
    assert imported.returncode == 0, imported.stderr

    listed = daemon.ctr("images", "ls")
    assert listed.returncode == 0, listed.stderr
    row = next(line for line in listed.stdout.splitlines() if line.startswith(info.name))
    assert info.manifest_digest in row and "linux/" in row
    total = info.manifest_size + info.config_size + sum(layer.size for layer in info.layers)
    assert f"{total / 1024:.1f} KiB" in row or f"{total / 1024 / 1024:.1f} MiB" in row

    # Import put the gc labels on the manifest.
    manifest = Content(daemon.client()).info(info.manifest_digest)
    assert manifest.labels["containerd.io/gc.ref.content.config"] == info.config_digest
    assert manifest.labels["containerd.io/gc.ref.content.l.0"] == info.layers[0].digest

    exported = tmp_path / "export.tar"
    result = daemon.ctr("images", "export", str(exported), info.name)
    assert result.returncode == 0, result.stderr
    expected = {info.manifest_digest, info.config_digest, *(layer.digest for layer in info.layers)}
    assert _blob_digests(exported) == expected
    with tarfile.open(exported) as tf:
        for digest in expected:
            member = tf.extractfile("blobs/sha256/" + digest.split(":", 1)[1])
            assert member is not None and digest_of(member.read()) == digest
        index = json.loads(tf.extractfile("index.json").read())  # type: ignore[union-attr]
    assert index["manifests"][0]["digest"] == info.manifest_digest

    # A second import finds everything in place (AlreadyExists at COMMIT counts as success).
    again = daemon.ctr("images", "import", "--no-unpack", "--base-name", "docker.io/library/busybox", str(archive))
    assert again.returncode == 0, again.stderr
