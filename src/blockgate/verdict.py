"""What blockgate decided about a name, and the words it uses for it everywhere.

``block``: a block rule matched; ``allow``: an allow rule matched (it overrides blocks
below it); ``pass``: no rule matched; ``unknown``: no name could be seen (SNI flows that
ran out of bounds, ClientHellos without a name).
"""

from __future__ import annotations

from enum import StrEnum

from blockgate.trie import Rule


class Verdict(StrEnum):
    BLOCK = "block"
    ALLOW = "allow"
    PASS = "pass"
    UNKNOWN = "unknown"


def verdict_of(rule: Rule | None) -> Verdict:
    """The one place a match becomes a verdict."""
    if rule is None:
        return Verdict.PASS
    return Verdict.ALLOW if rule.allow else Verdict.BLOCK
