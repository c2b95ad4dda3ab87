"""The pause image: one layer holding ``/pause``, in an OCI image layout tar.

Shaped like ``registry.k8s.io/pause``: no shell, nothing but the executable (mode 0755, owned by
root), config ``Entrypoint ["/pause"]``, ``User "65535:65535"``, ``WorkingDir "/"`` and the usual
PATH, architecture and os of the machine. It is written with :mod:`ctrpy.testimage`, whose
output is deterministic (fixed mtimes, no user names, sorted JSON), and the layer is a plain
(uncompressed) tar, because gzip's output may change with the zlib build, so the config
digest (the image id) and the manifest digest depend only on the architecture and on
:data:`VERSION`. The config's label and history name ctrpy, so the id can never equal that of
an upstream pause image (the CRI validation suite counts the tags of pause:3.9's id).

The image name lives only in the archive's ``index.json`` annotation: any name gives the same
manifest and config.
"""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

from ctrpy.pause.elf import host_arch, pause_executable
from ctrpy.testimage import Image, ImageInfo, Layer, RawLayer, file, layer_blob, write_oci_layout_tar
from ctrpy.testimage.model import DEFAULT_PATH, MEDIA_OCI_LAYER_TAR

# Bump when the program or the image changes: the default name carries it, so a daemon that has
# an older pause image under the old name imports the new one under the new name.
VERSION = "1.0"
# A name no registry serves: podman names its locally built pause image the same way.
DEFAULT_NAME = f"localhost/ctrpy-pause:{VERSION}"
USER = "65535:65535"
LABEL = "io.ctrpy.pause.version"


def pause_image(name: str = DEFAULT_NAME, arch: str | None = None) -> Image:
    """The pause image called ``name`` for ``arch`` (amd64, arm64; default the host's).

    Raises ValueError for an architecture the pause program does not exist for.
    """
    arch = arch or host_arch()
    # An uncompressed layer (10 KiB): gzip's bytes may differ between zlib builds, a tar's do not.
    blob, info = layer_blob(Layer((file("/pause", pause_executable(arch), mode=0o755),)), compress=False)
    layer = RawLayer(blob, info.diff_id, info.uncompressed_size, MEDIA_OCI_LAYER_TAR)
    return Image(name, (layer,), env=(DEFAULT_PATH,), cmd=(), entrypoint=("/pause",), working_dir="/",
                 user=USER, labels=((LABEL, VERSION),), architecture=arch, os="linux")


def write_pause_archive(path: str | os.PathLike[str], name: str = DEFAULT_NAME,
                        arch: str | None = None) -> ImageInfo:
    """Write the pause image as an OCI layout tar at ``path`` (atomically) and describe it.

    Raises FileNotFoundError if the directory of ``path`` does not exist, ValueError for an
    unknown architecture.
    """
    return write_oci_layout_tar(pause_image(name, arch), path)


def pause_archive(name: str = DEFAULT_NAME, arch: str | None = None) -> tuple[bytes, ImageInfo]:
    """The OCI layout tar of the pause image as bytes (a few KiB), and what it holds."""
    with tempfile.TemporaryDirectory(prefix="ctrpy-pause-") as scratch:
        target = Path(scratch) / "pause.tar"
        info = write_pause_archive(target, name, arch)
        return target.read_bytes(), info
