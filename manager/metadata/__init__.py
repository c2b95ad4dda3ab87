"""The metadata store: namespaces, containers, images, leases and content references in sqlite.

``db`` owns the connection, the schema and its migrations; one module per kind of record holds
the queries. Store methods are synchronous and run on the database's own thread
(:meth:`Database.run`); they start by requiring the call's namespace.
"""
