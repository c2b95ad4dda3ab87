"""Parsing image documents, Go-compatible JSON, chain ids and GC labels."""

from __future__ import annotations

import json

import pytest

from ctrpy import testimage
from ctrpy.errors import InvalidArgument
from ctrpy.images import gojson, mediatypes
from ctrpy.images.model import (
    Descriptor,
    Platform,
    chain_id,
    chain_ids,
    parse_config,
    parse_index,
    parse_manifest,
    validate_digest,
)

D1 = "sha256:" + "a" * 64
D2 = "sha256:" + "b" * 64


def doc(value: object) -> bytes:
    return json.dumps(value).encode()


def test_manifest_round_trip() -> None:
    manifest = parse_manifest(doc({
        "schemaVersion": 2, "mediaType": mediatypes.OCI_MANIFEST,
        "config": {"mediaType": mediatypes.OCI_CONFIG, "digest": D1, "size": 3},
        "layers": [{"mediaType": mediatypes.OCI_LAYER_GZIP, "digest": D2, "size": 5, "annotations": {"a": "b"}}],
    }))
    assert manifest.config == Descriptor(mediatypes.OCI_CONFIG, D1, 3)
    assert manifest.layers[0].annotations == {"a": "b"}
    assert [c.digest for c in manifest.children()] == [D1, D2]


@pytest.mark.parametrize(("data", "message"), [
    (b"not json", "not valid JSON"),
    (b"[]", "expected a JSON object"),
    (doc({"layers": []}), "missing config"),
    (doc({"config": {"digest": "md5:x", "size": 1}}), "unsupported digest algorithm"),
    (doc({"config": {"digest": "sha256", "size": 1}}), "invalid digest"),
    (doc({"config": {"digest": "sha256:abc", "size": 1}}), "invalid sha256 digest"),
    (doc({"config": {"digest": D1, "size": -1}}), "size must be a non-negative integer"),
    (doc({"config": {"digest": D1, "size": 1}, "layers": {}}), "layers must be a list"),
    (doc({"config": {"digest": D1, "size": 1}, "manifests": [{}]}), "expected manifest but found index"),
    (doc({"fsLayers": [{"blobSum": D1}]}), "schema 1 not supported"),
])
def test_manifest_errors_name_the_problem(data: bytes, message: str) -> None:
    with pytest.raises(InvalidArgument, match=message):
        parse_manifest(data, where="manifest X")


def test_index_and_platforms() -> None:
    index = parse_index(doc({"schemaVersion": 2, "manifests": [
        {"mediaType": mediatypes.OCI_MANIFEST, "digest": D1, "size": 7,
         "platform": {"architecture": "arm", "os": "linux", "variant": "v7"}},
    ]}))
    assert index.manifests[0].platform == Platform("linux", "arm", "v7")
    with pytest.raises(InvalidArgument, match="expected index but found manifest"):
        parse_index(doc({"config": {"digest": D1, "size": 1}}))
    with pytest.raises(InvalidArgument, match="platform must be an object"):
        parse_index(doc({"manifests": [{"digest": D1, "size": 1, "platform": "linux"}]}))


def test_config() -> None:
    config = parse_config(doc({"os": "linux", "architecture": "amd64", "rootfs": {"type": "layers", "diff_ids": [D1, D2]}}))
    assert config.diff_ids == (D1, D2) and config.platform == Platform("linux", "amd64")
    assert parse_config(b"{}").diff_ids == ()
    with pytest.raises(InvalidArgument, match="diff_id 1"):
        parse_config(doc({"rootfs": {"diff_ids": [D1, "nope"]}}))


def test_chain_ids_agree_with_the_test_images() -> None:
    diff_ids = (D1, D2, D1)
    assert chain_ids(diff_ids) == testimage.chain_ids(diff_ids)
    assert chain_id([D1]) == D1 and chain_id([]) == ""
    assert validate_digest(D1) == D1


def test_go_json_matches_go() -> None:
    desc = Descriptor(mediatypes.DOCKER_MANIFEST, D1, 422, {"z": "1", "a": "<&>"}, Platform("linux", "amd64"))
    assert gojson.dumps(desc.to_json()) == (
        b'{"mediaType":"application/vnd.docker.distribution.manifest.v2+json","digest":"' + D1.encode()
        + b'","size":422,"annotations":{"a":"\\u003c\\u0026\\u003e","z":"1"},'
        b'"platform":{"architecture":"amd64","os":"linux"}}')
    assert gojson.dumps({"b": [1, None, True], "a": "\u00fc\n\u2028"}) == '{"b":[1,null,true],"a":"\u00fc\\n\\u2028"}'.encode()
    with pytest.raises(TypeError):
        gojson.dumps({"x": object()})


def test_gc_labels_number_children_like_containerd() -> None:
    labels = mediatypes.gc_labels([
        (mediatypes.OCI_CONFIG, D1), (mediatypes.OCI_LAYER_GZIP, D2), (mediatypes.DOCKER_LAYER, D1),
        (mediatypes.OCI_MANIFEST, D2), ("application/x-other", D1), (mediatypes.OCI_CONFIG, D2),
    ])
    assert labels == {
        "containerd.io/gc.ref.content.config": D1,
        "containerd.io/gc.ref.content.l.0": D2,
        "containerd.io/gc.ref.content.l.1": D1,
        "containerd.io/gc.ref.content.m.0": D2,
        "containerd.io/gc.ref.content.0": D1,
        "containerd.io/gc.ref.content.config1": D2,
    }


def test_media_types() -> None:
    assert mediatypes.is_layer(mediatypes.OCI_LAYER_ZSTD) and mediatypes.is_layer(mediatypes.DOCKER_LAYER_GZIP)
    assert not mediatypes.is_layer(mediatypes.OCI_CONFIG)
    assert mediatypes.compression_of(b"\x1f\x8b\x08\x00") == "gzip"
    assert mediatypes.compression_of(b"\x28\xb5\x2f\xfd") == "zstd"
    assert mediatypes.compression_of(b"ustar") == ""
    assert mediatypes.is_non_distributable(mediatypes.DOCKER_FOREIGN_LAYER)
