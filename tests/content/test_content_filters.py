"""Content.ListStatuses filters (field ``ref``), as `ctr content active` sends them."""

from __future__ import annotations

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager.content import ContentStore


@pytest.fixture
def active(store: ContentStore) -> ContentStore:
    for ref in ("tar-blobs/sha256/aaa", "tar-blobs/sha256/bbb", "tar-index.json"):
        with store.writer(ref) as writer:
            writer.write(b"x")
    return store


def refs(store: ContentStore, filters: list[str]) -> list[str]:
    return [status.ref for status in store.list_statuses(filters)]


def test_no_filter_or_empty_filter_lists_all(active: ContentStore) -> None:
    every = ["tar-blobs/sha256/aaa", "tar-blobs/sha256/bbb", "tar-index.json"]
    assert refs(active, []) == every
    assert refs(active, [""]) == every  # what `ctr content active` sends


def test_ref_filters(active: ContentStore) -> None:
    assert refs(active, ["ref==tar-index.json"]) == ["tar-index.json"]
    assert refs(active, ["ref~=^tar-blobs/"]) == ["tar-blobs/sha256/aaa", "tar-blobs/sha256/bbb"]
    assert refs(active, ["ref!=tar-index.json", "ref==tar-index.json"]) == refs(active, [])
    assert refs(active, ['ref=="tar-blobs/sha256/bbb"']) == ["tar-blobs/sha256/bbb"]
    assert refs(active, ["labels.x==y"]) == []
    assert refs(active, ["ref"]) == refs(active, [])


def test_bad_filter(active: ContentStore) -> None:
    with pytest.raises(InvalidArgument):
        active.list_statuses(["ref==="])
