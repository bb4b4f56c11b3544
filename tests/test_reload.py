"""Feeds end to end: ``blockgate run`` fetching a registry dump from a real HTTP server,
Knot as its upstream, dig as the client.

The registry source serves ``dump.zip`` (the registry's ZIP holding ``dump.xml``) with a
``sha256_url`` sidecar. Two good lists take turns: list A blocks www.example.test, list B
blocks mail.example.test; both block both.example.test and neither blocks
ns.example.test, so every answer says which list is in force (Knot answers the allowed
names with their records). Each fault is served until the daemon has tried and refused it;
then the last good list must still be enforced, the reason logged and counted, and the
next good list taken.
"""

from __future__ import annotations

import io
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import threading
import time
import zipfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml
from conftest import (
    DNS_FIXTURES,
    Blockgate,
    Knot,
    alive,
    check_stopped,
    children,
    dig,
    start_blockgate,
    wait_for,
)
from feedserver import FeedServer

from blockgate.adapters.control import request

FILLER = 200  # records per good list: 90 % fewer must trip max_shrink


def dump_xml(names: list[str], ids: int = 1_700_000) -> bytes:
    """A registry dump in the shape of tests/fixtures/lists/rkn-dump-fragment-2019-a.xml
    (record 1676124: domain, decision), one ``blockType="domain"`` record per name."""
    head = ('<?xml version="1.0" encoding="windows-1251"?>\n'
            '<reg:register updateTime="2019-08-30T12:00:00+03:00" formatVersion="2.4"'
            ' xmlns:reg="http://rsoc.ru" xmlns:tns="http://rsoc.ru">\n')
    rows = [f'<content entryType="1" blockType="domain" id="{ids + i}" includeTime="2019-08-09T12:16:45">'
            f'<decision date="2019-06-25" number="2а-4235/2019" org="суд"/>'
            f"<domain><![CDATA[{n}]]></domain></content>\n" for i, n in enumerate(names)]
    return (head + "".join(rows) + "</reg:register>\n").encode("cp1251")


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def names(tag: str, n: int = FILLER) -> list[str]:
    return [f"r{i}.{tag}.filler.test" for i in range(n)]


LIST_A = ["www.example.test", "both.example.test", *names("a")]
LIST_B = ["mail.example.test", "both.example.test", *names("b")]
GOOD = {"A": zipped({"dump.xml": dump_xml(LIST_A), "dump.xml.sig": b"sig"}),
        "B": zipped({"dump.xml": dump_xml(LIST_B), "dump.xml.sig": b"sig"})}


class Registry:
    """The registry's side: /dump.zip and its sidecar /dump.zip.sha256 on a real HTTP server."""

    def __init__(self, server: FeedServer) -> None:
        self.server = server
        self.url = server.url("/dump.zip")
        self.sidecar = server.url("/dump.zip.sha256")

    def publish(self, body: bytes, digest: str | None = None, **route: Any) -> None:
        import hashlib
        digest = digest or hashlib.sha256(body).hexdigest()
        self.server.serve("/dump.zip.sha256", f"{digest}  dump.zip\n".encode())
        self.server.serve("/dump.zip", body, etag=f'"{digest[:16]}"' if not route else None, **route)

    def source(self, **keys: Any) -> dict[str, Any]:
        return {"name": "registry", "format": "rkn-xml", "url": self.url, "sha256_url": self.sidecar,
                "category": "registry", "refresh": "0.3s", "timeout": "1s", "max_bytes": "200K", **keys}


def state_dir(bg: Blockgate) -> Path:
    return Path(yaml.safe_load(bg.config.read_text())["state_dir"])


def status(bg: Blockgate) -> dict[str, Any]:
    return request(str(state_dir(bg) / "control.sock"))


def source_state(bg: Blockgate, name: str = "registry") -> dict[str, Any]:
    return next(s for s in status(bg)["sources"] if s["name"] == name)


def results(bg: Blockgate, name: str = "registry") -> dict[str, int]:
    return dict(source_state(bg, name)["results"])


def rcode(bg: Blockgate, name: str) -> str:
    return dig(bg.addr, name, "A").status


