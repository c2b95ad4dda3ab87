"""50 container lifecycles at once from several clients: five stock ctr processes running
``ctr run --rm`` one after another, and a Python client driving the same life through the API
(Snapshots.Prepare, Containers.Create, Tasks.Create/Start/Wait/Delete, Containers.Delete,
Snapshots.Remove). Every run succeeds, nothing hangs (each client has a deadline), and
afterwards ctrpyd holds what it held before: fds, threads, database handles, no mounts below its
directories, no shim, no zombie.

The baseline is taken after a warm-up round at the same concurrency, so that pools that grow to
their working size (worker threads, the shim template) are not mistaken for leaks.
"""

from __future__ import annotations

import concurrent.futures
from collections.abc import Callable

from tests.hostile import probes
from tests.hostile.specs import Runner, runtime_spec
from tests.load.conftest import IMAGE, Loaded

CTR_CLIENTS = 5
RUNS_PER_CTR = 8
PYTHON_RUNS = 10
DEADLINE = 600.0
SLACK = 6


def ctr_runs(loaded: Loaded, prefix: str, count: int) -> list[str]:
    """``ctr run --rm`` ``count`` times, one after another; the failures' descriptions."""
    failures = []
    for n in range(count):
        container_id = f"{prefix}-{n}"
        result = loaded.daemon.ctr("run", "--rm", IMAGE, container_id, "true", namespace=loaded.namespace,
                                   timeout=120)
        if result.returncode != 0:
            failures.append(f"{container_id}: ctr exited {result.returncode}: {result.stderr.strip()}")
    return failures


def python_runs(loaded: Loaded, prefix: str, count: int) -> list[str]:
    """The same life through the API, ``count`` times; the failures' descriptions."""
    failures = []
    with loaded.daemon.client(loaded.namespace, timeout=120) as client:
        for n in range(count):
            container_id = f"{prefix}-{n}"
            runner = Runner(client, container_id, loaded.chain_id)
            try:
                runner.create_container(runtime_spec(["/bin/true"], f"/{loaded.namespace}/{container_id}"))
                status = runner.run()
                if status != 0:
                    failures.append(f"{container_id}: exit status {status}")
            except Exception as exc:
                failures.append(f"{container_id}: {exc!r}")
            finally:
                runner.remove()
    return failures


def run_all(loaded: Loaded, round_name: str, runs_per_ctr: int, python_count: int) -> list[str]:
    jobs: list[tuple[Callable[[Loaded, str, int], list[str]], str, int]] = [
        (ctr_runs, f"{round_name}-ctr{i}", runs_per_ctr) for i in range(CTR_CLIENTS)
    ]
    jobs.append((python_runs, f"{round_name}-py", python_count))
    with concurrent.futures.ThreadPoolExecutor(len(jobs)) as pool:
        futures = [pool.submit(job, loaded, prefix, count) for job, prefix, count in jobs]
        done, pending = concurrent.futures.wait(futures, timeout=DEADLINE)
        assert not pending, f"{len(pending)} clients still running after {DEADLINE}s: a deadlock?"
        return [failure for future in done for failure in future.result()]


def test_fifty_concurrent_lifecycles_leave_nothing_behind(loaded: Loaded) -> None:
    daemon = loaded.daemon
    pid = probes.daemon_pid(daemon)
    assert run_all(loaded, "warmup", 1, 1) == []
    baseline = probes.Usage.of(daemon)

    failures = run_all(loaded, "load", RUNS_PER_CTR, PYTHON_RUNS)
    assert failures == []
    assert CTR_CLIENTS * RUNS_PER_CTR + PYTHON_RUNS == 50

    probes.assert_serving(daemon)
    assert probes.tasks(daemon) == {}
    assert daemon.ctr("containers", "ls", "-q", namespace=loaded.namespace).stdout.split() == []
    active = [line for line in daemon.ctr("snapshots", "ls", namespace=loaded.namespace).stdout.splitlines()[1:]
              if line.strip() and line.split()[-1] != "Committed"]
    assert active == []
    assert probes.lingering_shims(daemon) == {}
    assert probes.bundles(daemon) == []
    assert probes.state_mounts(daemon) == []
    after = probes.settle(daemon, baseline, slack=SLACK)
    assert after.fds <= baseline.fds + SLACK, (baseline, after)
    assert after.threads <= baseline.threads + SLACK, (baseline, after)
    assert after.db_fds <= baseline.db_fds, (baseline, after)
    assert probes.zombies(pid) == []
    for template in probes.template_pids(daemon):
        assert probes.zombies(template) == []
