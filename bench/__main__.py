"""`python3 -m bench`: the full benchmark driver (bench/harness/run.py)."""
from bench.harness.run import main

raise SystemExit(main())
