"""The package's sources alone, without the compiled extensions beside them (setup.py): put
on ``PYTHONPATH``, they run interpreted. The benchmarks measure them in the same run as the
compiled build, as the baseline of what compiling gains."""

from __future__ import annotations

import shutil
from pathlib import Path

SRC = Path(__file__).resolve().parent.parent / "src" / "blockgate"


def pure_sources(dst: Path) -> Path:
    """Copy the sources to ``dst/blockgate`` (replacing what is there); returns ``dst``."""
    shutil.rmtree(dst / "blockgate", ignore_errors=True)
    shutil.copytree(SRC, dst / "blockgate", ignore=shutil.ignore_patterns("*.so", "__pycache__"))
    return dst
