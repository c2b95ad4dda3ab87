"""Snapshotters: layered root filesystems behind one interface (installed as ``ctrpy.snapshotter``).

Imports point one way: ``ctrpy`` core modules <- the ``Snapshotter`` protocol <- the overlayfs and
native implementations <- the standalone gRPC server.

Modules, in that order:

- ``types``: ``Kind``, ``Info``, ``Usage`` (and ``Mount``, from ``ctrpy.mount``).
- ``base``: the ``Snapshotter`` protocol, whose docstrings are the specification.
- ``storage``: the per-root sqlite metadata store (schema and migrations in its docstring).
- ``fsutil``: disk usage, tree copy and removal helpers.
- ``local``: what both implementations share (directory layout, create/commit/remove/cleanup).
- ``overlay``: ``OverlaySnapshotter(root)``; ``native``: ``NativeSnapshotter(root)``.
"""
