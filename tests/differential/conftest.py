"""The pair of daemons the differential tests drive: a private reference containerd and a
ctrpyd, started once per session (starting them is slow) and emptied namespace by namespace
after each example."""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings

from tests.differential.cleanup import remove_namespace
from tests.differential.known import ALLOWED, PENDING
from tests.differential.pair import Pair, Side
from tests.support.containerd import reference_containerd
from tests.support.ctrpyd import Daemon

# CI runs a bounded, reproducible number of examples per state machine; a longer local run:
# CTRPY_DIFF_EXAMPLES=500 .venv/bin/pytest tests/differential
EXAMPLES = int(os.environ.get("CTRPY_DIFF_EXAMPLES", "0"))
settings.register_profile(
    "differential", deadline=None, database=None, derandomize=not EXAMPLES,
    max_examples=EXAMPLES or 50, stateful_step_count=30, print_blob=True)


@pytest.fixture(scope="session")
def pair() -> Iterator[Pair]:
    """containerd and ctrpyd, with their sockets, stubs and the directories to normalise."""
    base = Path(tempfile.mkdtemp(prefix="ctrpydiff-"))
    (base / "p").mkdir()
    config = base / "p" / "ctrpyd.toml"
    # Like the reference's: garbage is collected only when asked, never in the middle of a
    # sequence (a collection deletes blobs and snapshots, and publishes events).
    config.write_text("[gc]\ndeletion_threshold = 0\nmutation_threshold = 1000000000\n")
    daemon = Daemon(base / "p", extra_args=("--config", str(config)))
    try:
        with reference_containerd(base / "c") as ctrd:
            daemon.start()
            reference = Side("containerd", ctrd.address, [str(ctrd.directory), "/run/containerd"])
            ours = Side("ctrpyd", str(daemon.address), [str(daemon.base)])
            both = Pair(reference, ours, allowed=list(ALLOWED), pending_always=list(PENDING))
            both.ctrd = ctrd  # type: ignore[attr-defined]
            both.daemon = daemon  # type: ignore[attr-defined]
            inventory = os.environ.get("CTRPY_DIFF_COLLECT")
            if inventory:
                both.collect = []
            try:
                yield both
            finally:
                both.close()
                if both.pending_seen:
                    print(f"\ndifferential: {len(both.pending_seen)} divergences not fixed yet were "
                          "tolerated (tests/differential/known.py PENDING):", file=sys.stderr)
                    for line in sorted(set(both.pending_seen)):
                        print(f"  {line}", file=sys.stderr)
                if inventory and both.collect is not None:
                    Path(inventory).write_text("\n\n".join(both.collect))
    finally:
        daemon.cleanup()
        shutil.rmtree(base, ignore_errors=True)


@pytest.fixture
def clean_pair(pair: Pair) -> Iterator[Pair]:
    """The pair, with the namespaces a test registers in ``pair.created`` removed after it."""
    pair.log.clear()
    pair.created = set()  # type: ignore[attr-defined]
    try:
        yield pair
    finally:
        for ns in pair.created:  # type: ignore[attr-defined]
            for side in (pair.reference, pair.ctrpy):
                remove_namespace(side, ns)
