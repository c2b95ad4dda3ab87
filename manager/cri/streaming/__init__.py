"""The CRI streaming server: exec, attach and port-forward over SPDY/3.1 and WebSocket.

Imports point one way: the framing (``spdyzlib`` <- ``spdy`` <- ``spdyconn``) <- the protocol handlers <- the server.
"""
