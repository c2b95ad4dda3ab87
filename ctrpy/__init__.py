"""ctrpy: a container manager in Python, wire-compatible with containerd's API.

Imports point one way: ``ctrpy.api`` (generated from proto/) <- the core modules here
(``errors``, ``identifiers``, ``namespaces``, ``filters``, ``fieldmask``, ``records``) <- the
backends (``ctrpy.manager.metadata``, ``ctrpy.manager.content``, ``ctrpy.snapshotter``) <- the
servicers (``ctrpy.manager.services``) <- the composition roots (``ctrpyd``, ``ctrpy-shim``, the
``ctrpy`` CLI in ``ctrpy.cli``).
"""

__version__ = "0.1.0"
