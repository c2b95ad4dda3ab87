"""Prometheus metrics for ctrpyd (``[metrics] address``), as containerd serves them.

Imports point one way: :mod:`.grpcstats` (the call-path counters and their interceptor, no
Prometheus library), :mod:`.cgroups` (cgroup v1 files -> samples) and :mod:`.daemon` (the
daemon's own figures) <- :mod:`.render` (prometheus-client) <- :mod:`.service` (the HTTP
endpoint, built by ``manager.server`` only when an address is configured).
"""
