"""Many containers: start them, hold them running, tear them down; time, memory and CPU.

Per round and daemon: ``s.containers`` containers (``sleep 3600``) are started detached with
``ctr run -d``, ``s.concurrency`` ctr processes at a time (timed until every ctr has returned,
that is until every task is RUNNING, which is then checked); with all of them running, the
memory of every shim and of the daemon is read; then each is torn down with ``ctr tasks kill
-s SIGKILL``, ``ctr tasks rm -f`` and ``ctr containers rm``, again ``s.concurrency`` at a time
(timed). The daemon's cgroup gives the CPU of each phase (daemon + shims + runc).
"""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from .harness import Daemons, Measurement, Settings, Target, order, progress
from .procs import smaps

CASE_TIME = "throughput"
CASE_CPU = "CPU"
CASE_MEMORY = "memory"
# Let CPU that follows the last ctr (a shim exiting) and the start-up transients settle.
SETTLE = 0.5
MEMORY_SETTLE = 1.0
MIB = 1024.0


def _running(d: Daemons, which: str, ids: list[str]) -> None:
    """Raise RuntimeError unless every one of ``ids`` is listed as RUNNING."""
    listed = d.ctr(which, "tasks", "ls").stdout.splitlines()[1:]
    status = {fields[0]: fields[2] for fields in (line.split() for line in listed) if len(fields) >= 3}
    missing = [cid for cid in ids if status.get(cid) != "RUNNING"]
    if missing:
        raise RuntimeError(f"{which}: {len(missing)} tasks are not RUNNING: {missing[:5]}")


def _tear_down(d: Daemons, which: str, container: str) -> None:
    d.ctr(which, "tasks", "kill", "-s", "SIGKILL", container, check=False)
    d.ctr(which, "tasks", "rm", "-f", container)
    d.ctr(which, "containers", "rm", container)


def throughput(d: Daemons, s: Settings) -> list[Measurement]:
    n = s.containers
    found = Found(
        start=Measurement(CASE_TIME, f"start {n} containers (ctr run -d), {s.concurrency} at a time", "s",
                          target=Target(1.15)),  # issue 13's targets, here and below
        stop=Measurement(CASE_TIME, f"tear down {n} (kill -9, tasks rm, containers rm)", "s", target=Target(1.0)),
        cpu_start=Measurement(CASE_CPU, "CPU per container start (ctr run -d)", "ms", target=Target(1.25)),
        cpu_stop=Measurement(CASE_CPU, "CPU per container teardown", "ms"),
        private=Measurement(CASE_MEMORY, "shim Private_Dirty, per container", "MiB", target=Target(1.4),
                            note=f"per-shim figures are over every shim of every round ({n} running at once)"),
        pss=Measurement(CASE_MEMORY, "shim PSS, per container", "MiB"),
        per_container=Measurement(CASE_MEMORY, "PSS of all shims (+ template) / containers", "MiB",
                                  note="ctrpyd's figure includes its shim template's PSS, shared out"),
        daemon_rss=Measurement(CASE_MEMORY, f"daemon RSS with {n} containers running", "MiB"),
        template=Measurement(CASE_MEMORY, f"ctrpyd's shim template PSS (with {n} shims forked)", "MiB"),
    )
    with ThreadPoolExecutor(s.concurrency) as pool:
        for number in range(s.rounds):
            for which in order(number):
                one_round(d, which, [d.container_id(which, "tp", number, i) for i in range(n)], pool, found)
                progress(f"throughput round {number} {which}: start {getattr(found.start, which)[-1]:.2f} s, "
                         f"teardown {getattr(found.stop, which)[-1]:.2f} s")
    return list(vars(found).values())


@dataclass
class Found:
    """What the throughput case measures."""

    start: Measurement
    stop: Measurement
    cpu_start: Measurement
    cpu_stop: Measurement
    private: Measurement
    pss: Measurement
    per_container: Measurement
    daemon_rss: Measurement
    template: Measurement


