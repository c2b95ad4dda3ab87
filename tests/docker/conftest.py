"""Fixtures for Docker Engine on ctrpyd: a ctrpyd and a private dockerd on it, busybox loaded."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.docker.support import DockerEngine, Stack, available, busybox_archive, docker_on_ctrpyd

if not available():  # scripts/bootstrap --dev installs docker.io; say so rather than fail obscurely
    pytest.skip("Debian's docker.io (dockerd, docker) is not installed", allow_module_level=True)


@pytest.fixture(scope="session")
def docker_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The busybox test image as a ``docker save`` archive, built once."""
    return busybox_archive(tmp_path_factory.mktemp("docker-images") / "busybox.tar")


@pytest.fixture(scope="module")
def stack(docker_image: Path) -> Iterator[Stack]:
    """One ctrpyd and one dockerd shared by a module's tests that do not disturb each other."""
    with docker_on_ctrpyd(image=docker_image) as shared:
        yield shared


@pytest.fixture
def engine(stack: Stack) -> Iterator[DockerEngine]:
    """The module's dockerd; every container a test made is removed after it."""
    yield stack.engine
    ids = stack.engine.docker("ps", "-aq", timeout=30).stdout.split()
    if ids:
        stack.engine.docker("rm", "-f", *ids, timeout=60)


@pytest.fixture
def own_stack(docker_image: Path) -> Iterator[Stack]:
    """A ctrpyd and a dockerd (with --live-restore) for one test that restarts or kills them."""
    with docker_on_ctrpyd(live_restore=True, image=docker_image) as mine:
        yield mine

