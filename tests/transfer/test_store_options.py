"""ImageStore fields of a pull that ``ctrpy images pull`` does not set, as containerd 2.x's
transfer service reads them: ``manifest_limit``, ``extra_references``, ``all_metadata``, and
several platforms at once. Driven by hand-built Transfer requests against the module's ctrpyd.

The index at library/multi:latest lists the other platform first, then this machine's."""

from __future__ import annotations

import pytest

from ctrpy.api.containerd.types.transfer import imagestore_pb2
from ctrpy.errors import CtrpyError
from ctrpy.images import content, store
from ctrpy.images.platforms import default_spec, parse
from ctrpy.images.transfer import Progress, _platform
from tests.support.ctrpyd import Daemon

from .conftest import OTHER_ARCH, Filled
from .support import pull_with

NATIVE = default_spec()
OTHER = parse(f"linux/{OTHER_ARCH}")


def _held(ctrpyd: Daemon, namespace: str, *digests: str) -> list[bool]:
    with ctrpyd.client(namespace) as client:
        return [content.exists(client, digest) for digest in digests]


def _multi(filled: Filled) -> str:
    return f"{filled.host}/library/multi:latest"


def test_manifest_limit_without_platforms_keeps_the_first(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    """All platforms, limit 1: the index's first entry only (containerd's LimitManifests with
    platforms.All keeps the index order)."""
    with ctrpyd.client(namespace) as client:
        pull_with(client, _multi(filled), imagestore_pb2.ImageStore(name="multi", manifest_limit=1))
        assert store.get(client, "multi").target.digest == filled.index_digest
    assert _held(ctrpyd, namespace, filled.other.manifest_digest, filled.other.config_digest,
                 filled.native.manifest_digest, filled.native.config_digest) == [True, True, False, False]


def test_manifest_limit_prefers_the_first_wanted_platform(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    """Both platforms wanted, this machine's first, limit 1: this machine's manifest, although
    the index lists the other first."""
    request = imagestore_pb2.ImageStore(name="multi", platforms=[_platform(NATIVE), _platform(OTHER)],
                                        manifest_limit=1)
    with ctrpyd.client(namespace) as client:
        pull_with(client, _multi(filled), request)
    assert _held(ctrpyd, namespace, filled.native.manifest_digest, filled.other.manifest_digest) == [True, False]


def test_several_platforms_fetch_one_manifest_each(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    request = imagestore_pb2.ImageStore(name="multi", platforms=[_platform(NATIVE), _platform(OTHER)])
    with ctrpyd.client(namespace) as client:
        pull_with(client, _multi(filled), request)
    digests = [filled.native.manifest_digest, filled.other.manifest_digest,
               *(layer.digest for layer in filled.native.layers), *(layer.digest for layer in filled.other.layers)]
    assert all(_held(ctrpyd, namespace, *digests))


def test_all_metadata_fetches_every_config_and_the_wanted_layers(ctrpyd: Daemon, namespace: str,
                                                                 filled: Filled) -> None:
    request = imagestore_pb2.ImageStore(name="multi", platforms=[_platform(NATIVE)], all_metadata=True)
    with ctrpyd.client(namespace) as client:
        pull_with(client, _multi(filled), request)
    assert all(_held(ctrpyd, namespace, filled.native.manifest_digest, filled.native.config_digest,
                     filled.other.manifest_digest, filled.other.config_digest,
                     *(layer.digest for layer in filled.native.layers)))
    native_layers = {layer.digest for layer in filled.native.layers}
    other_only = [layer.digest for layer in filled.other.layers if layer.digest not in native_layers]
    assert not any(_held(ctrpyd, namespace, *other_only))


def test_all_metadata_with_a_limit(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    """all_metadata and limit 1: the wanted platform's manifest only (sorted first)."""
    request = imagestore_pb2.ImageStore(name="multi", platforms=[_platform(NATIVE)], all_metadata=True,
                                        manifest_limit=1)
    with ctrpyd.client(namespace) as client:
        pull_with(client, _multi(filled), request)
    assert _held(ctrpyd, namespace, filled.native.manifest_digest, filled.other.manifest_digest) == [True, False]


def test_extra_references(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    """Complete names are stored; ``add_digest`` appends the root digest; a prefix without
    add_digest names nothing on a pull. Extra names carry the request's labels and, as in
    containerd 2.3, a back reference to the image's own name and an immediate expiry."""
    digest = filled.busybox.manifest_digest
    request = imagestore_pb2.ImageStore(
        name="main:1", labels={"team": "a"},
        extra_references=[
            imagestore_pb2.ImageReference(name="extra:1"),
            imagestore_pb2.ImageReference(name="pinned", add_digest=True),
            imagestore_pb2.ImageReference(name="prefix", is_prefix=True),
            imagestore_pb2.ImageReference(name="prefixed", is_prefix=True, add_digest=True),
        ])
    events: list[Progress] = []
    with ctrpyd.client(namespace) as client:
        pull_with(client, f"{filled.host}/library/busybox:1", request, events=events)
        names = {image.name: image for image in store.list_images(client)}
    assert set(names) == {"main:1", "extra:1", f"pinned@{digest}", f"prefixed@{digest}"}
    assert all(image.target.digest == digest for image in names.values())
    assert names["main:1"].labels == {"team": "a"}
    for extra in ("extra:1", f"pinned@{digest}", f"prefixed@{digest}"):
        labels = names[extra].labels
        assert labels["team"] == "a" and labels["containerd.io/gc.bref.image"] == "main:1"
        assert "containerd.io/gc.expire" in labels
    saved = [event.name for event in events if event.event == "saved"]
    assert saved == ["main:1", "extra:1", f"pinned@{digest}", f"prefixed@{digest}"]
    assert all(event.digest == digest for event in events if event.event == "saved")


def test_extra_references_without_a_name(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    """No name of its own: only the extra references are stored (not the reference), and they
    carry no back reference."""
    ref = f"{filled.host}/library/busybox:1"
    request = imagestore_pb2.ImageStore(extra_references=[imagestore_pb2.ImageReference(name="only:1")])
    with ctrpyd.client(namespace) as client:
        pull_with(client, ref, request)
        images = store.list_images(client)
    assert [image.name for image in images] == ["only:1"]
    assert "containerd.io/gc.bref.image" not in images[0].labels


def test_only_prefix_references_name_nothing(ctrpyd: Daemon, namespace: str, filled: Filled) -> None:
    request = imagestore_pb2.ImageStore(extra_references=[imagestore_pb2.ImageReference(name="p", is_prefix=True)])
    with ctrpyd.client(namespace) as client, pytest.raises(CtrpyError, match="no image name found"):
        pull_with(client, f"{filled.host}/library/busybox:1", request)
