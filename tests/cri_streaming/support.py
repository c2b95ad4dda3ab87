"""Helpers the streaming tests against a real ctrpyd share."""

from __future__ import annotations

from ctrpy.api.k8s.cri.runtime.v1 import api_pb2 as api
from tests.cri_container.support import Pod

#: Liveness bound for one stream's whole life, generous for a loaded 2-core machine.
DEADLINE = 60.0


def exec_url(pod: Pod, container_id: str, *cmd: str, stdin: bool = False, stdout: bool = True,
             stderr: bool = True, tty: bool = False) -> str:
    """The streaming URL the CRI Exec call hands out for ``cmd`` in the container."""
    with pod.cri() as c:
        response = c.call(c.runtime.Exec, api.ExecRequest(container_id=container_id, cmd=list(cmd), stdin=stdin,
                                                          stdout=stdout, stderr=stderr, tty=tty))
    return response.url
