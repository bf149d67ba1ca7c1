"""TLS: the engine (a state machine over ssl.MemoryBIO) and the per-route contexts with their --check validations.

No sockets, no reactor.
Must not import: epollmux.relay, serve, process, observe, tools, the reactor.
"""
