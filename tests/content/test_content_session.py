"""The Content.Write state machine, driven the way ctr drives it (ctr-wire-brief G3, 3.2, 3.3)."""

from __future__ import annotations

import os

import pytest

from ctrpy.errors import (
    AlreadyExists,
    FailedPrecondition,
    InvalidArgument,
    NotFound,
    OutOfRange,
    Unavailable,
)
from ctrpy.manager.content import (
    EMPTY_DIGEST,
    Committed,
    ContentStore,
    WriteAction,
    WriteReply,
    WriteRequest,
    WriteSession,
)

from .content_helpers import put, sha256

STAT, WRITE, COMMIT = WriteAction.STAT, WriteAction.WRITE, WriteAction.COMMIT
MIB = 1 << 20


def import_blob(store: ContentStore, data: bytes, ref: str) -> list[WriteReply]:
    """What `ctr images import` sends for one tar member; returns the replies."""
    replies: list[WriteReply] = []
    with WriteSession(store) as session:
        replies.append(session.handle(WriteRequest(STAT, ref=ref, total=len(data))))
        replies.append(session.handle(WriteRequest(STAT)))
        for offset in range(0, len(data), MIB):
            replies.append(session.handle(
                WriteRequest(WRITE, offset=offset, data=data[offset : offset + MIB])
            ))
        replies.append(session.handle(WriteRequest(COMMIT, total=len(data), offset=len(data))))
        assert session.done
    return replies


def test_ctr_import_sequence(store: ContentStore) -> None:
    data = os.urandom(2 * MIB + 100)
    ref = f"tar-blobs/{sha256(data).replace(':', '/')}"
    replies = import_blob(store, data, ref)
    first, second, *writes, commit = replies
    assert (first.offset, first.total, first.digest) == (0, len(data), EMPTY_DIGEST)
    assert first.started_at is not None and first.updated_at >= first.started_at
    assert (second.offset, second.total) == (0, len(data))
    assert [w.offset for w in writes] == [MIB, 2 * MIB, len(data)]
    assert writes[-1].digest == sha256(data)
    assert (commit.action, commit.offset, commit.total, commit.digest) == (
        COMMIT, len(data), len(data), sha256(data)
    )
    assert b"".join(store.read(sha256(data))) == data
    assert store.list_statuses() == []


def test_second_import_ends_in_already_exists(store: ContentStore) -> None:
    data = b"layer" * 1000
    import_blob(store, data, "tar-blobs/x")
    with pytest.raises(AlreadyExists, match=f"content {sha256(data)}: already exists"):
        import_blob(store, data, "tar-blobs/x")
    assert store.list_statuses() == []


def test_ctr_content_ingest_sequence(store: ContentStore) -> None:
    with WriteSession(store) as session:
        session.handle(WriteRequest(STAT, ref="my-ingest"))
        assert session.handle(WriteRequest(STAT)).offset == 0
        assert session.handle(WriteRequest(WRITE, data=b"hello")).offset == 5
        reply = session.handle(WriteRequest(COMMIT, offset=5))
    assert (reply.offset, reply.digest) == (5, sha256(b"hello"))
    assert store.exists(sha256(b"hello"))


def test_empty_blob_commit(store: ContentStore) -> None:
    with WriteSession(store) as session:
        session.handle(WriteRequest(STAT, ref="empty"))
        reply = session.handle(WriteRequest(COMMIT))
    assert (reply.offset, reply.digest) == (0, EMPTY_DIGEST)
    assert store.info(EMPTY_DIGEST).size == 0


def test_first_message_must_have_ref(store: ContentStore) -> None:
    session = WriteSession(store)
    with pytest.raises(InvalidArgument, match="first message must have a reference"):
        session.handle(WriteRequest(WRITE, data=b"x"))
    assert session.done


def test_resume_by_ref_in_a_new_session(store: ContentStore) -> None:
    data = b"a" * 1000 + b"b" * 1000
    session = WriteSession(store)
    session.handle(WriteRequest(STAT, ref="resumable", total=len(data)))
    session.handle(WriteRequest(WRITE, data=data[:1000]))
    session.close()  # the client went away
    assert store.status("resumable").offset == 1000
    with WriteSession(store) as session:
        stat = session.handle(WriteRequest(STAT, ref="resumable"))
        # As containerd: the total an earlier stream announced is not this stream's (Status
        # still shows it).
        assert (stat.offset, stat.total, stat.digest) == (1000, 0, sha256(data[:1000]))
        assert store.status("resumable").total == len(data)
        session.handle(WriteRequest(WRITE, offset=1000, data=data[1000:]))
        commit = session.handle(WriteRequest(COMMIT, offset=len(data)))
    assert commit.digest == sha256(data)


