"""sd_notify against a real AF_UNIX datagram socket the test listens on (a path and an
abstract name), checked line by line, against systemd's own ``systemd-notify`` as an
oracle for the wire format, and with the sender's credentials (what ``NotifyAccess=``
judges by)."""

from __future__ import annotations

import os
import shutil
import socket
import struct
import subprocess
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from blockgate.adapters import systemd
from blockgate.adapters.systemd import Notifier, watchdog_interval

CREDS = struct.Struct("3i")  # struct ucred: pid, uid, gid


@dataclass
class Listener:
    sock: socket.socket
    address: str  # as NOTIFY_SOCKET spells it

    def receive(self, timeout: float = 2.0) -> tuple[str, int]:
        """One datagram: its text and the sender's PID (SCM_CREDENTIALS)."""
        self.sock.settimeout(timeout)
        data, ancdata, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(CREDS.size))
        pid = -1
        for level, kind, payload in ancdata:
            if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                pid = CREDS.unpack(payload[:CREDS.size])[0]
        return data.decode("utf-8"), pid

    def nothing(self) -> bool:
        self.sock.settimeout(0.05)
        try:
            self.sock.recv(4096)
        except TimeoutError:
            return True
        return False


@pytest.fixture(params=["path", "abstract"])
def listener(request: pytest.FixtureRequest, tmp_path: Path,
             monkeypatch: pytest.MonkeyPatch) -> Iterator[Listener]:
    sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
    if request.param == "path":
        address = str(tmp_path / "notify")
        sock.bind(address)
    else:
        name = f"blockgate-test-{uuid.uuid4().hex}"
        sock.bind(b"\0" + name.encode())
        address = "@" + name
    monkeypatch.setenv("NOTIFY_SOCKET", address)
    with sock:
        yield Listener(sock, address)


MONO = "MONOTONIC_USEC"
CALLS: list[tuple[str, Callable[[Notifier], bool], list[str]]] = [
    ("ready", lambda n: n.ready(), ["READY=1"]),
    ("ready-status", lambda n: n.ready("serving 15 rules"), ["READY=1", "STATUS=serving 15 rules"]),
    ("stopping", lambda n: n.stopping(), ["STOPPING=1"]),
    ("stopping-status", lambda n: n.stopping("SIGTERM"), ["STOPPING=1", "STATUS=SIGTERM"]),
    ("watchdog", lambda n: n.watchdog(), ["WATCHDOG=1"]),
    ("status", lambda n: n.status("fetching registry"), ["STATUS=fetching registry"]),
    ("newline-in-value", lambda n: n.notify(STATUS="one\ntwo", READY=1), ["STATUS=one two", "READY=1"]),
    ("reloading", lambda n: n.reloading("reloading lists"), ["RELOADING=1", MONO, "STATUS=reloading lists"]),
]


@pytest.mark.parametrize(("call", "want"), [(c, w) for _i, c, w in CALLS], ids=[i for i, _c, _w in CALLS])
def test_messages(listener: Listener, call: Callable[[Notifier], bool], want: list[str]) -> None:
    before = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    assert call(Notifier.from_environ()) is True
    after = time.clock_gettime_ns(time.CLOCK_MONOTONIC) // 1000
    text, pid = listener.receive()
    lines = text.split("\n")
    assert len(lines) == len(want)
    for line, expected in zip(lines, want, strict=True):
        if expected == MONO:  # the kernel's CLOCK_MONOTONIC in µs, read at the call
            name, value = line.split("=")
            assert name == MONO and before <= int(value) <= after
        else:
            assert line == expected
    assert pid == os.getpid()  # sent by this process itself: what NotifyAccess=main accepts


@pytest.mark.parametrize("fn", ["ready", "reloading", "stopping", "watchdog"])
def test_module_functions_read_the_environment(listener: Listener, fn: str) -> None:
    assert getattr(systemd, fn)() is True
    text, _pid = listener.receive()
    assert text.split("\n")[0] == f"{fn.upper()}=1"


