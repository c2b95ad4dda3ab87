"""Unpacking an image into a snapshotter, layer by layer, as containerd's client does.

For each layer, bottom first, the snapshot named by its chain id is looked up (``Stat``); if it
is missing, an extraction snapshot ``extract-<nanos>-<random> <chain id>`` is prepared on the
previous chain id, the layer is applied into it by the Diff service, the digest the service
computed is checked against the config's diff_id, and the snapshot is committed under the
chain id. A commit that finds the name taken means someone else unpacked the same layer: the
extraction snapshot is removed and theirs is used. Layers already present are reused. The
layer blob is then labelled with its uncompressed digest, and finally the config with the
top chain id (``containerd.io/gc.ref.snapshot.<snapshotter>``), which keeps the snapshot alive
as long as the image is.
"""

from __future__ import annotations

import os
import secrets
import time
from base64 import urlsafe_b64encode
from dataclasses import dataclass

from ctrpy import errors
from ctrpy.api.containerd.services.diff.v1 import diff_pb2
from ctrpy.api.containerd.services.namespaces.v1 import namespace_pb2
from ctrpy.client import Client
from ctrpy.images import content, platforms, snapshots
from ctrpy.images.convert import descriptor_to_proto, mount_to_proto
from ctrpy.images.model import Descriptor, Image, chain_id
from ctrpy.images.platforms import Matcher
from ctrpy.images.resolve import read_config, resolve_manifest

DEFAULT_SNAPSHOTTER = "overlayfs"
SNAPSHOTTER_LABEL = "containerd.io/defaults/snapshotter"
UNCOMPRESSED_LABEL = "containerd.io/uncompressed"
SNAPSHOT_REF_LABEL = "containerd.io/gc.ref.snapshot."


def resolve_snapshotter(client: Client, name: str | None = None) -> str:
    """The snapshotter to use: ``name``, else ``$CTRPY_SNAPSHOTTER``, else the namespace's
    ``containerd.io/defaults/snapshotter`` label, else ``overlayfs``.

    A namespace that does not exist yet simply has no label.
    """
    if name:
        return name
    if os.environ.get("CTRPY_SNAPSHOTTER"):
        return os.environ["CTRPY_SNAPSHOTTER"]
    try:
        namespace = client.call(client.namespaces.Get, namespace_pb2.GetNamespaceRequest(name=client.namespace))
    except errors.NotFound:
        return DEFAULT_SNAPSHOTTER
    return namespace.namespace.labels.get(SNAPSHOTTER_LABEL) or DEFAULT_SNAPSHOTTER


@dataclass(frozen=True)
class Layer:
    """One layer to unpack: the blob as the manifest lists it, and its diff_id from the config."""

    blob: Descriptor
    diff_id: str


def image_layers(client: Client, image: Image, matcher: Matcher | None) -> tuple[Descriptor, list[Layer]]:
    """The config descriptor and the layers of ``image`` on the platform ``matcher`` picks.

    Raises InvalidArgument when the config and the manifest disagree on the number of layers.
    """
    _, manifest = resolve_manifest(client, image.target, matcher)
    config = read_config(client, manifest.config)
    if len(config.diff_ids) != len(manifest.layers):
        raise errors.InvalidArgument(
            f"image {image.name}: mismatched image rootfs and manifest layers "
            f"({len(config.diff_ids)} diff_ids, {len(manifest.layers)} layers)")
    return manifest.config, [Layer(blob, diff) for blob, diff in zip(manifest.layers, config.diff_ids)]


def _unique() -> str:
    return f"{time.time_ns() % 1_000_000_000}-{urlsafe_b64encode(secrets.token_bytes(3)).decode()}"


def _apply_layer(client: Client, snapshotter: str, layer: Layer, parent: str, chain: str) -> bool:
    """Unpack one layer into the snapshot ``chain``; False when someone else committed it first."""
    while True:
        key = f"extract-{_unique()} {chain}"
        try:
            mounts = snapshots.prepare(client, snapshotter, key, parent)
        except errors.AlreadyExists:
            continue  # a key collision: try another random one
        except errors.CtrpyError as exc:
            raise type(exc)(f"failed to prepare extraction snapshot {key!r}: {exc.message}") from None
        break
    try:
        request = diff_pb2.ApplyRequest(diff=descriptor_to_proto(layer.blob), mounts=[mount_to_proto(m) for m in mounts])
        try:
            applied = client.call(client.diff.Apply, request).applied
        except errors.CtrpyError as exc:
            raise type(exc)(f"failed to extract layer {layer.diff_id}: {exc.message}") from None
        if applied.digest != layer.diff_id:
            raise errors.FailedPrecondition(
                f"wrong diff id calculated on extraction {applied.digest!r} (layer {layer.blob.digest}, "
                f"config says {layer.diff_id})")
        snapshots.commit(client, snapshotter, chain, key)
    except errors.AlreadyExists:
        _remove_quietly(client, snapshotter, key)
        return False
    except BaseException:
        _remove_quietly(client, snapshotter, key)
        raise
    return True


def _remove_quietly(client: Client, snapshotter: str, key: str) -> None:
    try:
        snapshots.remove(client, snapshotter, key)
    except errors.CtrpyError:
        pass


def unpack(client: Client, image: Image, snapshotter: str | None = None, matcher: Matcher | None = None) -> str:
    """Unpack ``image`` into ``snapshotter`` and return the chain id of its top layer.

    ``matcher`` picks the manifest of an index (default: the host's platforms). Runs inside a
    lease (the caller's, or a new one). Raises NotFound for missing content, FailedPrecondition
    when a layer's content does not match its diff_id, and what the services raise otherwise;
    an extraction snapshot is never left behind.
    """
    matcher = matcher if matcher is not None else platforms.default()
    with client.lease():
        name = resolve_snapshotter(client, snapshotter)
        config, layers = image_layers(client, image, matcher)
        diff_ids: list[str] = []
        for layer in layers:
            parent = chain_id(diff_ids)
            diff_ids.append(layer.diff_id)
            chain = chain_id(diff_ids)
            try:
                snapshots.stat(client, name, chain)
                continue
            except errors.NotFound:
                pass
            if _apply_layer(client, name, layer, parent, chain):
                # The diff_id was verified by the apply: record it on the blob.
                content.update_labels(client, layer.blob.digest, {UNCOMPRESSED_LABEL: layer.diff_id})
        top = chain_id(diff_ids)
        content.update_labels(client, config.digest, {SNAPSHOT_REF_LABEL + name: top})
        return top


def is_unpacked(client: Client, image: Image, snapshotter: str | None = None, matcher: Matcher | None = None) -> bool:
    """Whether the top snapshot of ``image`` exists in the snapshotter."""
    matcher = matcher if matcher is not None else platforms.default()
    name = resolve_snapshotter(client, snapshotter)
    _, manifest = resolve_manifest(client, image.target, matcher)
    top = chain_id(read_config(client, manifest.config).diff_ids)
    try:
        snapshots.stat(client, name, top)
    except errors.NotFound:
        return False
    return True
