"""Tasks: the running side of containers, kept by ctrpyd through one shim per task.

:class:`~.manager.TaskManager` starts shims (``ctrpy.manager.runtime``), finds them again after a
restart, watches them die, and answers for each task; ``ctrpy.manager.services.tasks`` is the thin
gRPC face of it.
"""
