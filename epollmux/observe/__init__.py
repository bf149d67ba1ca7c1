"""Observability: per-worker stats, metrics and their text, the collector, the exporter, the access log, logging set-up.

Must not import: epollmux.serve, process, relay, tools, cli.
"""
