"""Offline tools: --explain over captures and the pcap reader.

Must not import: epollmux.serve, process, relay, observe, cli.
"""
