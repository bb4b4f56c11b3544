"""Build of blockgate: the metadata is in pyproject.toml; this file adds the compiled modules.

The per-packet and per-query modules (``COMPILED``, dotted names under ``blockgate``; the
replay adapter's loop and output lines, and the DNS server's UDP loop, are per packet too)
are compiled to C extensions with mypyc from the same type-checked sources; the interpreter
imports an extension before a ``.py`` of the same name. The matcher (``trie``) is compiled too: its lookup walks the name's bytes
natively there (``bench/lookup.py``). Everything else stays interpreted.

``BLOCKGATE_COMPILE`` chooses:

* ``auto`` (default): compile; if that is impossible here (no C compiler, no headers, mypy
  failing), say so and build the pure-Python package, which behaves the same, slower.
* ``require``: compile or fail the build (``make`` uses this, so tests and benchmarks run
  what operators run).
* ``no``: pure Python.
"""

from __future__ import annotations

import os
import sys

from setuptools import setup

COMPILED = [
    "cursor",
    "packet",
    "tls",
    "quic",
    "flows",
    "sniengine",
    "dnswire",
    "dnsengine",
    "decisions",
    "verdict",
    "pcap",
    "adapters.replay",
    "adapters.dns_server",
    "trie",
]


def ext_modules() -> list[object]:
    mode = os.environ.get("BLOCKGATE_COMPILE", "auto").strip().lower()
    if mode not in ("auto", "require", "no"):
        sys.exit(f"setup.py: BLOCKGATE_COMPILE={mode!r}: expected auto, require or no")
    if mode == "no":
        return []
    try:
        from mypyc.build import mypycify

        return list(mypycify([f"src/blockgate/{m.replace('.', '/')}.py" for m in COMPILED],
                             opt_level="3", group_name="blockgate_native"))
    except (Exception, SystemExit) as exc:  # mypy reports type errors by SystemExit
        if mode == "require":
            raise
        print(f"setup.py: WARNING: building blockgate without its compiled modules ({exc!r});"
              " it works the same, slower. Set BLOCKGATE_COMPILE=require to make this an error.",
              file=sys.stderr)
        return []


setup(ext_modules=ext_modules())
