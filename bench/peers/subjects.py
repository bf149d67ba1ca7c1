"""The things measured: TCP relays started in front of a backend, each on its own port.

Owns: one class per subject, how it is configured (in a private temp dir), started, found
listening, measured (CPU and memory of its whole process tree) and stopped by PID, and how
its version is read. Every subject gets the same job: forward everything from 127.0.0.1:port
to one backend, with no protocol sniffing (`probe = any`, sslh `--anyprot`).

Choices that matter for fairness (also written into RESULTS.md):
- epollmux runs `workers = 1` (one event loop; its supervisor process is counted too), so
  HAProxy runs with `nbthread 1`; all of a subject's processes are counted, so forking peers
  pay for their forks. `epollmux-splice-2w` and `haproxy-2t` are the 2-core pair.
- HAProxy: TCP mode, `option splice-request` + `option splice-response` (splice forced both
  ways), and `tune.pipesize` equal to epollmux's `pipe_size` (1 MiB, its default) unless told otherwise.
- sslh and socat run as shipped (sslh-fork = Debian's /usr/sbin/sslh; socat with `fork`,
  its default 8 KiB buffer).
"""

from __future__ import annotations

import os
import re
import subprocess
import sys

from bench.harness.procs import HOST, CpuGroup, Proc, memory_kb

REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PIPE_SIZE = 1048576          # epollmux's default pipe_size; HAProxy gets the same tune.pipesize


class Subject:
    name = "?"
    label = "?"
    variant = ""      # set per instance when one section runs several configurations of a subject
    cwd = REPO        # where it runs (bench.tools.tlsab runs epollmux from other trees)

    def __init__(self, tmpdir: str, port: int, backend: tuple[str, int]):
        self.tmpdir = tmpdir
        self.port = port
        self.backend = backend
        self.proc: Proc | None = None

    @property
    def ident(self) -> str:
        """Unique among the instances of a run: names its config, log file and cgroup."""
        return f"{self.name}.{self.variant}" if self.variant else self.name

    # subclasses give argv (and write their config file)
    def argv(self) -> list[str]:
        raise NotImplementedError

    def start(self) -> "Subject":
        self.proc = Proc(self.ident, self.argv(), self.tmpdir, cwd=self.cwd, env=self.env(),
                         cgroup=CpuGroup.make(f"{self.ident}.{self.port}"))
        self.proc.wait_listening(self.port)
        return self

    def env(self) -> dict | None:
        return None

    @property
    def pid(self) -> int | None:
        return self.proc.pid if self.proc else None

    def alive(self) -> bool:
        return self.proc is None or self.proc.alive()

    def cpu(self) -> float:
        return self.proc.cpu() if self.proc else 0.0

    def cpu_user(self) -> float:
        """User-mode part of cpu(): time in the relay's own code rather than in the kernel."""
        return self.proc.cpu_user() if self.proc else 0.0

    @property
    def cpu_method(self) -> str:
        if self.proc is None:
            return "none"
        return "cgroup cpuacct" if self.proc.cgroup else "/proc tree (reaped children only)"

    def memory(self) -> dict[str, int]:
        return memory_kb(self.pid) if self.proc else {"rss_kb": 0, "pss_kb": 0, "uss_kb": 0, "processes": 0}

    def stop(self) -> None:
        if self.proc is not None:
            self.proc.stop()

    def path(self, name: str) -> str:
        return os.path.join(self.tmpdir, f"{self.ident}.{name}")


class Direct(Subject):
    """No relay: the load talks to the backend itself."""
    name, label = "direct", "direct (no proxy)"

    def __init__(self, tmpdir, port, backend):
        super().__init__(tmpdir, backend[1], backend)

    def start(self):
        return self


class Epollmux(Subject):
    relay = "splice"
    pipe_size = PIPE_SIZE
    global_extra = listen_extra = ""     # more lines for [global] and [[bench]] (the SNI router's)

    def __init__(self, tmpdir, port, backend, workers: int = 1):
        super().__init__(tmpdir, port, backend)
        self.workers = workers

    def argv(self):
        conf = self.path("conf")
        with open(conf, "w") as f:
            f.write(f"""[global]
relay = {self.relay}
workers = {self.workers}
log_level = warning
pipe_size = {self.pipe_size}
{self.global_extra}[listen]
  [[bench]]
  address = {HOST}:{self.port}
{self.listen_extra}[routes]
{self.routes()}""")
        return [sys.executable, "-m", "epollmux", "-c", conf]

    def routes(self) -> str:
        """The body of [routes]: here everything to the backend, unsniffed."""
        return f"""  [[all]]
  probe = any
  backend = {self.backend[0]}:{self.backend[1]}
"""

    def env(self):
        env = dict(os.environ)
        env["PYTHONPATH"] = REPO + os.pathsep + env.get("PYTHONPATH", "")
        return env


class EpollmuxSplice(Epollmux):
    name, label, relay = "epollmux-splice", "epollmux (splice)", "splice"


