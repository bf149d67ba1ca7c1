"""Bench sections, one module each (bulk, connrate, idle, sniff, tls): each imports the harness and peers, never another section."""
