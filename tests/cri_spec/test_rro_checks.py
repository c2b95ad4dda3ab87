"""Recursive read-only mounts in the spec: when the host can make them, and which requests are
refused before the host is touched (the end-to-end side is in test_cri_features.py)."""

from __future__ import annotations

from pathlib import Path

import pytest

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.errors import InvalidArgument
from ctrpy.manager.cri import crimounts
from ctrpy.manager.cri.containerspec import kernel_at_least
from ctrpy.oci.defaults import default_spec


@pytest.mark.parametrize(("release", "expected"), [
    ("5.12.0", True),
    ("6.18.44-fc-v1252", True),
    ("5.11.22-generic", False),
    ("4.19.0-27-amd64", False),
    ("6", True),
    ("banana", False),
    ("", False),
])  # fmt: skip
def test_kernel_at_least(release: str, expected: bool) -> None:
    assert kernel_at_least(5, 12, release) is expected


@pytest.mark.parametrize(("readonly", "propagation", "message"), [
    (False, api.PROPAGATION_PRIVATE, "needs readonly"),
    (True, api.PROPAGATION_HOST_TO_CONTAINER, "needs private propagation"),
    (True, api.PROPAGATION_BIDIRECTIONAL, "needs private propagation"),
])  # fmt: skip
def test_invalid_recursive_read_only_touches_nothing(tmp_path: Path, readonly: bool, propagation: int,
                                                     message: str) -> None:
    """Refused as InvalidArgument (never the propagation check's FailedPrecondition, which a
    private host path would otherwise give first), and no host directory is made, not even for
    an earlier valid mount of the same request."""
    earlier = crimounts.CriMount("/a", str(tmp_path / "earlier"))
    bad = crimounts.CriMount("/m", str(tmp_path / "missing"), readonly, propagation, recursive_read_only=True)
    with pytest.raises(InvalidArgument, match=message):
        crimounts.apply_mounts(default_spec("k8s.io", "c1"), [earlier, bad])
    assert list(tmp_path.iterdir()) == []


def test_recursive_read_only_option(tmp_path: Path) -> None:
    spec = default_spec("k8s.io", "c1")
    crimounts.apply_mounts(spec, [crimounts.CriMount("/m", str(tmp_path), True, recursive_read_only=True),
                                  crimounts.CriMount("/p", str(tmp_path), True)])
    options = {m["destination"]: m["options"] for m in spec["mounts"]}
    assert options["/m"] == ["rbind", "rprivate", "rro"] and options["/p"] == ["rbind", "rprivate", "ro"]
