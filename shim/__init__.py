"""ctrpy-shim, one process per container or Kubernetes pod (installed as ``ctrpy.shim``).

The shim owns one container (or a pod's containers, see ``tasks``): it drives the OCI runtime
binary, holds the container's stdio, reaps its processes and persists the init process's exit
status in the bundle before reporting it to ctrpyd. It serves ``ctrpy.shim.v1.TaskService`` over
ttrpc on its own unix socket and forwards task events to ctrpyd's ttrpc socket through
containerd's ttrpc Events service (see ``task`` for the list); it makes no gRPC object.

Imports point one way: ``ctrpy.api``, ``ctrpy.errors``, ``ctrpy.mount`` and ``ctrpy.ttrpc`` <-
the leaves (``files``, ``attachproto``, ``config``, ``states``, ``aio``, ``reaper``, ``metrics``,
``oom``, ``steps``) <- ``runc``, ``stdio``, ``events``, ``process`` <- ``task`` <- ``tasks`` <-
``server`` <- ``daemon``, ``template``, ``cleanup`` <- ``main`` (the ``ctrpy-shim`` command).
ctrpyd's side (``ctrpy.manager``) imports only leaves and constants from here (``files``,
``config``, ``steps``, the attach and CRI log URIs, process names), never the server.
"""