def one_round(d: Daemons, which: str, ids: list[str], pool: ThreadPoolExecutor, found: Found) -> None:
    """Start ``ids`` on ``which``, read memory with all of them running, tear them down."""
    image = d.busybox()
    n = len(ids)
    group = d.cpu[which]
    run = ("run", "-d", *d.run_flags(which), image)

    before = group.usage_ns()
    began = time.perf_counter()
    list(pool.map(lambda container: d.ctr(which, *run, container, "sleep", "3600"), ids))
    getattr(found.start, which).append(time.perf_counter() - began)
    time.sleep(SETTLE)
    getattr(found.cpu_start, which).append((group.usage_ns() - before) / 1e6 / n)
    _running(d, which, ids)

    time.sleep(MEMORY_SETTLE)
    pids = d.shim_pids(which)
    outside = [pid for pid in pids if not group.holds(pid)]
    if outside:  # their CPU would not be counted: say so loudly
        progress(f"{which}: {len(outside)} shims are outside the daemon's CPU cgroup")
        found.cpu_start.note = f"{which}: {len(outside)} of {len(pids)} shims were outside the daemon's cgroup"
    shims = [figures for figures in map(smaps, pids) if figures]
    if len(shims) != n:
        progress(f"{which}: found {len(shims)} shims for {n} containers")
    getattr(found.private, which).extend(f["Private_Dirty"] / MIB for f in shims)
    getattr(found.pss, which).extend(f["Pss"] / MIB for f in shims)
    total_pss = sum(f["Pss"] for f in shims)
    template_pid = d.template_pid() if which == "ctrpyd" else None
    if template_pid is not None:
        template_pss = smaps(template_pid).get("Pss", 0)
        found.template.ctrpyd.append(template_pss / MIB)
        total_pss += template_pss
    getattr(found.per_container, which).append(total_pss / MIB / n)
    getattr(found.daemon_rss, which).append(smaps(d.pid(which)).get("Rss", 0) / MIB)

    before = group.usage_ns()
    began = time.perf_counter()
    list(pool.map(lambda container: _tear_down(d, which, container), ids))
    getattr(found.stop, which).append(time.perf_counter() - began)
    time.sleep(SETTLE)
    getattr(found.cpu_stop, which).append((group.usage_ns() - before) / 1e6 / n)


def idle(d: Daemons) -> list[Measurement]:
    """The daemons' memory right after they started (no containers, nothing imported)."""
    rss = Measurement(CASE_MEMORY, "daemon idle RSS (fresh, no containers)", "MiB", target=Target(1.2))
    private = Measurement(CASE_MEMORY, "daemon idle Private_Dirty", "MiB")
    for which in ("containerd", "ctrpyd"):
        rss_kb = d.idle.get(which, {}).get("Rss")
        if rss_kb:
            getattr(rss, which).append(rss_kb / MIB)
            getattr(private, which).append(d.idle[which].get("Private_Dirty", 0) / MIB)
    found = [rss, private]
    if "template" in d.idle:
        found.append(Measurement(CASE_MEMORY, "ctrpyd's shim template idle RSS (not counted above)", "MiB",
                                 ctrpyd=[d.idle["template"].get("Rss", 0) / MIB]))
    return found


def idle_after(d: Daemons) -> list[Measurement]:
    """The daemons' RSS once the cases are done and they idle again: what the fresh figure
    leaves out (what the cases made each load: ctrpyd imports some libraries at first use,
    OpenSSL's libcrypto at the first digest among them)."""
    time.sleep(SETTLE)
    rss = Measurement(CASE_MEMORY, "daemon idle RSS after the cases", "MiB")
    for which in ("containerd", "ctrpyd"):
        rss_kb = smaps(d.pid(which)).get("Rss")
        if rss_kb:
            getattr(rss, which).append(rss_kb / MIB)
    return [rss]
