"""TLS: the engine (a state machine over ssl.MemoryBIO) and the per-route contexts with their --check validations.

Owns: the TLS state machine and the contexts. No sockets, no reactor.
Must not import: `acl`, `addr`, `checks`, `cli`, `config`, `observe`, `process`, `reactor`, `relay`, `serve`, `sslh`, `tools`, `wire`.
"""
