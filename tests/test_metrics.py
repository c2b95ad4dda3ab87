"""``[metrics] address``: a real ctrpyd serving /v1/metrics while the stock ctr runs containers.

The values are checked against what the kernel says at the same moment (the containers'
cgroup v1 files), the gRPC counters against calls the test makes, and the endpoint is off
unless configured.
"""

from __future__ import annotations

import contextlib
import os
import socket
import tempfile
import urllib.error
import urllib.request
from collections.abc import Iterator
from pathlib import Path

import pytest
from prometheus_client.parser import text_string_to_metric_families

from ctrpy.errors import InvalidArgument
from ctrpy.manager import config as configuration
from ctrpy.manager.metrics import cgroups
from ctrpy.testimage import busybox_image, write_oci_layout_tar
from tests.support.ctrpyd import Daemon
from tests.support.polling import wait_until

IMAGE = "docker.io/library/busybox:latest"
RUNC_V2 = "io.containerd.runc.v2"
MEMORY = Path("/sys/fs/cgroup/memory")
V1 = (MEMORY / "memory.usage_in_bytes").exists() and Path("/sys/fs/cgroup/cpuacct/cpuacct.usage").exists()

Samples = dict[str, list[tuple[dict[str, str], float]]]


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        probe.bind(("127.0.0.1", 0))
        return int(probe.getsockname()[1])


class Metered:
    """A ctrpyd with [metrics] on a free loopback port, and the busybox image imported."""

    def __init__(self, daemon: Daemon, port: int) -> None:
        self.daemon, self.port = daemon, port

    def get(self, path: str = "/v1/metrics", method: str = "GET") -> tuple[int, str, str]:
        request = urllib.request.Request(f"http://127.0.0.1:{self.port}{path}", method=method)
        try:
            with urllib.request.urlopen(request, timeout=60) as answer:
                return answer.status, answer.headers.get("Content-Type", ""), answer.read().decode()
        except urllib.error.HTTPError as error:
            return error.code, error.headers.get("Content-Type", ""), error.read().decode()

    def scrape(self) -> Samples:
        status, content_type, text = self.get()
        assert status == 200 and content_type.startswith("text/plain; version=0.0.4"), (status, content_type)
        found: Samples = {}
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                found.setdefault(sample.name, []).append((dict(sample.labels), float(sample.value)))
        return found

    def ctr(self, *args: str) -> str:
        result = self.daemon.ctr(*args)
        assert result.returncode == 0, f"ctr {args}: {result.stderr}"
        return result.stdout


def value(samples: Samples, name: str, **labels: str) -> float | None:
    """The value of the one sample of ``name`` whose labels include ``labels``."""
    matches = [v for found, v in samples.get(name, []) if all(found.get(k) == w for k, w in labels.items())]
    assert len(matches) <= 1, (name, labels, matches)
    return matches[0] if matches else None


@pytest.fixture(scope="module")
def metered_daemon() -> Iterator[Metered]:
    """One daemon for the module (each start and import costs seconds); see ``metered``."""
    base = Path(tempfile.mkdtemp(prefix="ctrpym-"))
    daemon = Daemon(base)
    try:
        for _ in range(3):  # another process may take the free port between probe and bind
            port = _free_port()
            config = base / "ctrpyd.toml"
            config.write_text(f'[metrics]\naddress = "127.0.0.1:{port}"\ngrpc_histogram = true\n')
            daemon.extra_args = ("--config", str(config))
            try:
                daemon.start()
                break
            except RuntimeError:
                if "metrics address" not in daemon.log():
                    raise
        else:
            pytest.fail("no free port for the metrics endpoint")
        archive = base / "busybox.tar"
        write_oci_layout_tar(busybox_image(), archive)
        metered = Metered(daemon, port)
        metered.ctr("images", "import", str(archive))
        yield metered
    finally:
        daemon.cleanup()


@pytest.fixture
def metered(metered_daemon: Metered) -> Iterator[Metered]:
    """The module's metered daemon; every task and container a test made is removed after it."""
    try:
        yield metered_daemon
    finally:
        daemon = metered_daemon.daemon
        for task in daemon.ctr("tasks", "ls", "-q").stdout.split():
            daemon.ctr("tasks", "rm", "-f", task)
        for container in daemon.ctr("containers", "ls", "-q").stdout.split():
            daemon.ctr("containers", "rm", container)


def _cgroup_of(pid: int) -> str:
    path = cgroups.cgroup_of_pid(pid)
    assert path is not None, f"no memory cgroup for pid {pid}"
    return path


def _read_int(controller: str, path: str, name: str) -> int:
    text = (Path("/sys/fs/cgroup") / controller / path.strip("/") / name).read_text().strip()
    return 0 if text == "max" else int(text)


def _task_pid(metered: Metered, task: str) -> int:
    for line in metered.ctr("tasks", "ls").splitlines()[1:]:
        fields = line.split()
        if fields[0] == task:
            return int(fields[1])
    raise AssertionError(f"task {task} not listed")


