"""NFQUEUE mode against the real kernel, curl, openssl and an HTTPS server, in a namespace.

The test creates a network namespace, starts ``openssl s_server`` on 443 there, applies the
ruleset printed by ``blockgate rules --iptables`` (this kernel has no nft ``queue``
statement) and runs ``blockgate run`` with ``sni.mode: nfqueue``. A blocked name must be
reset within a second (curl and ``openssl s_client -servername``), an allowed one must
complete its handshake, the kernel must drop the rest of a blocked flow by conntrack mark,
a QUIC Initial with a blocked name must not arrive, packets beyond a full queue must pass
(``NFQA_CFG_F_FAIL_OPEN``), and once blockgate is killed traffic must flow again
(``--queue-bypass``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from netns import (
    Netns,
    blockgate,
    curl,
    make_cert,
    netns,
    s_client,
    unavailable,
    wait_for_line,
    write_config,
)

REASON = unavailable("iptables", "curl", "openssl")
if REASON is None:
    try:
        import netfilterqueue  # noqa: F401
    except ImportError:
        REASON = "the nfqueue extra (NetfilterQueue) is not installed"
kernel = pytest.mark.skipif(REASON is not None, reason=REASON or "")

BLOCKED, ALLOWED = "blocked.example", "allowed.example"
LOCAL = "127.0.0.1"


class Setup:
    def __init__(self, ns: Netns, tmp: Path) -> None:
        self.ns, self.tmp = ns, tmp
        self.log = tmp / "blockgate.log"
        self.proc: subprocess.Popen[bytes] | None = None


@pytest.fixture(scope="module")
def setup(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Setup]:
    tmp = tmp_path_factory.mktemp("nfqueue")
    with netns("bgnfq") as ns:
        cert, key = make_cert(tmp)
        server = ns.start(["openssl", "s_server", "-accept", "443", "-cert", str(cert), "-key", str(key),
                           "-www", "-quiet"], tmp / "server.log")
        cfg = write_config(tmp, [BLOCKED], {"mode": "nfqueue", "queues": [0]})
        rules = subprocess.run(blockgate("rules", "--config", str(cfg), "--iptables"), check=True,
                               capture_output=True, text=True).stdout
        ns.sh("\n".join(line for line in rules.splitlines() if not line.startswith("#")))
        s = Setup(ns, tmp)
        s.proc = ns.start(blockgate("run", "--config", str(cfg)), s.log)
        wait_for_line(s.log, "ready: NFQUEUE 0 bound", proc=s.proc)
        assert server.poll() is None
        yield s


@kernel
def test_blocked_name_is_reset_within_a_second(setup: Setup) -> None:
    r = curl(setup.ns, BLOCKED, LOCAL)
    assert r.returncode in (35, 56), r.stdout  # curl: SSL connect error / recv failure (reset)
    assert r.seconds < 1.0
    o = s_client(setup.ns, BLOCKED, LOCAL)
    assert o.returncode != 0 and "errno=104" in o.stdout, o.stdout  # ECONNRESET
    assert "SSL handshake has read 0 bytes" in o.stdout
    assert o.seconds < 1.0
    wait_for_line(setup.log, f'"channel":"tls","name":"{BLOCKED}","action":"reset"')  # the decision log


@kernel
def test_allowed_name_completes_the_handshake(setup: Setup) -> None:
    r = curl(setup.ns, ALLOWED, LOCAL)
    assert (r.returncode, r.stdout) == (0, "200")
    o = s_client(setup.ns, ALLOWED, LOCAL)
    assert "BEGIN CERTIFICATE" in o.stdout and "Cipher is TLS_" in o.stdout, o.stdout


@kernel
def test_kernel_drops_the_rest_of_a_blocked_flow(setup: Setup) -> None:
    def drops() -> int:
        out = setup.ns.run("iptables", "-L", "BLOCKGATE", "-v", "-n", "-x").stdout
        row = next(line for line in out.splitlines() if "connmark match" in line and "DROP" in line)
        return int(row.split()[0])

    before = drops()
    curl(setup.ns, BLOCKED, LOCAL)
    assert drops() > before  # the completing packet (repeated with the mark) and what followed


QUIC_SCRIPT = r"""
import socket, sys
sys.path.insert(0, sys.argv[1])
from test_quic import initial, crypto_frame, pad
from test_tls import body, handshake, sni
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(("127.0.0.1", 443)); rx.settimeout(0.5)
for name in sys.argv[2:]:
    tx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)  # a flow of its own: blocks stick to flows
    hello = handshake(body(sni(name.encode())))
    tx.sendto(initial(pad(crypto_frame(0, hello))), ("127.0.0.1", 443))
    try:
        rx.recv(2000); print(name, "arrived")
    except socket.timeout:
        print(name, "dropped")
