"""The cgroup v2 per-container series (``manager/metrics/cgroups2.py``).

This machine is cgroup v1, so the reader is checked against a tree of v2 files this test writes
(what a unified host's kernel shows in a container's cgroup), through the same path a scrape
takes: :meth:`Hierarchies.find` picking v2 from the mount table, :func:`cgroups.read_all` and
:func:`render.container_text`; the text is parsed back with prometheus-client's parser.
"""

from __future__ import annotations

from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from ctrpy.manager.metrics import cgroups, cgroups2, render

RUNTIME = "io.containerd.runc.v2"
# A container's cgroup as a 6.x kernel shows it (abridged where the reader ignores the rest).
FILES = {
    "cgroup.procs": "4242\n",
    "cpu.stat": "usage_usec 81234\nuser_usec 61000\nsystem_usec 20234\nnr_periods 12\nnr_throttled 3\n"
                "throttled_usec 4567\n",
    "memory.current": "2101248\n",
    "memory.max": "67108864\n",
    "memory.swap.current": "0\n",
    "memory.swap.max": "max\n",
    "memory.events": "low 0\nhigh 0\nmax 7\noom 2\noom_kill 1\n",
    "memory.stat": "anon 1048576\nfile 925696\nkernel_stack 16384\nslab 98304\nsock 0\nshmem 0\n"
                   "file_mapped 524288\nfile_dirty 4096\nfile_writeback 0\nanon_thp 0\ninactive_anon 1040384\n"
                   "active_anon 8192\ninactive_file 921600\nactive_file 4096\nunevictable 0\n"
                   "slab_reclaimable 40960\nslab_unreclaimable 57344\npgfault 1480\npgmajfault 3\n"
                   "workingset_refault 0\nworkingset_activate 0\nworkingset_nodereclaim 0\npgrefill 0\n"
                   "pgscan 0\npgsteal 0\npgactivate 2\npgdeactivate 0\npglazyfree 0\npglazyfreed 0\n"
                   "thp_fault_alloc 0\nthp_collapse_alloc 0\n",
    "pids.current": "3\n",
    "pids.max": "max\n",
    "io.stat": "8:0 rbytes=1118208 wbytes=4096 rios=42 wios=1 dbytes=0 dios=0\n"
               "253:1 rbytes=512 wbytes=0 rios=1 wios=0 dbytes=0 dios=0\n",
}  # fmt: skip
UNLIMITED = float(2**64 - 1)


