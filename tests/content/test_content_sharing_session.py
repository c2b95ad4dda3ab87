"""A Write session that links a stored blob without its bytes (containerd's "shared" content
policy), over the plain store: what each message does before and after it needs a real ingest.
The same sequences are compared with containerd in tests/differential/test_known_cases.py."""

from __future__ import annotations

import pytest

from ctrpy.errors import FailedPrecondition, OutOfRange
from ctrpy.manager.content import Committed, ContentStore, WriteAction, WriteRequest, WriteSession

from .content_helpers import put, sha256

STAT, WRITE, COMMIT = WriteAction.STAT, WriteAction.WRITE, WriteAction.COMMIT
DATA = b"a blob another namespace stored"


def _session(store: ContentStore, commits: list[Committed]) -> WriteSession:
    """A session for a namespace that holds nothing, in which every stored blob is shared."""
    def shared_size(digest: str, total: int) -> int | None:
        if not store.exists(digest):
            return None
        size = store.info(digest).size
        return size if total in (0, size) else None

    return WriteSession(store, blob_exists=lambda digest: False, shared_size=shared_size,
                        on_commit=commits.append)


@pytest.fixture
def stored(store: ContentStore) -> str:
    return put(store, DATA, ref="elsewhere")


def test_stat_answers_the_blob_and_a_commit_there_links_it(store: ContentStore, stored: str) -> None:
    commits: list[Committed] = []
    with _session(store, commits) as session:
        stat = session.handle(WriteRequest(STAT, ref="r", expected=stored, total=len(DATA)))
        assert (stat.offset, stat.total, stat.digest) == (len(DATA), len(DATA), stored)
        assert store.list_statuses() == []  # no ingest on disk
        commit = session.handle(WriteRequest(COMMIT, offset=len(DATA), labels={"k": "v"}))
    assert (commit.action, commit.offset, commit.total, commit.digest) == (COMMIT, len(DATA), len(DATA), stored)
    [committed] = commits
    assert (committed.digest, committed.size, committed.existed, dict(committed.labels)) == (
        stored, len(DATA), True, {"k": "v"})


def test_commit_checks_the_size_and_digest_it_names(store: ContentStore, stored: str) -> None:
    for request, message in ((WriteRequest(COMMIT, offset=len(DATA), total=len(DATA) + 1),
                              f'"r" failed size validation: {len(DATA)} != {len(DATA) + 1}'),
                             (WriteRequest(COMMIT, offset=len(DATA), expected=sha256(b"other")),
                              '"r" unexpected digest')):
        commits: list[Committed] = []
        session = _session(store, commits)
        session.handle(WriteRequest(STAT, ref="r", expected=stored))
        with pytest.raises(FailedPrecondition, match=message):
            session.handle(request)
        assert commits == [] and session.done


def test_offsets_are_checked_against_the_blobs_size(store: ContentStore, stored: str) -> None:
    session = _session(store, [])
    session.handle(WriteRequest(STAT, ref="r", expected=stored))
    with pytest.raises(OutOfRange, match=f"write @1 must occur at current offset {len(DATA)}"):
        session.handle(WriteRequest(WRITE, offset=1, data=b"x"))


def test_offset_zero_opens_a_real_empty_ingest(store: ContentStore, stored: str) -> None:
    commits: list[Committed] = []
    with _session(store, commits) as session:
        session.handle(WriteRequest(STAT, ref="r", expected=stored))
        reply = session.handle(WriteRequest(WRITE, data=DATA[:3]))
        assert (reply.offset, reply.digest) == (3, sha256(DATA[:3]))
        assert store.status("r").offset == 3
        commit = session.handle(WriteRequest(COMMIT, offset=3, data=DATA[3:]))
    assert commit.digest == stored and commits[0].existed is True
    # The digest the stream named is checked, as any.
    session = _session(store, [])
    session.handle(WriteRequest(STAT, ref="r", expected=stored))
    with pytest.raises(FailedPrecondition, match="unexpected commit digest"):
        session.handle(WriteRequest(COMMIT, data=b"new"))


def test_data_at_the_blobs_offset_copies_the_blob_first(store: ContentStore, stored: str) -> None:
    with _session(store, []) as session:
        session.handle(WriteRequest(STAT, ref="r", expected=stored))
        reply = session.handle(WriteRequest(WRITE, offset=len(DATA), data=b"+"))
    assert (reply.offset, reply.digest) == (len(DATA) + 1, sha256(DATA + b"+"))
    assert store.status("r").offset == len(DATA) + 1


def test_another_size_or_an_unknown_blob_needs_the_bytes(store: ContentStore, stored: str) -> None:
    for request in (WriteRequest(STAT, ref="a", expected=stored, total=len(DATA) + 1),
                    WriteRequest(STAT, ref="b", expected=sha256(b"nowhere"))):
        with _session(store, []) as session:
            assert session.handle(request).offset == 0
    assert {status.ref for status in store.list_statuses()} == {"a", "b"}


def test_a_linking_commit_drops_an_ingest_an_earlier_stream_left(store: ContentStore, stored: str) -> None:
    with store.writer("r") as writer:
        writer.write(b"partial")
    with _session(store, []) as session:
        assert session.handle(WriteRequest(STAT, ref="r", expected=stored)).offset == len(DATA)
        assert store.status("r").offset == len(b"partial")  # untouched until the commit
        session.handle(WriteRequest(COMMIT, offset=len(DATA)))
    assert store.list_statuses() == []
