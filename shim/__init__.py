"""ctrpy-shim, one process per container or Kubernetes pod (installed as ``ctrpy.shim``).

The shim owns one container (or a pod's containers, see ``tasks``): it drives the OCI runtime
binary, holds the container's stdio, reaps its processes and persists the init process's exit
status in the bundle before reporting it to ctrpyd. It serves ``ctrpy.shim.v1.TaskService`` on
its own unix socket and publishes task events to ctrpyd through containerd's Events service (see
``task`` for the list).

Imports point one way: ``ctrpy.api`` and ``ctrpy.errors``/``ctrpy.mount`` <- the leaves
(``files``, ``attachproto``, ``config``, ``states``, ``aio``, ``reaper``, ``metrics``, ``oom``)
<- ``runc``, ``stdio``, ``events``, ``process`` <- ``task`` <- ``tasks`` <- ``server`` <-
``daemon``, ``template``, ``cleanup`` <- ``main`` (the ``ctrpy-shim`` command). ctrpyd's side
(``ctrpy.manager.runtime``) imports only ``files`` and ``config`` from here, plus the generated
API.
"""
