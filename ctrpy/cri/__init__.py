"""A client for Kubernetes' CRI (runtime.v1) on ctrpyd's socket, or any CRI runtime's.

Imports point one way: the generated API (``ctrpy.api.k8s.cri.runtime.v1``) and
``ctrpy.errors`` <- :mod:`.client` <- the CLI's ``ctrpy cri`` commands and the tests.
"""

from ctrpy.cri.client import CriClient

__all__ = ["CriClient"]
