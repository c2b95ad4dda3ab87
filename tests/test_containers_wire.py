"""Get and List answered from the serialized messages the container store keeps.

The pre-serialized answers must be byte for byte what decoding the rows and encoding the
messages gives, for every filter, after updates by field mask, and for rows an older ctrpyd
wrote (no stored message); and over the socket List, ListStream, Get, Create and Update must
agree with each other and with what was sent.
"""

from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from pathlib import Path

import pytest
from google.protobuf import any_pb2, field_mask_pb2

from ctrpy import namespaces
from ctrpy.api.containerd.services.containers.v1 import containers_pb2 as api
from ctrpy.errors import InvalidArgument, NotFound
from ctrpy.manager.metadata import db as metadata_db
from ctrpy.manager.metadata.containers import ContainerStore
from ctrpy.manager.metadata.db import Database
from ctrpy.manager.services import convert, wire
from ctrpy.manager.services.containers import encode
from ctrpy.records import AnyValue, Container, Runtime
from tests.support.ctrpyd import Daemon

SPEC_URL = "types.containerd.io/opencontainers/runtime-spec/1/Spec"

FILTERS: list[list[str]] = [
    [],
    [""],
    ["labels.app==web"],
    ["labels.app"],
    ["labels.app!=web"],
    ['labels."io.x/y"==1'],
    ["id~=^web-[2-9]$"],
    ["labels.app==db", "id==web-1"],
    ["labels.app==web,id!=web-1"],
    ['runtime.name=="io.containerd.runc.v2"'],
    ["runtime.name==rt"],
    ["image==example.com/other:1"],
    ["snapshotter==overlayfs"],
    ["snapshotter"],
    ["id==nothing"],
    ["", "id==nothing"],
]


def record(cid: str, runtime: str = "io.containerd.runc.v2", options: bool = True, **labels: str) -> Container:
    return Container(
        id=cid,
        labels=labels,
        image="docker.io/library/busybox:latest",
        runtime=Runtime(runtime, AnyValue("containerd.runc.v1.Options", b"\x32\x04runc") if options else None),
        spec=AnyValue(SPEC_URL, b'{"ociVersion": "1.0.2"}'),
        snapshotter="overlayfs" if options else "",
        snapshot_key=cid if options else "",
        extensions={"b": AnyValue("example.com/B", b"\x00\xff"), "a": AnyValue("example.com/A", b"")},
    )


def decoded_list(store: ContainerStore, flt: list[str]) -> bytes:
    """The List answer the way ctrpyd made it before: records decoded, messages encoded."""
    found = store.list(flt)
    return api.ListContainersResponse(containers=[convert.container_to_proto(c) for c in found]).SerializeToString(
        deterministic=True
    )


def assert_same_answers(store: ContainerStore) -> None:
    for flt in FILTERS:
        assert wire.repeated_message_field(1, store.list_messages(flt)) == decoded_list(store, flt), flt
    for container in store.list():
        expected = api.GetContainerResponse(container=convert.container_to_proto(container))
        assert wire.message_field(1, store.get_message(container.id)) == expected.SerializeToString(
            deterministic=True
        )


@pytest.fixture
def in_namespace() -> Iterator[None]:
    token = namespaces.current.set("wire-test")
    try:
        yield
    finally:
        namespaces.current.reset(token)


def populate(store: ContainerStore) -> None:
    store.db.call(store.create, record("web-1", app="web", empty=""))
    store.db.call(store.create, record("web-2", app="web", **{"io.x/y": "1"}))
    store.db.call(store.create, record("db", options=False, app="db"))
    store.db.call(store.create, record("plain", runtime="rt"))
    # Updates by mask (labels, one label, image, an extension) and a full replace.
    store.db.call(store.update, Container(id="web-2", labels={"app": "api", "new": "x"}), ["labels.new"])
    store.db.call(store.update, Container(id="db", labels={"app": "db2"}), ["labels"])
    store.db.call(store.update, Container(id="plain", image="example.com/other:1"), ["image"])
    store.db.call(store.update, Container(id="web-1", extensions={}), ["extensions.b"])
    replaced = record("web-1", tier="front")
    store.db.call(store.update, replaced, [])


def test_list_and_get_bytes_equal_the_decoded_and_reencoded_answer(tmp_path: Path, in_namespace: None) -> None:
    db = Database(tmp_path / "meta.db")
    try:
        store = ContainerStore(db, encode)
        populate(store)
        assert [c.id for c in db.call(store.list)] == ["db", "plain", "web-1", "web-2"]
        db.call(assert_same_answers, store)
        # Another namespace sees none of them.
        with namespaces.using("other"):
            assert db.call(store.list_messages, []) == []
    finally:
        db.close()


