"""Serving: the connection life cycle, listeners, the worker event loop, admission and limits.

Owns: one worker's event loop and every connection in it, from accept to the one close.
Must not import: `checks`, `cli`, `process`, `sslh`, `tools`.
"""
