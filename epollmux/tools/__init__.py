"""Offline tools: --explain over captures, the pcap reader, --reload's client, the man pages.

Owns: what runs beside the daemon rather than in it.
Must not import: `process`, `relay`, `serve`.
"""
