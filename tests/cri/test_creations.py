"""The retry rules of :mod:`ctrpy.manager.cri.creations` and the writable-layer sampler, without a
daemon: a creation whose caller gave up is handed to the retry (while it runs, or once it ended)
and discarded when no retry comes; one whose caller got its answer is not handed out again."""

from __future__ import annotations

import asyncio

import pytest

from ctrpy import errors
from ctrpy.manager.cri.creations import Creations
from ctrpy.manager.cri.layerusage import LayerSampler
from ctrpy.snapshotter.types import Usage


async def _make(gate: asyncio.Event, made: list[str], new_id: str) -> str:
    await gate.wait()
    made.append(new_id)
    return new_id


def test_a_retry_joins_the_creation_its_first_caller_left() -> None:
    async def scenario() -> None:
        discarded: list[str] = []
        creations = Creations("container", discarded.append)
        gate, made = asyncio.Event(), []
        first = asyncio.ensure_future(creations.run("n", b"req", _make(gate, made, "id1")))
        await asyncio.sleep(0)
        first.cancel()  # the deadline passed
        with pytest.raises(asyncio.CancelledError):
            await first
        with pytest.raises(errors.AlreadyExists):
            await creations.retry("n", b"another request")
        retry = asyncio.ensure_future(creations.retry("n", b"req"))
        await asyncio.sleep(0)
        gate.set()
        assert await retry == "id1" and made == ["id1"]
        assert await creations.retry("n", b"req") is None  # claimed: the name is simply taken now
        assert discarded == []

    asyncio.run(scenario())


def test_an_unclaimed_creation_waits_for_its_retry_then_goes() -> None:
    async def scenario() -> None:
        discarded: list[str] = []
        creations = Creations("container", discarded.append, ttl=0.2)
        gate, made = asyncio.Event(), []
        for n, new_id in enumerate(("kept", "expired")):
            gate.clear()
            job = asyncio.ensure_future(creations.run(f"n{n}", b"req", _make(gate, made, new_id)))
            await asyncio.sleep(0)
            job.cancel()
            gate.set()
            await asyncio.sleep(0.01)
        assert made == ["kept", "expired"]
        assert await creations.retry("n0", b"req") == "kept"  # the retry that came in time
        await asyncio.sleep(0.4)
        assert discarded == ["expired"]
        assert await creations.retry("n1", b"req") is None

    asyncio.run(scenario())


def test_layer_samples_answer_from_memory_and_refresh_behind() -> None:
    async def scenario() -> None:
        sizes = iter(range(1, 100))
        calls: list[int] = []

        async def measure() -> Usage:
            size = next(sizes)
            calls.append(size)
            return Usage(size, 1)

        sampler = LayerSampler(period=0.1)
        assert await sampler.usage("c", measure) is None  # not sampled yet: sampled behind
        await asyncio.sleep(0.01)
        again = await sampler.usage("c", measure)
        assert again is not None and again.size == 1 and calls == [1]  # young: memory
        await asyncio.sleep(0.15)
        stale = await sampler.usage("c", measure)
        assert stale is not None and stale.size == 1  # old: still the answer, refreshed behind
        await asyncio.sleep(0.01)
        fresh = await sampler.usage("c", measure)
        assert fresh is not None and fresh.size == 2 and calls == [1, 2]
        sampler.keep_only([])
        assert await sampler.usage("c", measure) is None
        await asyncio.sleep(0.01)
        gone = await sampler.usage("c", measure)
        assert gone is not None and gone.size == 3

        every = LayerSampler(period=0)  # the tests' setting: measure at every call
        assert [(await every.usage("d", measure)) is not None for _ in range(2)] == [True, True]
        assert calls == [1, 2, 3, 4, 5]

    asyncio.run(scenario())
