"""The compiled matcher against its documented precedence and a naive reference."""

from __future__ import annotations

import random
from array import array
from dataclasses import dataclass, field

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.lists.base import Origin, make_flags
from blockgate.policy import Action
from blockgate.trie import Kind, Matcher, SourceInfo, compile_rules

# (name, kind, allow) as a rule line in a test table
Spec = tuple[str, Kind, bool]


@dataclass
class FakeRules:
    """A minimal rule source: columns as the parsers produce them, ref = position + 1."""

    keys: list[bytes] = field(default_factory=list)
    flags: bytearray = field(default_factory=bytearray)
    refs: array[int] = field(default_factory=lambda: array("I"))
    payloads: dict[int, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def add(self, name: str, kind: Kind, allow: bool = False, action: Action | None = None) -> None:
        self.keys.append(name.encode())
        self.flags.append(make_flags(kind, allow, action))
        self.refs.append(len(self.keys))

    def origin(self, ref: int) -> Origin:
        return Origin(f"rules:{ref}")


def build(*sources: list[Spec]) -> Matcher:
    infos = []
    for i, specs in enumerate(sources):
        rules = FakeRules()
        for name, kind, allow in specs:
            rules.add(name, kind, allow)
        infos.append(SourceInfo(f"s{i}", rules=rules))
    return compile_rules(infos)


def naive_match(rules: list[tuple[bytes, Kind, bool, int, int]],
                key: bytes) -> tuple[bytes, Kind, bool, int, int] | None:
    """Reference semantics: a linear scan over ``(name, kind, allow, source, order)``.

    Among the rules that apply to ``key`` the most specific name wins; at the same name
    allow beats block, then exact beats subtree/wildcard, then the earlier source, then the
    earlier rule of the file.
    """
    best: tuple[tuple[int, int, int, int, int], tuple[bytes, Kind, bool, int, int]] | None = None
    for rule in rules:
        name, kind, allow, src, order = rule
        if name == key:
            if kind is Kind.WILDCARD:
                continue
        elif key.endswith(b"." + name):
            if kind is Kind.EXACT:
                continue
        else:
            continue
        rank = (-name.count(b"."), 0 if allow else 1, 0 if kind is Kind.EXACT else 1, src, order)
        if best is None or rank < best[0]:
            best = (rank, rule)
    return best[1] if best is not None else None


E, S, W = Kind.EXACT, Kind.SUBTREE, Kind.WILDCARD

PRECEDENCE = [
    # id, sources, query, expected (source index, rule name, kind, allow) or None
    ("exact-only-itself", [[("a.com", E, False)]], "a.com", (0, "a.com", E, False)),
    ("exact-not-below", [[("a.com", E, False)]], "x.a.com", None),
    ("exact-not-above", [[("x.a.com", E, False)]], "a.com", None),
    ("subtree-itself", [[("a.com", S, False)]], "a.com", (0, "a.com", S, False)),
    ("subtree-below", [[("a.com", S, False)]], "x.y.a.com", (0, "a.com", S, False)),
    ("subtree-not-sibling-suffix", [[("a.com", S, False)]], "ba.com", None),
    ("wildcard-not-itself", [[("a.com", W, False)]], "a.com", None),
    ("wildcard-below", [[("a.com", W, False)]], "x.a.com", (0, "a.com", W, False)),
    ("most-specific-allow-below-block",
     [[("a.com", S, False), ("x.a.com", S, True)]], "y.x.a.com", (0, "x.a.com", S, True)),
    ("most-specific-block-below-allow",
     [[("a.com", S, True), ("x.a.com", E, False)]], "x.a.com", (0, "x.a.com", E, False)),
    ("allow-beats-block-same-name",
     [[("a.com", E, False)], [("a.com", E, True)]], "a.com", (1, "a.com", E, True)),
    ("allow-subtree-beats-block-exact-same-name",
     [[("a.com", E, False), ("a.com", S, True)]], "a.com", (0, "a.com", S, True)),
    ("exact-beats-subtree-same-name",
     [[("a.com", S, False)], [("a.com", E, False)]], "a.com", (1, "a.com", E, False)),
    ("first-source-wins-equal-blocks",
     [[("a.com", S, False)], [("a.com", S, False)]], "x.a.com", (0, "a.com", S, False)),
    ("first-source-wins-subtree-vs-wildcard",
     [[("a.com", W, False)], [("a.com", S, False)]], "x.a.com", (0, "a.com", W, False)),
    ("exact-and-wildcard-same-name-itself",
     [[("a.com", E, False), ("a.com", W, False)]], "a.com", (0, "a.com", E, False)),
    ("exact-and-wildcard-same-name-below",
     [[("a.com", E, False), ("a.com", W, False)]], "b.a.com", (0, "a.com", W, False)),
    ("deeper-exact-does-not-hide-wildcard",
     [[("a.com", W, False), ("x.a.com", E, False)]], "y.x.a.com", (0, "a.com", W, False)),
    ("top-level-subtree", [[("ru", S, False)]], "x.example.ru", (0, "ru", S, False)),
    ("top-level-wildcard", [[("ru", W, False)]], "example.ru", (0, "ru", W, False)),
    ("single-label-query", [[("a.com", S, False)]], "com", None),
]


@pytest.mark.parametrize(("sources", "query", "expected"),
                         [p[1:] for p in PRECEDENCE], ids=[p[0] for p in PRECEDENCE])
def test_precedence(sources: list[list[Spec]], query: str,
                    expected: tuple[int, str, Kind, bool] | None) -> None:
    m = build(*sources)
    rule = m.match(query.encode())
    if expected is None:
        assert rule is None
        return
    assert rule is not None
    assert (rule.rule_class.source_index, rule.key.decode(), rule.kind, rule.allow) == expected


def test_rule_carries_source_origin_and_action() -> None:
    rules = FakeRules()
    rules.add("a.com", E)
    rules.add("b.com", S, action=Action.REFUSED)
    m = compile_rules([SourceInfo("local", "domains", "ads", Action.SINKHOLE, rules=rules)])
    a = m.match(b"a.com")
    b = m.match(b"x.b.com")
    assert a is not None and b is not None
    assert (a.source, a.category, a.action, a.origin, a.pattern) == (
        "local", "ads", Action.SINKHOLE, "rules:1", "a.com")
    assert (b.action, b.origin, b.pattern) == (Action.REFUSED, "rules:2", "b.com and below")


def test_overflow_entries_resolve_to_their_own_rule() -> None:
    """With 200k names, some share 30 bits of hash (expected ~19 pairs): every name must
    still come back with its own origin, through the overflow table."""
    rnd = random.Random(7)
    rules = FakeRules()
    names = set()
    while len(names) < 200_000:
        names.add("".join(rnd.choice("abcdefghij0123") for _ in range(12)) + ".test")
    for n in sorted(names):
        rules.add(n, E)
    m = compile_rules([SourceInfo("big", rules=rules)])
    assert m._self.overflow, "no hash clash at 200k names: the overflow path went untested"
    for i, key in enumerate(rules.keys, 1):
        rule = m.match(key)
        assert rule is not None and rule.ref == i


def test_many_classes_use_wide_class_ids() -> None:
    """More than 255 rule classes (sources x flags) switch the class column to 16 bits."""
    sources = [[(f"n{i}.com", E, False), (f"m{i}.com", S, True)] for i in range(140)]
    m = build(*sources)
    assert len(m.classes) == 280
    rule = m.match(b"x.m139.com")
    assert rule is not None and rule.source == "s139" and rule.allow


names = st.lists(st.sampled_from(["a", "b", "c", "xn--p1ai", "_x"]), min_size=1, max_size=4)
specs = st.tuples(names.map(".".join), st.sampled_from([E, S, W]), st.booleans())


@settings(max_examples=400, deadline=None)
@given(st.lists(st.lists(specs, max_size=12), min_size=1, max_size=3),
       st.lists(names.map(".".join), min_size=1, max_size=20))
def test_match_equals_naive_reference(sources: list[list[Spec]], queries: list[str]) -> None:
    m = build(*sources)
    flat = [(n.encode(), k, a, s, o) for s, specs_ in enumerate(sources)
            for o, (n, k, a) in enumerate(specs_)]
    for q in queries:
        want = naive_match(flat, q.encode())
        got = m.match(q.encode())
        if want is None:
            assert got is None, q
        else:
            assert got is not None, q
            assert (got.key, got.kind, got.allow, got.rule_class.source_index) == want[:4], q
            assert got.ref == want[4] + 1, q


@pytest.mark.parametrize("top", [False, True], ids=["two-label-rules", "a-top-label-rule"])
def test_names_with_hundreds_of_labels(top: bool) -> None:
    """A TLS server name is not bounded like a DNS name: hundreds of labels still match (and
    miss) as the reference says, on the walk that stops at two labels and the one that goes
    to the top label."""
    specs: list[Spec] = [("x.com", S, False), ("b.x.com", E, True)] + ([("ru", S, False)] if top else [])
    m = build(specs)
    flat = [(n.encode(), k, a, 0, o) for o, (n, k, a) in enumerate(specs)]
    for dots in (126, 127, 128, 129, 130, 131, 132, 300, 1000):
        for tail in (b"x.com", b"b.x.com", b"y.com", b"ru", b"a.ru"):
            key = b"a." * (dots - tail.count(b".")) + tail
            assert key.count(b".") >= dots
            want, got = naive_match(flat, key), m.match(key)
            assert (got.key if got else None) == (want[0] if want else None), (dots, tail)


def test_the_earliest_line_wins_even_when_the_parser_takes_it_later() -> None:
    """The domains parser takes unusual lines (``.x``) before the block's plain and ``*.``
    lines; at one name and equal priority the rule on the earlier line must still win."""
    import io

    from blockgate.lists import domains
    from blockgate.lists.base import Input

    text = b"*.x.com\n.x.com\n.y.com\n*.y.com\n"
    parsed = domains.parse([Input("l.txt", io.BytesIO(text))])
    m = compile_rules([SourceInfo("s", rules=parsed)])
    wx, wy = m.match(b"a.x.com"), m.match(b"a.y.com")
    assert wx is not None and (wx.kind, wx.origin) == (Kind.WILDCARD, "l.txt:1")
    assert wy is not None and (wy.kind, wy.origin) == (Kind.SUBTREE, "l.txt:3")