"""


@kernel
def test_quic_initials_of_a_blocked_name_are_dropped(setup: Setup) -> None:
    here = str(Path(__file__).parent)
    out = setup.ns.run(sys.executable, "-c", QUIC_SCRIPT, here, BLOCKED, ALLOWED).stdout
    assert out.split("\n")[:2] == [f"{BLOCKED} dropped", f"{ALLOWED} arrived"]


def scrape(ns: Netns) -> dict[tuple[str, frozenset[tuple[str, str]]], float]:
    from prometheus_client.parser import text_string_to_metric_families

    text = ns.run("curl", "-s", "http://127.0.0.1:9253/metrics").stdout
    return {(s.name, frozenset(s.labels.items())): s.value
            for fam in text_string_to_metric_families(text) for s in fam.samples}


@kernel
def test_metrics_count_the_nfqueue_workers_blocks(setup: Setup) -> None:
    """The supervisor's scrape sums the NFQUEUE worker's counters with the DNS workers'."""
    key = ("blockgate_blocked_total", frozenset({("channel", "tls"), ("source", "registry"),
                                                 ("category", "court")}))
    before = scrape(setup.ns).get(key, 0.0)
    curl(setup.ns, BLOCKED, LOCAL)
    deadline = time.monotonic() + 5
    while (got := scrape(setup.ns)).get(key, 0.0) < before + 1 and time.monotonic() < deadline:
        time.sleep(0.2)
    assert got[key] == before + 1
    flows = {dict(lb)["verdict"]: v for (n, lb), v in got.items() if n == "blockgate_sni_flows_total"
             and dict(lb)["proto"] == "tls"}
    assert flows.get("block", 0) >= 1 and flows.get("pass", 0) + flows.get("allow", 0) >= 1
    assert got[("blockgate_internal_errors_total", frozenset())] == 0


@kernel
def test_swap_rebinds_the_queue(setup: Setup) -> None:
    """SIGHUP with a changed list: the new worker takes the queue over and enforces it."""
    assert setup.proc is not None
    workers = len(children(setup.proc.pid))
    (setup.tmp / "block.txt").write_text(f"{BLOCKED}\n{ALLOWED}\n")
    try:
        setup.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while time.monotonic() < deadline:
            r = curl(setup.ns, ALLOWED, LOCAL)
            if r.returncode in (35, 56):
                break
            time.sleep(0.2)
        assert r.returncode in (35, 56), setup.log.read_text()
        assert setup.log.read_text().count("ready: NFQUEUE 0 bound") >= 2
        assert curl(setup.ns, BLOCKED, LOCAL).returncode in (35, 56)
    finally:  # the allowed name is allowed again for the tests that follow
        (setup.tmp / "block.txt").write_text(f"{BLOCKED}\n")
        setup.proc.send_signal(signal.SIGHUP)
        deadline = time.monotonic() + 15
        while curl(setup.ns, ALLOWED, LOCAL).stdout != "200" and time.monotonic() < deadline:
            time.sleep(0.2)
        # the old workers have drained and gone: the tests that follow signal every child
        while len(children(setup.proc.pid)) > workers and time.monotonic() < deadline:
            time.sleep(0.05)


FLOOD_SCRIPT = r"""
import socket, struct, sys, time
n, wait = int(sys.argv[1]), float(sys.argv[2])
rx = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); rx.bind(("127.0.0.1", 443))
rx.setsockopt(socket.SOL_SOCKET, 33, 1 << 24); rx.settimeout(0.2)  # SO_RCVBUFFORCE
raw = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.setsockopt(socket.SOL_SOCKET, 32, 1 << 26)  # SO_SNDBUFFORCE: queued packets hold it
payload = b"x" * 32
loop = bytes([127, 0, 0, 1])
for i in range(n):  # distinct flows: the ruleset queues the first packets of each
    udp = struct.pack("!HHHH", 1024 + i, 443, 8 + len(payload), 0) + payload
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, 20 + len(udp), 0, 0, 64, 17, 0, loop, loop)
    raw.sendto(ip + udp, ("127.0.0.1", 0))
got, deadline = 0, time.monotonic() + wait
while time.monotonic() < deadline:
    try:
        rx.recv(2048); got += 1
    except socket.timeout:
        pass
print(got)
"""


def children(pid: int) -> list[int]:
    with open(f"/proc/{pid}/task/{pid}/children") as f:
        return [int(x) for x in f.read().split()]


@kernel
def test_a_full_queue_fails_open(setup: Setup) -> None:
    """Workers that stop reading (SIGSTOP): the kernel queue fills up (MAX_LEN packets) and
    the packets after it are accepted (NFQA_CFG_F_FAIL_OPEN), not dropped; once the workers
    go on, the queued ones get their verdicts too."""
    from blockgate.adapters.nfqueue import MAX_LEN

    assert setup.proc is not None and "fail-open)" in setup.log.read_text()
    workers = children(setup.proc.pid)
    extra = 1500
    for w in workers:
        os.kill(w, signal.SIGSTOP)
    try:
        cmd = setup.ns.cmd(sys.executable, "-c", FLOOD_SCRIPT, str(MAX_LEN + extra), "2.0")
        flood = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
        stopped_out, _ = flood.communicate(timeout=30)
    finally:
        for w in workers:
            os.kill(w, signal.SIGCONT)
    arrived = int(stopped_out)
    assert extra * 0.9 <= arrived <= extra + 16, arrived  # the overflow passed, the queue held

    def waiting() -> int:  # /proc/net/netfilter/nfnetlink_queue: queue, portid, packets waiting, ...
        return sum(int(line.split()[2]) for line in
                   setup.ns.run("cat", "/proc/net/netfilter/nfnetlink_queue").stdout.splitlines())

    deadline = time.monotonic() + 10
    while waiting() and time.monotonic() < deadline:
        time.sleep(0.1)
    assert waiting() == 0  # the queued ones got their verdicts
    out = setup.ns.run(sys.executable, "-c", FLOOD_SCRIPT, "200", "1.0").stdout
    assert int(out) == 200  # and new flows are decided again