def unified_host(tmp_path: Path) -> cgroups.Hierarchies:
    """A v2-only mount table whose cgroup2 mount is the test's directory."""
    table = tmp_path / "mountinfo"
    table.write_text(
        "22 1 0:21 / / rw,relatime shared:1 - ext4 /dev/sda1 rw\n"
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid,nodev,noexec,relatime shared:4 - cgroup2 cgroup2 rw,nsdelegate\n")
    found = cgroups.Hierarchies.find(str(table))
    assert found.unified == cgroups.UNIFIED_MOUNT and found.usable and found.metrics is cgroups2.METRICS
    assert found.cpuacct is None and found.memory is None
    root = tmp_path / "unified"
    for name, text in FILES.items():
        (root / "ctrpy-test" / "c1").mkdir(parents=True, exist_ok=True)
        (root / "ctrpy-test" / "c1" / name).write_text(text)
    return cgroups.Hierarchies(None, None, None, None, None, (), found.clock_ticks, str(root))


def test_a_v1_mount_table_keeps_the_v1_reader(tmp_path: Path) -> None:
    table = tmp_path / "mountinfo"
    table.write_text(
        "30 22 0:26 / /sys/fs/cgroup rw,nosuid - tmpfs tmpfs ro,mode=755\n"
        "31 30 0:27 / /sys/fs/cgroup/unified rw,nosuid - cgroup2 cgroup2 rw\n"  # hybrid: not unified
        "32 30 0:28 / /sys/fs/cgroup/memory rw,nosuid - cgroup cgroup rw,memory\n"
        "33 30 0:29 / /sys/fs/cgroup/cpu,cpuacct rw,nosuid - cgroup cgroup rw,cpu,cpuacct\n")
    found = cgroups.Hierarchies.find(str(table))
    assert found.unified is None and found.memory == "/sys/fs/cgroup/memory" and found.usable
    assert found.metrics is cgroups.METRICS


def test_samples_have_containerds_v2_names_and_the_files_values(tmp_path: Path) -> None:
    where = unified_host(tmp_path)
    samples = cgroups.read(where, "/ctrpy-test/c1", {})
    one = {name: values[0][1] for name, values in samples.items() if len(values) == 1 and not values[0][0]}
    assert one["container_cpu_usage_usec_microseconds"] == 81234
    assert one["container_cpu_user_usec_microseconds"] == 61000
    assert one["container_cpu_system_usec_microseconds"] == 20234
    assert one["container_cpu_nr_periods_total"] == 12
    assert one["container_cpu_nr_throttled_total"] == 3
    assert one["container_cpu_throttled_usec_microseconds"] == 4567
    assert one["container_memory_usage_bytes"] == 2101248
    assert one["container_memory_usage_limit_bytes"] == 67108864
    assert one["container_memory_swap_usage_bytes"] == 0
    assert one["container_memory_swap_limit_bytes"] == UNLIMITED  # "max", as containerd's library reads it
    assert one["container_memory_anon_bytes"] == 1048576
    assert one["container_memory_file_mapped_bytes"] == 524288
    assert one["container_memory_pgfault_bytes"] == 1480
    assert one["container_memory_slab_unreclaimable_bytes"] == 57344
    assert one["container_memory_oom_total"] == 2  # memory.events "oom", not "oom_kill"
    assert one["container_pids_current"] == 3 and one["container_pids_limit"] == UNLIMITED
    assert sorted(samples["container_io_rbytes_bytes"]) == [(("253", "1"), 512.0), (("8", "0"), 1118208.0)]
    assert sorted(samples["container_io_wios_total"]) == [(("253", "1"), 0.0), (("8", "0"), 1.0)]
    assert set(samples) == set(cgroups2.METRICS)  # every series containerd's v2 collector has, and no other
    assert not set(samples) & {"container_cpu_total_nanoseconds", "container_memory_usage_usage_bytes"}


def test_missing_files_count_as_zero_and_a_gone_cgroup_is_left_out(tmp_path: Path) -> None:
    where = unified_host(tmp_path)
    bare = Path(str(where.unified)) / "ctrpy-test" / "bare"
    bare.mkdir()
    (bare / "cgroup.procs").write_text("")
    (bare / "cpu.stat").write_text("usage_usec 5\nuser_usec 5\nsystem_usec 0\n")  # no cpu controller
    samples = cgroups.read(where, "/ctrpy-test/bare", {})
    assert samples["container_cpu_usage_usec_microseconds"] == [((), 5.0)]
    assert samples["container_cpu_nr_throttled_total"] == [((), 0.0)]
    assert samples["container_pids_limit"] == [((), 0.0)] and samples["container_memory_usage_bytes"] == [((), 0.0)]
    assert "container_memory_oom_total" not in samples and "container_io_rbytes_bytes" not in samples
    found = cgroups.read_all(where, [("c1", "/ctrpy-test/c1"), ("gone", "/ctrpy-test/gone"), ("bare", "/ctrpy-test/bare")])
    assert [key for key, _ in found] == ["c1", "bare"]


def test_the_rendered_text_is_labelled_and_parses(tmp_path: Path) -> None:
    where = unified_host(tmp_path)
    containers = [render.Container("ctrpy-test", "c1", RUNTIME, "/ctrpy-test/c1"),
                  render.Container("ctrpy-test", "gone", RUNTIME, "/ctrpy-test/gone")]
    text = render.container_text(containers, where)
    assert ('container_memory_usage_bytes{container_id="c1",namespace="ctrpy-test",runtime="io.containerd.runc.v2"}'
            " 2.101248e+06\n") in text
    assert ('container_io_rbytes_bytes{container_id="c1",namespace="ctrpy-test",runtime="io.containerd.runc.v2",'
            'major="8",minor="0"} 1.118208e+06\n') in text
    assert "# HELP container_cpu_usage_usec_microseconds Total cpu usage (cgroup v2)\n" in text
    assert "# TYPE container_memory_oom_total counter\n" in text
    families = {family.name: family for family in text_string_to_metric_families(text)}
    assert "container_memory_oom" in families  # the parser strips a counter's _total
    for family in families.values():
        for sample in family.samples:
            assert sample.labels["container_id"] == "c1"  # nothing of the gone one
            assert sample.labels["runtime"] == RUNTIME  # v2's OOM series has it too
