"""Layers: applying them onto directories and mounts, and computing them from two trees.

This is the library behind the Diff service (containerd's ``diff.Applier`` and
``diff.Comparer``); the servicer streams blobs in and out of the content store around it.

Imports point one way: ``ctrpy.errors`` and ``ctrpy.mount`` <- :mod:`.rootpath`,
:mod:`.xattrs`, :mod:`.compression` <- :mod:`.apply`, :mod:`.changes` <- :mod:`.writer` <-
:mod:`.mounts`. Everything here is synchronous and blocking: ctrpyd runs it in threads.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from ctrpy.lazyattrs import lazy_attributes

from .limits import NO_LIMITS, Limits

if TYPE_CHECKING:
    from .apply import AppliedLayer, CorruptLayer, apply_layer
    from .compression import (
        DOCKER_LAYER_GZIP,
        LAYER_MEDIA_TYPES,
        OCI_LAYER,
        OCI_LAYER_GZIP,
        OCI_LAYER_ZSTD,
        Compression,
        LayerTooLarge,
        diff_compression,
        zstd_available,
    )
    from .mounts import apply_to_mounts, diff_mounts
    from .rootpath import UnsafeEntry
    from .writer import write_diff

# Imported at first use: ``tarfile``, the decompressors and the tree walkers cost an idle
# ctrpyd about 0.4 MiB of resident memory, and only a layer applied or computed needs them
# (the composition root and the transfer service hold just a :class:`Limits` until then).
_WHERE = {
    "AppliedLayer": "apply", "CorruptLayer": "apply", "apply_layer": "apply",
    "DOCKER_LAYER_GZIP": "compression", "LAYER_MEDIA_TYPES": "compression", "OCI_LAYER": "compression",
    "OCI_LAYER_GZIP": "compression", "OCI_LAYER_ZSTD": "compression", "Compression": "compression",
    "LayerTooLarge": "compression", "diff_compression": "compression", "zstd_available": "compression",
    "apply_to_mounts": "mounts", "diff_mounts": "mounts", "UnsafeEntry": "rootpath", "write_diff": "writer",
}  # fmt: skip


__getattr__ = lazy_attributes(__name__, {name: f"{__name__}.{module}" for name, module in _WHERE.items()})


__all__ = [
    "DOCKER_LAYER_GZIP",
    "LAYER_MEDIA_TYPES",
    "NO_LIMITS",
    "OCI_LAYER",
    "OCI_LAYER_GZIP",
    "OCI_LAYER_ZSTD",
    "AppliedLayer",
    "Compression",
    "CorruptLayer",
    "LayerTooLarge",
    "Limits",
    "UnsafeEntry",
    "apply_layer",
    "apply_to_mounts",
    "diff_compression",
    "diff_mounts",
    "write_diff",
    "zstd_available",
]
