"""Network namespaces for the kernel tests (NFQUEUE, mirror): created and removed by the test.

Everything the tests start runs inside a namespace of its own, so port 443 and the
firewall rules there belong to the test alone. Needs root; callers skip with the reason
given by ``unavailable()``.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path


def unavailable(*commands: str) -> str | None:
    """Why the kernel tests cannot run here, or None."""
    if os.geteuid() != 0:
        return "needs root (network namespaces, iptables, NFQUEUE)"
    for cmd in ("ip", *commands):
        if shutil.which(cmd) is None:
            return f"{cmd} is not installed (scripts/debian-packages.txt)"
    return None


@dataclass
class Netns:
    name: str
    procs: list[subprocess.Popen[bytes]] = field(default_factory=list)

    def cmd(self, *args: str) -> list[str]:
        return ["ip", "netns", "exec", self.name, *args]

    def run(self, *args: str, timeout: float = 20, check: bool = True) -> subprocess.CompletedProcess[str]:
        return subprocess.run(self.cmd(*args), capture_output=True, text=True, timeout=timeout, check=check)

    def sh(self, script: str) -> None:
        subprocess.run(self.cmd("sh", "-ec", script), check=True, timeout=20, capture_output=True)

    def start(self, args: Sequence[str], log: Path) -> subprocess.Popen[bytes]:
        """A background process in the namespace, in its own process group."""
        with open(log, "wb") as out:
            proc = subprocess.Popen(self.cmd(*args), stdout=out, stderr=subprocess.STDOUT,
                                    stdin=subprocess.DEVNULL, start_new_session=True)
        self.procs.append(proc)
        return proc

    def stop(self, proc: subprocess.Popen[bytes], sig: int = signal.SIGTERM, timeout: float = 8) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, sig)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@contextlib.contextmanager
def netns(prefix: str) -> Iterator[Netns]:
    ns = Netns(f"{prefix}{secrets.token_hex(3)}")
    subprocess.run(["ip", "netns", "add", ns.name], check=True)
    try:
        ns.run("ip", "link", "set", "lo", "up")
        yield ns
    finally:
        for proc in ns.procs:
            if proc.poll() is None:
                ns.stop(proc, signal.SIGKILL)
        subprocess.run(["ip", "netns", "del", ns.name], check=False)


def wait_for_line(log: Path, text: str, timeout: float = 15,
                  proc: subprocess.Popen[bytes] | None = None) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if log.exists() and text in log.read_text(errors="replace"):
            return
        if proc is not None and proc.poll() is not None:
            break
        time.sleep(0.05)
    raise AssertionError(f"{text!r} not in {log}:\n{log.read_text(errors='replace') if log.exists() else ''}")


def make_cert(directory: Path) -> tuple[Path, Path]:
    cert, key = directory / "cert.pem", directory / "key.pem"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", str(key), "-out",
                    str(cert), "-days", "2", "-subj", "/CN=blockgate-test"], check=True, capture_output=True)
    return cert, key


def write_config(directory: Path, blocked: list[str], sni: dict[str, object]) -> Path:
    import yaml

    (directory / "block.txt").write_text("".join(f"{n}\n" for n in blocked))
    cfg = {"state_dir": str(directory / "state"),
           "sources": [{"name": "registry", "format": "domains", "path": "block.txt", "category": "court"}],
           "dns": {"listen": ["127.0.0.1:5353"], "workers": 1}, "sni": sni,
           "metrics": {"listen": "127.0.0.1:9253"}}  # the namespace's own loopback
    path = directory / "blockgate.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def blockgate(*args: str) -> list[str]:
    return [sys.executable, "-m", "blockgate", *args]


@dataclass
class Timed:
    returncode: int
    stdout: str
    seconds: float


def timed(ns: Netns, *args: str, timeout: float = 15) -> Timed:
    t0 = time.monotonic()
    res = ns.run(*args, timeout=timeout, check=False)
    return Timed(res.returncode, res.stdout + res.stderr, time.monotonic() - t0)


def curl(ns: Netns, name: str, ip: str) -> Timed:
    return timed(ns, "curl", "-sk", "-o", "/dev/null", "-w", "%{http_code}", "--max-time", "5",
                 "--resolve", f"{name}:443:{ip}", f"https://{name}/")


def s_client(ns: Netns, name: str, ip: str) -> Timed:
    return timed(ns, "sh", "-c", f"openssl s_client -connect {ip}:443 -servername {name} </dev/null")
