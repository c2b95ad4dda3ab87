"""Platform parsing, normalisation and matching, as containerd's platforms package does it."""

from __future__ import annotations

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.images import platforms
from ctrpy.images.model import Descriptor, Platform


@pytest.mark.parametrize(("spec", "want"), [
    ("linux/amd64", Platform("linux", "amd64")),
    ("linux/x86_64", Platform("linux", "amd64")),
    ("linux/aarch64", Platform("linux", "arm64")),
    ("linux/arm64/v8", Platform("linux", "arm64", "v8")),
    ("linux/arm", Platform("linux", "arm")),
    ("linux/armhf", Platform("linux", "arm")),
    ("linux/arm/7", Platform("linux", "arm", "v7")),
    ("Linux/AMD64", Platform("linux", "amd64")),
    ("s390x", Platform("linux", "s390x")),
    ("linux", Platform("linux", platforms.host_arch())),
])
def test_parse(spec: str, want: Platform) -> None:
    assert platforms.parse(spec) == want


@pytest.mark.parametrize("bad", ["linux/*", "linux/am d64", "a/b/c/d", "nonsense", ""])
def test_parse_refuses(bad: str) -> None:
    with pytest.raises(InvalidArgument):
        platforms.parse(bad)


def test_normalize_and_format() -> None:
    assert platforms.normalize(Platform("", "x86_64")) == Platform("linux", "amd64")
    assert platforms.normalize(Platform("linux", "arm")) == Platform("linux", "arm", "v7")
    assert platforms.normalize(Platform("linux", "aarch64", "8")) == Platform("linux", "arm64")
    assert str(Platform("linux", "arm", "v7")) == "linux/arm/v7"
    assert str(Platform("", "")) == "unknown"


def test_only_amd64_also_runs_386_but_prefers_amd64() -> None:
    matcher = platforms.only(Platform("linux", "amd64"))
    assert matcher.match(Platform("linux", "amd64"))
    assert matcher.match(Platform("linux", "386"))
    assert not matcher.match(Platform("linux", "arm64"))
    assert not matcher.match(Platform("windows", "amd64"))
    assert matcher.less(Platform("linux", "amd64"), Platform("linux", "386"))
    assert not platforms.only_strict(Platform("linux", "amd64")).match(Platform("linux", "386"))


def test_only_arm64_runs_older_arm() -> None:
    matcher = platforms.only(Platform("linux", "arm64"))
    assert [str(p) for p in matcher.platforms] == [
        "linux/arm64", "linux/arm/v8", "linux/arm/v7", "linux/arm/v6", "linux/arm/v5"]
    assert matcher.match(Platform("linux", "arm"))  # arm means arm/v7
    assert matcher.less(Platform("linux", "arm", "v7"), Platform("linux", "arm", "v6"))


def test_best_first_orders_matches_and_puts_unknown_last() -> None:
    matcher = platforms.only(Platform("linux", "amd64"))
    entries = [
        Descriptor("m", "sha256:" + "1" * 64, 1, platform=None),
        Descriptor("m", "sha256:" + "2" * 64, 1, platform=Platform("linux", "386")),
        Descriptor("m", "sha256:" + "3" * 64, 1, platform=Platform("linux", "amd64")),
    ]
    ordered = platforms.best_first(matcher, entries)
    assert [d.digest[7] for d in ordered] == ["3", "2", "1"]
    # Whatever the matcher, entries without a platform go last (containerd sorts them so).
    assert platforms.best_first(platforms.ALL, entries) == [entries[1], entries[2], entries[0]]
