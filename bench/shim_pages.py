"""Where a forked shim's private pages come from: by life stage, by mapping and by cause.

Usage (root, from the repository root; gdb, when installed, finds pymalloc's arenas):

    .venv/bin/python bench/shim_pages.py [--shims N]

It starts N spare-claimed shims the way ``bench/shim_cost.py`` does (a busybox ``sleep`` in
each) and prints:

- Private_Dirty (median) of the spare before its claim, then after each step of a shim's life
  (claimed, the first call, Create, Start, a second idle);
- for the last shim, its private pages (present in its page map and mapped by it alone) by
  mapping: pymalloc's arenas, the C heap, libpython's data, anonymous and file mappings. Each
  is either a copy of a page the template had (copy-on-write: the shim wrote to a page it
  shared) or fresh. Copies are split into those whose content differs from the template's
  page and those that do not (a reference count raised and dropped again still copies the
  page);
- for the changed copies in the arenas and the C heap, which objects' words changed: the
  block's object type and the field (``refcnt``, the GC header, ``+N`` bytes into the object).
  A code object's ``+48`` is its warm-up counter, its bytecode (quickened and specialized in
  place) from ``+184``; a changed ``ob_type`` (``+8``) is a new object in a block that was free
  in the template.

The method (comparing ``/proc/PID/pagemap`` with the template's) is described in
``bench/shim_cost.md``. Everything is cleaned up afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import collections
import re
import shutil
import statistics
import struct
import subprocess
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from bench.shim_cost import smaps
from tests.shim.harness import Env, base_spec, build_rootfs

PAGE = 4096
ARENA = 1 << 20  # CPython 3.11's pymalloc arena
POOL = 16 * 1024
POOL_HEADER = 48  # struct pool_header, rounded to the 16-byte alignment of blocks
PRESENT, EXCLUSIVE = 1 << 63, 1 << 56
STAGES = ("claimed", "first call", "create", "start", "idle")


class Process:
    """Read access to another process's memory and page map."""

    def __init__(self, pid: int) -> None:
        self.pid = pid
        self.mem = open(f"/proc/{pid}/mem", "rb", buffering=0)  # noqa: SIM115 (closed in close())
        self.pagemap = open(f"/proc/{pid}/pagemap", "rb", buffering=0)  # noqa: SIM115

    def close(self) -> None:
        self.mem.close()
        self.pagemap.close()

    def entry(self, addr: int) -> int:
        self.pagemap.seek(addr // PAGE * 8)
        value: int = struct.unpack("Q", self.pagemap.read(8))[0]
        return value

    def read(self, addr: int, size: int) -> bytes:
        if not 0 < addr < 1 << 47:
            return b""
        try:
            self.mem.seek(addr)
            return self.mem.read(size)
        except OSError:
            return b""

    def word(self, addr: int) -> int:
        data = self.read(addr, 8)
        return struct.unpack("Q", data)[0] if len(data) == 8 else 0

    def mappings(self) -> Iterator[tuple[int, int, str, str]]:
        for line in Path(f"/proc/{self.pid}/maps").read_text().splitlines():
            fields = line.split(None, 5)
            lo, hi = (int(x, 16) for x in fields[0].split("-"))
            yield lo, hi, fields[1], fields[5] if len(fields) > 5 else ""


def gdb_print(pid: int, *expressions: str) -> str:
    """gdb's output for ``print`` of each expression in process ``pid`` ("" without gdb)."""
    if shutil.which("gdb") is None:
        return ""
    command = ["gdb", "-p", str(pid), "-batch", "-ex", "set print elements 0"]
    for expression in expressions:
        command += ["-ex", f"print {expression}"]
    return subprocess.run(command, capture_output=True, text=True, check=False).stdout


class Shim:
    """One shim's private pages, compared with the template's."""

    def __init__(self, pid: int, template: int) -> None:
        self.shim, self.template = Process(pid), Process(template)
        out = gdb_print(pid, "*arenas@maxarenas", "&PyType_Type")
        self.arenas = [int(x) for x in re.findall(r"address = (\d+)", out) if int(x)]
        types = re.findall(r"\(PyTypeObject \*\) (0x[0-9a-f]+)", out)
        self.type_type = int(types[-1], 16) if types else 0
        self.names: dict[int, str | None] = {}

    def close(self) -> None:
        self.shim.close()
        self.template.close()

    def type_name(self, addr: int) -> str | None:
        """tp_name of the type object at ``addr``; None when it is not one."""
        if addr not in self.names:
            name = None
            meta = self.shim.word(addr + 8)
            if (
                meta
                and self.type_type
                and (meta == self.type_type or self.shim.word(meta + 8) == self.type_type)
            ):
                raw = self.shim.read(self.shim.word(addr + 24), 80)
                text = raw.split(b"\0")[0].decode(errors="replace")
                name = text if re.fullmatch(r"[\w.]+", text) else None
            self.names[addr] = name
        return self.names[addr]

    def mapping_name(self, lo: int, name: str, perms: str) -> str:
        if name == "[heap]":
            return "C heap"
        if "libpython" in name:
            return "libpython " + ("data" if "w" in perms else "text")
        if name.startswith("["):
            return name
        if name:
            return "other files"
        return "pymalloc arenas" if any(a <= lo < a + ARENA for a in self.arenas) else "anonymous"

    def pages(self) -> Iterator[tuple[str, int, str]]:
        """(mapping, page address, kind) of each private page; kind is fresh, changed or same."""
        for lo, hi, perms, name in self.shim.mappings():
            if name in ("[vsyscall]", "[vvar]", "[vdso]"):
                continue
            for addr in range(lo, hi, PAGE):
                entry = self.shim.entry(addr)
                if not entry & PRESENT or not entry & EXCLUSIVE:
                    continue
                where = self.mapping_name(addr, name, perms)
                if not self.template.entry(addr) & PRESENT:
                    yield where, addr, "fresh"
                elif self.shim.read(addr, PAGE) != self.template.read(addr, PAGE):
                    yield where, addr, "changed"
                else:
                    yield where, addr, "same"

    def changed_words(self, addr: int) -> list[int]:
        mine, theirs = self.shim.read(addr, PAGE), self.template.read(addr, PAGE)
        return [addr + o for o in range(0, PAGE, 8) if mine[o : o + 8] != theirs[o : o + 8]]

    def arena_cause(self, addr: int) -> tuple[str, str]:
        """The object (type, field) a changed word at ``addr`` of a pymalloc pool belongs to."""
        pool = addr & ~(POOL - 1)
        if addr < pool + POOL_HEADER:
            return "pool header", ""
        size = (struct.unpack("I", self.shim.read(pool + 36, 4) or b"\0" * 4)[0] + 1) * 16
        block = pool + POOL_HEADER + (addr - pool - POOL_HEADER) // size * size
        name, start = self.type_name(self.shim.word(block + 8)), block
        if name is None:  # a GC-tracked object: 16 bytes of GC header come first
            name, start = self.type_name(self.shim.word(block + 24)), block + 16
        if name is None:
            return f"? (block of {size})", ""
        field = "refcnt" if addr == start else "gc header" if addr < start else f"+{addr - start}"
        return name, field

    def heap_cause(self, addr: int) -> tuple[str, str]:
        """A changed C-heap word is an object's reference count when the next word is a type."""
        name = self.type_name(self.shim.word(addr + 8))
        return (name, "refcnt") if name else ("other", "")


def report(shim: Shim) -> None:
    by_mapping: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    causes: dict[str, collections.Counter[tuple[str, str]]] = collections.defaultdict(collections.Counter)
    pages_of: dict[str, collections.Counter[str]] = collections.defaultdict(collections.Counter)
    for where, addr, kind in shim.pages():
        by_mapping[where][kind] += 1
        if kind != "changed" or where not in ("pymalloc arenas", "C heap"):
            continue
        cause = shim.arena_cause if where == "pymalloc arenas" else shim.heap_cause
        found = {cause(word) for word in shim.changed_words(addr)}
        for item in found:
            causes[where][item] += 1
        for name in {name for name, _ in found}:
            pages_of[where][name] += 1
    print("\nprivate pages of one shim, KiB (copied from the template: changed / same content; fresh):")
    for where, kinds in sorted(by_mapping.items(), key=lambda kv: -sum(kv[1].values())):
        total = sum(kinds.values()) * 4
        print(
            f"  {where:18s} {total:6d}   changed {kinds['changed'] * 4:6d}  same {kinds['same'] * 4:6d}  fresh {kinds['fresh'] * 4:5d}"
        )
    for where in ("pymalloc arenas", "C heap"):
        print(f"\n{where}: changed pages holding a changed word of (type), and the commonest (type, field):")
        print("  " + ", ".join(f"{name} {n}" for name, n in pages_of[where].most_common(12)))
        print("  " + ", ".join(f"{name} {field} {n}" for (name, field), n in causes[where].most_common(12)))


async def run(count: int) -> None:
    base = Path(tempfile.mkdtemp(prefix="shim-pages-"))
    try:
        rootfs = build_rootfs(base / "rootfs")
        spec = base_spec(base / "spec")
        env = Env(base / "state", base / "fifos", rootfs, spec, use_template=True)
        env.state.mkdir()
        env.fifo_dir.mkdir()
        env.launcher.spare = True
        async with env:
            await asyncio.sleep(0.5)  # the template's spare comes up
            template = env.launcher.template_pid
            assert template is not None, "the template did not start"
            spares = [int(p.name.rpartition("-")[2]) for p in env.state.rglob("spare-*")]
            unclaimed = [smaps(pid)["Private_Dirty"] for pid in spares]
            stages: list[list[int]] = []
            pids: list[int] = []
            try:
                for i in range(count):
                    task = await env.task(f"pages{i}", ["sleep", "1000"], start_shim=False)
                    task.client = await env.launcher.start_shim(task.bundle)
                    pid = task.shim_pid
                    assert pid is not None
                    pids.append(pid)
                    figures = [smaps(pid)["Private_Dirty"]]
                    await task.client.info()
                    figures.append(smaps(pid)["Private_Dirty"])
                    await task.create(task.stdio())
                    figures.append(smaps(pid)["Private_Dirty"])
                    await task.shim.start()
                    figures.append(smaps(pid)["Private_Dirty"])
                    stages.append(figures)
                await asyncio.sleep(1.0)
                for figures, pid in zip(stages, pids, strict=True):
                    figures.append(smaps(pid)["Private_Dirty"])
                print(f"Private_Dirty, KiB, median of {count} shims:")
                if unclaimed:
                    print(f"  spare before its claim {unclaimed[0]}")
                for n, stage in enumerate(STAGES):
                    print(f"  after {stage:10s} {statistics.median(f[n] for f in stages):.0f}")
                shim = Shim(pids[-1], template)
                try:
                    report(shim)
                finally:
                    shim.close()
            finally:
                for task in env.tasks:
                    await task.shim.kill(9, all=True)
                    await task.shim.wait()
                    await task.shim.delete()
                    await task.shim.shutdown()
    finally:
        shutil.rmtree(base, ignore_errors=True)


def main() -> None:
    parser = argparse.ArgumentParser(description=(__doc__ or "").splitlines()[0])
    parser.add_argument("--shims", type=int, default=10)
    args = parser.parse_args()
    asyncio.run(run(args.shims))


if __name__ == "__main__":
    main()
