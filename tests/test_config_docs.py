"""docs/configuration.md is generated from the schema and must be current: every key of every
section, with its type, default and choices, read back from the committed Markdown."""

from __future__ import annotations

import importlib.util
import re
import subprocess
import sys
from pathlib import Path
from types import ModuleType

import pytest

from blockgate.config import SECTIONS
from blockgate.lists import FORMATS, format_options

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "gen_config_docs.py"
DOC = ROOT / "docs" / "configuration.md"


def generator() -> ModuleType:
    spec = importlib.util.spec_from_file_location("gen_config_docs", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def tables(text: str) -> dict[str, list[list[str]]]:
    """Heading (without ``## `` and backticks) -> rows of its table, as cells."""
    out: dict[str, list[list[str]]] = {}
    heading = ""
    for line in text.splitlines():
        if line.startswith("## "):
            heading = line[3:].strip("`")
            out[heading] = []
        elif line.startswith("| ") and not line.startswith(("| key |", "| format |")):
            cells = [c.strip() for c in re.split(r"(?<!\\)\|", line)[1:-1]]
            out[heading].append(cells)
    return out


def test_committed_file_is_current() -> None:
    assert DOC.read_text(encoding="utf-8") == generator().render(), "run `make docs`"


def test_check_mode() -> None:
    done = subprocess.run([sys.executable, str(SCRIPT), "--check"], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr


def test_check_mode_fails_on_a_stale_file(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generator()
    stale = tmp_path / "configuration.md"
    stale.write_text(gen.render().replace("| `workers` |", "| `worker` |"))
    monkeypatch.setattr(gen, "OUT", stale)
    assert gen.main(["--check"]) == 1
    assert gen.main([]) == 0 and gen.main(["--check"]) == 0


SECTION_HEADINGS = {"": "Top level", "sources[]": "sources[]"}


@pytest.mark.parametrize("section", list(SECTIONS), ids=[s or "top" for s in SECTIONS])
def test_every_key_with_its_choices(section: str) -> None:
    rows = tables(DOC.read_text(encoding="utf-8"))[SECTION_HEADINGS.get(section, section)]
    got = {r[0].strip("`"): r for r in rows}
    keys = {k: spec for k, spec in SECTIONS[section].items() if spec.kind != "section"}
    assert set(got) == set(keys)
    for key, spec in keys.items():
        _key, kind, default, choices, doc = got[key]
        assert kind and default and doc, key
        assert [c.strip("`") for c in choices.split(", ") if c] == list(spec.choices), key
        if spec.required:
            assert default == "required"


def test_format_options() -> None:
    rows = tables(DOC.read_text(encoding="utf-8"))["Format options"]
    got = {(r[0].strip("`"), r[1].strip("`")): r[2] for r in rows}
    want = {(fmt, opt) for fmt in FORMATS for opt in format_options(fmt)}
    assert {k for k in got if k[1] != "(none)"} == want
    for (fmt, opt), values in got.items():
        if opt != "(none)":
            allowed = format_options(fmt)[opt]
            assert values == (", ".join(f"`{v}`" for v in allowed) if allowed else "free text")


def test_an_undescribed_kind_stops_the_generator(monkeypatch: pytest.MonkeyPatch) -> None:
    gen = generator()
    monkeypatch.delitem(gen.KINDS, "duration")
    with pytest.raises(SystemExit, match="duration"):
        gen.render()
