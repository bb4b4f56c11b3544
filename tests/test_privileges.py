"""Dropping root for real: a forked child switches to ``nobody`` and reports what the kernel
says it is now (IDs, groups, capability sets from /proc/self/status) and what it can still
do (bind a port below 1024, open a raw socket, read /etc/shadow, become root again)."""

from __future__ import annotations

import json
import os
import random
import socket
from typing import Any

import pytest

from blockgate.adapters.privileges import (
    CAPABILITIES,
    SNI_CAPABILITIES,
    PrivilegeError,
    drop_privileges,
)

ROOT_ONLY = pytest.mark.skipif(os.geteuid() != 0, reason="dropping privileges needs root "
                               "(the suite runs as root under make test)")
NOBODY = "nobody"


def unprivileged_port_start() -> int:
    with open("/proc/sys/net/ipv4/ip_unprivileged_port_start") as f:
        return int(f.read())


def free_privileged_port() -> int:
    for _ in range(200):
        port = random.randrange(600, min(1024, unprivileged_port_start()))
        with socket.socket() as s:
            try:
                s.bind(("127.0.0.1", port))
            except OSError:
                continue
            return port
    raise RuntimeError("no free port below 1024")


def _can(fn: Any) -> bool:
    try:
        fn()
    except PermissionError:
        return False
    return True


def _bind(port: int) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", port))


def _raw() -> None:
    socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_ICMP).close()


def _caps() -> dict[str, int]:
    with open("/proc/self/status") as f:
        return {k: int(v, 16) for k, v in (line.split(":\t") for line in f if line.startswith("Cap"))}


def in_child(user: str, keep: tuple[str, ...], port: int) -> dict[str, Any]:
    """Fork; the child drops privileges and reports as JSON over a pipe."""
    r, w = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child: never returns into pytest
        code = 0
        try:
            os.close(r)
            dropped = drop_privileges(user, keep)
            report = {
                "dropped": dropped and [dropped.uid, dropped.gid, list(dropped.capabilities)],
                "resuid": os.getresuid(), "resgid": os.getresgid(), "groups": os.getgroups(),
                "caps": _caps(), "bind_privileged": _can(lambda: _bind(port)), "raw_socket": _can(_raw),
                "read_shadow": _can(lambda: open("/etc/shadow", "rb").close()),
                "setuid_root": _can(lambda: os.setuid(0)), "again": drop_privileges(user, keep) is None,
            }
            os.write(w, json.dumps(report).encode())
        except BaseException as exc:
            os.write(w, json.dumps({"error": repr(exc)}).encode())
            code = 1
        finally:
            os._exit(code)
    os.close(w)
    data = b""
    while chunk := os.read(r, 65536):
        data += chunk
    os.close(r)
    _pid, status = os.waitpid(pid, 0)
    report: dict[str, Any] = json.loads(data)
    assert os.waitstatus_to_exitcode(status) == 0, report
    return report


CASES = [
    ("dns-only", (), False, False),
    ("bind-service", ("CAP_NET_BIND_SERVICE",), True, False),
    ("sni", SNI_CAPABILITIES, False, True),
]


@ROOT_ONLY
@pytest.mark.parametrize(("keep", "can_bind", "can_raw"), [c[1:] for c in CASES], ids=[c[0] for c in CASES])
def test_drop_to_nobody(keep: tuple[str, ...], can_bind: bool, can_raw: bool) -> None:
    import pwd

    nobody = pwd.getpwnam(NOBODY)
    port = free_privileged_port()
    got = in_child(NOBODY, keep, port)
    uid, gid = nobody.pw_uid, nobody.pw_gid
    assert got["dropped"] == [uid, gid, list(keep)]
    assert got["resuid"] == [uid, uid, uid] and got["resgid"] == [gid, gid, gid]
    assert got["groups"] == []
    mask = sum(1 << CAPABILITIES[c] for c in keep)
    assert got["caps"]["CapEff"] == mask and got["caps"]["CapPrm"] == mask
    assert got["caps"]["CapInh"] == 0 and got["caps"]["CapAmb"] == 0
    assert got["bind_privileged"] is can_bind
    assert got["raw_socket"] is can_raw
    assert got["read_shadow"] is False
    assert got["setuid_root"] is False
    assert got["again"] is True  # not root any more: a second call has nothing to do
    assert os.geteuid() == 0  # the test process itself is untouched


ERRORS = [
    ("unknown-user", "no-such-user-blockgate", (), "no such user"),
    ("root", "root", (), "is root"),
    ("unknown-capability", NOBODY, ("CAP_SYS_ADMIN",), "unknown capabilities"),
]


@ROOT_ONLY
@pytest.mark.parametrize(("user", "keep", "message"), [e[1:] for e in ERRORS], ids=[e[0] for e in ERRORS])
def test_refused_before_anything_changes(user: str, keep: tuple[str, ...], message: str) -> None:
    with pytest.raises(PrivilegeError, match=message):
        drop_privileges(user, keep)
    assert os.getresuid() == (0, 0, 0) and os.geteuid() == 0


def test_not_root_is_a_no_op() -> None:
    if os.geteuid() == 0:
        got = in_child(NOBODY, (), 1)  # first drop in a child, then ask again from there
        assert got["again"] is True
    else:
        assert drop_privileges(NOBODY) is None
