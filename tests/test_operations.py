"""Operations, end to end: the running daemon's /metrics after real traffic (one and two
workers), its systemd notifications on a NOTIFY_SOCKET the test listens on, and the switch
to ``run_as`` when started as root.
"""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import struct
import subprocess
import sys
import time
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import Blockgate, Knot, alive, dig, free_port
from scrape import Scrape, parse

from blockgate import __version__


def scrape(port: int) -> Scrape:
    with urllib.request.urlopen(f"http://127.0.0.1:{port}/metrics", timeout=5) as resp:
        assert resp.status == 200
        return parse(resp.read().decode())


def value(s: Scrape, name: str, **labels: str) -> float:
    return s.samples.get((name, frozenset(labels.items())), 0.0)


def scrape_until(port: int, check: Callable[[Scrape], bool], timeout: float = 6.0) -> Scrape:
    """Workers report their counters every second: poll until ``check`` holds."""
    deadline = time.monotonic() + timeout
    while True:
        s = scrape(port)
        if check(s) or time.monotonic() > deadline:
            return s
        time.sleep(0.2)


@pytest.fixture
def with_metrics(running_blockgate: Callable[..., Blockgate]) -> Callable[..., tuple[Blockgate, int]]:
    def start(**kwargs: Any) -> tuple[Blockgate, int]:
        port = free_port()
        daemon = running_blockgate(top={"metrics": {"listen": f"127.0.0.1:{port}"},
                                        "log": {"level": "info", "decisions": "off"}}, **kwargs)
        return daemon, port
    return start


@pytest.mark.parametrize("workers", [1, 2])
def test_scrape_counts_every_workers_traffic(with_metrics: Callable[..., tuple[Blockgate, int]],
                                              knot: Knot, workers: int) -> None:
    daemon, port = with_metrics(workers=workers)
    before = scrape(port)  # the readiness probes of the test helper are in here already

    def delta(s: Scrape, name: str, **labels: str) -> float:
        return value(s, name, **labels) - value(before, name, **labels)

    n_block, n_fwd = 12, 8
    for _ in range(n_block):  # dig picks a new source port each time: both workers see some
        assert dig(daemon.addr, "standaards.com").status == "NXDOMAIN"
    for _ in range(n_fwd):
        assert dig(daemon.addr, "www.example.test").status == "NOERROR"
    assert dig(daemon.addr, "nx.blocked.test", "+tcp").status == "NXDOMAIN"
    q, blocked = "blockgate_dns_queries_total", "blockgate_blocked_total"
    s = scrape_until(port, lambda s: delta(s, q, transport="tcp", action="nxdomain") >= 1
                     and delta(s, q, transport="udp", action="forward") >= n_fwd
                     and delta(s, blocked, channel="dns", source="registry", category="registry") >= n_block)
    assert delta(s, q, transport="udp", action="nxdomain") == n_block
    assert delta(s, q, transport="udp", action="forward") == n_fwd
    assert delta(s, q, transport="tcp", action="nxdomain") == 1
    assert delta(s, blocked, channel="dns", source="registry", category="registry") == n_block
    assert delta(s, blocked, channel="dns", source="local-nxdomain", category="") == 1
    assert value(s, "blockgate_upstream_responses_total", upstream=knot.upstream, rcode="noerror") >= n_fwd
    assert value(s, "blockgate_upstream_latency_seconds_count", upstream=knot.upstream) >= n_fwd
    assert value(s, "blockgate_internal_errors_total") == 0
    assert value(s, "blockgate_rules", source="registry", kind="block-exact") == 1
    assert value(s, "blockgate_source_last_success_timestamp_seconds", source="registry") > 1.7e9
    assert value(s, "blockgate_ruleset_compile_seconds") > 0
    assert value(s, "blockgate_ruleset_swaps_total", how="compiled") == 1  # the first load
    assert value(s, "blockgate_ruleset_swaps_total", how="patched") == 0
    assert value(s, "blockgate_build_info", version=__version__) == 1
    assert value(s, "process_resident_memory_bytes") > 0
    if workers == 2:  # the sum of both workers: each served some of the queries
        assert len(daemon.worker_pids()) == 2


def test_metrics_count_malformed_and_refused(with_metrics: Callable[..., tuple[Blockgate, int]]) -> None:
    daemon, port = with_metrics(allow_clients=["127.0.0.1/32"])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.connect(daemon.addr)
        for _ in range(5):
            s.send(b"\x01\x02\x03")
    dig(daemon.addr, "www.example.test", "-b", "127.0.0.2")  # outside allow_clients
    s = scrape_until(port, lambda s: value(s, "blockgate_malformed_total", channel="dns", reason="short") >= 5
                     and value(s, "blockgate_dns_queries_total", transport="udp", action="not-allowed") >= 1)
    assert value(s, "blockgate_malformed_total", channel="dns", reason="short") == 5
    assert value(s, "blockgate_dns_queries_total", transport="udp", action="not-allowed") == 1


# -- systemd --------------------------------------------------------------------------------


