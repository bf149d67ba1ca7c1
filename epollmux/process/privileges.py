"""Process limits and credentials: raising RLIMIT_NOFILE, dropping to the configured user and group.

Owns: resolving `user`/`group` to ids (so a bad name fails at start, exit 2, not in a worker), telling
whether this process can take them, and the drop itself: supplementary groups cleared, then gid, then
uid, then a check that root cannot be regained.
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


def drop(creds: Credentials | None) -> None:
    """Take the configured group and user for good; supplementary groups are cleared."""
    if creds is None or _already(creds):
        return
    try:
        os.setgroups([])
        os.setgid(creds.gid)
        if creds.uid is not None:
            os.setuid(creds.uid)
    except OSError as exc:
        raise PrivilegeError(f"cannot drop privileges to {creds.describe()}: {exc.strerror}") from None
    if creds.uid is not None and creds.uid != 0:
        try:
            os.setuid(0)
        except PermissionError:
            return
        raise PrivilegeError(f"dropped to {creds.describe()} but root could be regained")
