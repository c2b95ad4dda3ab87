"""Layers: applying them onto directories and mounts, and computing them from two trees.

This is the library behind the Diff service (containerd's ``diff.Applier`` and
``diff.Comparer``); the servicer streams blobs in and out of the content store around it.

Imports point one way: ``ctrpy.errors`` and ``ctrpy.mount`` <- :mod:`.rootpath`,
:mod:`.xattrs`, :mod:`.compression` <- :mod:`.apply`, :mod:`.changes` <- :mod:`.writer` <-
:mod:`.mounts`. Everything here is synchronous and blocking: ctrpyd runs it in threads.
"""

from .apply import NO_LIMITS, AppliedLayer, CorruptLayer, Limits, apply_layer
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