class NotifyListener:
    """A unix datagram socket standing in for systemd's notify socket."""

    def __init__(self, path: Path) -> None:
        self.path = path
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM)
        self.sock.bind(str(path))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_PASSCRED, 1)
        self.sock.settimeout(0.2)
        self.messages: list[dict[str, str]] = []
        self.senders: set[int] = set()  # pids, from the kernel's SCM_CREDENTIALS

    def poll(self, until: Callable[[list[dict[str, str]]], bool], timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if until(self.messages):
                return True
            with contextlib.suppress(TimeoutError):
                raw, ancillary, _flags, _addr = self.sock.recvmsg(4096, socket.CMSG_SPACE(12))
                for level, kind, cred in ancillary:
                    if level == socket.SOL_SOCKET and kind == socket.SCM_CREDENTIALS:
                        self.senders.add(struct.unpack("=iII", cred[:12])[0])
                data = raw.decode()
                self.messages.append(dict(line.split("=", 1) for line in data.splitlines() if "=" in line))
        return until(self.messages)


def _has(key: str, after: int = 0) -> Callable[[list[dict[str, str]]], bool]:
    return lambda ms: any(key in m for m in ms[after:])


@pytest.fixture
def notified(tmp_path: Path, knot: Knot) -> Iterator[tuple[subprocess.Popen[bytes], NotifyListener, Path]]:
    listener = NotifyListener(tmp_path / "notify.sock")
    port = free_port()
    config = {
        "state_dir": str(tmp_path / "state"),
        "sources": [{"name": "local", "format": "domains", "path": str(tmp_path / "list.txt")}],
        "dns": {"listen": [f"127.0.0.1:{port}"], "upstreams": [knot.upstream], "workers": 2},
        "metrics": {"listen": ""},
    }
    (tmp_path / "list.txt").write_text("blocked.test\n")
    path = tmp_path / "blockgate.yaml"
    path.write_text(yaml.safe_dump(config))
    env = dict(os.environ, NOTIFY_SOCKET=str(listener.path), WATCHDOG_USEC="1000000")
    env.pop("WATCHDOG_PID", None)
    log = open(tmp_path / "daemon.log", "wb")  # noqa: SIM115 - closed below
    proc = subprocess.Popen([sys.executable, "-m", "blockgate", "run", "--config", str(path)], env=env,
                            stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL,
                            start_new_session=True)
    try:
        yield proc, listener, path
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                os.killpg(proc.pid, signal.SIGKILL)
                proc.wait()
        log.close()
        listener.sock.close()


Notified = tuple[subprocess.Popen[bytes], NotifyListener, Path]


def test_notify_ready_watchdog_reload_stop(notified: Notified) -> None:
    proc, listener, config = notified
    assert listener.poll(_has("READY"), 20), (tmp := config.parent / "daemon.log").read_text()
    ready = next(m for m in listener.messages if "READY" in m)
    assert ready["READY"] == "1"
    assert ready["STATUS"].startswith("1 rule on 1 name from 1 source") and "2 workers" in ready["STATUS"]
    # the watchdog is fed at half of WATCHDOG_USEC: a few pings within two seconds
    n = len(listener.messages)
    assert listener.poll(lambda ms: sum("WATCHDOG" in m for m in ms[n:]) >= 2, 3), tmp.read_text()
    # SIGHUP: RELOADING=1 (with MONOTONIC_USEC) then READY=1
    (config.parent / "list.txt").write_text("blocked.test\nother.test\n")
    n = len(listener.messages)
    proc.send_signal(signal.SIGHUP)
    assert listener.poll(_has("RELOADING", n), 5)
    reloading = next(m for m in listener.messages[n:] if "RELOADING" in m)
    assert int(reloading["MONOTONIC_USEC"]) > 0
    k = listener.messages.index(reloading)
    assert listener.poll(_has("READY", k + 1), 20), tmp.read_text()
    again = next(m for m in listener.messages[k + 1:] if "READY" in m)
    assert again["STATUS"].startswith("2 rules on 2 names")
    # SIGTERM: STOPPING=1, then the process is gone
    n = len(listener.messages)
    proc.send_signal(signal.SIGTERM)
    assert listener.poll(_has("STOPPING", n), 5)
    assert proc.wait(10) == 0
    # only the supervisor spoke (NotifyAccess=main): no worker, of either generation
    assert listener.senders == {proc.pid}


# -- run_as -----------------------------------------------------------------------------------


@pytest.mark.skipif(os.geteuid() != 0, reason="switching users needs root")
def test_run_as_drops_to_the_user_after_binding(running_blockgate: Callable[..., Blockgate],
                                                tmp_path: Path) -> None:
    import pwd

    nobody = pwd.getpwnam("nobody")
    daemon = running_blockgate(workers=2, top={"run_as": "nobody"})
    for pid in [daemon.proc.pid, *daemon.worker_pids()]:
        with open(f"/proc/{pid}/status") as f:
            ids = {line.split(":")[0]: line.split()[1:] for line in f if line.startswith(("Uid", "Gid"))}
        assert ids["Uid"] == [str(nobody.pw_uid)] * 4, pid
        assert ids["Gid"] == [str(nobody.pw_gid)] * 4, pid
    assert dig(daemon.addr, "nx.blocked.test").status == "NXDOMAIN"
    assert all(alive(p) for p in daemon.worker_pids())