@kernel
def test_zz_killed_blockgate_fails_open(setup: Setup) -> None:
    """Last in the module: kill every blockgate process; the queue bypass lets traffic flow."""
    assert setup.proc is not None
    setup.ns.stop(setup.proc, signal.SIGKILL)
    r = curl(setup.ns, BLOCKED, LOCAL)
    assert (r.returncode, r.stdout) == (0, "200")


# -- without a kernel: the ruleset text and the verdict edge --------------------------------


def rules(tmp: Path, fmt: str, **sni: object) -> subprocess.CompletedProcess[str]:
    cfg = write_config(tmp, [], {"mode": "nfqueue", **sni})
    return subprocess.run(blockgate("rules", "--config", str(cfg), fmt), capture_output=True, text=True)


def test_iptables_rules_balance_queues_and_ports(tmp_path: Path) -> None:
    out = rules(tmp_path, "--iptables", queues=[2, 3, 4], ports=[443, 8443], mark=0x40).stdout
    assert "-p tcp -m multiport --dports 443,8443 -m connbytes --connbytes 0:16 --connbytes-dir original " \
        "--connbytes-mode packets -j NFQUEUE --queue-balance 2:4 --queue-bypass" in out
    assert "iptables -A BLOCKGATE -m mark --mark 0x41 -j ACCEPT" in out
    assert "iptables -A BLOCKGATE -m connmark --mark 0x40 -j DROP" in out
    assert "iptables -I INPUT -m connmark --mark 0x40 -j DROP" in out


def test_nft_rules(tmp_path: Path) -> None:
    out = rules(tmp_path, "--nft", queues=[0, 1]).stdout
    assert "tcp dport { 443 } ct original packets 0-16 queue num 0-1 bypass" in out
    assert "udp dport { 443 } ct original packets 0-16 queue num 0-1 bypass" in out
    assert out.count("ct mark 0x1b drop") == 3
    assert out.count("{") == out.count("}")


def test_queues_that_cannot_be_balanced_are_a_config_error(tmp_path: Path) -> None:
    res = rules(tmp_path, "--iptables", queues=[0, 2])
    assert res.returncode == 2 and "not consecutive" in res.stderr


class Pkt:
    """The verdict side of a queued packet (the object NetfilterQueue hands the callback)."""

    def __init__(self, payload: bytes | None) -> None:
        self.payload, self.verdicts, self.mark = payload, [], 0

    def get_payload(self) -> bytes:
        if self.payload is None:
            raise RuntimeError("the payload went away")
        return self.payload

    def accept(self) -> None:
        self.verdicts.append("accept")

    def repeat(self) -> None:
        self.verdicts.append("repeat")

    def set_mark(self, mark: int) -> None:
        self.mark = mark


def test_worker_verdicts_and_the_error_edge() -> None:
    from test_sniengine import OPENSSL, SYN, engine, tcp

    from blockgate.adapters.nfqueue import Worker

    sent: list[bytes] = []
    eng = engine(["githubusercontent.com"])
    w = Worker(eng, 0x1B, sent.append, clock=lambda: 1.0)
    pkts = [Pkt(SYN), Pkt(tcp(OPENSSL)), Pkt(None), Pkt(b"\x45garbage")]
    for p in pkts:
        w(p)
    assert [p.verdicts for p in pkts] == [["accept"], ["repeat"], ["accept"], ["accept"]]
    assert pkts[1].mark == 0x1B and len(sent) == 2  # an RST to each end
    assert eng.stats.internal_errors == 1 and w.verdicts == 4


@pytest.mark.skipif(sys.byteorder != "little", reason="bytes written for a little-endian host")
def test_fail_open_message_layout() -> None:
    """What ``nfq_set_queue_flags(qh, NFQA_CFG_F_FAIL_OPEN, NFQA_CFG_F_FAIL_OPEN)`` sends for
    queue 7: nlmsghdr (36 bytes, NFNL_SUBSYS_QUEUE << 8 | NFQNL_MSG_CONFIG, NLM_F_REQUEST),
    nfgenmsg (AF_UNSPEC, v0, res_id 7 big-endian), NFQA_CFG_MASK and NFQA_CFG_FLAGS = 1."""
    from blockgate.adapters.nfqueue import fail_open_message

    assert fail_open_message(7).hex() == ("24000000" "0203" "0100" "00000000" "00000000"
                                          "00000007" "08000400" "00000001" "08000500" "00000001")
