"""A pure-Python builder of container images, for tests, the demo and benchmarks.

Standard library only, and nothing else from ctrpy: it must stay usable to check ctrpy against
containerd. Imports point one way inside: ``model`` <- ``layers`` <- ``archive``; ``images``,
``tree``, ``hostile`` and ``critest`` (critest's images) build on ``model``; ``__main__`` is the CLI.

Typical use::

    image = busybox_image()
    info = write_oci_layout_tar(image, tmp_path / "busybox.tar")
    # ctr images import busybox.tar; info.chain_ids[-1] names the unpacked snapshot

Output is deterministic: building the same image twice gives identical bytes, so digests are
stable across runs (the busybox image depends on the host's busybox binary).
"""

from ctrpy.testimage.archive import (
    familiar_name,
    image_config,
    read_member,
    write_archive,
    write_docker_archive,
    write_oci_layout_tar,
)
from ctrpy.testimage.hostile import EVIL_NAME, hostile_image, hostile_layers
from ctrpy.testimage.images import busybox_image, large_image, multilayer_image
from ctrpy.testimage.layers import layer_blob, write_layer
from ctrpy.testimage.model import (
    Entry,
    Image,
    ImageInfo,
    Layer,
    LayerInfo,
    RandomContent,
    RawLayer,
    chain_ids,
    chardev,
    directory,
    fifo,
    file,
    hardlink,
    host_arch,
    opaque,
    symlink,
    whiteout,
)
from ctrpy.testimage.tree import Node, diff_trees, expected_tree, scan_node, scan_tree

__all__ = [
    "EVIL_NAME",
    "Entry",
    "Image",
    "ImageInfo",
    "Layer",
    "LayerInfo",
    "Node",
    "RandomContent",
    "RawLayer",
    "busybox_image",
    "chain_ids",
    "chardev",
    "diff_trees",
    "directory",
    "expected_tree",
    "familiar_name",
    "fifo",
    "file",
    "hardlink",
    "host_arch",
    "hostile_image",
    "hostile_layers",
    "image_config",
    "large_image",
    "layer_blob",
    "multilayer_image",
    "opaque",
    "read_member",
    "scan_node",
    "scan_tree",
    "symlink",
    "whiteout",
    "write_archive",
    "write_docker_archive",
    "write_layer",
    "write_oci_layout_tar",
]
