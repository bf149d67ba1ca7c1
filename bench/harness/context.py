"""What every section gets from the driver: temp dir, ports, options, the time budget, logging.

Owns: `Context` and `started()`, which starts a set of subjects in front of one backend, yields
the ones that came up (a subject that fails to start is reported, not fatal) and stops them all
by PID however the section ends.
"""

from __future__ import annotations

import contextlib
import sys
import time
from dataclasses import dataclass, field

from bench.peers import subjects as subjects_mod
from bench.harness.procs import Ports


@dataclass
class Context:
    tmpdir: str
    ports: Ports
    opts: object                     # argparse namespace from bench.harness.run
    deadline: float                  # time.monotonic() by which the whole run must end
    start_errors: dict = field(default_factory=dict)

    def log(self, msg: str) -> None:
        print(f"[bench {time.strftime('%H:%M:%S')}] {msg}", file=sys.stderr, flush=True)

    def time_left(self) -> float:
        return self.deadline - time.monotonic()

    def has_time(self, needed: float) -> bool:
        return self.time_left() >= needed


@contextlib.contextmanager
def started(ctx: Context, names: list[str], backend: tuple[str, int], make=None):
    """Start the named subjects in front of backend; yield {name: subject} of those that run.

    `make(name, port)` builds the subject for a name (default: subjects.ALL[name] in front of backend);
    sections that run several configurations of one subject pass their own (see bench.sections.tls)."""
    running: dict[str, subjects_mod.Subject] = {}
    if make is None:
        def make(name, port):
            return subjects_mod.ALL[name](ctx.tmpdir, port, backend)
    try:
        for name in names:
            subject = make(name, ctx.ports.take())
            try:
                running[name] = subject.start()
            except (RuntimeError, OSError) as exc:
                ctx.log(f"{name}: failed to start: {exc}")
                ctx.start_errors[name] = str(exc)
                subject.stop()
        yield running
    finally:
        for subject in running.values():
            subject.stop()
