"""Fixtures for the streaming tests that drive a real ctrpyd: one daemon (CRI on, a network of its
own, the busybox image) for the whole directory, since starting one is the dearest part and every
module only adds pods to it; a pod per module, and in it one running container for the exec tests.

The unit tests of this directory ask for none of these, so they run where no CNI plugins are; the
modules that do ask skip themselves there."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.cri_container.support import Pod, busybox_daemon, make_pod
from tests.cri_sandbox.support import PodDaemon


@pytest.fixture(scope="package")
def pods(tmp_path_factory: pytest.TempPathFactory) -> Iterator[PodDaemon]:
    """The directory's ctrpyd; a module may restart it, but must leave it running."""
    with busybox_daemon(tmp_path_factory.mktemp("image")) as daemon:
        yield daemon


@pytest.fixture(scope="module")
def pod(pods: PodDaemon, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Pod]:
    """A ready pod for the module's tests, removed with its containers afterwards."""
    made = make_pod(pods, tmp_path_factory.mktemp("pod"))
    try:
        yield made
    finally:
        made.cleanup()


@pytest.fixture(scope="module")
def box(pod: Pod) -> tuple[Pod, str]:
    """The module's pod with a running busybox container (removed with the pod)."""
    return pod, pod.run("box", "sleep", "3600")