def test_notify_fields(listener: Listener) -> None:
    assert systemd.notify(MAINPID=4242, STATUS="x") is True
    assert listener.receive()[0] == "MAINPID=4242\nSTATUS=x"


def test_same_datagram_as_systemd_notify(listener: Listener) -> None:
    """systemd's own client (``systemd-notify --no-block``) as the oracle of the format."""
    tool = shutil.which("systemd-notify")
    if tool is None:
        pytest.fail("systemd-notify not found: install the Debian package systemd (make test does)")
    subprocess.run([tool, "--no-block", "--ready", "--status=serving 15 rules"], check=True,
                   timeout=10, env={**os.environ, "NOTIFY_SOCKET": listener.address})
    theirs, _pid = listener.receive()
    Notifier(listener.address).ready("serving 15 rules")
    ours, _pid = listener.receive()
    assert ours == theirs


def test_outside_systemd_is_a_quiet_no_op(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("NOTIFY_SOCKET", raising=False)
    assert systemd.ready("x") is False
    assert Notifier.from_environ().watchdog() is False
    assert Notifier("").ready() is False


def test_unreachable_socket_is_false_and_logged_once(tmp_path: Path, caplog: pytest.LogCaptureFixture,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Notifier, "_next_log", 0.0)
    n = Notifier(str(tmp_path / "nobody-listens"))
    with caplog.at_level("WARNING", logger="blockgate.systemd"):
        assert n.watchdog() is False
        assert n.watchdog() is False
    assert len([r for r in caplog.records if r.name == "blockgate.systemd"]) == 1


def test_vsock_address_is_not_spoken(caplog: pytest.LogCaptureFixture,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(Notifier, "_next_log", 0.0)
    with caplog.at_level("WARNING", logger="blockgate.systemd"):
        assert Notifier("vsock:2:1234").ready() is False
    assert "unsupported" in caplog.text


def test_unset_environment_hides_the_socket_from_children(listener: Listener) -> None:
    env = {"NOTIFY_SOCKET": listener.address, "WATCHDOG_USEC": "30000000", "WATCHDOG_PID": "1",
           "PATH": "/usr/bin"}
    n = Notifier.from_environ(env, unset=True)
    assert env == {"PATH": "/usr/bin"}
    assert n.ready() is True  # the notifier taken keeps working
    assert listener.receive()[0] == "READY=1"
    assert Notifier.from_environ(env).ready() is False
    assert listener.nothing()


WATCHDOG_CASES = [
    ("30s-any-pid", {"WATCHDOG_USEC": "30000000"}, 100, 30.0),
    ("20s-our-pid", {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "100"}, 100, 20.0),
    ("another-pid", {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "101"}, 100, None),
    ("bad-pid", {"WATCHDOG_USEC": "20000000", "WATCHDOG_PID": "x"}, 100, None),
    ("zero", {"WATCHDOG_USEC": "0"}, 100, None),
    ("negative", {"WATCHDOG_USEC": "-5"}, 100, None),
    ("not-a-number", {"WATCHDOG_USEC": "30s"}, 100, None),
    ("absent", {}, 100, None),
    ("sub-second", {"WATCHDOG_USEC": "500000"}, 100, 0.5),
]


@pytest.mark.parametrize(("env", "pid", "want"), [c[1:] for c in WATCHDOG_CASES],
                         ids=[c[0] for c in WATCHDOG_CASES])
def test_watchdog_interval(env: dict[str, str], pid: int, want: float | None) -> None:
    assert watchdog_interval(env, pid) == want


def test_watchdog_interval_defaults_to_this_process(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("WATCHDOG_USEC", "4000000")
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid()))
    assert watchdog_interval() == 4.0
    monkeypatch.setenv("WATCHDOG_PID", str(os.getpid() + 1))
    assert watchdog_interval() is None
