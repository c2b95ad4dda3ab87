"""``ctrpy run [flags] IMAGE ID [CMD...]``: create a container from an image and run its task,
as ``ctr run`` does over the API.

Attached (the default), ctrpy copies its stdio to the container, forwards its signals to the
task (or, with ``-t``, puts the terminal in raw mode and keeps the pty's size), exits with the
container's exit status and deletes the task; ``--rm`` also deletes the container and its
snapshot. ``-d`` prints nothing and returns once the task has started; its FIFOs stay for
``tasks attach``. When the task cannot be created (an unknown runtime, say) the container and
its snapshot are removed again, so that a failed run leaves nothing behind (ctr keeps them).

The flags that shape the container are shared with ``ctrpy containers create``.
"""

from __future__ import annotations

import argparse
import contextlib

from ctrpy import clientstart, errors
from ctrpy.client import Client
from ctrpy.oci import (
    DEFAULT_RUNTIME,
    ContainerConfig,
    create_container,
    delete_container,
    get_container,
    parse_mount_flag,
)

from .common import parse_labels
from .process import IOOptions, get_process, warn
from .tasks import add_io_flags, run_task


def add_container_flags(parser: argparse.ArgumentParser, *, cpu_shares_default: int | None) -> None:
    """The flags of ``run`` and ``containers create`` that shape the container and its spec."""
    parser.add_argument("--snapshotter", default=None,
                        help="snapshotter name (env CTRPY_SNAPSHOTTER, else the namespace default, else overlayfs)")
    parser.add_argument("--runtime", default=DEFAULT_RUNTIME, help="runtime name (default %(default)s)")
    parser.add_argument("--runc-binary", default="", help="runc-compatible binary (runc v2 runtime only)")
    parser.add_argument("--runc-root", default="", help="runc-compatible state root (runc v2 runtime only)")
    parser.add_argument("-t", "--tty", action="store_true", help="allocate a terminal")
    parser.add_argument("--env", action="append", default=[], metavar="KEY=VALUE",
                        help="set an environment variable (KEY alone unsets it)")
    parser.add_argument("--label", action="append", default=[], metavar="KEY=VALUE",
                        help="a label for the container (also an OCI annotation)")
    parser.add_argument("--mount", action="append", default=[], metavar="SPEC",
                        help="add a mount, e.g. type=bind,src=/tmp,dst=/host,options=rbind:ro")
    parser.add_argument("--memory-limit", type=int, default=0, metavar="BYTES", help="memory limit in bytes")
    parser.add_argument("--cpus", type=float, default=0.0, help="CPUs the container may use (CFS quota)")
    parser.add_argument("--cpu-shares", type=int, default=cpu_shares_default, help="CPU shares")
    parser.add_argument("--net-host", action="store_true", help="use the host's network namespace")
    parser.add_argument("--cwd", default="", help="working directory of the process")
    parser.add_argument("--read-only", action="store_true", help="make the root filesystem read-only")
    parser.add_argument("--cgroup", default=None,
                        help='cgroup path (default /<namespace>/<id>; "" leaves it to the runtime)')
    parser.add_argument("image", metavar="IMAGE")
    parser.add_argument("id", metavar="ID")
    parser.add_argument("command", nargs=argparse.REMAINDER, metavar="CMD")


def container_config(args: argparse.Namespace) -> ContainerConfig:
    """The container that the shared flags describe; raises InvalidArgument for bad ones."""
    if args.memory_limit < 0:
        raise errors.InvalidArgument("--memory-limit must not be negative")
    return ContainerConfig(
        image=args.image,
        id=args.id,
        args=tuple(args.command),
        env=tuple(args.env),
        mounts=tuple(parse_mount_flag(m) for m in args.mount),
        labels=parse_labels(args.label),
        memory_limit=args.memory_limit,
        cpus=args.cpus,
        cpu_shares=args.cpu_shares,
        net_host=args.net_host,
        tty=args.tty,
        cwd=args.cwd,
        read_only=args.read_only,
        cgroup=args.cgroup,
        snapshotter=args.snapshotter,
        runtime=args.runtime,
        runc_binary=args.runc_binary,
        runc_root=args.runc_root,
    )


def remove_container(client: Client, container_id: str) -> None:
    """``--rm``: delete the container and its snapshot once its task is gone."""
    try:
        get_process(client, container_id)
    except errors.NotFound:
        pass
    else:
        raise errors.FailedPrecondition(f"cannot delete running task {container_id}")
    delete_container(client, get_container(client, container_id))


def run(client: Client, args: argparse.Namespace) -> int:
    if args.rm and args.detach:
        raise errors.InvalidArgument("flags --detach and --rm cannot be specified together")
    config = container_config(args)
    client.process_start_ns = clientstart.process_start_ns()  # for the timeline: its first call says it
    options = IOOptions(null_io=args.null_io, log_uri=args.log_uri, fifo_dir=args.fifo_dir)
    container = create_container(client, config)
    try:
        code = run_task(client, container, options, args.detach)
    except BaseException:
        # The task has been discarded already; do not leave its container behind either.
        with contextlib.suppress(errors.CtrpyError):
            remove_container(client, container.id)
        raise
    if args.rm:
        try:
            remove_container(client, container.id)
        except errors.CtrpyError as exc:
            warn(f"failed to remove container {container.id}: {exc.message}")
    return code


def register(nouns: argparse._SubParsersAction) -> None:  # type: ignore[type-arg]
    parser = nouns.add_parser("run", help="create a container from an image and run it")
    parser.set_defaults(run=run)
    parser.add_argument("--rm", action="store_true", help="remove the container afterwards (not with -d)")
    parser.add_argument("-d", "--detach", action="store_true", help="return once the task has started")
    add_io_flags(parser)
    add_container_flags(parser, cpu_shares_default=1024)
