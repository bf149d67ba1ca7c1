"""Bench only: cProfile an epollmux worker from its fork to its os._exit.

bench.tools.tracers.cprofile_env puts this folder first on the worker's PYTHONPATH and names the dump
in EPOLLMUX_BENCH_CPROFILE (a `%d` there becomes the worker's PID); without that variable it does nothing.
"""

import cProfile
import os

_out = os.environ.get("EPOLLMUX_BENCH_CPROFILE")


def _start() -> None:
    prof = cProfile.Profile()
    real_exit = os._exit

    def _exit(code):
        prof.disable()
        prof.dump_stats(_out % os.getpid())
        real_exit(code)

    os._exit = _exit
    prof.enable()


if _out:
    os.register_at_fork(after_in_child=_start)
