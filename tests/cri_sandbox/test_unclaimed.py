"""A RunPodSandbox whose caller gave up, and never came back, leaves no READY pod behind.

The creation goes on after the caller's deadline (so that the kubelet's retry gets the pod):
a pod made after every caller went away is kept ``[cri] unclaimed_timeout`` seconds for a
retry, or for any call that names it (a kubelet that found it in ListPodSandbox), then stopped
and removed, as unclaimed containers are. Here with a short setting.
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import pytest

from ctrpy import errors
from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from ctrpy.manager import failpoints
from tests.cri_sandbox.support import PodDaemon
from tests.support.polling import wait_until

UNCLAIMED = 5.0  # seconds
#: Every RunPodSandbox waits this long after its first record; its callers give up sooner.
STALL = 1.0


@pytest.fixture(scope="module")
def shortd() -> Iterator[PodDaemon]:
    daemon = PodDaemon()
    try:
        config = daemon.base / "ctrpyd.toml"  # [cri] is its last table
        config.write_text(config.read_text() + f"unclaimed_timeout = {UNCLAIMED}\n")
        daemon.env = {failpoints.STALLS_ENV: f"{failpoints.SANDBOX_RUN_AFTER_RECORD}={STALL}"}
        daemon.start()
        daemon.list()  # the CRI starts on its first call: not inside a call that gives up at once
        yield daemon
    finally:
        daemon.reap()


def _ready(pods: PodDaemon, name: str) -> list[str]:
    return [p.id for p in pods.list() if p.metadata.name == name and p.state == api.SANDBOX_READY]


def _given_up(pods: PodDaemon, name: str) -> str:
    """RunPodSandbox that gives up at once; the id of the pod that ctrpyd finishes anyway."""
    with pytest.raises(errors.DeadlineExceeded):
        pods.run(pods.pod(name, uid=f"uid-{name}"), timeout=STALL / 4)
    return wait_until(lambda: _ready(pods, name), f"pod {name} to be made", timeout=60)[0]


def test_a_pod_nobody_claims_is_removed(shortd: PodDaemon) -> None:
    before = set(shortd.netns_files())
    _given_up(shortd, "orphan")
    assert len(shortd.netns_files()) == len(before) + 1
    wait_until(lambda: not [p for p in shortd.list() if p.metadata.name == "orphan"],
               "the unclaimed pod to be removed", timeout=UNCLAIMED + 60)
    assert set(shortd.netns_files()) == before
    assert "removing a sandbox that no caller claimed" in shortd.log()


def test_a_pod_claimed_by_a_retry_or_by_its_id_stays(shortd: PodDaemon) -> None:
    retried = _given_up(shortd, "retried")
    assert shortd.run(shortd.pod("retried", uid="uid-retried")) == retried
    named = _given_up(shortd, "named")
    assert shortd.status(named).status.state == api.SANDBOX_READY  # found by a List, then named
    try:
        time.sleep(UNCLAIMED + 3)  # past the time an unclaimed pod is kept
        assert shortd.status(retried).status.state == api.SANDBOX_READY
        assert shortd.status(named).status.state == api.SANDBOX_READY
    finally:
        for sandbox_id in (retried, named):
            shortd.stop_pod(sandbox_id)
            shortd.remove_pod(sandbox_id)


def test_a_retry_while_the_first_call_is_still_running_gets_its_pod(shortd: PodDaemon) -> None:
    # The first call gives up while the creation is held at its stall point (as a kubelet whose
    # deadline passed); the retry comes meanwhile and is answered with that same sandbox.
    config = shortd.pod("slowretry", uid="uid-slow")
    with pytest.raises(errors.DeadlineExceeded):
        shortd.run(config, timeout=STALL / 4)
    sandbox_id = shortd.run(config)
    try:
        assert shortd.status(sandbox_id).status.state == api.SANDBOX_READY
        assert [p.id for p in shortd.list() if p.metadata.name == "slowretry"] == [sandbox_id]
    finally:
        shortd.stop_pod(sandbox_id)
        shortd.remove_pod(sandbox_id)
