"""Mirror mode against the real kernel: client, router and server namespaces joined by veth
pairs; blockgate sniffs the router's client-side veth passively (nothing is held or dropped)
and must still reset blocked flows at both ends, with the right sequence numbers, within a
second, while allowed names complete. Killed, it leaves traffic alone. The server answers
through a small proxy that delays its answers by SERVER_DELAY, as a server on the Internet
does: a passive blocker races the server's reply, and it should win that race.
"""

from __future__ import annotations

import secrets
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from netns import Netns, blockgate, curl, make_cert, netns, s_client, unavailable, wait_for_line, write_config

REASON = unavailable("curl", "openssl")
kernel = pytest.mark.skipif(REASON is not None, reason=REASON or "")

BLOCKED, ALLOWED = "blocked.example", "allowed.example"
SERVER = "10.91.2.2"


# One-way delay of the test server's answers (a server ~20 ms away).
SERVER_DELAY = 0.02
DELAY_PROXY = r"""
import socket, sys, threading, time
delay = float(sys.argv[1])
ls = socket.socket()
ls.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
ls.bind(("0.0.0.0", 443))
ls.listen(64)

def pump(a, b, wait):
    try:
        while True:
            data = a.recv(65536)
            if not data:
                break
            time.sleep(wait)
            b.sendall(data)
    except OSError:
        pass
    finally:
        for x in (a, b):
            try:
                x.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass

while True:
    client, _ = ls.accept()
    server = socket.create_connection(("127.0.0.1", 4443))
    threading.Thread(target=pump, args=(client, server, 0.0), daemon=True).start()
    threading.Thread(target=pump, args=(server, client, delay), daemon=True).start()
"""


def wait_for(check: Callable[[], bool], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while not check():
        if time.monotonic() > deadline:
            raise AssertionError("timed out")
        time.sleep(0.05)


class Topology:
    def __init__(self, cli: Netns, mid: Netns, srv: Netns, tap: str, tmp: Path) -> None:
        self.cli, self.mid, self.srv, self.tap, self.tmp = cli, mid, srv, tap, tmp
        self.log = tmp / "blockgate.log"
        self.proc: subprocess.Popen[bytes] | None = None


def link(a: Netns, a_if: str, b: Netns, b_if: str) -> None:
    subprocess.run(["ip", "link", "add", a_if, "netns", a.name, "type", "veth", "peer", "name", b_if,
                    "netns", b.name], check=True)


@pytest.fixture(scope="module")
def topo(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Topology]:
    tmp = tmp_path_factory.mktemp("mirror")
    tag = secrets.token_hex(2)
    with netns("bgcli") as cli, netns("bgmid") as mid, netns("bgsrv") as srv:
        c, mc, ms, s = f"c{tag}", f"mc{tag}", f"ms{tag}", f"s{tag}"
        link(cli, c, mid, mc)
        link(mid, ms, srv, s)
        cli.sh(f"ip addr add 10.91.1.2/24 dev {c}; ip link set {c} up; ip route add default via 10.91.1.1")
        mid.sh(f"ip addr add 10.91.1.1/24 dev {mc}; ip link set {mc} up; ip addr add 10.91.2.1/24 dev {ms}; "
               f"ip link set {ms} up; sysctl -qw net.ipv4.ip_forward=1")
        srv.sh(f"ip addr add {SERVER}/24 dev {s}; ip link set {s} up; ip route add default via 10.91.2.1")
        cert, key = make_cert(tmp)
        srv.start(["openssl", "s_server", "-accept", "127.0.0.1:4443", "-cert", str(cert), "-key", str(key),
                   "-www", "-quiet"], tmp / "server.log")
        # The server as the Internet has it: its answers arrive SERVER_DELAY after the
        # request (veth alone answers in microseconds, which no passive blocker can race;
        # this kernel has no netem to add the delay to the link itself).
        srv.start([sys.executable, "-c", DELAY_PROXY, str(SERVER_DELAY)], tmp / "proxy.log")
        wait_for(lambda: srv.run("sh", "-c", "ss -ltn | grep -q ':443 '", check=False).returncode == 0, 10)
        t = Topology(cli, mid, srv, mc, tmp)
        cfg = write_config(tmp, [BLOCKED], {"mode": "mirror", "interface": mc, "rst_burst": 2})
        t.proc = mid.start(blockgate("run", "--config", str(cfg)), t.log)
        wait_for_line(t.log, f"ready: mirror on {mc}", proc=t.proc)
        assert curl(cli, ALLOWED, SERVER).stdout == "200"  # the path works (and ARP is warm)
        yield t


@kernel
def test_blocked_name_is_reset_at_both_ends_within_a_second(topo: Topology) -> None:
    r = curl(topo.cli, BLOCKED, SERVER)
    assert r.returncode in (35, 56), r.stdout
    assert r.seconds < 1.0
    o = s_client(topo.cli, BLOCKED, SERVER)
    assert o.returncode != 0 and "errno=104" in o.stdout, o.stdout
    assert o.seconds < 1.0
    wait_for_line(topo.log, f'"channel":"tls","name":"{BLOCKED}","action":"reset"')  # the decision log


@kernel
def test_allowed_name_completes_the_handshake(topo: Topology) -> None:
    assert curl(topo.cli, ALLOWED, SERVER).stdout == "200"
    o = s_client(topo.cli, ALLOWED, SERVER)
    assert "BEGIN CERTIFICATE" in o.stdout and "Cipher is TLS_" in o.stdout


@kernel
def test_the_server_side_is_reset_too(topo: Topology) -> None:
    """The server's socket sees the RST (exact sequence number): its s_server logs no
    completed handshake for the blocked name, and its TCP stack counts resets received."""
    def resets() -> int:
        out = topo.srv.run("cat", "/proc/net/snmp").stdout.splitlines()
        tcp = [line.split() for line in out if line.startswith("Tcp:")]
        return int(tcp[1][tcp[0].index("EstabResets")])

    before = resets()
    curl(topo.cli, BLOCKED, SERVER)
    assert resets() > before


@kernel
def test_zz_killed_blockgate_leaves_traffic_alone(topo: Topology) -> None:
    assert topo.proc is not None
    topo.mid.stop(topo.proc, signal.SIGKILL)
    assert curl(topo.cli, BLOCKED, SERVER).stdout == "200"


# -- the BPF filter, checked by the kernel on a real socket --------------------------------


@kernel
def test_bpf_filter_keeps_only_the_inspected_ports() -> None:
    script = (
        "import socket, sys, time\n"
        "from blockgate.adapters.mirror import open_socket\n"
        "rx = open_socket('lo', [443])\n"
        "rx.settimeout(0.3)\n"
        "tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)\n"
        "for port in (80, 443, 8443):\n"
        "    tx.sendto(b'x', ('127.0.0.1', port))\n"
        "seen = []\n"
        "try:\n"
        "    while True:\n"
        "        f = rx.recv(65535); seen.append(int.from_bytes(f[36:38], 'big'))\n"
        "except socket.timeout:\n"
        "    pass\n"
        "print(sorted(set(seen)))\n")
    with netns("bgbpf") as ns:
        out = ns.run(sys.executable, "-c", script).stdout
    assert out.strip() == "[443]"  # UDP to 80 and 8443 were filtered out by the kernel
