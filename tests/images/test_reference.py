"""Docker reference normalisation and the names ctr import gives images."""

from __future__ import annotations

import time

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.images import reference

DIGEST = "sha256:" + "ab" * 32


@pytest.mark.parametrize(("given", "full"), [
    ("busybox", "docker.io/library/busybox:latest"),
    ("busybox:1.36", "docker.io/library/busybox:1.36"),
    ("library/busybox", "docker.io/library/busybox:latest"),
    ("me/app:v1", "docker.io/me/app:v1"),
    ("index.docker.io/me/app", "docker.io/me/app:latest"),
    ("localhost/app", "localhost/app:latest"),
    ("localhost:5000/a/b:tag", "localhost:5000/a/b:tag"),
    ("quay.io/org/img:1.0", "quay.io/org/img:1.0"),
    (f"busybox@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),
    (f"busybox:1.0@{DIGEST}", f"docker.io/library/busybox@{DIGEST}"),  # the digest wins
])
def test_normalize(given: str, full: str) -> None:
    assert reference.normalize(given) == full


@pytest.mark.parametrize("bad", ["", "UPPER/case", "busybox:", "a//b", "ab" * 32, "name:bad tag", "x@sha256:12"])
def test_normalize_refuses_bad_references(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        reference.normalize(bad)


@pytest.mark.parametrize(("given", "short"), [
    ("docker.io/library/busybox:latest", "busybox:latest"),
    ("docker.io/library/busybox", "busybox:latest"),
    ("docker.io/me/app:v1", "me/app:v1"),
    ("quay.io/org/img", "quay.io/org/img:latest"),
    (f"docker.io/library/busybox@{DIGEST}", f"busybox@{DIGEST}"),
])
def test_familiarize(given: str, short: str) -> None:
    assert reference.familiarize(given) == short


@pytest.mark.parametrize(("name", "ref"), [
    ("docker.io/library/busybox:latest", "latest"),
    ("localhost:5000/app:v2", "v2"),
    (f"docker.io/library/busybox@{DIGEST}", f"@{DIGEST}"),
    ("docker.io/library/busybox", ""),
    ("busybox", "busybox"),
])
def test_oci_ref_name(name: str, ref: str) -> None:
    assert reference.oci_ref_name(name) == ref


def test_ref_translators() -> None:
    add = reference.ref_translator("import-2024-01-01", only_prefixed=False)
    assert add("latest") == "import-2024-01-01:latest"
    assert add("docker.io/x/y:1") == "docker.io/x/y:1"
    only = reference.ref_translator("docker.io/library/busybox", only_prefixed=True)
    assert only("1.0") == "docker.io/library/busybox:1.0"
    assert only("docker.io/library/busybox:2") == "docker.io/library/busybox:2"
    assert only("docker.io/library/busyboxer:2") == ""  # a longer name is not under the prefix
    assert only("docker.io/other:2") == ""


@pytest.mark.parametrize(
    "text",
    [
        "2kboz5b2emf1wxr/0z-0vllcba.",  # found by the CRI's fuzz test: 49 s before the fix
        "a" * 200 + ".",
        "a-" * 120 + "!",
        "b" * 100 + "/" + "a1" * 70 + ".",
        "x." * 120 + "/" + "b" + "-" * 100 + "!",
        "localhost:5000/" + "a" * 200 + ":" + "t" * 200,
    ],
)
def test_a_name_that_fails_to_parse_fails_at_once(text: str) -> None:
    """The grammar has one way to split a name, so a failing match cannot backtrack through
    every split (a client could otherwise hold a daemon thread for minutes with one name)."""
    start = time.perf_counter()
    with pytest.raises(InvalidArgument):
        reference.parse_normalized(text)
    assert time.perf_counter() - start < 1.0  # linear: microseconds; exponential: minutes


def test_dash_runs_and_underscores_still_parse() -> None:
    assert str(reference.parse_normalized("a-b--c/d__e.f_g:1.0")) == "docker.io/a-b--c/d__e.f_g:1.0"
    assert str(reference.parse_normalized("my-host.example:5000/x--y/z")) == "my-host.example:5000/x--y/z"
    with pytest.raises(InvalidArgument):
        reference.parse_normalized("a___b")
