"""``ctrpyd --version`` and ``ctrpy --version``: the installed package's version."""

from __future__ import annotations

import subprocess
import sys
from importlib import metadata

import pytest

import ctrpy
from ctrpy import version as version_module


def test_both_commands_print_the_installed_version() -> None:
    installed = metadata.version("ctrpy")
    for module, name in (("ctrpy.manager.main", "ctrpyd"), ("ctrpy.cli.main", "ctrpy")):
        result = subprocess.run([sys.executable, "-m", module, "--version"], capture_output=True, text=True,
                                timeout=60, check=True)
        assert result.stdout == f"{name} {installed}\n"


def test_without_package_metadata_the_source_tree_version(monkeypatch: pytest.MonkeyPatch) -> None:
    def missing(name: str) -> str:
        raise metadata.PackageNotFoundError(name)

    monkeypatch.setattr(version_module.metadata, "version", missing)
    assert version_module.version() == ctrpy.__version__
