"""One scrape, rendered: the Prometheus text exposition format, made on a worker thread.

Everything the event loop owns arrives here as a copy (:class:`Scrape`); this module reads
the cgroup files and writes the text, so the event loop only ever spends the time to copy a
few counters. ``prometheus-client`` formats the gRPC, daemon and process families, built
afresh each scrape and handed to it through one registry whose one collector answers with them;
the per-container series, most of a scrape, are written here in the same format (see
:func:`container_text`).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

from prometheus_client import CollectorRegistry, exposition, utils
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
    SummaryMetricFamily,
)
from prometheus_client.process_collector import ProcessCollector
from prometheus_client.registry import Collector

from . import cgroups
from .daemon import DaemonFigures
from .grpcstats import BUCKETS, GO_CODES, MethodStats

#: The text format 0.0.4 that containerd's Go client serves by default (not OpenMetrics).
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
_GRPC_LABELS = ["grpc_type", "grpc_service", "grpc_method"]
#: prometheus-client's spelling of a value (Go's, as the Go client writes it); untyped there.
_number: Callable[[float], str] = utils.floatToGoString


@dataclass(frozen=True)
class Container:
    """A task whose cgroup a scrape reads."""

    namespace: str
    id: str
    runtime: str
    cgroup: str


@dataclass(frozen=True)
class Scrape:
    """What the event loop hands the rendering thread."""

    grpc: Sequence[MethodStats]
    histogram: bool
    containers: Sequence[Container]
    daemon: DaemonFigures


def grpc_families(methods: Sequence[MethodStats], histogram: bool) -> list[Metric]:
    started = CounterMetricFamily("grpc_server_started", "Total number of RPCs started on the server.",
                                  labels=_GRPC_LABELS)
    handled = CounterMetricFamily(
        "grpc_server_handled", "Total number of RPCs completed on the server, regardless of success or failure.",
        labels=[*_GRPC_LABELS, "grpc_code"])
    received = CounterMetricFamily("grpc_server_msg_received",
                                   "Total number of RPC stream messages received on the server.", labels=_GRPC_LABELS)
    sent = CounterMetricFamily("grpc_server_msg_sent", "Total number of gRPC stream messages sent by the server.",
                               labels=_GRPC_LABELS)
    latency = HistogramMetricFamily(
        "grpc_server_handling_seconds",
        "Histogram of response latency (seconds) of gRPC that had been application-level handled by the server.",
        labels=_GRPC_LABELS)
    codes = list(GO_CODES.values())
    for stats in sorted(methods, key=lambda m: (m.service, m.method)):
        labels = [stats.type, stats.service, stats.method]
        started.add_metric(labels, stats.started)
        received.add_metric(labels, stats.received)
        sent.add_metric(labels, stats.sent)
        for code in codes:  # every code from the start, as go-grpc-prometheus pre-registers them
            handled.add_metric([*labels, code], stats.handled.get(code, 0))
        if histogram and stats.buckets is not None:
            cumulative, buckets = 0, []
            for bound, count in zip(BUCKETS, stats.buckets):
                cumulative += count
                buckets.append((f"{bound:g}", cumulative))  # Go's spelling: "1", not "1.0"
            buckets.append(("+Inf", cumulative + stats.buckets[-1]))
            latency.add_metric(labels, buckets, stats.seconds)
    return [started, handled, received, sent, *([latency] if histogram else [])]


def _escaped(value: str) -> str:
    """A label value as the text format writes it."""
    if "\\" in value or "\n" in value or '"' in value:
        return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')
    return value


def container_text(containers: Sequence[Container], where: cgroups.Hierarchies) -> str:
    """The per-container series in the text format, reading every container's cgroup now (one
    pass). Written directly rather than through metric families: they are most of a scrape
    (some 60 series per container) and a Sample object per value doubled its cost; values are
    spelled by prometheus-client's own float formatting, so the text is the same."""
    if not where.usable or not containers:
        return ""
    lines: dict[str, list[str]] = {}
    for key, samples in cgroups.read_all(where, ((container, container.cgroup) for container in containers)):
        assert isinstance(key, Container)
        base = f'container_id="{_escaped(key.id)}",namespace="{_escaped(key.namespace)}"'
        with_runtime = f'{base},runtime="{_escaped(key.runtime)}"'
        for name, values in samples.items():
            metric = where.metrics.get(name)
            if metric is None or not values:
                continue
            prefix = with_runtime if metric.runtime_label else base
            out = lines.setdefault(name, [])
            for extra, number in values:
                labels = prefix + "".join(f',{label}="{_escaped(text)}"' for label, text in zip(metric.labels, extra))
                out.append(f"{name}{{{labels}}} {_number(number)}\n")
    text = []
    for name, found in lines.items():
        metric = where.metrics[name]
        text.append(f"# HELP {name} {metric.help}\n# TYPE {name} {metric.type}\n")
        text.extend(found)
    return "".join(text)


