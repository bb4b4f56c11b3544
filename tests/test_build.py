"""The compiled build (setup.py: the per-packet modules compiled with mypyc) is what runs, it
is current, and it decides exactly as the interpreted sources do.

``make`` builds with ``BLOCKGATE_COMPILE=require``; a package built with
``BLOCKGATE_COMPILE=no`` is pure Python on purpose, and only then are these skipped.
"""

from __future__ import annotations

import ast
import importlib
import importlib.machinery
import importlib.util
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st
from test_trie import FakeRules

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"
PCAPS = Path(__file__).parent / "fixtures" / "pcaps"
PURE_BUILD = os.environ.get("BLOCKGATE_COMPILE", "").strip().lower() == "no"
pytestmark = pytest.mark.skipif(PURE_BUILD, reason="BLOCKGATE_COMPILE=no: built as pure Python")


def compiled_names() -> list[str]:
    """``COMPILED`` as setup.py lists it (read, not imported: importing runs ``setup``)."""
    tree = ast.parse((ROOT / "setup.py").read_text())
    for node in tree.body:
        if isinstance(node, ast.Assign) and any(getattr(t, "id", "") == "COMPILED" for t in node.targets):
            return list(ast.literal_eval(node.value))
    raise AssertionError("setup.py has no COMPILED list")


NAMES = compiled_names()


def source_of(name: str) -> Path:
    """``adapters.replay`` -> src/blockgate/adapters/replay.py"""
    return SRC / "blockgate" / f"{name.replace('.', '/')}.py"


@pytest.mark.parametrize("name", NAMES)
def test_each_listed_module_runs_compiled_and_is_current(name: str) -> None:
    mod = importlib.import_module(f"blockgate.{name}")
    path = Path(str(mod.__file__))
    assert path.name.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES)), \
        f"blockgate.{name} was imported from {path}, not from its compiled extension"
    source = source_of(name)
    if path.parent == source.parent:  # built in place (editable install): rebuilt since edited?
        assert path.stat().st_mtime >= source.stat().st_mtime, \
            f"{path.name} is older than {source.name}: run make to rebuild"


def pure(name: str) -> ModuleType:
    """The interpreted module from its ``.py``, under another name, beside the compiled one."""
    spec = importlib.util.spec_from_file_location(f"_pure_{name}", source_of(name))
    assert spec is not None and spec.loader is not None
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod
    spec.loader.exec_module(mod)
    return mod


def outcome(fn: Any, data: bytes) -> tuple[str, Any]:
    try:
        return "ok", fn(data)
    except Exception as exc:  # the type's name and message: the two builds' classes differ
        return type(exc).__name__, str(exc)


wire = st.one_of(
    st.binary(max_size=80),
    # a DNS header with one question, then random labels: the parser's interesting paths
    st.builds(lambda qd, body: b"\x12\x34\x01\x00" + qd + b"\x00\x00\x00\x00\x00\x00" + body,
              st.sampled_from([b"\x00\x01", b"\x00\x02", b"\x00\x00"]), st.binary(max_size=60)),
)


@settings(max_examples=3000, deadline=None)
@given(wire)
def test_compiled_dns_parser_equals_the_source(data: bytes) -> None:
    from blockgate import dnswire

    mod = PURE["dnswire"]
    assert outcome(dnswire.parse_query, data) == outcome(mod.parse_query, data)


@settings(max_examples=3000, deadline=None)
@given(st.one_of(st.binary(max_size=120),
                 st.builds(lambda v, b: v + b, st.sampled_from([b"\x45\x00", b"\x46\x00", b"\x60\x00"]),
                           st.binary(max_size=120))))
def test_compiled_packet_decoder_equals_the_source(data: bytes) -> None:
    from blockgate import packet

    mod = PURE["packet"]
    got, want = outcome(packet.parse_ip, data), outcome(mod.parse_ip, data)
    assert got[0] == want[0]
    if got[0] == "ok":
        assert tuple(got[1]) == tuple(want[1])
    else:
        assert got == want


_LABELS = st.lists(st.sampled_from(["a", "b", "xn--p1ai", "_x", ""]), min_size=1, max_size=5).map(".".join)


