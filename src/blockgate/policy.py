"""What an operator can ask blockgate to do with a blocked name, and how it is explained.

The codes here are stored per rule in one byte (see ``lists.base``), so they are small stable
integers; the config spells them as the lowercase names in ``ACTION_NAMES``.
"""

from __future__ import annotations

from enum import IntEnum
from typing import Final


class Action(IntEnum):
    """The answer given for a blocked name (DNS) — TLS/QUIC always stop the flow."""

    NXDOMAIN = 1
    NODATA = 2
    REFUSED = 3
    SINKHOLE = 4
    DROP = 5
    TCP_ONLY = 6

    @property
    def config_name(self) -> str:
        return self.name.lower().replace("_", "-")


ACTION_NAMES: Final[dict[str, Action]] = {a.config_name: a for a in Action}
DEFAULT_ACTION: Final = Action.NXDOMAIN


class EdeCode(IntEnum):
    """Extended DNS Error info-codes for block answers (RFC 8914 §4.16-4.18).

    https://www.rfc-editor.org/rfc/rfc8914#section-4.16
    """

    BLOCKED = 15
    CENSORED = 16
    FILTERED = 17


EDE_NAMES: Final[dict[str, EdeCode]] = {e.name.lower(): e for e in EdeCode}

# Formats whose entries are a regulator's orders: their blocks are "Censored" (EDE 16) by
# default, everything else "Blocked" (EDE 15).
REGISTRY_FORMATS: Final = frozenset({"rkn-xml", "zi-csv"})


def default_ede(fmt: str) -> EdeCode:
    return EdeCode.CENSORED if fmt in REGISTRY_FORMATS else EdeCode.BLOCKED


def block_text(source: str, record_id: int | None, decision: object | None) -> str:
    """EDE EXTRA-TEXT of a block: the source, and the registry record and decision if known."""
    parts = [f"blockgate: {source}"]
    if record_id:
        parts.append(f"record {record_id}")
    if decision is not None and str(decision):
        parts.append(f"decision {decision}")
    return "; ".join(parts)
