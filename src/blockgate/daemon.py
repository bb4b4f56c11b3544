"""The composition root: reads the sources through the adapters and builds the rule set.

The long-running service (workers, signals) is wired here too as it grows; the command
line sits on top and only parses arguments and prints.
"""

from __future__ import annotations

import time

from blockgate.adapters.fetch import load_sources, rss_bytes
from blockgate.config import Config
from blockgate.engine import RuleSet


def build_ruleset(config: Config) -> tuple[RuleSet, float, int]:
    """Load every source and compile them: the rule set, seconds taken, RSS growth."""
    t0, m0 = time.perf_counter(), rss_bytes()
    loaded = load_sources(config)
    ruleset = RuleSet(loaded)
    return ruleset, time.perf_counter() - t0, rss_bytes() - m0
