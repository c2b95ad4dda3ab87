"""A process that unpacks layers for ctrpyd: ``python -m ctrpy.manager.diff.worker``.

Unpacking is hashing, decompressing, tar parsing and writing; most of it runs in C, but each
step needs the interpreter lock back, and in ctrpyd the event loop holds that lock while it
downloads the next layers. In a thread, one layer took three to four times as long during a
pull as alone. In a process of its own it takes what it takes alone, on the other core, while
the daemon keeps downloading: a pull's unpack overlaps its download for real.

The protocol is one JSON object per line each way, one request at a time:

request  ``{"blob": PATH, "media_type": STR, "mounts": [{"type", "source", "target", "options"}],
           "tmp_root": PATH | null, "max_bytes": INT | null, "max_entries": INT | null}``
reply    ``{"digest": "sha256:...", "size": INT}`` or ``{"error": KIND, "subject": STR,
           "errno": INT | null}``

``KIND`` names a :mod:`ctrpy.errors` kind (or one of the diff module's own), or ``OSError``;
:func:`raise_reply` raises the same kind again on the daemon's side, so callers cannot tell the
worker from a thread. The worker ends when its input ends, and dies with its parent
(``PR_SET_PDEATHSIG``), so a killed daemon leaves no unpacker behind.
"""

from __future__ import annotations

import ctypes
import json
import os
import signal
import sys
from pathlib import Path
from typing import IO, Any, NoReturn

from ctrpy import errors
from ctrpy.mount import Mount

from .. import failpoints
from ..logsetup import configure as configure_logging
from .apply import AppliedLayer, CorruptLayer, Limits
from .compression import LayerTooLarge
from .mounts import apply_to_mounts
from .rootpath import UnsafeEntry

_PR_SET_PDEATHSIG = 1

#: Error kinds a reply may name, besides OSError; anything else comes back as CtrpyError.
_KINDS: dict[str, type[errors.CtrpyError]] = {
    cls.__name__: cls
    for cls in (
        errors.CtrpyError, errors.InvalidArgument, errors.NotFound, errors.AlreadyExists,
        errors.FailedPrecondition, errors.OutOfRange, errors.Unavailable, errors.NotImplemented,
        errors.ResourceExhausted, CorruptLayer, LayerTooLarge, UnsafeEntry,
    )
}


def request(blob: str, media_type: str, mounts: list[Mount], tmp_root: str | None, limits: Limits) -> bytes:
    """The request line for one layer."""
    return json.dumps({
        "blob": blob,
        "media_type": media_type,
        "mounts": [{"type": m.type, "source": m.source, "target": m.target, "options": list(m.options)}
                   for m in mounts],
        "tmp_root": tmp_root,
        "max_bytes": limits.max_uncompressed_bytes,
        "max_entries": limits.max_entries,
    }).encode() + b"\n"


def raise_reply(reply: dict[str, Any]) -> AppliedLayer:
    """The applied layer of a reply, or the error it carries raised as its own kind."""
    kind = reply.get("error")
    if kind is None:
        return AppliedLayer(str(reply["digest"]), int(reply["size"]))
    subject = str(reply.get("subject", ""))
    if kind == "OSError":
        number = reply.get("errno")
        raise OSError(number, subject) if number is not None else OSError(subject)
    raise _KINDS.get(str(kind), errors.CtrpyError)(subject)


def _error_reply(error: BaseException) -> dict[str, Any]:
    if isinstance(error, errors.CtrpyError):
        kind = next((name for name, cls in _KINDS.items() if type(error) is cls), "CtrpyError")
        return {"error": kind, "subject": error.message if kind == "CtrpyError" else error.subject}
    if isinstance(error, OSError):
        return {"error": "OSError", "subject": error.strerror or str(error), "errno": error.errno}
    return {"error": "CtrpyError", "subject": f"unpacking failed: {error!r}"}


def _apply(line: bytes) -> dict[str, Any]:
    spec = json.loads(line)
    mounts = [Mount(m["type"], m["source"], m["target"], tuple(m["options"])) for m in spec["mounts"]]
    limits = Limits(spec.get("max_bytes"), spec.get("max_entries"))
    tmp_root = spec.get("tmp_root")
    with open(spec["blob"], "rb") as stream:
        applied = apply_to_mounts(stream, spec["media_type"], mounts, limits=limits,
                                  tmp_root=Path(tmp_root) if tmp_root else None)
    return {"digest": applied.digest, "size": applied.size}


def serve(requests: IO[bytes], replies: IO[bytes]) -> None:
    """Answer requests until the input ends."""
    for line in requests:
        try:
            reply = _apply(line)
        except Exception as error:  # every failure is the caller's to report
            reply = _error_reply(error)
        replies.write(json.dumps(reply).encode() + b"\n")
        replies.flush()


def main() -> NoReturn:
    try:
        ctypes.CDLL(None, use_errno=True).prctl(_PR_SET_PDEATHSIG, signal.SIGKILL, 0, 0, 0)
    except (OSError, AttributeError):  # not Linux: the end of input still ends the worker
        pass
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # a terminal's ^C is the daemon's to handle
    failpoints.die_with(os.getppid())
    # Replies go to a copy of stdout; stdout itself becomes stderr, so that nothing printed by
    # accident (or logged) can break the protocol.
    replies = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    configure_logging(os.environ.get("CTRPY_LOG_LEVEL", "info"))
    serve(sys.stdin.buffer, replies)
    sys.exit(0)


if __name__ == "__main__":
    main()