@pytest.mark.skipif(not V1, reason="the per-container metrics read cgroup v1 files")
def test_container_metrics_match_the_cgroup_files(metered: Metered) -> None:
    limit = 64 << 20
    metered.ctr("run", "-d", "--memory-limit", str(limit), IMAGE, "m1", "sh", "-c", "sleep 1000 & sleep 1000")
    metered.ctr("run", "-d", IMAGE, "m2", "sleep", "1000")
    paths = {task: _cgroup_of(_task_pid(metered, task)) for task in ("m1", "m2")}
    cpu_before = {task: _read_int("cpuacct", path, "cpuacct.usage") for task, path in paths.items()}
    samples = metered.scrape()
    for task, path in paths.items():
        labels = {"container_id": task, "namespace": "default", "runtime": RUNC_V2}
        cpu = value(samples, "container_cpu_total_nanoseconds", **labels)
        assert cpu is not None and cpu_before[task] <= cpu <= _read_int("cpuacct", path, "cpuacct.usage")
        assert value(samples, "container_pids_current", **labels) == _read_int("pids", path, "pids.current")
        assert value(samples, "container_pids_limit", **labels) == _read_int("pids", path, "pids.max")
        usage = value(samples, "container_memory_usage_usage_bytes", **labels)
        now = _read_int("memory", path, "memory.usage_in_bytes")
        assert usage is not None and abs(usage - now) <= max(now * 0.25, 1 << 20), (usage, now)
        assert value(samples, "container_memory_usage_limit_bytes", **labels) == _read_int(
            "memory", path, "memory.limit_in_bytes")
        # containerd's OOM series has no runtime label
        assert value(samples, "container_memory_oom_total", container_id=task, namespace="default") == 0
        assert value(samples, "container_per_cpu_nanoseconds", cpu="0", **labels) is not None
    assert value(samples, "container_memory_usage_limit_bytes", container_id="m1") == limit
    assert (value(samples, "container_pids_current", container_id="m1") or 0) >= 2  # sh (or a sleep) and a sleep
    metered.ctr("tasks", "rm", "-f", "m2")  # a deleted task's series go (containerd: at Delete too)
    assert value(metered.scrape(), "container_pids_current", container_id="m2") is None


@pytest.mark.skipif(not V1, reason="the per-container metrics read cgroup v1 files")
def test_an_oom_kill_inside_a_running_container_is_counted(metered: Metered) -> None:
    # The subshell filling memory is killed; the container's sh goes on sleeping.
    metered.ctr("run", "-d", "--memory-limit", str(16 << 20), IMAGE, "oom2",
                "sh", "-c", "(x=$(head -c 64m /dev/zero | tr '\\0' a)) ; sleep 1000")
    path = _cgroup_of(_task_pid(metered, "oom2"))
    oom_control = Path("/sys/fs/cgroup/memory") / path.strip("/") / "memory.oom_control"

    def kills() -> int:
        return next(int(line.split()[1]) for line in oom_control.read_text().splitlines() if line.startswith("oom_kill "))

    wait_until(kills, "the kernel to OOM-kill the subshell")
    assert value(metered.scrape(), "container_memory_oom_total", container_id="oom2") == kills()


def test_grpc_counters_follow_calls(metered: Metered) -> None:
    version = {"grpc_service": "containerd.services.version.v1.Version", "grpc_method": "Version"}
    get = {"grpc_service": "containerd.services.containers.v1.Containers", "grpc_method": "Get"}
    before = metered.scrape()
    # Every served method is there from the start, as go-grpc-prometheus registers them.
    assert value(before, "grpc_server_started_total", grpc_service="containerd.services.namespaces.v1.Namespaces",
                 grpc_method="Delete", grpc_type="unary") == 0
    assert value(before, "grpc_server_handled_total", grpc_service="containerd.services.events.v1.Events",
                 grpc_method="Subscribe", grpc_type="server_stream", grpc_code="Unavailable") == 0
    # The image import wrote its blobs through Content.Write, a bidirectional stream: each
    # message counts.
    write = {"grpc_service": "containerd.services.content.v1.Content", "grpc_method": "Write",
             "grpc_type": "bidi_stream"}
    writes = value(before, "grpc_server_handled_total", grpc_code="OK", **write) or 0
    assert writes >= 1 and value(before, "grpc_server_started_total", **write) == writes
    assert (value(before, "grpc_server_msg_received_total", **write) or 0) > writes
    assert (value(before, "grpc_server_msg_sent_total", **write) or 0) > writes
    metered.ctr("version")
    assert metered.daemon.ctr("containers", "info", "nosuch").returncode != 0

    def growth(after: Samples) -> dict[tuple[str, str, str], float]:
        found = {}
        for labels, code in ((version, "OK"), (get, "NotFound")):
            for name, extra in (("grpc_server_started_total", {}), ("grpc_server_handled_total", {"grpc_code": code}),
                                ("grpc_server_msg_received_total", {}), ("grpc_server_handling_seconds_count", {})):
                grew = (value(after, name, **labels, **extra) or 0) - (value(before, name, **labels, **extra) or 0)
                found[(name, labels["grpc_method"], code)] = grew
        return found

    # A failed call's status reaches the client before the server's side of it has finished
    # (abort sends it, then unwinds the handler): its count may lag the client by a moment.
    def counted() -> Samples | None:
        after = metered.scrape()
        return after if all(grew == 1 for grew in growth(after).values()) else None

    with contextlib.suppress(AssertionError):
        wait_until(counted, "the calls to be counted", timeout=10)
    after = metered.scrape()
    assert growth(after) == dict.fromkeys(growth(after), 1)
    sent = value(after, "grpc_server_msg_sent_total", **get)
    assert sent == value(before, "grpc_server_msg_sent_total", **get)  # a failed call sends nothing
    buckets = [labels for labels, _ in after["grpc_server_handling_seconds_bucket"] if labels.get("grpc_method") == "Get"
               and labels["grpc_service"] == get["grpc_service"]]
    assert [b["le"] for b in buckets] == ["0.005", "0.01", "0.025", "0.05", "0.1", "0.25", "0.5", "1", "2.5", "5",
                                          "10", "+Inf"]


