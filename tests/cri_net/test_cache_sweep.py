"""The CNI result cache after a crash mid-write: its temporary file goes at the next start-up,
the entries stay (``ResultCache.sweep_temporaries``, called by the sandbox reconcile)."""

from __future__ import annotations

import os
from pathlib import Path

from ctrpy.manager.cri.cnicache import ResultCache


def test_stale_temporaries_go_and_entries_and_our_own_stay(tmp_path: Path) -> None:
    cache = ResultCache(tmp_path)
    results = Path(cache.directory)
    results.mkdir(parents=True)
    entry = results / "net-abc-eth0"
    entry.write_text("{}")
    stale = results / ".net-abc-eth0.999999999.tmp"  # a pid no process of this test has
    stale.write_text("{")
    ours = results / f".net-def-eth0.{os.getpid()}.tmp"  # a write of this process, in flight
    ours.write_text("{")

    assert cache.sweep_temporaries() == [str(stale)]
    assert sorted(p.name for p in results.iterdir()) == sorted([entry.name, ours.name])


def test_no_directory_yet(tmp_path: Path) -> None:
    assert ResultCache(tmp_path).sweep_temporaries() == []
