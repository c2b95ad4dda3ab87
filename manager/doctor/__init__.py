"""``ctrpy doctor`` as a library: find what crashes left behind in a ctrpyd's root and state
directories, and repair it.

Every check is a small function ``check(target) -> list[Finding]`` that only looks; every
repair is a separate function ``repair(target, finding) -> str`` that changes one thing, after
making sure the problem is still there. :func:`run` ties them together (and refuses to repair
while a ctrpyd serves the root); tests and other tools may call any check or repair directly.

- :mod:`.model`: ``Target``, ``Finding``, ``Outcome``, ``Report``.
- ``ctrpy.manager.rootlock`` (shared with ctrpyd): is a ctrpyd running on the root; holding the root while repairing.
- :mod:`.procs`: shim and template processes from /proc.
- :mod:`.tasks`: mounts, bundles, shims, sockets and runtime state under ``<state>``.
- :mod:`.snapshots`: snapshotter directories and records, and meta.db's snapshot rows.
- :mod:`.cri`: pinned netns and CNI attachments no pod sandbox claims, half-made sandboxes.
- :mod:`.temp`: ``new-*``/``rm-*`` snapshot directories and ``<root>/tmpmounts``.
- :mod:`.content`: ingests, content rows and images whose blobs are missing.
- :mod:`.runner`: the list of checks and repairs; ``examine``, ``repair``, ``run``.

Imports point one way: the stores' own modules (``ctrpy.manager.content``,
``ctrpy.manager.metadata``, ``ctrpy.manager.runtime``, ``ctrpy.snapshotter``, ``ctrpy.shim``'s
on-disk contract, ``rootlock``) <- ``model``, ``procs``, ``sqlite`` <- the check modules <-
``runner``. Nothing here talks to ctrpyd: the doctor works on the files, with or without it.
"""

from .model import Check, Finding, Outcome, Repair, Report, Target
from .runner import CHECKS, REPAIRS, examine, repair, run

__all__ = [
    "CHECKS",
    "REPAIRS",
    "Check",
    "Finding",
    "Outcome",
    "Repair",
    "Report",
    "Target",
    "examine",
    "repair",
    "run",
]