def in_force(bg: Blockgate) -> str:
    """Which list the answers follow: "A", "B", or what they were."""
    got = (rcode(bg, "www.example.test"), rcode(bg, "mail.example.test"),
           rcode(bg, "both.example.test"), rcode(bg, "ns.example.test"))
    return {("NXDOMAIN", "NOERROR", "NXDOMAIN", "NOERROR"): "A",
            ("NOERROR", "NXDOMAIN", "NXDOMAIN", "NOERROR"): "B"}.get(got, repr(got))


# -- the shared daemon of the fault table --------------------------------------------------------


@pytest.fixture(scope="module")
def registry() -> Iterator[Registry]:
    server = FeedServer().start()
    yield Registry(server)
    server.stop()


@pytest.fixture(scope="module")
def bg(tmp_path_factory: pytest.TempPathFactory, knot: Knot, registry: Registry) -> Iterator[Blockgate]:
    registry.publish(GOOD["A"])
    daemon = start_blockgate(tmp_path_factory.mktemp("feeds"), [knot.upstream], sources=[registry.source()])
    assert wait_for(lambda: in_force(daemon) == "A", 10), daemon.log_text()
    yield daemon
    check_stopped(daemon)


def other(current: str) -> str:
    return "B" if current == "A" else "A"


FAULTS: list[tuple[str, Any, str]] = [
    ("http-500", {"status": 500}, "http-500"),
    ("http-404", {"status": 404}, "http-404"),
    ("stalled-server", {"fault": "stall"}, "timeout"),
    ("reset-mid-body", {"fault": "reset"}, "connection-reset"),
    ("truncated-body", {"fault": "truncate"}, "truncated"),
    ("truncated-zip", {"body": GOOD["B"][: len(GOOD["B"]) // 2]}, "bad-zip"),
    ("over-size-cap", {"body": random.Random(7).randbytes(300_000)}, "too-large"),
    ("empty-body", {"body": b""}, "empty"),
    ("garbage-bytes", {"body": random.Random(8).randbytes(5000)}, "bad-xml"),
    ("malformed-xml", {"body": dump_xml(LIST_B)[:-40] + b"<content><domain>x</cont"}, "bad-xml"),
    ("zip-without-dump-xml", {"body": zipped({"dump.csv": b"x"})}, "no-dump-xml"),
    ("shrank-90-percent", {"body": zipped({"dump.xml": dump_xml(LIST_B[:FILLER // 10])})}, "shrank"),
    ("wrong-sha256", {"body": GOOD["B"], "digest": "0" * 64}, "sha256-mismatch"),
]


@pytest.mark.parametrize(("route", "reason"), [c[1:] for c in FAULTS], ids=[c[0] for c in FAULTS])
def test_fault_keeps_the_last_good_list(bg: Blockgate, registry: Registry, route: dict[str, Any],
                                        reason: str) -> None:
    good = in_force(bg)
    assert good in ("A", "B")
    before = results(bg).get(reason, 0)
    route = dict(route)
    body = route.pop("body", GOOD[other(good)])
    registry.publish(body, **route)
    assert wait_for(lambda: results(bg).get(reason, 0) >= before + 2, 15), \
        f"{reason} not counted: {source_state(bg)}\n{bg.log_text()[-3000:]}"
    assert in_force(bg) == good  # the last good list is still enforced
    st = source_state(bg)
    assert st["in_force"] and st["rules"] == len(LIST_A)
    assert f"source registry: {reason}: " in bg.log_text()
    assert "keeping the list accepted" in bg.log_text()
    registry.publish(GOOD[other(good)])  # the next good update is taken
    assert wait_for(lambda: in_force(bg) == other(good), 10), bg.log_text()[-3000:]
    assert source_state(bg)["last_result"] in ("accepted", "not-modified")


def test_not_modified_recompiles_nothing(bg: Blockgate, registry: Registry) -> None:
    good = in_force(bg)
    registry.publish(GOOD[good])
    assert wait_for(lambda: source_state(bg)["last_result"] == "not-modified", 10)
    doc = status(bg)
    generation, pids = doc["generation"], [w["pid"] for w in doc["workers"]]
    seen = results(bg)["not-modified"]
    assert wait_for(lambda: results(bg)["not-modified"] >= seen + 3, 10)
    assert status(bg)["generation"] == generation
    assert [w["pid"] for w in status(bg)["workers"]] == pids  # no worker was replaced
    assert children(bg.proc.pid) == pids
    sent = registry.server.requests_for("/dump.zip")[-1].headers
    assert sent["if-none-match"] == source_state(bg)["etag"]
    assert in_force(bg) == good


def test_sighup_with_nothing_changed_recompiles_nothing(bg: Blockgate, registry: Registry) -> None:
    good = in_force(bg)
    registry.publish(GOOD[good])
    assert wait_for(lambda: source_state(bg)["last_result"] == "not-modified", 10)
    generation, reloads = status(bg)["generation"], status(bg)["reloads"]["ok"]
    os.kill(bg.proc.pid, signal.SIGHUP)
    assert wait_for(lambda: status(bg)["reloads"]["ok"] == reloads + 1, 10)
    seen = results(bg)["not-modified"]
    assert wait_for(lambda: results(bg)["not-modified"] >= seen + 3, 10)
    assert status(bg)["generation"] == generation
    assert "re-read (unchanged)" in bg.log_text()


def test_status_command_prints_each_source(bg: Blockgate) -> None:
    cmd = [sys.executable, "-m", "blockgate", "status", "--config", str(bg.config)]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=20)
    assert done.returncode == 0, done.stderr
    text = done.stdout
    assert f"registry (url {source_state(bg)['origin']}): {len(LIST_A)} rules, list age " in text
    assert "last attempt " in text and "last success " in text and "etag " in text
    assert "attempts: " in text and "accepted " in text
    doc = json.loads(subprocess.run([*cmd, "--json"], capture_output=True, text=True, timeout=20).stdout)
    st = next(s for s in doc["sources"] if s["name"] == "registry")
    assert st["in_force"] and st["rules"] == len(LIST_A) and st["etag"].startswith('"')
    assert st["list_age"] >= 0 and st["last_success"] <= doc["now"]
    assert os.stat(state_dir(bg) / "control.sock").st_mode & 0o777 == 0o600


def test_status_of_a_daemon_not_running(tmp_path: Path) -> None:
    cfg = tmp_path / "c.yaml"
    cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "s"), "sources": [
        {"name": "x", "format": "domains", "path": str(DNS_FIXTURES / "block-nxdomain.txt")}]}))
    done = subprocess.run([sys.executable, "-m", "blockgate", "status", "--config", str(cfg)],
                          capture_output=True, text=True, timeout=20)
    assert done.returncode == 1 and "not running" in done.stderr


# -- restarts ----------------------------------------------------------------------------------


def test_restart_with_the_server_down_serves_the_stored_copy(tmp_path: Path, knot: Knot) -> None:
    server = FeedServer().start()
    registry = Registry(server)
    registry.publish(GOOD["B"])
    state = tmp_path / "state"
    first = start_blockgate(tmp_path, [knot.upstream], sources=[registry.source()],
                            top={"state_dir": str(state)})
    try:
        assert wait_for(lambda: in_force(first) == "B", 10)
    finally:
        check_stopped(first)
    server.stop()  # connection refused from now on
    again = start_blockgate(tmp_path, [knot.upstream], sources=[registry.source()],
                            top={"state_dir": str(state)})
    try:
        assert in_force(again) == "B"  # at once: ready means serving the stored copy
        assert wait_for(lambda: source_state(again)["last_result"] == "connection-refused", 10)
        st = source_state(again)
        assert st["in_force"] and st["rules"] == len(LIST_B) and st["list_age"] >= 0
        assert "from the stored copy of" in again.log_text()
        assert "source registry: connection-refused" in again.log_text()
    finally:
        check_stopped(again)


def test_sigkill_mid_download_then_restart_serves_the_stored_copy(tmp_path: Path, knot: Knot) -> None:
    server = FeedServer().start()
    registry = Registry(server)
    registry.publish(GOOD["A"])
    state = tmp_path / "state"
    source = registry.source(refresh="0.2s", timeout="30s")
    bg = start_blockgate(tmp_path, [knot.upstream], sources=[source], top={"state_dir": str(state)})
    assert in_force(bg) == "A"
    registry.publish(zipped({"dump.xml": dump_xml(LIST_B + names("big", 3000))}), fault="stall")
    copies = state / "sources" / "registry"

    def downloading() -> bool:
        return server.partial_sent > 0 and any(n.startswith("tmp-") for n in os.listdir(copies))

    assert wait_for(downloading, 10)
    os.killpg(bg.proc.pid, signal.SIGKILL)  # the supervisor and its workers, mid-download
    bg.proc.wait(5)
    server.stop()
    again = start_blockgate(tmp_path, [knot.upstream], sources=[source], top={"state_dir": str(state)})
    try:
        assert in_force(again) == "A"
        assert not any(n.startswith("tmp-") for n in os.listdir(copies))  # the partial body is gone
        assert source_state(again)["rules"] == len(LIST_A)
    finally:
        check_stopped(again)


def test_a_damaged_stored_copy_is_not_served(tmp_path: Path, knot: Knot) -> None:
    server = FeedServer().start()
    registry = Registry(server)
    registry.publish(GOOD["A"])
    state = tmp_path / "state"
    first = start_blockgate(tmp_path, [knot.upstream], sources=[registry.source()],
                            top={"state_dir": str(state)})
    check_stopped(first)
    server.stop()
    copies = state / "sources" / "registry"
    body = next(p for p in copies.iterdir() if p.name.endswith(".0"))
    body.write_bytes(body.read_bytes()[:-10])  # a disk fault: the metadata no longer matches
    again = start_blockgate(tmp_path, [knot.upstream], sources=[registry.source()],
                            top={"state_dir": str(state)})
    try:
        assert "source registry: the stored copy in " in again.log_text()
        assert not source_state(again)["in_force"]
        assert rcode(again, "www.example.test") == "NOERROR"
    finally:
        check_stopped(again)


def test_no_stored_copy_and_no_network(tmp_path: Path, knot: Knot) -> None:
    """on_missing_list serve (default): the other sources are served and the source retried;
    refuse: exit non-zero with the reason."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        dead = f"http://127.0.0.1:{s.getsockname()[1]}/dump.zip"
        local = {"name": "local", "format": "domains", "action": "nxdomain",
                 "path": str(DNS_FIXTURES / "block-nxdomain.txt")}
        remote = {"name": "registry", "format": "rkn-xml", "url": dead, "refresh": "0.3s", "timeout": "1s"}
        bg = start_blockgate(tmp_path, [knot.upstream], sources=[remote, local])
        try:
            assert rcode(bg, "nx.blocked.test") == "NXDOMAIN"
            assert rcode(bg, "www.example.test") == "NOERROR"
            assert wait_for(lambda: results(bg).get("connection-refused", 0) >= 3, 10)
            assert not source_state(bg)["in_force"]
        finally:
            check_stopped(bg)
        cfg = tmp_path / "refuse.yaml"
        cfg.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "s2"), "on_missing_list": "refuse",
                                       "sources": [remote, local], "metrics": {"listen": ""}}))
        done = subprocess.run([sys.executable, "-m", "blockgate", "run", "--config", str(cfg)],
                              capture_output=True, text=True, timeout=30)
    assert done.returncode == 1
    assert "source registry: no list (connection refused)" in done.stderr
    assert "on_missing_list is refuse" in done.stderr


# -- SIGHUP ------------------------------------------------------------------------------------


def test_sighup_refuses_a_bad_config_and_takes_a_good_one(tmp_path: Path, knot: Knot) -> None:
    server = FeedServer().start()
    registry = Registry(server)
    registry.publish(GOOD["A"])
    bg = start_blockgate(tmp_path, [knot.upstream], sources=[registry.source(refresh="1h")], workers=2)
    try:
        assert in_force(bg) == "A"
        good_text = bg.config.read_text()
        pids = bg.worker_pids()
        bad = yaml.safe_load(good_text)
        bad["sources"][0]["format"] = "rkn-json"
        bad["dns"]["bogus"] = 1
        bg.config.write_text(yaml.safe_dump(bad, sort_keys=False))
        os.kill(bg.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: "refused; the running configuration stays" in bg.log_text(), 10)
        log = bg.log_text()
        assert f"{bg.config}:" in log and "sources[0].format" in log and "dns.bogus: unknown key" in log
        doc = status(bg)
        assert doc["reloads"]["refused"] == 1 and doc["reloads"]["last_errors"]
        assert in_force(bg) == "A" and bg.worker_pids() == pids  # nothing restarted
        # A good config: a new source and the registry published anew, both taken on SIGHUP.
        registry.publish(GOOD["B"])
        good = yaml.safe_load(good_text)
        good["sources"].append({"name": "local", "format": "domains", "action": "refused",
                                "path": str(DNS_FIXTURES / "block-nxdomain.txt")})
        bg.config.write_text(yaml.safe_dump(good, sort_keys=False))
        os.kill(bg.proc.pid, signal.SIGHUP)
        # until both old workers have handed over, an answer may come from either list
        assert wait_for(lambda: rcode(bg, "nx.blocked.test") == "REFUSED" and in_force(bg) == "B", 10), \
            bg.log_text()[-2000:]
        assert wait_for(lambda: not set(pids) & set(bg.worker_pids()) and len(bg.worker_pids()) == 2, 10)
        assert not any(alive(p) for p in pids)
        assert status(bg)["reloads"] == {"ok": 1, "refused": 1, "last_errors": []}
    finally:
        check_stopped(bg)
        server.stop()


def test_path_source_is_reread_when_it_changes(tmp_path: Path, knot: Knot) -> None:
    lst = tmp_path / "list.txt"
    lst.write_text("www.example.test\n")
    bg = start_blockgate(tmp_path, [knot.upstream], sources=[
        {"name": "local", "format": "domains", "path": str(lst), "refresh": "0.2s"}])
    try:
        assert rcode(bg, "www.example.test") == "NXDOMAIN"
        tmp = tmp_path / "list.new"
        tmp.write_text("mail.example.test\n")
        tmp.replace(lst)
        assert wait_for(lambda: rcode(bg, "mail.example.test") == "NXDOMAIN", 10)
        assert rcode(bg, "www.example.test") == "NOERROR"
        generation = status(bg)["generation"]
        os.utime(lst)  # touched, same content: nothing to compile
        assert wait_for(lambda: source_state(bg, "local")["last_detail"] == "content unchanged", 10)
        assert status(bg)["generation"] == generation
    finally:
        check_stopped(bg)


def test_a_changed_list_is_patched_into_the_rules_in_force(tmp_path: Path, knot: Knot) -> None:
    """A new version of the one source that changed is written into the rules in force (no
    second rule set): added, removed and moved records answer from the new version, EDE
    naming its record ids; a config change on SIGHUP compiles from scratch."""
    server = FeedServer().start()
    registry = Registry(server)
    filler = names("p", 50)
    registry.publish(zipped({"dump.xml": dump_xml(["www.example.test", "mail.example.test", *filler])}))
    bg = start_blockgate(tmp_path, [knot.upstream], sources=[registry.source(refresh="0.2s")], workers=2)
    try:
        first = dig(bg.addr, "www.example.test", "A")
        assert first.status == "NXDOMAIN" and "record 1700000" in first.ede[0].text, first
        assert rcode(bg, "mail.example.test") == "NXDOMAIN"
        generation = status(bg)["generation"]
        # a name comes in at the top, www moves to the end (every record id changes), mail goes
        registry.publish(zipped({"dump.xml": dump_xml(["new.example.test", *filler, "www.example.test"],
                                                      ids=1_800_000)}))
        assert wait_for(lambda: status(bg)["generation"] > generation, 10), bg.log_text()
        added = dig(bg.addr, "new.example.test", "A")
        assert added.status == "NXDOMAIN" and "record 1800000" in added.ede[0].text, added
        moved = dig(bg.addr, "www.example.test", "A")
        assert moved.status == "NXDOMAIN" and f"record {1_800_001 + len(filler)}" in moved.ede[0].text, moved
        assert rcode(bg, "mail.example.test") == "NOERROR"
        assert "record 1800001" in dig(bg.addr, filler[0], "A").ede[0].text
        assert ("source registry: patched into the rules in force: 1 name added, 1 removed, 0 changed"
                in bg.log_text())
        assert "(compared with them while it was parsed)" in bg.log_text()
        doc = status(bg)
        assert doc["last_swap"]["how"] == "patched" and doc["names"] == len(filler) + 2
        # a changed setting of the source: compiled from scratch
        generation = doc["generation"]
        cfg = yaml.safe_load(bg.config.read_text())
        cfg["sources"][0]["action"] = "refused"
        bg.config.write_text(yaml.safe_dump(cfg))
        os.kill(bg.proc.pid, signal.SIGHUP)
        assert wait_for(lambda: status(bg)["generation"] > generation, 10), bg.log_text()
        assert wait_for(lambda: rcode(bg, "www.example.test") == "REFUSED", 5)
        assert status(bg)["last_swap"]["how"] == "compiled"
    finally:
        check_stopped(bg)
        server.stop()


# -- swaps under load -----------------------------------------------------------------------------


class Prober:
    """Queries at a steady pace over UDP, every answer matched to its query by id."""

    NAMES = ("www.example.test", "mail.example.test", "both.example.test", "ns.example.test")

    def __init__(self, addr: tuple[str, int], rate: int) -> None:
        self.addr = addr
        self.rate = rate
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.connect(addr)
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sent: dict[int, str] = {}
        self.answers: dict[int, int] = {}
        self.stop = threading.Event()
        self.threads = [threading.Thread(target=self._send, daemon=True),
                        threading.Thread(target=self._receive, daemon=True)]

    def _query(self, qid: int, name: str) -> bytes:
        wire = b"".join(bytes((len(p),)) + p.encode() for p in name.split(".")) + b"\x00"
        return struct.pack("!6H", qid, 0x0100, 1, 0, 0, 0) + wire + b"\x00\x01\x00\x01"

    def _send(self) -> None:
        qid, start = 0, time.monotonic()
        while not self.stop.is_set() and qid < 65535:
            name = self.NAMES[qid % len(self.NAMES)]
            self.sent[qid] = name
            self.sock.send(self._query(qid, name))
            qid += 1
            delay = start + qid / self.rate - time.monotonic()
            if delay > 0:
                time.sleep(delay)

    def _receive(self) -> None:
        self.sock.settimeout(0.2)
        while not (self.stop.is_set() and len(self.answers) >= len(self.sent)):
            try:
                data = self.sock.recv(4096)
            except TimeoutError:
                if self.stop.is_set():
                    return
                continue
            self.answers[struct.unpack("!H", data[:2])[0]] = data[3] & 0x0F

    def __enter__(self) -> Prober:
        for t in self.threads:
            t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop.set()
        self.threads[0].join()
        deadline = time.monotonic() + 3
        while len(self.answers) < len(self.sent) and time.monotonic() < deadline:
            time.sleep(0.05)
        self.threads[1].join(3)
        self.sock.close()


NOERROR, NXDOMAIN = 0, 3
# rcode allowed per name: right for list A or list B
RIGHT = {"www.example.test": {NOERROR, NXDOMAIN}, "mail.example.test": {NOERROR, NXDOMAIN},
         "both.example.test": {NXDOMAIN}, "ns.example.test": {NOERROR}}


def test_swaps_lose_no_query(tmp_path: Path, knot: Knot) -> None:
    """Two workers; the list changes three times while a client sends 400 queries/s:
    every query is answered, each answer right for the old or the new list, and the
    counters never go backwards across the swaps."""
    server = FeedServer().start()
    registry = Registry(server)
    registry.publish(GOOD["A"])
    bg = start_blockgate(tmp_path, [knot.upstream], sources=[registry.source(refresh="0.2s")], workers=2)
    try:
        generation = status(bg)["generation"]
        totals = []
        with Prober(bg.addr, 400) as probe:
            for turn in ("B", "A", "B"):
                time.sleep(0.3)
                registry.publish(GOOD[turn])
                def swapped(t: str = turn, g: int = generation) -> bool:
                    return bool(status(bg)["generation"] > g and in_force(bg) == t)

                assert wait_for(swapped, 10)
                generation = status(bg)["generation"]
                totals.append(sum(status(bg)["counters"]["dns_queries"].values()))
            time.sleep(0.3)
        lost = [q for q in probe.sent if q not in probe.answers]
        wrong = [(probe.sent[q], r) for q, r in probe.answers.items() if r not in RIGHT[probe.sent[q]]]
        assert len(probe.sent) > 500
        assert not lost, f"{len(lost)} of {len(probe.sent)} queries lost"
        assert not wrong, wrong[:10]
        assert totals == sorted(totals)
        assert wait_for(lambda: sum(status(bg)["counters"]["dns_queries"].values()) >= len(probe.sent), 5)
        assert status(bg)["counters"]["internal_errors"] == 0
    finally:
        check_stopped(bg)
        server.stop()
