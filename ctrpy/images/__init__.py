"""The client side of images: import, export, unpack, check, tag and mount, over the API only.

Like containerd's Go client (and ``ctr``), everything here talks to the daemon through the
gRPC services (Content, Images, Leases, Namespaces, Snapshots, Diff) with a
:class:`ctrpy.client.Client`, so it works the same against ctrpyd and containerd.

Imports point one way: ``mediatypes``, ``gojson`` <- ``model`` <- ``platforms``,
``reference`` <- ``content``, ``convert``, ``snapshots``, ``store``, ``resolve`` <-
``unpack`` <- ``archive``, ``docker`` <- ``importer``, ``export``, ``mount``. Nothing here
imports the CLI or the daemon.
"""

from ctrpy.images.export import export
from ctrpy.images.importer import Reporter, import_archive
from ctrpy.images.model import (
    Descriptor,
    Image,
    ImageConfig,
    Index,
    Manifest,
    Platform,
    chain_id,
    chain_ids,
    parse_config,
    parse_index,
    parse_manifest,
)
from ctrpy.images.mount import mount, unmount
from ctrpy.images.resolve import (
    CheckResult,
    check,
    image_size,
    platforms_of,
    resolve_config,
    resolve_manifest,
)
from ctrpy.images.store import tag
from ctrpy.images.unpack import is_unpacked, resolve_snapshotter, unpack

__all__ = [
    "CheckResult",
    "Descriptor",
    "Image",
    "ImageConfig",
    "Index",
    "Manifest",
    "Platform",
    "Reporter",
    "chain_id",
    "chain_ids",
    "check",
    "export",
    "image_size",
    "import_archive",
    "is_unpacked",
    "mount",
    "parse_config",
    "parse_index",
    "parse_manifest",
    "platforms_of",
    "resolve_config",
    "resolve_manifest",
    "resolve_snapshotter",
    "tag",
    "unmount",
    "unpack",
]
