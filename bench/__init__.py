"""epollmux benchmark suite: run with `python3 -m bench.harness.run` (or `make bench`) from the repo root.

Everything here runs on 127.0.0.1 only, starts its own processes and ends each one by PID.
Nothing in epollmux imports this package.
"""
