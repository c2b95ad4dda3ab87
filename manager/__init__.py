"""ctrpyd, the manager daemon (installed as ``ctrpy.manager``).

Imports point one way: ``ctrpy.api`` (generated) <- ``ctrpy`` core modules (errors, identifiers,
filters, domain types) <- stores and backends (``metadata``, ``content``, the snapshotter) <-
``services`` (thin gRPC servicers) <- ``server`` and ``main`` (the composition root).
"""
