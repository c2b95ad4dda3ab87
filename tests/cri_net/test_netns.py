"""Pinned network namespaces: created on a throw-away thread, bind-mounted, removed idempotently."""

from __future__ import annotations

import asyncio
import os
import subprocess
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest

from ctrpy.errors import InvalidArgument
from ctrpy.manager.cri import netns
from ctrpy.mount import mountpoints_under


@pytest.fixture
def state(tmp_path: Path) -> Iterator[Path]:
    """A state dir whose namespaces are all removed afterwards, whatever the test did."""
    directory = tmp_path / "state"
    try:
        yield directory
    finally:
        for path in netns.list_all(directory):
            netns.remove(path)


def _in_netns(path: str, *argv: str) -> str:
    return subprocess.run(
        ["nsenter", f"--net={path}", *argv], capture_output=True, text=True, check=True, timeout=30
    ).stdout


def test_create_pins_a_new_namespace_and_leaves_the_caller_where_it_was(state: Path) -> None:
    before = os.readlink("/proc/thread-self/ns/net")
    path = netns.create(state)
    assert os.path.dirname(path) == str(state / "netns")
    assert os.path.basename(path).startswith("cni-")
    assert netns.exists(path) and netns.is_pinned(path)
    assert path in mountpoints_under(state)
    # A namespace of its own, not the host's, and the calling thread was not moved.
    assert os.stat(path).st_ino != os.stat("/proc/self/ns/net").st_ino
    assert os.readlink("/proc/thread-self/ns/net") == before
    # Nothing in it but a loopback that is still down (bringing it up is CNI's job).
    links = _in_netns(path, "ip", "-o", "link")
    assert len(links.strip().splitlines()) == 1 and "lo:" in links and "state DOWN" in links


def test_the_pin_keeps_the_namespace_alive_between_processes(state: Path) -> None:
    path = netns.create(state)
    _in_netns(path, "ip", "link", "set", "lo", "up")
    _in_netns(path, "ip", "link", "add", "tv0", "type", "veth", "peer", "name", "tv1")
    # No process is left in the namespace; the bind mount alone kept it and its links.
    links = _in_netns(path, "ip", "-o", "link")
    assert "tv0@tv1" in links and "LOOPBACK,UP" in links


def test_remove_unpins_and_is_idempotent(state: Path) -> None:
    path = netns.create(state)
    netns.remove(path)
    assert not netns.exists(path) and not netns.is_pinned(path)
    assert path not in mountpoints_under(state)
    netns.remove(path)  # again: fine
    netns.remove(str(state / "netns" / "cni-never-existed"))


def test_remove_refuses_paths_that_are_not_ours(tmp_path: Path) -> None:
    victim = tmp_path / "important"
    victim.write_text("keep")
    with pytest.raises(InvalidArgument):
        netns.remove(victim)
    assert victim.read_text() == "keep"


def test_is_pinned_tells_namespaces_from_plain_files(state: Path, tmp_path: Path) -> None:
    plain = tmp_path / "cni-plain"
    plain.write_text("")
    assert not netns.is_pinned(plain)
    assert not netns.is_pinned(tmp_path / "cni-missing")
    # A namespace file of another kind is not a network namespace.
    assert not netns.is_pinned("/proc/self/ns/uts")
    assert netns.is_pinned("/proc/self/ns/net")


def test_leftovers_are_the_files_no_record_claims(state: Path) -> None:
    kept = netns.create(state)
    lost = netns.create(state)
    # A crash between creating the file and pinning it leaves a plain file.
    half = state / "netns" / "cni-half-made"
    half.write_text("")
    (state / "netns" / "unrelated").write_text("")  # not ours: never listed
    leftovers = netns.list_leftovers(state, in_use=[kept])
    assert leftovers == sorted(
        [netns.Leftover(lost, True), netns.Leftover(str(half), False)], key=lambda x: x.path
    )
    for leftover in leftovers:
        netns.remove(leftover.path)
    assert netns.list_leftovers(state, in_use=[kept]) == []
    assert netns.list_all(state) == [kept]
    assert netns.list_leftovers(state / "nowhere") == []


def test_concurrent_creation_from_threads_and_the_event_loop(state: Path) -> None:
    host = os.readlink("/proc/self/ns/net")
    with ThreadPoolExecutor(max_workers=4) as pool:
        from_threads = list(pool.map(lambda _: netns.create(state), range(6)))

    async def from_loop() -> list[str]:
        return list(await asyncio.gather(*(asyncio.to_thread(netns.create, state) for _ in range(4))))

    paths = from_threads + asyncio.run(from_loop())
    assert len(set(paths)) == 10
    inodes = {os.stat(p).st_ino for p in paths}
    assert len(inodes) == 10 and os.stat("/proc/self/ns/net").st_ino not in inodes
    assert all(netns.is_pinned(p) for p in paths)
    assert os.readlink("/proc/self/ns/net") == host
    for path in paths:
        netns.remove(path)
    assert netns.list_all(state) == []
