"""``ctrpy doctor`` and pod leftovers: a netns and a CNI attachment that no sandbox record claims
(a record lost after a crash) are found, and ``--fix`` unpins the netns and runs CNI DEL so that
the address is free again; a half-made sandbox is reported (ctrpyd undoes it at start-up)."""

from __future__ import annotations

import pytest

from ctrpy import errors
from ctrpy.manager import failpoints
from ctrpy.manager.doctor import Target, run
from tests.cri_sandbox.support import PodDaemon


def test_doctor_finds_and_repairs_pod_network_leftovers(podd: PodDaemon) -> None:
    podd.failpoints = failpoints.SANDBOX_RUN_AFTER_CNI
    podd.start()
    with pytest.raises(errors.CtrpyError):
        podd.run(podd.pod("lost"))
    podd.died(failpoints.SANDBOX_RUN_AFTER_CNI)
    assert len(podd.net.allocated()) == 1 and len(podd.netns_files()) == 1

    target = Target.at(podd.root, podd.state)
    report = run(target)
    half_made = [f for f in report.findings if f.check == "cri" and "half-made" in f.problem]
    assert len(half_made) == 1

    for record in (podd.root / "cri" / "sandboxes").glob("*.json"):
        record.unlink()  # the record is lost: nothing claims the netns and the address now
    report = run(target)
    problems = sorted(f.repair for f in report.findings if f.check == "cri")
    assert problems == ["cni-teardown", "remove-netns"]

    fixed = run(target, fix=True)
    assert all(o.fixed for o in fixed.outcomes if o.finding.check == "cri"), fixed.outcomes
    assert [f for f in fixed.remaining if f.check == "cri"] == []
    assert podd.net.allocated() == [] and podd.netns_files() == []
