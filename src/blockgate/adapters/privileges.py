"""Leaving root after the ports are bound (``run_as``), keeping only the capabilities asked for.

Started as root outside systemd (under the unit the process is never root: it runs as a
dynamic user with ``AmbientCapabilities=``), the daemon binds what needs root, then calls
``drop_privileges(config.run_as, keep)``:

1. ``setgroups([])``: no supplementary groups (root's would otherwise stay);
2. ``setresgid(gid, gid, gid)``, then ``setresuid(uid, uid, uid)``: real, effective and saved
   IDs, so root cannot be taken back (checked: ``setuid(0)`` must fail afterwards);
3. capabilities: a change of UID from 0 clears them all, which is what DNS-only needs once
   its sockets are open. ``keep`` names capabilities to hold on to instead: the SNI modes
   need ``CAP_NET_ADMIN`` (NFQUEUE binding, verdicts, conntrack marks) and ``CAP_NET_RAW``
   (mirror mode's AF_PACKET and raw RST sockets), and a supervisor that forks workers which
   bind port 53 themselves needs ``CAP_NET_BIND_SERVICE``. For those,
   ``prctl(PR_SET_KEEPCAPS)`` keeps the permitted set across the UID change and ``capset``
   then reduces permitted and effective to exactly ``keep`` (inheritable and ambient empty:
   nothing survives an exec). Forked workers inherit them.

https://man7.org/linux/man-pages/man7/capabilities.7.html ("Effect of user ID changes")
"""

from __future__ import annotations

import logging
import os
import pwd
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final

from blockgate.errors import BlockgateError

if TYPE_CHECKING:
    import ctypes

log = logging.getLogger("blockgate.privileges")

# Capability numbers from linux/capability.h (the ones blockgate can use).
CAPABILITIES: Final = {"CAP_NET_BIND_SERVICE": 10, "CAP_NET_ADMIN": 12, "CAP_NET_RAW": 13}
# What the SNI modes need after the drop (see the module docstring).
SNI_CAPABILITIES: Final = ("CAP_NET_ADMIN", "CAP_NET_RAW")
_PR_SET_KEEPCAPS: Final = 8  # linux/prctl.h
_CAP_VERSION_3: Final = 0x20080522  # _LINUX_CAPABILITY_VERSION_3: two 32-bit words per set


class PrivilegeError(BlockgateError):
    """The switch to ``run_as`` could not be made (or could be undone): do not serve."""

    reason = "privileges"


@dataclass(frozen=True, slots=True)
class Dropped:
    user: str
    uid: int
    gid: int
    capabilities: tuple[str, ...]


def drop_privileges(user: str, keep: Sequence[str] = ()) -> Dropped | None:
    """Switch from root to ``user`` keeping only ``keep``; None when not root (nothing to
    drop: systemd already started us unprivileged). raises PrivilegeError."""
    if os.geteuid() != 0:
        return None
    unknown = [c for c in keep if c not in CAPABILITIES]
    if unknown:
        raise PrivilegeError(f"unknown capabilities: {', '.join(unknown)}")
    try:
        pw = pwd.getpwnam(user)
    except KeyError:
        raise PrivilegeError(f"run_as: no such user {user!r}") from None
    if pw.pw_uid == 0:
        raise PrivilegeError(f"run_as: {user!r} is root")
    mask = sum(1 << CAPABILITIES[c] for c in keep)
    try:
        if mask:
            _prctl(_PR_SET_KEEPCAPS, 1)
        os.setgroups([])
        os.setresgid(pw.pw_gid, pw.pw_gid, pw.pw_gid)
        os.setresuid(pw.pw_uid, pw.pw_uid, pw.pw_uid)
        if mask:
            _capset(mask)
            _prctl(_PR_SET_KEEPCAPS, 0)
    except OSError as exc:
        raise PrivilegeError(f"run_as {user}: {exc}") from None
    _check(pw.pw_uid, pw.pw_gid)
    log.info("running as %s (uid %d, gid %d)%s", user, pw.pw_uid, pw.pw_gid,
             f", keeping {' '.join(keep)}" if keep else "")
    return Dropped(user, pw.pw_uid, pw.pw_gid, tuple(keep))


def _check(uid: int, gid: int) -> None:
    if os.getresuid() != (uid, uid, uid) or os.getresgid() != (gid, gid, gid) or os.getgroups():
        raise PrivilegeError("run_as: IDs did not change as asked")
    try:
        os.setuid(0)
    except PermissionError:
        return
    raise PrivilegeError("run_as: root could be taken back")


def _libc() -> ctypes.CDLL:
    # Imported only when capabilities are kept: the common path needs no ctypes.
    import ctypes

    return ctypes.CDLL(None, use_errno=True)


def _prctl(option: int, value: int) -> None:
    import ctypes

    libc = _libc()
    if libc.prctl(option, value, 0, 0, 0) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"prctl({option}): {os.strerror(err)}")


def _capset(mask: int) -> None:
    """Permitted and effective = ``mask``; inheritable empty (capset(2), version 3)."""
    import ctypes

    class Header(ctypes.Structure):
        _fields_ = [("version", ctypes.c_uint32), ("pid", ctypes.c_int)]

    class Data(ctypes.Structure):
        _fields_ = [("effective", ctypes.c_uint32), ("permitted", ctypes.c_uint32),
                    ("inheritable", ctypes.c_uint32)]

    header = Header(_CAP_VERSION_3, 0)
    low, high = mask & 0xFFFFFFFF, mask >> 32
    data = (Data * 2)(Data(low, low, 0), Data(high, high, 0))
    libc = _libc()
    if libc.capset(ctypes.byref(header), data) != 0:
        err = ctypes.get_errno()
        raise OSError(err, f"capset: {os.strerror(err)}")