def test_wrong_offset_ends_the_session_but_keeps_the_ingest(store: ContentStore) -> None:
    session = WriteSession(store)
    session.handle(WriteRequest(WRITE, ref="off", data=b"abc"))
    with pytest.raises(OutOfRange, match="write @7 must occur at current offset 3"):
        session.handle(WriteRequest(WRITE, offset=7, data=b"x"))
    assert session.done
    with pytest.raises(FailedPrecondition):
        session.handle(WriteRequest(STAT))
    assert store.status("off").offset == 3
    assert not store.is_locked("off")


def test_offset_zero_restarts(store: ContentStore) -> None:
    with WriteSession(store) as session:
        session.handle(WriteRequest(WRITE, ref="again", data=b"garbage"))
        reply = session.handle(WriteRequest(WRITE, offset=0, data=b"good"))
        assert (reply.offset, reply.digest) == (4, sha256(b"good"))
        assert session.handle(WriteRequest(COMMIT, offset=4)).digest == sha256(b"good")


def test_total_on_a_later_message_is_verified(store: ContentStore) -> None:
    session = WriteSession(store)
    session.handle(WriteRequest(WRITE, ref="late-total", data=b"abc"))
    with pytest.raises(FailedPrecondition, match="unexpected commit size 3, expected 4"):
        session.handle(WriteRequest(COMMIT, total=4, offset=3))
    assert store.status("late-total").total == 4


def test_digest_mismatch_at_commit(store: ContentStore) -> None:
    session = WriteSession(store)
    session.handle(WriteRequest(WRITE, ref="bad-digest", data=b"abc"))
    with pytest.raises(FailedPrecondition, match="unexpected commit digest"):
        session.handle(WriteRequest(COMMIT, offset=3, expected=sha256(b"xyz")))


def test_expected_digest_already_stored_on_first_message(store: ContentStore) -> None:
    digest = put(store, b"present")
    with pytest.raises(AlreadyExists, match=f"content {digest}"):
        WriteSession(store).handle(WriteRequest(STAT, ref="early", expected=digest))
    with pytest.raises(NotFound):
        store.status("early")  # no ingest was made


def test_expected_digest_already_stored_later_aborts_the_ingest(store: ContentStore) -> None:
    digest = put(store, b"present")
    session = WriteSession(store)
    session.handle(WriteRequest(WRITE, ref="later", data=b"pre"))
    with pytest.raises(AlreadyExists):
        session.handle(WriteRequest(COMMIT, offset=3, expected=digest))
    with pytest.raises(NotFound):
        store.status("later")
    assert not store.is_locked("later")


def test_concurrent_session_on_same_ref(store: ContentStore) -> None:
    first = WriteSession(store)
    first.handle(WriteRequest(STAT, ref="shared"))
    with pytest.raises(Unavailable, match="ref shared locked"):
        WriteSession(store).handle(WriteRequest(STAT, ref="shared"))
    first.close()
    WriteSession(store).handle(WriteRequest(STAT, ref="shared"))


@pytest.mark.parametrize(
    "request_",
    [
        WriteRequest(7, ref="r"),
        WriteRequest(STAT, ref="r", total=-1),
        WriteRequest(WRITE, ref="r", offset=-1),
        WriteRequest(STAT, ref="r", expected="sha256:short"),
        WriteRequest(STAT, ref="nul\x00"),
    ],
)
def test_invalid_requests(store: ContentStore, request_: WriteRequest) -> None:
    with pytest.raises(InvalidArgument):
        WriteSession(store).handle(request_)


def test_no_messages_after_commit(store: ContentStore) -> None:
    session = WriteSession(store)
    session.handle(WriteRequest(COMMIT, ref="once", data=b"x"))
    with pytest.raises(FailedPrecondition):
        session.handle(WriteRequest(STAT))


def test_namespace_hooks(store: ContentStore) -> None:
    """How a namespace-aware servicer uses the hooks: its own refs, its own idea of
    "exists", and linking an already stored blob instead of refusing it."""
    seen: set[str] = set()
    commits: list[Committed] = []

    def link(committed: Committed) -> None:
        if committed.digest in seen:
            raise AlreadyExists(f"content {committed.digest}")
        seen.add(committed.digest)
        commits.append(committed)

    def session() -> WriteSession:
        return WriteSession(
            store, ingest_ref=lambda ref: f"ns1/{ref}", blob_exists=seen.__contains__,
            on_commit=link,
        )

    digest = put(store, b"shared blob")  # stored, but not yet "in the namespace"
    with session() as s:
        s.handle(WriteRequest(STAT, ref="r1", expected=digest))  # not refused: hook says absent
        assert store.status("ns1/r1").ref == "ns1/r1"
        reply = s.handle(WriteRequest(COMMIT, data=b"shared blob", labels={"a": "b"}))
    assert reply.digest == digest
    assert commits[0] == Committed(digest, 11, True, "r1", "ns1/r1", {"a": "b"})
    with pytest.raises(AlreadyExists):
        session().handle(WriteRequest(STAT, ref="r2", expected=digest))
