"""gRPC servicers: thin adapters between the API messages and the stores.

A method converts the request (``convert``), calls a store on the database thread inside one
transaction, converts the response, and publishes its event after the commit. Errors are raised
as ``ctrpy.errors`` kinds and translated to status codes once, by ``edge``.
"""
