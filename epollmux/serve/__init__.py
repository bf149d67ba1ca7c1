"""Serving: the connection life cycle, listeners, the worker event loop, admission and limits.

Must not import: epollmux.process, tools, cli.
"""
