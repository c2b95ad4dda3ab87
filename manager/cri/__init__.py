"""Kubernetes' CRI (runtime.v1) in ctrpyd, built on the daemon's own stores, puller and shims.

Imports point one way: the generated API (``ctrpy.api.k8s.cri.runtime.v1``), ``ctrpy.errors`` and
the configuration <- the pieces a pod or an image needs (``cniconfig`` <- ``cnicache``, ``cni``;
``netns``; ``deps`` <- ``auth``, ``images``; ``runtime``; ``fsusage``) <- the servicers
(``runtime_service``, ``image_service``), which :mod:`.lazy` builds at their first call when
``[cri] enabled`` (``manager/server.py`` registers its handlers). The image servicer imports
the registry client and the image model at its first image call, so that a daemon nobody asks
for images does not carry them.
"""
