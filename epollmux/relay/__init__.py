"""The relay: moves bytes between two endpoints (splice through pooled pipes, copy, TLS) and the kernel relay.

Owns: moving bytes and saying why it stopped. Knows no protocol and no config.
Must not import: `acl`, `checks`, `cli`, `config`, `observe`, `process`, `serve`, `sslh`, `tools`, `wire`.
"""
