"""Snapshotters: layered root filesystems behind one interface (installed as ``ctrpy.snapshotter``).

Imports point one way: ``ctrpy`` core modules <- the ``Snapshotter`` protocol <- the overlayfs and
native implementations <- the standalone gRPC server.
"""