def daemon_families(figures: DaemonFigures) -> list[Metric]:
    tasks = GaugeMetricFamily("ctrpy_tasks", "Tasks known to ctrpyd, by state.", labels=["state"])
    for state, count in figures.tasks.items():
        tasks.add_metric([state], count)
    families: list[Metric] = [
        tasks,
        GaugeMetricFamily("ctrpy_shims", "Shims alive (one per task whose shim has not exited).", value=figures.shims),
        CounterMetricFamily("ctrpy_events_dropped", "Events not delivered to subscribers that fell behind "
                            "(each such subscriber is cut off).", value=figures.events_dropped),
        GaugeMetricFamily("ctrpy_event_subscribers", "Clients subscribed to events now.", value=figures.subscribers),
        SummaryMetricFamily("ctrpy_gc_duration_seconds", "Garbage collections that succeeded and their time, all "
                            "phases.", count_value=figures.gc.collections, sum_value=figures.gc.seconds),
        SummaryMetricFamily("ctrpy_gc_pause_seconds", "Time garbage collections held the metadata database.",
                            count_value=figures.gc.collections, sum_value=figures.gc.pause_seconds),
        CounterMetricFamily("ctrpy_gc_failures", "Garbage collections that failed.", value=figures.gc.failures),
        CounterMetricFamily("ctrpy_gc_removed_objects", "Objects garbage collection removed: content and "
                            "snapshot records, leases, ingests.", value=figures.gc.removed),
    ]
    if figures.disk is not None:
        families.append(GaugeMetricFamily("ctrpy_content_bytes", "Bytes of the content store's blobs (sampled).",
                                          value=figures.disk.content))
        snapshots = GaugeMetricFamily("ctrpy_snapshots_bytes", "Disk space a snapshotter's directory uses "
                                      "(sampled).", labels=["snapshotter"])
        for name, size in figures.disk.snapshots.items():
            snapshots.add_metric([name], size)
        families.append(snapshots)
    return families


class _Scraped(Collector):
    """The registry's one collector: the families of the scrape being rendered, and the
    process' own series (``process_*``) read at the same moment."""

    def __init__(self) -> None:
        self.families: list[Metric] = []
        self.process = ProcessCollector(registry=None)

    def collect(self) -> Iterator[Metric]:
        yield from self.process.collect()
        yield from self.families

    def describe(self) -> list[Metric]:
        return []  # nothing to check at registration: the names are fixed here


_SCRAPED = _Scraped()
_REGISTRY = CollectorRegistry(auto_describe=False)
_REGISTRY.register(_SCRAPED)
_RENDERING = threading.Lock()


def render(scrape: Scrape, where: cgroups.Hierarchies) -> bytes:
    """The whole exposition of one scrape."""
    families = [*grpc_families(scrape.grpc, scrape.histogram), *daemon_families(scrape.daemon)]
    containers = container_text(scrape.containers, where).encode()
    with _RENDERING:
        _SCRAPED.families = families
        try:
            return exposition.generate_latest(_REGISTRY) + containers
        finally:
            _SCRAPED.families = []
