"""The exchange keeps the exits of tasks recovered at start-up for late subscribers, and only those.

(The end-to-end case, a ctrpyd killed while a container exits, is tests/crash/test_late_subscriber.py.)
"""

from __future__ import annotations

import asyncio

from ctrpy.api.containerd.events import task_pb2
from ctrpy.manager.events import Envelope, Exchange


async def first_events(exchange: Exchange, filters: list[str], count: int) -> list[Envelope]:
    """Subscribe, publish nothing, and take what arrives at once (up to ``count``)."""
    received: list[Envelope] = []
    stream = exchange.subscribe(filters)
    try:
        while len(received) < count:
            received.append(await asyncio.wait_for(anext(stream), 0.2))
    except TimeoutError:
        pass
    finally:
        await stream.aclose()
    return received


def exit_event(container_id: str, exec_id: str = "", status: int = 0) -> task_pb2.TaskExit:
    return task_pb2.TaskExit(container_id=container_id, id=exec_id or container_id, exit_status=status)


def test_recovered_exits_are_given_to_each_new_subscriber() -> None:
    async def scenario() -> None:
        exchange = Exchange()
        exchange.replay_exits([("moby", "a"), ("other", "b")])
        exchange.publish("moby", "/tasks/exit", exit_event("a", status=9))
        exchange.publish("moby", "/tasks/exit", exit_event("a", "exec-1", status=1))
        exchange.publish("moby", "/tasks/exit", exit_event("new", status=3))  # not recovered
        exchange.publish("moby", "/tasks/start", task_pb2.TaskStart(container_id="a"))  # not an exit
        exchange.publish("other", "/tasks/exit", exit_event("b", status=4))
        for _ in range(2):  # every subscriber gets them, not only the first
            got = await first_events(exchange, ['namespace=="moby"'], 10)
            assert [(e.topic, task_pb2.TaskExit.FromString(e.event.value).id) for e in got] == [
                ("/tasks/exit", "a"), ("/tasks/exit", "exec-1")]
        everything = await first_events(exchange, [], 10)
        assert len(everything) == 3

    asyncio.run(scenario())


def test_nothing_is_replayed_once_the_while_is_over() -> None:
    async def scenario() -> None:
        exchange = Exchange()
        exchange.replay_exits([("moby", "a")], seconds=0.1)
        exchange.publish("moby", "/tasks/exit", exit_event("a"))
        await asyncio.sleep(0.2)
        assert await first_events(exchange, [], 10) == []
        exchange.publish("moby", "/tasks/exit", exit_event("a"))
        assert await first_events(exchange, [], 10) == []

    asyncio.run(scenario())


def test_without_a_restart_nothing_is_replayed() -> None:
    async def scenario() -> None:
        exchange = Exchange()
        exchange.publish("moby", "/tasks/exit", exit_event("a"))
        assert await first_events(exchange, [], 10) == []

    asyncio.run(scenario())
