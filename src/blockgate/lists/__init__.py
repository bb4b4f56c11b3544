"""Blocklist formats: one module per format, each with ``parse(inputs, options)`` and ``OPTIONS``.

Config names map to modules here; a module is imported only when its format is used.
"""

from __future__ import annotations

import importlib
from collections.abc import Mapping, Sequence
from typing import Final, Protocol, cast

from blockgate.lists.base import Input, ParsedList

_MODULES: Final = {
    "rkn-xml": "rknxml",
    "zi-csv": "zicsv",
    "rpz": "rpz",
    "hosts": "hosts",
    "domains": "domains",
    "adblock": "adblock",
    "dnsmasq": "dnsmasq",
}
FORMATS: Final = tuple(_MODULES)


class Format(Protocol):
    OPTIONS: Mapping[str, tuple[str, ...]]

    def parse(self, inputs: Sequence[Input], options: Mapping[str, str] | None = None) -> ParsedList: ...


def format_module(fmt: str) -> Format:
    return cast(Format, importlib.import_module(f"blockgate.lists.{_MODULES[fmt]}"))


def format_options(fmt: str) -> Mapping[str, tuple[str, ...]]:
    """Option name -> allowed values (first is the default; empty tuple = free text)."""
    return format_module(fmt).OPTIONS


def parse(fmt: str, inputs: Sequence[Input], options: Mapping[str, str] | None = None) -> ParsedList:
    """Parse one source. raises only ListFormatError; anything else is a bug."""
    defaults = {k: v[0] for k, v in format_options(fmt).items() if v}
    return format_module(fmt).parse(inputs, {**defaults, **(options or {})})
