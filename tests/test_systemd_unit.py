"""The systemd unit and its SNI drop-in, checked by systemd's own tools.

``systemd-analyze verify`` loads the unit as systemd would (it checks that ExecStart's
binary exists, so a copy points at this checkout's ``blockgate``); ``systemd-analyze
security --offline=true`` rates its sandbox. The SNI variant is the unit with the drop-in's
``[Service]`` lines appended, which is what systemd merges.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
UNIT = ROOT / "systemd" / "blockgate.service"
DROPIN = ROOT / "systemd" / "blockgate-sni.conf"
INSTALLED = "/usr/bin/blockgate"
TIMEOUT = 60
MAX_EXPOSURE = 2.5  # systemd-analyze's "OK" band ends at 4.9; the goal here is stricter

# Checks the sandbox does not pass, each for a reason (any other failing check is a regression).
ACCEPTED = {
    "RootDirectoryOrRootImage": "a root image per service is the packager's choice, not the unit's",
    "AmbientCapabilities": "the unprivileged process binds port 53 (CAP_NET_BIND_SERVICE)",
    "RestrictAddressFamilies_AF_UNIX": "sd_notify and the supervisor's control channel",
    "RestrictAddressFamilies_AF_INET_INET6": "it is a DNS server",
    "CapabilityBoundingSet_CAP_NET_BIND_SERVICE_BROADCAST_RAW)": "port 53",
    "PrivateNetwork": "it serves the host's network",
    "PrivateUsers": "capabilities must hold in the host's user namespace to bind port 53",
    "IPAddressDeny": "clients and upstreams are configured in blockgate (allow_clients)",
    "ProcSubset": "the process collector reads /proc/stat (boot time) for process_start_time_seconds",
    "DeviceAllow": "ProtectClock= itself adds read access to the RTC",
}
ACCEPTED_SNI = {
    **ACCEPTED,
    "RestrictAddressFamilies_AF_NETLINK": "nfqueue speaks netlink",
    "RestrictAddressFamilies_AF_PACKET": "mirror mode sniffs with AF_PACKET",
    "CapabilityBoundingSet_CAP_NET_ADMIN": "NFQUEUE verdicts and conntrack marks",
}


def analyze() -> str:
    tool = shutil.which("systemd-analyze")
    if tool is None:
        pytest.fail("systemd-analyze not found: install the Debian package systemd (make test does)")
    return tool


def blockgate_binary() -> str:
    path = Path(sys.executable).parent / "blockgate"
    if not path.exists():
        pytest.fail(f"{path} missing: `make pytest` installs the package into .venv")
    return str(path)


def unit_copy(tmp_path: Path, sni: bool) -> Path:
    text = UNIT.read_text()
    assert INSTALLED in text
    text = text.replace(INSTALLED, blockgate_binary())
    if sni:
        text += "\n" + DROPIN.read_text()
    out = tmp_path / ("sni" if sni else "base") / "blockgate.service"
    out.parent.mkdir()
    out.write_text(text)
    return out


def directives(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) in file order; repeated keys stay repeated, as in systemd."""
    out, section = [], ""
    for line in text.splitlines():
        line = line.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            section = line.strip("[]")
            continue
        key, _, value = line.partition("=")
        out.append((section, key.strip(), value.strip()))
    return out


def values(text: str, key: str) -> list[str]:
    return [v for _s, k, v in directives(text) if k == key]


