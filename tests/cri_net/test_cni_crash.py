"""ctrpyd killed (-9) in the middle of a CNI ADD: the cache entry written before the ADD lets
the next ctrpyd's teardown free the address the half-done ADD had allocated."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path

import pytest

from ctrpy.manager.cri.cni import CNI, PodRequest
from tests.cri_net.conftest import Net, plugin_dir, requires_plugins
from tests.support.polling import wait_until

pytestmark = requires_plugins


@pytest.fixture
def pids(tmp_path: Path) -> Iterator[Path]:
    """A directory where fault-injecting plugins write their pid; every one is killed after."""
    directory = tmp_path / "pids"
    directory.mkdir()
    try:
        yield directory
    finally:
        for entry in directory.iterdir():
            try:
                os.kill(int(entry.read_text()), signal.SIGKILL)
            except (ValueError, ProcessLookupError):
                pass


def test_kill_during_add_then_teardown_after_restart_frees_the_address(
    testnet: Net, tmp_path: Path, pids: Path
) -> None:
    # Fault injection: after the real bridge (which allocates the address), a plugin that
    # hangs on ADD, so that the "daemon" can be killed with the ADD half done.
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    stall = bin_dir / "ctrpy-stall"
    stall.write_text(
        f'#!/bin/sh\nif [ "$CNI_COMMAND" = ADD ]; then echo $$ > {pids}/stall; exec sleep 300; fi\n'
    )
    stall.chmod(0o755)
    testnet.write_conflist(portmap=False, extra=[{"type": "ctrpy-stall"}])
    directory = plugin_dir()
    assert directory is not None
    bin_dirs = [str(bin_dir), directory]
    path = testnet.new_netns()
    pod = PodRequest("crash-sandbox-1", path, pod_namespace="default", pod_name="web", pod_uid="u")

    daemon = textwrap.dedent(
        f"""
        import asyncio
        from ctrpy.manager.cri.cni import CNI, PodRequest
        cni = CNI({str(testnet.cache_dir)!r}, conf_dir={str(testnet.conf_dir)!r}, bin_dirs={bin_dirs!r})
        asyncio.run(cni.setup(PodRequest({pod.container_id!r}, {path!r})))
        """
    )
    proc = subprocess.Popen([sys.executable, "-c", daemon])
    try:
        wait_until(lambda: (pids / "stall").exists(), "the ADD to reach the stalling plugin")
        wait_until(testnet.allocated, "the bridge's address allocation")
    finally:
        proc.kill()
        proc.wait(timeout=30)

    # The next ctrpyd: the entry is there without a result, and teardown undoes the ADD.
    after = CNI(testnet.cache_dir, conf_dir=str(testnet.conf_dir), bin_dirs=bin_dirs)
    assert after.cached_sandboxes() == {pod.container_id}
    pending = {a.network: a for a in after.attachments(pod.container_id)}
    assert pending[testnet.name].result is None
    assert pending[testnet.name].config.types == ("bridge", "ctrpy-stall")
    assert pending["cni-loopback"].result is not None
    asyncio.run(after.teardown(pod))
    assert testnet.allocated() == []
    assert after.cached_sandboxes() == set()