def test_rows_without_a_message_are_filled_or_encoded_on_the_fly(tmp_path: Path, in_namespace: None) -> None:
    path = tmp_path / "meta.db"
    db = Database(path)
    try:
        populate(ContainerStore(db, encode))
    finally:
        db.close()
    # As a ctrpyd from before the message column left them: schema version 2, no messages.
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("UPDATE containers SET message = NULL")
    conn.execute("ALTER TABLE containers DROP COLUMN message")
    conn.execute("PRAGMA user_version = 2")
    conn.close()

    db = Database(path)
    try:
        assert db.call(lambda: db.conn.execute("PRAGMA user_version").fetchone()[0]) == len(metadata_db.MIGRATIONS)
        store = ContainerStore(db, encode)  # fills the rows
        missing = db.call(lambda: db.conn.execute("SELECT count(*) FROM containers WHERE message IS NULL").fetchone())
        assert missing == (0,)
        db.call(assert_same_answers, store)
        # A row that lost its message behind the store's back is encoded when read.
        db.call(lambda: db.conn.execute("UPDATE containers SET message = NULL WHERE id = 'web-2'"))
        db.call(assert_same_answers, store)
    finally:
        db.close()


def test_the_get_cache_follows_every_write_and_stays_within_its_bound(tmp_path: Path, in_namespace: None) -> None:
    db = Database(tmp_path / "meta.db")
    try:
        store = ContainerStore(db, encode)
        populate(store)
        for cid in ("db", "plain", "web-1", "web-2"):
            assert store.cached_message(cid) == db.call(store.get_message, cid)
        with namespaces.using("other"):
            assert store.cached_message("db") is None
        # An update replaces the cached message; a delete removes it, after its commit.
        before = store.cached_message("db")
        db.call(store.update, Container(id="db", labels={"app": "db3"}), ["labels"])
        assert store.cached_message("db") not in (None, before)
        assert store.cached_message("db") == db.call(store.get_message, "db")
        db.call(store.delete, "db")
        assert store.cached_message("db") is None
        with pytest.raises(NotFound):
            db.call(store.get_message, "db")
        # A failed create (an empty label key, rolled back) leaves nothing behind.
        with pytest.raises(InvalidArgument):
            db.call(store.create, record("bad", **{"": "x"}))
        assert store.cached_message("bad") is None
        # Past its bound the cache takes no more; Get reads the database instead.
        small = ContainerStore(db, encode, cache_bytes=1)
        assert small.cached_message("plain") is None
        assert db.call(small.get_message, "plain") == store.cached_message("plain")
        assert small.cached_message("plain") is None
    finally:
        db.close()


def make_container(container_id: str, **labels: str) -> api.Container:
    container = api.Container(
        id=container_id,
        labels=labels,
        image="docker.io/library/busybox:latest",
        spec=any_pb2.Any(type_url=SPEC_URL, value=b'{"ociVersion": "1.0.2"}'),
        snapshotter="overlayfs",
        snapshot_key=container_id,
    )
    container.runtime.name = "io.containerd.runc.v2"
    container.extensions["ext"].CopyFrom(any_pb2.Any(type_url="example.com/Ext", value=b"\x00\x01\xff"))
    return container


@pytest.mark.parametrize("size", [0, 1, 127, 128, 300, 16383, 16384, 70000, 2**21])
def test_framing_equals_protobuf_encoding(size: int) -> None:
    """Tags and varint lengths as protobuf writes them, across the varint size steps."""
    container = api.Container(id="x" * size)
    data = container.SerializeToString()
    assert wire.message_field(1, data) == api.GetContainerResponse(container=container).SerializeToString()
    both = api.ListContainersResponse(containers=[container, api.Container()]).SerializeToString()
    assert wire.repeated_message_field(1, [data, b""]) == both
    # A string field of ``size`` bytes: its tag, the varint, the bytes.
    assert wire.varint(size) == (data[1:-size] if size else b"\x00")


def test_over_the_socket_list_get_and_stream_match_create_and_update(daemon: Daemon) -> None:
    with daemon.client("wire") as client:
        answered: dict[str, api.Container] = {}
        for cid, labels in (("web-1", {"app": "web"}), ("web-2", {"app": "web"}), ("db", {"app": "db"})):
            request = api.CreateContainerRequest(container=make_container(cid, **labels))
            answered[cid] = client.call(client.containers.Create, request).container
        update = api.UpdateContainerRequest(
            container=api.Container(id="web-2", labels={"x": "1"}, image="example.com/i:2"),
            update_mask=field_mask_pb2.FieldMask(paths=["labels.x", "image"]),
        )
        answered["web-2"] = client.call(client.containers.Update, update).container

        def listed(*flt: str) -> list[api.Container]:
            return list(client.call(client.containers.List, api.ListContainersRequest(filters=list(flt))).containers)

        assert listed() == [answered[cid] for cid in ("db", "web-1", "web-2")]
        sent = make_container("db", app="db")
        for field in ("id", "labels", "image", "spec", "runtime", "snapshotter", "snapshot_key", "extensions"):
            assert getattr(answered["db"], field) == getattr(sent, field), field
        assert answered["db"].created_at.seconds > 1_600_000_000
        assert dict(answered["web-2"].labels) == {"app": "web", "x": "1"}
        assert answered["web-2"].image == "example.com/i:2"
        assert listed("labels.app==web,labels.x==1") == [answered["web-2"]]
        assert listed("image~=^example") == [answered["web-2"]]
        streamed = [
            m.container for m in client.stream(client.containers.ListStream, api.ListContainersRequest())
        ]
        assert streamed == listed()
        for cid, container in answered.items():
            assert client.call(client.containers.Get, api.GetContainerRequest(id=cid)).container == container
        assert listed("id==none") == []
