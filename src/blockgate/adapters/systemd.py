"""sd_notify, written straight to ``$NOTIFY_SOCKET``: no libsystemd, no dependency.

The protocol (https://www.freedesktop.org/software/systemd/man/latest/sd_notify.html): one
datagram of newline-separated ``VARIABLE=value`` lines to the AF_UNIX socket named by
``NOTIFY_SOCKET``; a name starting with ``@`` is in the abstract namespace (the ``@``
stands for a leading NUL byte). systemd reads the sender's PID from the socket credentials,
so with ``NotifyAccess=main`` only the main process (blockgate's supervisor) may send.

What blockgate sends:

* ``ready(status)`` once the rules are compiled and every worker listens (``Type=notify``
  holds ``systemctl start`` until then);
* ``reloading()`` when SIGHUP starts a reload, ``RELOADING=1`` with ``MONOTONIC_USEC=``
  (systemd >= 253 uses the timestamp to tell this reload from an earlier one; 252 ignores it),
  then ``ready()`` again when the new rule set serves;
* ``stopping()`` on SIGTERM;
* ``watchdog()`` every ``watchdog_interval() / 2`` seconds while the workers are healthy.

Outside systemd (no ``NOTIFY_SOCKET``) every call is a no-op returning False.
"""

from __future__ import annotations

import logging
import os
import socket
import time
from collections.abc import Mapping, MutableMapping
from typing import ClassVar, Final

log = logging.getLogger("blockgate.systemd")

# The variables a service manager hands to a Type=notify service (systemd.exec(5),
# "Environment Variables in Spawned Processes").
ENV_SOCKET: Final = "NOTIFY_SOCKET"
ENV_WATCHDOG_USEC: Final = "WATCHDOG_USEC"
ENV_WATCHDOG_PID: Final = "WATCHDOG_PID"
# A failed send is logged at most once per this many seconds: the watchdog sends every few
# seconds, and a missing socket is one problem, not one per ping.
LOG_EVERY: Final = 60.0


class Notifier:
    """Sends notifications to one notify socket (``None``: not under a service manager)."""

    # Shared by every Notifier: the module-level functions make one per call.
    _next_log: ClassVar[float] = 0.0

    def __init__(self, address: str | None) -> None:
        self.address = address or None

    @classmethod
    def from_environ(cls, environ: MutableMapping[str, str] | None = None,
                     unset: bool = False) -> Notifier:
        """The socket named by ``NOTIFY_SOCKET``. With ``unset``, the notify variables are
        removed from ``environ`` (like sd_notify's ``unset_environment``), so processes forked
        or started later (the workers) cannot notify and do not see the watchdog."""
        env = os.environ if environ is None else environ
        address = env.get(ENV_SOCKET)
        if unset:
            for name in (ENV_SOCKET, ENV_WATCHDOG_USEC, ENV_WATCHDOG_PID):
                env.pop(name, None)
        return cls(address)

    def notify(self, **fields: object) -> bool:
        """Send ``NAME=value`` lines (``notify(READY=1, STATUS="...")``); True when sent."""
        if self.address is None:
            return False
        message = "\n".join(f"{name}={_one_line(value)}" for name, value in fields.items())
        target = _sockaddr(self.address)
        if target is None:
            self._warn("unsupported %s=%r (only AF_UNIX paths and @abstract names)",
                       ENV_SOCKET, self.address)
            return False
        try:
            with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM | socket.SOCK_CLOEXEC) as s:
                s.sendto(message.encode("utf-8"), target)
        except OSError as exc:
            self._warn("cannot notify %s: %s", self.address, exc)
            return False
        return True

    def ready(self, status: str | None = None) -> bool:
        return self.notify(READY=1, **_status(status))

    def reloading(self, status: str | None = None) -> bool:
        usec = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
        return self.notify(RELOADING=1, MONOTONIC_USEC=usec, **_status(status))

    def stopping(self, status: str | None = None) -> bool:
        return self.notify(STOPPING=1, **_status(status))

    def watchdog(self) -> bool:
        return self.notify(WATCHDOG=1)

    def status(self, text: str) -> bool:
        return self.notify(STATUS=text)

    def _warn(self, fmt: str, *args: object) -> None:
        now = time.monotonic()
        if now >= Notifier._next_log:
            Notifier._next_log = now + LOG_EVERY
            log.warning(fmt, *args)


def _one_line(value: object) -> str:
    # A newline would start another assignment: STATUS text is free text (error messages).
    return str(value).replace("\n", " ")


def _status(status: str | None) -> dict[str, str]:
    return {} if status is None else {"STATUS": status}


def _sockaddr(address: str) -> str | bytes | None:
    if address.startswith("/"):
        return address
    if address.startswith("@"):
        return b"\0" + address[1:].encode("utf-8")
    return None  # vsock:... (systemd >= 254 in VMs) is not spoken here


def watchdog_interval(environ: Mapping[str, str] | None = None, pid: int | None = None) -> float | None:
    """The watchdog timeout in seconds (``WatchdogSec=``), or None when there is none for
    this process. Ping at half of it (sd_watchdog_enabled(3))."""
    env = os.environ if environ is None else environ
    try:
        usec = int(env.get(ENV_WATCHDOG_USEC, ""))
    except ValueError:
        return None
    if usec <= 0:
        return None
    owner = env.get(ENV_WATCHDOG_PID)
    if owner is not None:
        try:
            if int(owner) != (os.getpid() if pid is None else pid):
                return None
        except ValueError:
            return None
    return usec / 1_000_000


# -- the process's own notifier, for callers that want plain functions -----------------------


def notify(**fields: object) -> bool:
    return Notifier.from_environ().notify(**fields)


def ready(status: str | None = None) -> bool:
    return Notifier.from_environ().ready(status)


def reloading(status: str | None = None) -> bool:
    return Notifier.from_environ().reloading(status)


def stopping(status: str | None = None) -> bool:
    return Notifier.from_environ().stopping(status)


def watchdog() -> bool:
    return Notifier.from_environ().watchdog()
