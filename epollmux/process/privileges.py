"""Process limits and credentials: raising RLIMIT_NOFILE, dropping to the configured user and group.

Owns: resolving `user`/`group` to ids (so a bad name fails at start, exit 2, not in a worker), telling
whether this process can take them, and the drop itself: supplementary groups cleared, then gid, then
uid, then a check that root cannot be regained. One capability may survive the drop: a worker that serves
a UDP listener on a privileged port (below net.ipv4.ip_unprivileged_port_start) keeps
CAP_NET_BIND_SERVICE and nothing else, because each UDP flow binds its own socket to that port
(README "UDP"); the capability lets it bind low ports, never regain root or read others' files.
Must not open sockets or import the reactor, the configuration or the workers.
Must not import what process/ must not (README "Architecture").
"""

from __future__ import annotations

import grp
import os
import pwd
import resource
from dataclasses import dataclass

NOFILE_CEILING = 1 << 20     # never ask for more open files than this, whatever nr_open allows


class PrivilegeError(Exception):
    """The configured user or group cannot be resolved or taken."""


@dataclass(frozen=True)
class Credentials:
    uid: int | None          # None: keep the current user
    gid: int
    user: str
    group: str

    def describe(self) -> str:
        return f"user {self.user or '(unchanged)'} ({self.uid}), group {self.group} ({self.gid})"


def raise_nofile() -> tuple[int, int]:
    """Raise the open-files limit as far as allowed: the hard limit up to nr_open when privileged,
    the soft limit up to the hard one always. Returns the (soft, hard) now in force."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    try:
        with open("/proc/sys/fs/nr_open") as f:
            nr_open = int(f.read())
    except (OSError, ValueError):
        nr_open = NOFILE_CEILING
    want = min(nr_open, NOFILE_CEILING)
    if hard == resource.RLIM_INFINITY or hard < want:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (want, want))
            return want, want
        except (ValueError, OSError):
            pass    # no CAP_SYS_RESOURCE: the soft limit can still reach the hard one
    if hard != resource.RLIM_INFINITY and soft < hard:
        try:
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))
            soft = hard
        except (ValueError, OSError):
            pass
    return soft, hard


def resolve(user: str, group: str) -> Credentials | None:
    """Ids for the configured names (or numbers); None when both are empty (stay as started)."""
    user, group = user.strip(), group.strip()
    if not user and not group:
        return None
    uid, gid = None, None
    if user:
        try:
            pw = pwd.getpwuid(int(user)) if user.isdigit() else pwd.getpwnam(user)
        except KeyError:
            raise PrivilegeError(f"cannot drop privileges: unknown user '{user}'") from None
        uid, gid = pw.pw_uid, pw.pw_gid
    if group:
        try:
            gr = grp.getgrgid(int(group)) if group.isdigit() else grp.getgrnam(group)
        except KeyError:
            raise PrivilegeError(f"cannot drop privileges: unknown group '{group}'") from None
        gid = gr.gr_gid
    group_name = group or _group_name(gid)
    return Credentials(uid, gid, user, group_name)


def _group_name(gid: int) -> str:
    try:
        return grp.getgrgid(gid).gr_name
    except KeyError:
        return str(gid)


def _already(creds: Credentials) -> bool:
    uid_ok = creds.uid is None or (os.getuid() == os.geteuid() == creds.uid)
    return uid_ok and os.getgid() == os.getegid() == creds.gid


def check(creds: Credentials | None) -> None:
    """Raise PrivilegeError now if `drop(creds)` cannot work later (not root, not that user already)."""
    if creds is None or _already(creds):
        return
    if os.geteuid() != 0:
        raise PrivilegeError(f"cannot drop privileges to {creds.describe()}: not started as root")


UNPRIVILEGED_PORT_START = "/proc/sys/net/ipv4/ip_unprivileged_port_start"
CAP_NET_BIND_SERVICE = 10
PR_SET_KEEPCAPS = 8
_LINUX_CAPABILITY_VERSION_3 = 0x20080522


def needs_bind_service(ports: list[int]) -> bool:
    """Some port needs CAP_NET_BIND_SERVICE to be bound by an unprivileged process."""
    try:
        with open(UNPRIVILEGED_PORT_START) as f:
            start = int(f.read())
    except (OSError, ValueError):
        start = 1024
    return any(0 < port < start for port in ports)


def _libc():
    import ctypes
    return ctypes, ctypes.CDLL(None, use_errno=True)


def _keep_caps(on: bool) -> None:
    ctypes, libc = _libc()
    if libc.prctl(PR_SET_KEEPCAPS, int(on), 0, 0, 0) != 0:
        raise PrivilegeError(f"cannot keep CAP_NET_BIND_SERVICE: prctl: {os.strerror(ctypes.get_errno())}")


def _only_bind_service() -> None:
    """capset(2): permitted = effective = {CAP_NET_BIND_SERVICE}, inheritable = {} (a worker execs nothing)."""
    ctypes, libc = _libc()
    header = (ctypes.c_uint32 * 2)(_LINUX_CAPABILITY_VERSION_3, 0)
    bit = 1 << CAP_NET_BIND_SERVICE
    data = (ctypes.c_uint32 * 6)(bit, bit, 0, 0, 0, 0)     # two {effective, permitted, inheritable}
    if libc.capset(header, data) != 0:
        raise PrivilegeError(f"cannot keep CAP_NET_BIND_SERVICE: capset: {os.strerror(ctypes.get_errno())}")


def drop(creds: Credentials | None, keep_bind: bool = False) -> None:
    """Take the configured group and user for good; supplementary groups are cleared. keep_bind: keep
    CAP_NET_BIND_SERVICE (only that) across the change of user."""
    if creds is None or _already(creds):
        return
    keep_bind = keep_bind and creds.uid not in (None, 0) and os.geteuid() == 0
    try:
        os.setgroups([])
        os.setgid(creds.gid)
        if creds.uid is not None:
            if keep_bind:
                _keep_caps(True)
            os.setuid(creds.uid)
            if keep_bind:
                _only_bind_service()
                _keep_caps(False)
    except OSError as exc:
        raise PrivilegeError(f"cannot drop privileges to {creds.describe()}: {exc.strerror}") from None
    if creds.uid is not None and creds.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PrivilegeError(f"dropped to {creds.describe()} but root could be regained")
