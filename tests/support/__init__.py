"""Shared test machinery (not part of the package). tests/conftest.py puts tests/ on sys.path, so tests
import `support.net` (ports, sockets, thread backends), `support.daemon` (the one daemon launcher, the one
config builder, the notify socket, /proc readings), `support.peers` (real peers), `support.certs`,
`support.hello_builder`, `support.probe_fixtures`, `support.supervision` and `support.relaycontract`."""