class EpollmuxCopy(Epollmux):
    name, label, relay = "epollmux-copy", "epollmux (copy)", "copy"


class EpollmuxSockmap(Epollmux):
    """The kernel relay (BPF sockmap): payload never wakes the worker."""
    name, label, relay = "epollmux-sockmap", "epollmux (sockmap)", "sockmap"


class EpollmuxSplice2(Epollmux):
    """Two workers (needs the multi-worker supervisor); compare with haproxy-2t, not in the defaults."""
    name, label, relay = "epollmux-splice-2w", "epollmux (splice, 2 workers)", "splice"

    def __init__(self, tmpdir, port, backend):
        super().__init__(tmpdir, port, backend, workers=2)


class Haproxy(Subject):
    name, label = "haproxy", "HAProxy (splice, nbthread 1)"
    nbthread = 1
    maxconn = 9000
    maxpipes = 512
    pipe_size = PIPE_SIZE      # None: HAProxy's default (the system pipe size, 64 KiB)
    splice = True              # option splice-request + splice-response

    def argv(self):
        conf = self.path("cfg")
        splice = ["option splice-request", "option splice-response"] if self.splice else []
        sections = {"global": [f"nbthread {self.nbthread}", f"maxconn {self.maxconn}", *self.tuning()],
                    "defaults": ["mode tcp", "timeout connect 5s", "timeout client 1h", "timeout server 1h", *splice],
                    **self.proxies()}
        with open(conf, "w") as f:
            for name, lines in sections.items():
                f.write(name + "\n" + "".join(f"    {line}\n" for line in lines))
        return ["haproxy", "-db", "-f", conf]

    def tuning(self) -> list[str]:
        """Lines of `global` after nbthread and maxconn."""
        return [f"maxpipes {self.maxpipes}"] + ([f"tune.pipesize {self.pipe_size}"] if self.pipe_size else [])

    def proxies(self) -> dict[str, list[str]]:
        """The frontend and backend sections: here everything to the backend."""
        return {"frontend bench": [f"bind {HOST}:{self.port}", "default_backend be"],
                "backend be": [f"server s1 {self.backend[0]}:{self.backend[1]}"]}


class Haproxy2(Haproxy):
    name, label = "haproxy-2t", "HAProxy (splice, nbthread 2)"
    nbthread = 2


class SslhSelect(Subject):
    name, label = "sslh-select", "sslh-select"
    binary = "sslh-select"

    def argv(self):
        return [self.binary, "-f", "-n", "-p", f"{HOST}:{self.port}",
                "--anyprot", f"{self.backend[0]}:{self.backend[1]}"]


class SslhFork(SslhSelect):
    name, label = "sslh-fork", "sslh-fork"
    binary = "sslh"


class Socat(Subject):
    name, label = "socat", "socat (fork)"

    def argv(self):
        return ["socat", f"TCP-LISTEN:{self.port},bind={HOST},reuseaddr,fork,backlog=4096",
                f"TCP:{self.backend[0]}:{self.backend[1]}"]


ALL = {cls.name: cls for cls in (Direct, EpollmuxSplice, EpollmuxCopy, Haproxy, SslhSelect, SslhFork, Socat,
                                 EpollmuxSplice2, Haproxy2, EpollmuxSockmap)}
DEFAULT = ["direct", "epollmux-splice", "epollmux-copy", "haproxy", "sslh-select", "sslh-fork", "socat"]
ORDER = list(ALL)


def versions() -> dict[str, str]:
    """Version strings of every peer and tool used, read from the binaries themselves."""
    def first(argv, pattern=None):
        try:
            out = subprocess.run(argv, capture_output=True, text=True, timeout=10)
        except (OSError, subprocess.TimeoutExpired) as exc:
            return f"unavailable ({exc})"
        text = (out.stdout + out.stderr).strip()
        if pattern:
            m = re.search(pattern, text)
            return m.group(0) if m else text.splitlines()[0] if text else "?"
        return text.splitlines()[0] if text else "?"

    sys.path.insert(0, REPO)
    try:
        from epollmux import __version__ as epollmux_version
    finally:
        sys.path.pop(0)
    commit = first(["git", "-C", REPO, "describe", "--always", "--dirty"])
    return {
        "epollmux": f"{epollmux_version} (git {commit})",
        "python": sys.version.split()[0],
        "haproxy": first(["haproxy", "-v"], r"HAProxy version \S+"),
        "sslh": first(["sslh", "-V"]),
        "sslh-select": first(["sslh-select", "-V"]),
        "socat": first(["socat", "-V"], r"socat version \S+"),
        "nginx": first(["nginx", "-v"]),
        "iperf3": first(["iperf3", "--version"]),
        "wrk": first(["wrk", "-v"], r"wrk \S+"),
        "stunnel": first(["stunnel", "-version"], r"stunnel \S+"),
        "openssl": first(["openssl", "version"]),
        "curl": first(["curl", "--version"], r"curl \S+"),
    }
