"""`python -m epollmux`: the same as the installed `epollmux` command."""

import sys

from epollmux.cli import main

sys.exit(main())