@pytest.mark.parametrize("sni", [False, True], ids=["unit", "unit+sni"])
def test_systemd_analyze_verify(tmp_path: Path, sni: bool) -> None:
    unit = unit_copy(tmp_path, sni)
    done = subprocess.run([analyze(), "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert done.returncode == 0, done.stderr
    assert "blockgate.service" not in done.stderr, done.stderr  # no warnings about our unit


BROKEN = [
    ("unknown-key", "NotifyAccess=main", "NotifyAcess=main", "Unknown key 'NotifyAcess'"),
    ("missing-binary", "{bin} run", "/nonexistent/blockgate run", "is not executable"),
]


@pytest.mark.parametrize(("old", "new", "message"), [b[1:] for b in BROKEN], ids=[b[0] for b in BROKEN])
def test_verify_catches_a_broken_unit(tmp_path: Path, old: str, new: str, message: str) -> None:
    """The verify check can fail: what systemd would reject or warn about is reported."""
    unit = unit_copy(tmp_path, False)
    text = unit.read_text()
    old = old.format(bin=blockgate_binary())
    assert old in text
    unit.write_text(text.replace(old, new))
    done = subprocess.run([analyze(), "verify", "--man=no", str(unit)], capture_output=True,
                          text=True, timeout=TIMEOUT)
    assert message in done.stderr


def security(unit: Path) -> tuple[float, set[str]]:
    """The overall exposure and the json_field of every failing check."""
    base = [analyze(), "security", "--offline=true"]
    text = subprocess.run([*base, str(unit)], capture_output=True, text=True, timeout=TIMEOUT)
    m = re.search(r"Overall exposure level for blockgate\.service: (\d+\.\d+)", text.stdout)
    assert m, text.stdout + text.stderr
    js = subprocess.run([*base, "--json=short", str(unit)], capture_output=True, text=True,
                        timeout=TIMEOUT)
    failing = {c["json_field"] for c in json.loads(js.stdout) if c["set"] is False and c["exposure"]}
    return float(m.group(1)), failing


@pytest.mark.parametrize(("sni", "accepted"), [(False, ACCEPTED), (True, ACCEPTED_SNI)],
                         ids=["unit", "unit+sni"])
def test_security_exposure(tmp_path: Path, sni: bool, accepted: dict[str, str]) -> None:
    exposure, failing = security(unit_copy(tmp_path, sni))
    assert failing - set(accepted) == set(), "new exposure"
    assert exposure <= MAX_EXPOSURE


def test_unit_shape() -> None:
    text = UNIT.read_text()
    one = {k: v for _s, k, v in directives(text)}
    assert one["Type"] == "notify" and one["NotifyAccess"] == "main"
    assert one["ExecStart"] == f"{INSTALLED} run --config /etc/blockgate/blockgate.yaml"
    assert one["ExecReload"] == "/bin/kill -HUP $MAINPID"
    assert one["DynamicUser"] == "yes" and one["StateDirectory"] == "blockgate"
    assert values(text, "AmbientCapabilities") == ["CAP_NET_BIND_SERVICE"]
    assert values(text, "CapabilityBoundingSet") == ["CAP_NET_BIND_SERVICE"]
    assert values(text, "RestrictAddressFamilies") == ["AF_INET AF_INET6 AF_UNIX"]
    assert re.fullmatch(r"\d+s", one["WatchdogSec"])
    for key in ("ProtectSystem", "ProtectHome", "PrivateTmp", "PrivateDevices", "NoNewPrivileges",
                "MemoryDenyWriteExecute", "LockPersonality", "RestrictNamespaces", "ProtectKernelTunables",
                "ProtectKernelModules", "ProtectKernelLogs", "ProtectControlGroups", "ProtectClock",
                "ProtectHostname", "RestrictRealtime", "RestrictSUIDSGID"):
        assert one[key] in ("yes", "strict"), key
    assert one["UMask"] == "0077"
    assert values(text, "SystemCallFilter")[0] == "@system-service"


def test_sni_dropin_adds_only_what_sni_needs() -> None:
    text = DROPIN.read_text()
    assert set(values(text, "AmbientCapabilities")[0].split()) == {
        "CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(values(text, "CapabilityBoundingSet")[0].split()) == {
        "CAP_NET_BIND_SERVICE", "CAP_NET_ADMIN", "CAP_NET_RAW"}
    assert set(values(text, "RestrictAddressFamilies")[0].split()) == {
        "AF_INET", "AF_INET6", "AF_UNIX", "AF_NETLINK", "AF_PACKET"}
    assert {k for _s, k, _v in directives(text)} == {
        "AmbientCapabilities", "CapabilityBoundingSet", "RestrictAddressFamilies"}
