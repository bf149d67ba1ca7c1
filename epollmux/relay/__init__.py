"""The relay: moves bytes between two endpoints (splice through pooled pipes, copy, TLS) and the kernel relay.

Knows no protocol and no config.
Must not import: epollmux.wire, serve, process, observe, tools, config.
"""
