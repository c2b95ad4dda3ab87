"""The version ctrpy's commands report (``ctrpyd --version``, ``ctrpy --version``).

Taken from the installed distribution's metadata, so that a wheel built from a tagged or bumped
``pyproject.toml`` says what it is; a source tree run without being installed (no metadata, and
no git needed) falls back to :data:`ctrpy.__version__`.
"""

from __future__ import annotations

from importlib import metadata

from ctrpy import __version__

DISTRIBUTION = "ctrpy"


def version() -> str:
    """The installed distribution's version, else the source tree's."""
    try:
        return metadata.version(DISTRIBUTION)
    except metadata.PackageNotFoundError:
        return __version__