def test_daemon_gauges(metered: Metered) -> None:
    metered.ctr("run", "-d", IMAGE, "g1", "sleep", "1000")
    metered.ctr("run", "-d", IMAGE, "g2", "sleep", "1000")
    metered.ctr("tasks", "pause", "g2")

    def once_paused() -> Samples | None:
        # The gauge follows the tasks' events, which the shims publish after their calls return.
        samples = metered.scrape()
        return samples if value(samples, "ctrpy_tasks", state="paused") == 1 else None

    samples = wait_until(once_paused, "g2 to count as paused")
    assert value(samples, "ctrpy_tasks", state="running") == 1
    assert value(samples, "ctrpy_shims") == 2
    blobs = metered.daemon.root / "content" / "blobs" / "sha256"
    content = value(samples, "ctrpy_content_bytes") or 0
    # a sample: the collector may have removed a small blob of the import since it was taken
    assert abs(content - sum(path.stat().st_size for path in blobs.iterdir())) < 64 << 10 and content > 0
    assert (value(samples, "ctrpy_snapshots_bytes", snapshotter="overlayfs") or 0) > 0
    assert (value(samples, "ctrpy_gc_duration_seconds_count") or 0) >= 1  # the start-up collection
    assert value(samples, "ctrpy_events_dropped_total") == 0
    assert value(samples, "process_resident_memory_bytes") is not None
    metered.ctr("tasks", "kill", "-s", "9", "g1")
    wait_until(lambda: value(metered.scrape(), "ctrpy_tasks", state="stopped") == 1, "g1 to count as stopped")


def test_other_paths_and_methods(metered: Metered) -> None:
    assert metered.get("/metrics")[0] == 404
    assert metered.get("/v1/metrics", method="POST")[0] == 405
    status, _, body = metered.get("/v1/metrics", method="HEAD")
    assert status == 200 and body == ""


def _listening_tcp_inodes() -> set[str]:
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as lines:
            for line in list(lines)[1:]:
                fields = line.split()
                if fields[3] == "0A":  # LISTEN
                    found.add(fields[9])
    return found


def test_off_by_default(daemon: Daemon) -> None:
    assert daemon.process is not None
    sockets = set()
    for fd in Path(f"/proc/{daemon.process.pid}/fd").iterdir():
        target = os.readlink(fd) if fd.is_symlink() else ""
        if target.startswith("socket:["):
            sockets.add(target[len("socket:["):-1])
    assert sockets and not sockets & _listening_tcp_inodes()
    assert configuration.Config().metrics.address == ""


def test_config_section() -> None:
    parsed = configuration.parse('[metrics]\naddress = "[::1]:1338"\ngrpc_histogram = true\n')
    assert parsed.metrics == configuration.MetricsConfig("[::1]:1338", True)
    assert configuration.split_address(parsed.metrics.address) == ("::1", 1338)
    assert configuration.split_address(":1338") == ("", 1338)
    assert configuration.parse(configuration.render(parsed)) == parsed
    for bad in ('address = "localhost"', 'address = "1.2.3.4:99999"', 'address = "::1:1338"', "address = 1338",
                "grpc_histogram = 1", 'port = "1"'):
        with pytest.raises(InvalidArgument):
            configuration.parse(f"[metrics]\n{bad}\n")


def test_reading_a_real_cgroup_yields_containerd_names() -> None:
    where = cgroups.Hierarchies.find()
    if not where.usable:
        pytest.skip("no cgroup v1 hierarchies here")
    samples = cgroups.read(where, "/", cgroups.devices())  # the root: in every hierarchy, whatever ours is
    assert set(samples) <= set(cgroups.METRICS)
    for name in ("container_cpu_total_nanoseconds", "container_memory_usage_usage_bytes",
                 "container_memory_total_rss_bytes", "container_cpu_user_nanoseconds"):
        assert samples[name][0][1] >= 0, name
