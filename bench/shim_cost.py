"""What one shim costs: time to a serving shim, and the memory of an idle shim with a container.

Usage (root, from the repository root):

    .venv/bin/python bench/shim_cost.py [--shims N]

For each way of starting a shim (a spare the template forked ahead of time, forked from the
template on request, or spawned as ``python -m ctrpy.shim.main start``) it starts N shims through ShimLauncher.start_shim, timing
each call until the shim has answered Connect; then it creates and starts one container
(``sleep``) in each, lets them idle for a second, and reads Rss, Pss and Private_Dirty from
/proc/PID/smaps_rollup of every shim. Prints a markdown table (medians over the N shims).
Everything is cleaned up afterwards.
"""

from __future__ import annotations

import argparse
import asyncio
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.shim.harness import Env, base_spec, build_rootfs


def smaps(pid: int) -> dict[str, int]:
    """kB figures from /proc/PID/smaps_rollup."""
    values = {}
    for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines()[1:]:
        key, _, rest = line.partition(":")
        values[key] = int(rest.split()[0])
    return values


async def measure(
    base: Path, rootfs: Path, spec: dict[str, object], mode: str, count: int
) -> dict[str, float]:
    state = Path(tempfile.mkdtemp(prefix="st", dir=base))
    fifos = Path(tempfile.mkdtemp(prefix="f", dir=base))
    env = Env(state, fifos, rootfs, spec, use_template=(mode != "spawn"))
    env.launcher.spare = mode == "spare"
    async with env:
        await asyncio.sleep(0.5)  # the template's spare comes up (in the other modes: the same pause)
        starts, pids = [], []
        for i in range(count):
            task = await env.task(f"{mode}{i}", ["sleep", "1000"], start_shim=False)
            t0 = time.perf_counter()
            task.client = await env.launcher.start_shim(task.bundle)
            await task.client.info()  # the first call, over a ttrpc connection dialled now
            starts.append((time.perf_counter() - t0) * 1000)
            await task.create(task.stdio())
            await task.shim.start()
            pid = task.shim_pid
            assert pid is not None
            pids.append(pid)
        await asyncio.sleep(1.0)
        figures = [smaps(pid) for pid in pids]
        result = {
            "start_ms": statistics.median(starts),
            "rss_kb": statistics.median(f["Rss"] for f in figures),
            "pss_kb": statistics.median(f["Pss"] for f in figures),
            "private_dirty_kb": statistics.median(f["Private_Dirty"] for f in figures),
        }
        template = env.launcher.template_pid
        if template is not None:
            t = smaps(template)
            result["template_rss_kb"], result["template_pss_kb"] = t["Rss"], t["Pss"]
        for task in env.tasks:
            await task.shim.kill(9, all=True)
            await task.shim.wait()
            await task.shim.delete()
            await task.shim.shutdown()
    return result


async def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--shims", type=int, default=10)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="shim-cost-"))
    try:
        rootfs = build_rootfs(base / "rootfs")
        spec = base_spec(base / "spec")
        results = {mode: await measure(base, rootfs, spec, mode, args.shims) for mode in ("spare", "template", "spawn")}
    finally:
        shutil.rmtree(base, ignore_errors=True)
    print(f"| start path | time to serving shim | Private_Dirty | PSS | RSS |  (median of {args.shims})")
    print("|---|---|---|---|---|")
    for mode, r in results.items():
        print(
            f"| {mode} | {r['start_ms']:.1f} ms | {r['private_dirty_kb'] / 1024:.1f} MiB "
            f"| {r['pss_kb'] / 1024:.1f} MiB | {r['rss_kb'] / 1024:.1f} MiB |"
        )
    t = results["template"]
    if "template_pss_kb" in t:
        print(
            f"\ntemplate process itself: PSS {t['template_pss_kb'] / 1024:.1f} MiB, RSS {t['template_rss_kb'] / 1024:.1f} MiB"
        )


if __name__ == "__main__":
    asyncio.run(main())
