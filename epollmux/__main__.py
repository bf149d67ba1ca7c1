"""`python -m epollmux`: the same as the installed `epollmux` command.

Owns: nothing but the entry point. Must not import anything but cli."""

import sys

from epollmux.cli import main

sys.exit(main())
