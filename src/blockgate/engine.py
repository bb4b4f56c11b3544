"""The facade every adapter drives: compiled rules in, decisions out.

A ``RuleSet`` is not changed while it serves: a new list means a new RuleSet, either
compiled from scratch or made by patching the one in force in the process that holds it
(``RuleSet.patch``; the old object is not used afterwards). The engine keeps no clock and
does no I/O; adapters hand it bytes and names.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Protocol

from blockgate.config import Config, SourceConfig
from blockgate.dnsengine import Delivery, DnsEngine, make_settings, make_synth
from blockgate.domain import input_key
from blockgate.errors import DomainError
from blockgate.lists.base import ParsedList
from blockgate.sniengine import Decision, Event, SniEngine, make_sni_settings
from blockgate.sniengine import Settings as SniSettings
from blockgate.trie import Differ, Matcher, Patch, Rule, SourceInfo, compile_rules, patch_source
from blockgate.verdict import Verdict, verdict_of


@dataclass(slots=True)
class LoadedSource:
    """One source after reading: its parsed list (or why there is none) and the cost."""

    config: SourceConfig
    parsed: ParsedList | None = None
    error: str | None = None
    seconds: float = 0.0
    memory: int = 0
    kinds: Counter[str] = field(default_factory=Counter)

    @property
    def rules(self) -> int:
        return sum(self.kinds.values())


def _info(c: SourceConfig, parsed: ParsedList | None = None) -> SourceInfo:
    """A configured source as the matcher knows it."""
    return SourceInfo(c.name, c.format, c.category, c.action, int(c.ede), parsed)


class RuleSet:
    """Every loaded source compiled into one matcher, in config (precedence) order."""

    def __init__(self, loaded: Sequence[LoadedSource], matcher: Matcher | None = None) -> None:
        self.loaded = list(loaded)
        if matcher is None:
            matcher = self._compile()
        self.matcher: Matcher = matcher
        self.match = matcher.match

    def _compile(self) -> Matcher:
        infos = []
        for ls in self.loaded:
            if ls.parsed is None:
                continue
            if ls.parsed.streamed:
                raise ValueError(f"source {ls.config.name}: a streamed parse cannot be compiled")
            ls.kinds = ls.parsed.kind_counts()
            infos.append(_info(ls.config, ls.parsed))
        matcher = compile_rules(infos, patchable=True)  # the daemon patches it on swaps
        for ls in self.loaded:
            if ls.parsed is not None:
                ls.parsed.release()  # the matcher holds the rules now
        return matcher

    @property
    def rules(self) -> int:
        return sum(ls.rules for ls in self.loaded)

    def _index(self, config: SourceConfig) -> int | str:
        """The source's position among the matcher's sources, or why it cannot be patched."""
        infos = [ls for ls in self.loaded if ls.parsed is not None]
        index = next((i for i, ls in enumerate(infos) if ls.config.name == config.name), -1)
        if index < 0:
            return "the source has no list in the rule set in force"
        if infos[index].config != config:
            return "the source's settings changed"
        return index

    def differ(self, config: SourceConfig) -> Differ | None:
        """A sink for a streaming parse of a new version of ``config``'s source, or None."""
        index = self._index(config)
        if isinstance(index, str):
            return None
        return Differ(self.matcher, index, _info(config))

    def patch(self, new: LoadedSource) -> Patch | str:
        """What changes if ``new`` (a new version of one source, same settings) replaces its
        copy here; or why that takes a compile from scratch. Writes nothing. A streamed
        parse was compared while it was read, by the Differ it went to."""
        index = self._index(new.config)
        if isinstance(index, str):
            return index
        if new.parsed is None:
            return "the source has no list"
        info = _info(new.config, new.parsed)
        sink = new.parsed.sink
        if sink is None:
            return patch_source(self.matcher, index, info)
        if not isinstance(sink, Differ) or sink.matcher is not self.matcher or sink.index != index:
            return "the list was compared with a rule set no longer in force"
        return sink.finish(info)

    def patched(self, new: LoadedSource, patch: Patch) -> RuleSet:
        """Write ``patch`` (from ``self.patch(new)``) and return the rule set it makes.
        ``self`` must not serve afterwards."""
        assert new.parsed is not None
        new.kinds = new.parsed.kind_counts()
        matcher = patch.apply()
        new.parsed.release()
        loaded = [new if ls.config.name == new.config.name else ls for ls in self.loaded]
        return RuleSet(loaded, matcher)


@dataclass(frozen=True, slots=True)
class Lookup:
    name: str
    key: bytes | None
    verdict: Verdict
    rule: Rule | None
    error: str | None = None


class Engine:
    """Decisions for names (and, with the DNS and SNI adapters, for packets)."""

    def __init__(self, config: Config, ruleset: RuleSet) -> None:
        self.config = config
        self.ruleset = ruleset

    def lookup(self, name: str) -> Lookup:
        """A name typed by a person: Unicode is looked up by its A-label."""
        try:
            key = input_key(name)
        except DomainError as exc:
            return Lookup(name, None, Verdict.UNKNOWN, None, f"{exc.reason}: {exc}")
        rule = self.ruleset.match(key)
        return Lookup(name, key, verdict_of(rule), rule)


# The DNS decisions live in ``dnsengine``, the packet (SNI) decisions in ``sniengine``;
# adapters reach them through this facade.
class SupervisorLink(Protocol):
    """A worker process's line to its supervisor (``adapters.control.Channel`` is one).

    In: ``"stats"`` (report the counters now) and ``"drain"`` (finish and exit), or None
    from ``receive`` once the supervisor is gone. Out: ``("ready",)`` once serving,
    ``("stats", Stats)`` when asked, ``("final", Stats)`` last.
    """

    def fileno(self) -> int: ...

    def send(self, message: Any) -> bool: ...

    def receive(self) -> list[Any] | None: ...


__all__ = ["Decision", "Delivery", "DnsEngine", "Engine", "Event", "LoadedSource", "Lookup", "RuleSet",
           "SniEngine", "SniSettings", "SupervisorLink", "make_settings", "make_sni_settings", "make_synth"]
