"""Image references as the registry client parses them."""

from __future__ import annotations

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager.registry.reference import ImageRef, parse

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("text", "expected"), [
    ("busybox", ImageRef("docker.io", "library/busybox", "latest")),
    ("docker.io/library/busybox:latest", ImageRef("docker.io", "library/busybox", "latest")),
    ("index.docker.io/library/busybox", ImageRef("docker.io", "library/busybox", "latest")),
    ("user/app:1.0", ImageRef("docker.io", "user/app", "1.0")),
    ("localhost:5000/a/b:tag", ImageRef("localhost:5000", "a/b", "tag")),
    ("localhost/a", ImageRef("localhost", "a", "latest")),
    ("127.0.0.1:5000/x", ImageRef("127.0.0.1:5000", "x", "latest")),
    ("registry.k8s.io/pause:3.9", ImageRef("registry.k8s.io", "pause", "3.9")),
    (f"busybox@{DIGEST}", ImageRef("docker.io", "library/busybox", "", DIGEST)),
    (f"quay.io/a/b:v1@{DIGEST}", ImageRef("quay.io", "a/b", "v1", DIGEST)),
])
def test_parse(text: str, expected: ImageRef) -> None:
    assert parse(text) == expected


def test_object_prefers_the_digest() -> None:
    ref = parse(f"quay.io/a/b:v1@{DIGEST}")
    assert ref.object == DIGEST
    assert str(ref) == f"quay.io/a/b:v1@{DIGEST}"
    assert parse("quay.io/a/b:v1").object == "v1"
    assert str(parse("quay.io/a/b").with_digest(DIGEST)) == f"quay.io/a/b:latest@{DIGEST}"


@pytest.mark.parametrize("text", [
    "", " busybox", "Busybox", "busybox:", "busybox@sha256:abc", "a//b", "-a/b", "busybox:tag:tag",
    "busybox@md5:" + "ab" * 16, "ab" * 32, "a" * 300, "host:port/x",
])
def test_bad_references_are_invalid_argument(text: str) -> None:
    with pytest.raises(InvalidArgument) as raised:
        parse(text)
    assert "invalid" in str(raised.value) or "must" in str(raised.value) or "unsupported" in str(raised.value)
