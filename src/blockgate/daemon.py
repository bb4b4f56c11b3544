"""The composition root: ``blockgate run`` is a ``Supervisor`` (supervisor.py) forking workers
(workers.py); ``compile`` and ``lookup`` load and compile without either.
"""

from __future__ import annotations

import logging
import os
import sys
import time

from blockgate.adapters.fetch import load_sources, rss_bytes
from blockgate.config import Config
from blockgate.engine import RuleSet
from blockgate.supervisor import Supervisor, load_config

__all__ = ["Supervisor", "build_ruleset", "load_config", "run", "setup_logging"]


def build_ruleset(config: Config) -> tuple[RuleSet, float, int]:
    """Load every source and compile them: the rule set, seconds taken, RSS growth
    (``compile`` and ``lookup``: no daemon, no network)."""
    t0, m0 = time.perf_counter(), rss_bytes()
    ruleset = RuleSet(load_sources(config))
    return ruleset, time.perf_counter() - t0, rss_bytes() - m0


def run(config: Config, config_path: str | None = None) -> int:
    supervisor = Supervisor(config, config_path)
    code = supervisor.start()
    if code is not None:
        return code
    return supervisor.run()


def setup_logging(level: str) -> None:
    """Logs go to stderr (the journal under systemd, which stamps them itself). The decision
    log (``blockgate.decisions``) writes bare JSON lines, whatever ``log.level`` is: its own
    switch is ``log.decisions``."""
    under_systemd = "JOURNAL_STREAM" in os.environ or "INVOCATION_ID" in os.environ
    fmt = "%(name)s: %(message)s" if under_systemd else "%(asctime)s %(name)s: %(message)s"
    logging.basicConfig(stream=sys.stderr, level=level.upper(), format=fmt)
    decisions = logging.getLogger("blockgate.decisions")
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(logging.Formatter("%(message)s"))
    decisions.addHandler(handler)
    decisions.setLevel(logging.INFO)
    decisions.propagate = False
