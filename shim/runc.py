"""Driving the OCI runtime binary (runc, or anything with runc's command line).

Every invocation goes through the shim's reaper, runs with ``--root <runtime root>`` and logs
to ``<bundle>/log.json`` in runc's json format. When a command fails, the error carries runc's
own message: the last ``"level":"error"`` line it logged during that invocation, else what it
printed on stderr. Messages follow containerd's ``OCI runtime <verb> failed: <runc's message>``;
"container does not exist" becomes :class:`~ctrpy.errors.NotFound`, "container not running"
on kill becomes ``process already finished: not found`` as in containerd.
"""

from __future__ import annotations

import asyncio
import json
import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from ctrpy.errors import CtrpyError, NotFound

from . import aio
from .reaper import Reaper


@dataclass(frozen=True)
class RuntimeConfig:
    """Which binary to run and how: ``<binary> --root <root> [--systemd-cgroup]``."""

    binary: str
    root: str
    log: str
    systemd_cgroup: bool = False
    no_pivot_root: bool = False
    no_new_keyring: bool = False


class Runc:
    """One container's runtime commands. Raises :class:`~ctrpy.errors.CtrpyError` kinds."""

    def __init__(self, config: RuntimeConfig, reaper: Reaper) -> None:
        self.config = config
        self.reaper = reaper

    def _argv(self, *args: str) -> list[str]:
        c = self.config
        argv = [c.binary, "--root", c.root, "--log", c.log, "--log-format", "json"]
        if c.systemd_cgroup:
            argv.append("--systemd-cgroup")
        argv.extend(args)
        return argv

    async def create(
        self,
        container_id: str,
        bundle: str,
        pid_file: str,
        *,
        stdio: Mapping[int, int],
        console_socket: str | None = None,
    ) -> None:
        """``runc create``: the container's stdio are runc's own fds 0-2 (``stdio``)."""
        args = ["create", "--bundle", bundle, "--pid-file", pid_file]
        if console_socket:
            args += ["--console-socket", console_socket]
        if self.config.no_pivot_root:
            args.append("--no-pivot")
        if self.config.no_new_keyring:
            args.append("--no-new-keyring")
        await self._run("create", [*args, container_id], fds=stdio, capture=False)

    async def start(self, container_id: str) -> None:
        """``runc start``: run the user's process of a created container."""
        await self._run("start", ["start", container_id])

    async def exec(
        self,
        container_id: str,
        process_file: str,
        pid_file: str,
        *,
        stdio: Mapping[int, int],
        console_socket: str | None = None,
    ) -> None:
        """``runc exec --detach`` of the process described in ``process_file``."""
        args = ["exec", "--process", process_file, "--pid-file", pid_file, "--detach"]
        if console_socket:
            args += ["--console-socket", console_socket]
        await self._run("exec", [*args, container_id], fds=stdio, capture=False)

    async def kill(self, container_id: str, signal: int, *, all_processes: bool = False) -> None:
        """``runc kill [--all] <id> <signal>``."""
        args = ["kill"] + (["--all"] if all_processes else []) + [container_id, str(signal)]
        await self._run("kill", args)

    async def delete(self, container_id: str, *, force: bool = False) -> None:
        """``runc delete [--force]``; a container that does not exist is not an error."""
        try:
            await self._run("delete", ["delete"] + (["--force"] if force else []) + [container_id])
        except NotFound:
            pass

    async def pause(self, container_id: str) -> None:
        """``runc pause``: freeze the container."""
        await self._run("pause", ["pause", container_id])

    async def resume(self, container_id: str) -> None:
        """``runc resume``: thaw the container."""
        await self._run("resume", ["resume", container_id])

    async def ps(self, container_id: str) -> list[int]:
        """``runc ps --format json``: the host pids of the container's processes."""
        out = await self._run("ps", ["ps", "--format", "json", container_id])
        data = json.loads(out or b"[]")
        return [int(p) for p in data or []]

    async def update(self, container_id: str, resources_json: bytes) -> None:
        """``runc update --resources -`` with the OCI LinuxResources JSON on stdin."""
        await self._run("update", ["update", "--resources", "-", container_id], stdin=resources_json)

    async def stats(self, container_id: str) -> dict[str, Any]:
        """``runc events --stats``: the ``data`` object of runc's stats event."""
        out = await self._run("events", ["events", "--stats", container_id])
        event = json.loads(out)
        data = event.get("data", {}) if isinstance(event, dict) else {}
        return data if isinstance(data, dict) else {}

    async def _run(
        self,
        verb: str,
        args: Sequence[str],
        *,
        fds: Mapping[int, int] | None = None,
        stdin: bytes | None = None,
        capture: bool = True,
    ) -> bytes:
        argv = self._argv(*args)
        offset = _size(self.config.log)
        child_fds: dict[int, int] = dict(fds or {})
        ours: list[int] = []
        theirs: list[int] = []
        out_r = err_r = in_w = -1
        try:
            if capture:
                out_r, out_w = os.pipe()
                err_r, err_w = os.pipe()
                ours += [out_r, err_r]
                theirs += [out_w, err_w]
                child_fds[1], child_fds[2] = out_w, err_w
            if stdin is not None:
                in_r, in_w = os.pipe()
                ours.append(in_w)
                theirs.append(in_r)
                child_fds[0] = in_r
            try:
                child = self.reaper.spawn(argv, fds=child_fds)
            except OSError as exc:
                raise CtrpyError(f"OCI runtime {verb} failed: {self.config.binary}: {exc.strerror}") from None
            for fd in theirs:
                os.close(fd)
            theirs.clear()
            out = err = b""
            if capture or stdin is not None:
                for fd in ours:
                    aio.set_nonblocking(fd)
                jobs: list[asyncio.Future[bytes]] = []
                if capture:
                    jobs += [asyncio.ensure_future(aio.read_to_eof(out_r))]
                    jobs += [asyncio.ensure_future(aio.read_to_eof(err_r))]
                if stdin is not None:
                    ours.remove(in_w)  # _feed closes it once written, so runc sees EOF
                    jobs.append(asyncio.ensure_future(_feed(in_w, stdin)))
                try:
                    results = await asyncio.gather(*jobs)
                except BaseException:
                    # Let every reader drop its watch before the descriptors are closed.
                    for job in jobs:
                        job.cancel()
                    await asyncio.gather(*jobs, return_exceptions=True)
                    raise
                if capture:
                    out, err = results[0], results[1]
            status = await child.wait()
        finally:
            for fd in ours + theirs:
                aio.close_fd(fd)
        if status != 0:
            raise self._error(verb, status, err, offset)
        return out

    def _error(self, verb: str, status: int, stderr: bytes, offset: int) -> CtrpyError:
        message = last_logged_error(self.config.log, offset) or stderr.decode(errors="replace").strip()
        if not message:
            message = f"{self.config.binary} exited with status {status}"
        if "does not exist" in message:
            return NotFound(message)
        if verb == "kill" and "not running" in message:
            return NotFound("process already finished")
        return CtrpyError(f"OCI runtime {verb} failed: {message}")


async def _feed(fd: int, data: bytes) -> bytes:
    try:
        await aio.write_all(fd, data)
    except BrokenPipeError:
        pass
    finally:
        aio.close_fd(fd)
    return b""


def _size(path: str) -> int:
    try:
        return os.stat(path).st_size
    except FileNotFoundError:
        return 0


def last_logged_error(log: str, offset: int = 0) -> str:
    """The message of the last error-level line of runc's json log after ``offset``, or ""."""
    try:
        with open(log, "rb") as f:
            f.seek(offset)
            text = f.read().decode(errors="replace")
    except FileNotFoundError:
        return ""
    message = ""
    for line in text.splitlines():
        try:
            entry = json.loads(line)
        except ValueError:
            continue
        if isinstance(entry, dict) and entry.get("level") in ("error", "fatal"):
            message = str(entry.get("msg", "")).strip() or message
    return message