@settings(max_examples=1500, deadline=None)
@given(st.lists(st.lists(st.tuples(_LABELS, st.integers(1, 3), st.booleans()), max_size=10),
                min_size=1, max_size=3),
       st.lists(_LABELS | st.text(alphabet="ab.", max_size=14), min_size=1, max_size=25))
def test_compiled_matcher_equals_the_source(sources: list[list[tuple[str, int, bool]]],
                                            queries: list[str]) -> None:
    """The compiled matcher walks a name's bytes (``match_compiled``), the interpreted one
    partitions it: the same rule for every name, odd ones (empty labels, leading and
    trailing dots) included."""
    from blockgate import trie

    mod = PURE["trie"]
    assert trie._NATIVE and not mod._NATIVE

    def build(t: Any) -> Any:
        infos = []
        for i, specs in enumerate(sources):
            rules = FakeRules()
            for name, kind, allow in specs:
                rules.add(name, trie.Kind(kind), allow)
            infos.append(t.SourceInfo(f"s{i}", rules=rules))
        return t.compile_rules(infos)

    def answer(m: Any, q: str) -> tuple[bytes, int, bool, int, int] | None:
        r = m.match(q.encode())
        return None if r is None else (r.key, int(r.kind), r.allow, r.rule_class.source_index, r.ref)

    compiled, interpreted = build(trie), build(mod)
    for q in queries:
        assert answer(compiled, q) == answer(interpreted, q), q


PURE: dict[str, ModuleType] = {}


@pytest.fixture(autouse=True, scope="module")
def _pure_modules() -> Any:
    PURE.update({n: pure(n) for n in ("dnswire", "packet", "trie")})
    yield
    for n in list(PURE):
        sys.modules.pop(f"_pure_{n}", None)
    PURE.clear()


def replay_lines(pythonpath: Path | None, cfg: Path, files: list[str]) -> list[dict[str, Any]]:
    env = dict(os.environ)
    if pythonpath is not None:
        env["PYTHONPATH"] = str(pythonpath)
    res = subprocess.run([sys.executable, "-m", "blockgate", "replay", "--json", "--config", str(cfg),
                          *files], capture_output=True, text=True, timeout=300, env=env)
    assert res.returncode == 0, res.stderr
    lines = [json.loads(x) for x in res.stdout.splitlines()]
    summary = lines[-1]
    assert summary.get("summary")
    for key in [k for k in summary if "per_s" in k or k.endswith("_s") or "seconds" in k]:
        del summary[key]  # timings differ; every count must not
    return lines


def test_compiled_replay_decides_every_fixture_as_the_sources_do(tmp_path: Path) -> None:
    # The interpreted package: the sources alone, no extension beside them.
    pure_src = tmp_path / "pure"
    shutil.copytree(SRC / "blockgate", pure_src / "blockgate",
                    ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    (tmp_path / "block.txt").write_text("google.com\ncloudflare-ech.com\n*.gravatar.com\nexample.com\n")
    cfg = tmp_path / "blockgate.yaml"
    cfg.write_text(yaml.safe_dump({
        "sources": [{"name": "registry", "format": "domains", "path": "block.txt",
                     "options": {"scope": "subtree"}}],
        "sni": {"ports": [443, 4443, 8013, 8443]}}))
    files = sorted(str(p) for p in PCAPS.iterdir() if p.suffix in (".pcap", ".pcapng"))
    check = subprocess.run([sys.executable, "-c", "import blockgate.sniengine as m; print(m.__file__)"],
                           capture_output=True, text=True, env={**os.environ, "PYTHONPATH": str(pure_src)})
    assert check.stdout.strip().endswith("sniengine.py"), check.stdout + check.stderr
    compiled = replay_lines(None, cfg, files)
    interpreted = replay_lines(pure_src, cfg, files)
    assert sum(1 for r in compiled if r.get("verdict") == "block") > 10
    assert compiled == interpreted


def test_version_names_the_compiled_modules() -> None:
    res = subprocess.run([sys.executable, "-m", "blockgate", "--version"], capture_output=True,
                         text=True, timeout=60)
    assert res.returncode == 0, res.stderr
    listed = " ".join(res.stdout.split()).split("compiled: ", 1)[1].rstrip(")").split(", ")
    assert sorted(listed) == sorted(NAMES)
