"""The bench harness: the driver (run), its context, process and CPU accounting, statistics, report writing."""
