"""The timeline store on its own: rows in order with the gaps, the running step, bounds."""

from __future__ import annotations

import asyncio

from ctrpy.api.ctrpy.shim.v1 import shim_pb2
from ctrpy.manager.cri import steptimes
from ctrpy.manager.timeline import GAP, RUNNING, Step, Timelines
from ctrpy.shim.steps import Steps, from_proto

MS = 1_000_000


def test_rows_fill_gaps_clip_overlaps_and_add_up() -> None:
    store = Timelines()
    store.prepared("default", "snap-1", 0, 5 * MS)
    store.begin("default", "c1", "snap-1")
    store.add("default", "c1", [Step("bundle", 10 * MS, 12 * MS), Step("shim start", 12 * MS, 30 * MS),
                                Step("runc create", 35 * MS, 60 * MS, "shim"),
                                Step("shim create", 31 * MS, 40 * MS)])  # overlaps runc create: clipped
    store.add("default", "c1", [Step("runc start", 70 * MS, 80 * MS, "shim")])
    store.exited("default", "c1", 100 * MS)
    store.exited("default", "c1", 500 * MS)  # only the first exit counts
    store.add("default", "c1", [Step("task delete", 110 * MS, 120 * MS)])
    timeline = store.get("default", "c1")
    assert timeline is not None
    answer = timeline.to_dict()
    rows = [(r["step"], r["offset_ms"], r["ms"]) for r in answer["steps"]]
    assert rows == [
        ("snapshot prepare", 0, 5), (GAP, 5, 5), ("bundle", 10, 2), ("shim start", 12, 18), (GAP, 30, 1),
        ("shim create", 31, 9), ("runc create", 40, 20), (GAP, 60, 10), ("runc start", 70, 10),
        (RUNNING, 80, 20), (GAP, 100, 10), ("task delete", 110, 10),
    ]
    assert answer["total_ms"] == 120 and answer["exited"] is True
    assert store.get("other", "c1") is None


def test_steps_before_and_after_the_task_are_claimed_by_key() -> None:
    store = Timelines()
    store.lease_created("ns", "lease-1", 0, 1 * MS)
    store.prepared("ns", "key-1", 2 * MS, 3 * MS, lease="lease-1")
    store.container_created("ns", "c1", 4 * MS, 5 * MS)
    store.lease_deleted("ns", "lease-1", 6 * MS, 7 * MS)  # before the task: kept for it
    store.begin("ns", "c1", "key-1")
    store.add("ns", "c1", [Step("bundle", 8 * MS, 9 * MS)])
    store.snapshot_removed("ns", "key-1", 10 * MS, 11 * MS)
    store.snapshot_removed("ns", "other-key", 12 * MS, 13 * MS)  # not ours
    store.snapshot_removed("ns", "", 12 * MS, 13 * MS)
    timeline = store.get("ns", "c1")
    assert timeline is not None
    assert [r["step"] for r in timeline.rows() if r["step"] != GAP] == [
        "lease create", "snapshot prepare", "container create", "lease delete", "bundle", "snapshot remove"]


def test_an_exit_before_the_start_returned_has_no_running_row() -> None:
    store = Timelines()
    store.begin("ns", "fast")
    store.add("ns", "fast", [Step("runc start", 0, 10 * MS, "shim")])
    store.exited("ns", "fast", 5 * MS)
    timeline = store.get("ns", "fast")
    assert timeline is not None
    assert [r["step"] for r in timeline.rows()] == ["runc start"]


def test_bounded_and_recreated() -> None:
    store = Timelines(keep=3)
    for number in range(5):
        store.prepared("ns", f"key-{number}", 0, 1)
        store.begin("ns", f"c{number}")
    assert store.ids("ns") == ["c2", "c3", "c4"]
    store.add("ns", "c4", [Step("bundle", 0, 1)])
    store.begin("ns", "c4")  # the task is created again: a new timeline
    again = store.get("ns", "c4")
    assert again is not None and again.steps == []
    store.add("ns", "gone", [Step("bundle", 0, 1)])  # no timeline: ignored
    assert store.get("ns", "gone") is None


def test_shim_steps_round_trip() -> None:
    steps = Steps()
    with steps.timed("runc create"):
        pass
    answer = shim_pb2.CreateResponse.FromString(shim_pb2.CreateResponse(pid=1, steps=steps.to_proto()).SerializeToString())
    parsed = from_proto(answer.steps)
    assert [name for name, _, _ in parsed] == ["runc create"] and parsed[0][1] <= parsed[0][2]
    assert from_proto(shim_pb2.StartResponse(pid=1).steps) == []


def test_cri_steps_are_kept_per_id() -> None:
    async def call() -> None:
        times = steptimes.StepTimes("StartContainer")
        times.mark("task_create")
        await times.timed("cni", asyncio.sleep(0))
        times.log(id="kept-test-id")

    asyncio.run(call())
    kept = steptimes.kept("kept-test-id")
    assert [c["call"] for c in kept] == ["StartContainer"]
    assert {(s["step"], s["beside"]) for s in kept[0]["steps"]} == {("task_create", False), ("cni", True)}
