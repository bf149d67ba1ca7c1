"""The stress suite runs only under `make stress` (EPOLLMUX_STRESS=1): minutes of load, not part of `make test`."""

import os

if not os.environ.get("EPOLLMUX_STRESS"):
    collect_ignore_glob = ["test_*.py"]
