"""ctrpyd's side of the shims: bundles, starting shims, talking to them, finding them again.

- :mod:`.bundle`: ``<state>/tasks/<namespace>/<id>/`` (config.json in, address/pid/exit out).
- :mod:`.launcher`: :class:`ShimLauncher` forks shims from a pre-imported template process
  (falling back to spawning ``ctrpy-shim start``) and runs ``ctrpy-shim delete``.
- :mod:`.client`: :class:`ShimClient`, ``ctrpy.shim.v1.TaskService`` with ctrpy.errors kinds.
- :mod:`.recover`: :func:`recover` after a restart.

Imports point one way: ``ctrpy.api``, ``ctrpy.errors``, ``ctrpy.mount`` and the shim's on-disk
contract (``ctrpy.shim.files``, ``ctrpy.shim.config``) <- ``bundle``, ``client`` <- ``launcher``
<- ``recover``. Nothing here imports the shim's server code.
"""

from .bundle import Bundle, bundles
from .client import (
    DEFAULT_TIMEOUTS,
    ProcessEntry,
    ProcessState,
    RawAny,
    ShimClient,
    ShimInfo,
    ShimTimeouts,
    Stdio,
    runc_options,
)
from .launcher import ShimLauncher, run_shim_delete
from .recover import FoundShim, recover

__all__ = [
    "DEFAULT_TIMEOUTS",
    "Bundle",
    "FoundShim",
    "ProcessEntry",
    "ProcessState",
    "RawAny",
    "ShimClient",
    "ShimInfo",
    "ShimLauncher",
    "ShimTimeouts",
    "Stdio",
    "bundles",
    "recover",
    "run_shim_delete",
    "runc_options",
]
