"""Observability: per-worker stats, metrics and their text, the collector, the exporter, the access log, logging set-up.

Owns: what operators read and scrape; counts what serve/ and process/ tell it, never looks at their objects.
Must not import: `checks`, `cli`, `process`, `relay`, `serve`, `sslh`, `tls`, `tools`.
"""
