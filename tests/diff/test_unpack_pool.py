"""The unpack worker processes: same results and same errors as an unpack in a thread, a
cancelled unpack stops writing before the caller goes on, idle workers go away."""

from __future__ import annotations

import asyncio
import errno
import gzip
import io
import os
import subprocess
import sys
import zlib
from pathlib import Path

import pytest
from diff_helpers import Layer, apply_bytes, describe

from ctrpy.errors import InvalidArgument
from ctrpy.manager.diff import OCI_LAYER_GZIP, UnsafeEntry
from ctrpy.manager.diff.compression import LayerStream
from ctrpy.manager.diff.pool import UnpackPool
from ctrpy.mount import Mount
from tests.support.polling import wait_until


def _bind(path: Path) -> list[Mount]:
    return [Mount("bind", str(path), "", ("rbind", "rw"))]


def _layer() -> Layer:
    return (Layer().dir("etc").file("etc/hostname", b"box\n", mode=0o600, uid=7, gid=8)
            .symlink("etc/link", "hostname").hardlink("etc/again", "etc/hostname").whiteout("gone")
            .file("big.bin", os.urandom(3 << 20)))


def _gone(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    with open(f"/proc/{pid}/stat") as stat:  # a zombie not yet reaped counts as gone
        return stat.read().rsplit(")", 1)[1].split()[0] == "Z"


def test_a_worker_unpacks_what_a_thread_unpacks(tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar.gz"
    blob.write_bytes(_layer().gzip())
    by_thread, by_worker = tmp_path / "thread", tmp_path / "worker"
    by_thread.mkdir()
    by_worker.mkdir()
    expected = apply_bytes(blob.read_bytes(), by_thread, OCI_LAYER_GZIP)

    async def main() -> None:
        pool = UnpackPool(1, idle_timeout=60)
        try:
            pool.warm()
            applied = await pool.apply(blob, OCI_LAYER_GZIP, _bind(by_worker))
            assert applied == expected
            again = tmp_path / "again"
            again.mkdir()
            await pool.apply(blob, OCI_LAYER_GZIP, _bind(again))
            assert pool.started == 1  # the warm worker served both
        finally:
            await pool.aclose()

    asyncio.run(main())
    assert describe(by_worker) == describe(by_thread)


def test_errors_come_back_as_their_own_kind(tmp_path: Path) -> None:
    hostile = tmp_path / "hostile.tar"
    hostile.write_bytes(Layer().file("../evil", b"x").tar())
    corrupt = tmp_path / "corrupt.tar.gz"
    corrupt.write_bytes(gzip.compress(b"\0" * 10_000)[:-12] + b"garbage!" * 2)
    target = tmp_path / "target"
    target.mkdir()

    async def main() -> None:
        pool = UnpackPool(1, idle_timeout=60)
        try:
            with pytest.raises(UnsafeEntry, match="climbs above the root"):
                await pool.apply(hostile, "application/vnd.oci.image.layer.v1.tar", _bind(target))
            with pytest.raises(InvalidArgument, match="corrupt"):
                await pool.apply(corrupt, OCI_LAYER_GZIP, _bind(target))
            with pytest.raises(OSError) as missing:
                await pool.apply(tmp_path / "absent", OCI_LAYER_GZIP, _bind(target))
            assert missing.value.errno == errno.ENOENT
            assert pool.started == 1  # an error answered is no reason to replace the worker
        finally:
            await pool.aclose()

    asyncio.run(main())
    assert not (tmp_path / "evil").exists()


def test_a_cancelled_unpack_kills_its_worker_before_returning(tmp_path: Path) -> None:
    blob = tmp_path / "large.tar"
    blob.write_bytes(Layer().file("a.bin", b"\1" * (200 << 20)).tar())
    target = tmp_path / "target"
    target.mkdir()

    async def main() -> None:
        pool = UnpackPool(1, idle_timeout=60)
        try:
            task = asyncio.create_task(pool.apply(blob, "application/vnd.oci.image.layer.v1.tar", _bind(target)))
            await wait_until_async(lambda: (target / "a.bin").exists())
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            size = (target / "a.bin").stat().st_size
            await asyncio.sleep(0.3)
            assert (target / "a.bin").stat().st_size == size  # nothing writes any more
            assert size < 200 << 20
            # The next layer gets a new worker.
            small = tmp_path / "small.tar"
            small.write_bytes(Layer().file("b", b"b").tar())
            await pool.apply(small, "application/vnd.oci.image.layer.v1.tar", _bind(target))
            assert pool.started == 2
        finally:
            await pool.aclose()

    asyncio.run(main())


async def wait_until_async(condition: object, timeout: float = 30.0) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    while not condition():  # type: ignore[operator]
        assert loop.time() < deadline, "condition not met in time"
        await asyncio.sleep(0.01)


def test_idle_workers_end_and_close_ends_the_rest(tmp_path: Path) -> None:
    blob = tmp_path / "layer.tar"
    blob.write_bytes(Layer().file("f", b"f").tar())

    async def main() -> None:
        pool = UnpackPool(2, idle_timeout=0.3)
        target = tmp_path / "one"
        target.mkdir()
        await pool.apply(blob, "application/vnd.oci.image.layer.v1.tar", _bind(target))
        pid = pool._idle[0].process.pid
        await wait_until_async(lambda: not pool._idle and _gone(pid), timeout=20)
        pool.warm()
        await wait_until_async(lambda: pool._starting is not None and pool._starting.done(), timeout=20)
        started = pool._starting.result().process.pid  # type: ignore[union-attr]
        await pool.aclose()
        assert _gone(started)
        with pytest.raises(Exception, match="closed"):
            await pool.apply(blob, "application/vnd.oci.image.layer.v1.tar", _bind(target))

    asyncio.run(main())


def test_a_worker_dies_with_its_parent(tmp_path: Path) -> None:
    """PR_SET_PDEATHSIG: a killed daemon leaves no unpacker running on."""
    script = tmp_path / "parent.py"
    script.write_text(
        "import asyncio, sys\n"
        "from ctrpy.manager.diff.pool import UnpackPool\n"
        "async def main():\n"
        "    pool = UnpackPool(1)\n"
        "    pool.warm()\n"
        "    worker = await pool._starting\n"
        "    print(worker.process.pid, file=sys.stderr, flush=True)\n"
        "    await asyncio.sleep(60)\n"
        "asyncio.run(main())\n"
    )
    parent = subprocess.Popen([sys.executable, str(script)], stderr=subprocess.PIPE, stdout=subprocess.DEVNULL,
                              text=True)
    try:
        assert parent.stderr is not None
        child = int(parent.stderr.readline())
    finally:
        parent.kill()
        parent.wait()
    wait_until(lambda: _gone(child), timeout=20, what="the worker to die with its parent")


# -- the gzip reader behind both ----------------------------------------------------------


def _read_all(blob: bytes) -> bytes:
    stream = LayerStream(io.BytesIO(blob), OCI_LAYER_GZIP)
    parts = []
    while chunk := stream.read(1000):
        parts.append(chunk)
    return b"".join(parts)


def test_gzip_members_in_a_row_and_zero_padding_read_as_one_stream() -> None:
    one, two = os.urandom(5000), b"a" * 300_000
    assert _read_all(gzip.compress(one) + gzip.compress(two)) == one + two
    assert _read_all(gzip.compress(one) + b"\0" * 1000) == one


@pytest.mark.parametrize("damage", ["truncated", "trailing garbage", "bad crc"])
def test_damaged_gzip_is_corrupt(damage: str) -> None:
    data = gzip.compress(os.urandom(4000))
    if damage == "truncated":
        data = data[:-3]
    elif damage == "trailing garbage":
        data += b"not gzip"
    else:
        crc = zlib.crc32(b"other").to_bytes(4, "little")
        data = data[:-8] + crc + data[-4:]
    with pytest.raises(InvalidArgument, match="corrupt"):
        _read_all(data)
