"""A patched matcher answers exactly as one compiled from scratch on the same sources.

``patch_source`` compares a new version of one source with the rule set in force and
``Patch.apply`` writes only the differences; every answer (rule name, kind, allow, source,
action, origin) and the counts must then equal those of ``compile_rules`` on the new sources.
"""

from __future__ import annotations

import random
from array import array

from hypothesis import given, settings
from hypothesis import strategies as st
from test_trie import FakeRules

from blockgate.policy import Action
from blockgate.trie import PATCH_MIN_ROOM, Kind, Matcher, Patch, SourceInfo, compile_rules, patch_source

E, S, W = Kind.EXACT, Kind.SUBTREE, Kind.WILDCARD
# (name, kind, allow, action override)
Spec = tuple[str, Kind, bool, Action | None]


def rules_of(specs: list[Spec]) -> FakeRules:
    rules = FakeRules()
    for name, kind, allow, action in specs:
        rules.add(name, kind, allow, action)
    return rules


def infos(sources: list[list[Spec]], seed: int | None = None) -> list[SourceInfo]:
    """``seed``: refs in a shuffled order, as a parser that takes a file in several passes
    gives them (the earliest rule is the lowest ref, not the first in the columns)."""
    out = []
    for i, specs in enumerate(sources):
        rules = rules_of(specs)
        if seed is not None:
            refs = list(rules.refs)
            random.Random(seed + i).shuffle(refs)
            rules.refs = array("I", refs)
        out.append(SourceInfo(f"s{i}", action=Action.NXDOMAIN, rules=rules))
    return out


def answer(m: Matcher, key: bytes) -> tuple[object, ...] | None:
    r = m.match(key)
    if r is None:
        return None
    return (r.key, r.kind, r.allow, r.source, r.rule_class.source_index, r.action, r.origin)


def probes(*sources: list[Spec]) -> list[bytes]:
    out = {b"a", b"z.q", b"deep.x.y.z"}
    for specs in sources:
        for name, *_ in specs:
            out.update((name.encode(), b"w." + name.encode(), b"v.w." + name.encode()))
    return sorted(out)


def assert_same(patched: Matcher, fresh: Matcher, keys: list[bytes]) -> None:
    for k in keys:
        assert answer(patched, k) == answer(fresh, k), k
    for stat in ("shadowed", "self_names", "below_names"):
        assert patched.stats[stat] == fresh.stats[stat], stat
    assert patched.names == fresh.names
    assert len(patched) == len(fresh)


def patch(m: Matcher, index: int, info: SourceInfo) -> Matcher:
    p = patch_source(m, index, info)
    assert isinstance(p, Patch), p
    return p.apply()


labels = st.lists(st.sampled_from(["a", "b", "c", "xn--p1ai", "_x"]), min_size=1, max_size=4)
spec = st.tuples(labels.map(".".join), st.sampled_from([E, S, W]), st.booleans(),
                 st.sampled_from([None, None, Action.REFUSED, Action.SINKHOLE]))
source = st.lists(spec, max_size=12)


@settings(max_examples=500, deadline=None)
@given(st.lists(source, min_size=1, max_size=3), st.lists(st.tuples(st.integers(0, 2), source),
                                                          min_size=1, max_size=4),
       st.one_of(st.none(), st.integers(0, 1000)))
def test_patches_answer_as_a_compile_from_scratch(sources: list[list[Spec]],
                                                  versions: list[tuple[int, list[Spec]]],
                                                  seed: int | None) -> None:
    """Several versions in a row, of any source: after each, patched == compiled."""
    m = compile_rules(patchable=True, sources=infos(sources, seed))
    current = list(sources)
    for which, specs in versions:
        index = which % len(current)
        current[index] = specs
        new = infos(current, seed)
        m = patch(m, index, new[index])
        assert_same(m, compile_rules(new, patchable=True), probes(*current, *sources))


def test_a_big_list_with_hash_clashes_and_duplicates() -> None:
    """200k names (some in ``overflow`` by hash clash), names listed twice, a second source
    sharing names: removed, added and moved rules all answer from the new version."""
    rnd = random.Random(11)
    names = sorted({"".join(rnd.choice("abcdefghij0123") for _ in range(12)) + ".test"
                    for _ in range(200_000)})
    v0: list[Spec] = [(n, E, False, None) for n in names]
    v0 += [(n, S, False, None) for n in names[:50]]  # a subtree rule too: both sides
    v0 += [(n, E, False, Action.REFUSED) for n in names[100:110]]  # listed twice
    other: list[Spec] = [(n, E, True, None) for n in names[200:220]] + [("extra.test", S, False, None)]
    m = compile_rules(patchable=True, sources=infos([v0, other]))
    assert m._self.overflow and m._self.extra
    # v1: 300 names gone (some of them listed twice, some shared with the other source),
    # 400 new ones, one line added at the top (every origin moves), a rule's action changed.
    # names answered from ``overflow`` by hash clash leave and come back too
    gone = set(names[90:390]) | {k.decode() for k in list(m._self.overflow)[:4]}
    v1: list[Spec] = [("new-top.test", E, False, None)]
    v1 += [(n, E, False, None) for n in names if n not in gone]
    v1 += [(f"added{i}.test", E, False, None) for i in range(400)]
    v1 += [(names[5], E, False, Action.SINKHOLE)]
    v1 += [(n, W, False, None) for n in names[:20]]
    m1 = patch(m, 0, infos([v1, other])[0])
    fresh = compile_rules(patchable=True, sources=infos([v1, other]))
    keys = probes(v1, v0, other)
    assert_same(m1, fresh, keys)
    assert m1.match(names[100].encode()) is None  # was listed twice, now gone
    rule = m1.match(names[210].encode())
    assert rule is not None and rule.source == "s1"  # the other source's allow, as before
    # and back to v0 (the removed names come back through overflow)
    m2 = patch(m1, 0, infos([v0, other])[0])
    assert_same(m2, compile_rules(patchable=True, sources=infos([v0, other])), keys)


def test_an_unchanged_list_changes_nothing() -> None:
    specs: list[Spec] = [(f"n{i}.ru", E, False, None) for i in range(1000)]
    m = compile_rules(patchable=True, sources=infos([specs]))
    clashes = dict(m._self.overflow)  # names that share 30 bits of hash: some hash seeds give a pair
    refs = m._self.ref.tobytes()
    p = patch_source(m, 0, infos([specs])[0])
    assert isinstance(p, Patch)
    assert (p.added, p.removed, p.changed) == (0, 0, 0)
    m1 = p.apply()
    assert m1._self.overflow == clashes and m1._self.only >= 0 and m1._self.patched == 0
    assert m1._self.ref.tobytes() == refs
    assert_same(m1, compile_rules(patchable=True, sources=infos([specs])), probes(specs))


def test_what_takes_a_compile_from_scratch() -> None:
    specs: list[Spec] = [(f"n{i}.ru", E, False, None) for i in range(100)]
    m = compile_rules(patchable=True, sources=infos([specs]))
    moved = SourceInfo("s0", action=Action.REFUSED, rules=rules_of(specs))
    assert "settings" in str(patch_source(m, 0, moved))
    assert "not in the rule set" in str(patch_source(m, 3, infos([specs])[0]))
    plain = compile_rules(infos([specs]))  # the lookup structure alone, as ``bench/lookup.py``
    assert "without what a patch needs" in str(patch_source(plain, 0, infos([specs])[0]))
    many = specs + [(f"m{i}.ru", E, False, None) for i in range(PATCH_MIN_ROOM + 1)]
    assert "since the compile" in str(patch_source(m, 0, infos([many])[0]))


def test_room_is_counted_across_patches() -> None:
    """Patched names add up from one patch to the next, until a compile from scratch: 300
    names added (300), then swapped for 300 others (900), then again (1,500 > 1,024)."""
    assert PATCH_MIN_ROOM == 1024
    base: list[Spec] = [(f"n{i}.ru", E, False, None) for i in range(100)]
    m = compile_rules(patchable=True, sources=infos([base]))
    for step in range(3):
        specs = base + [(f"v{step}-{i}.ru", E, False, None) for i in range(300)]
        got = patch_source(m, 0, infos([specs])[0])
        if step < 2:
            assert isinstance(got, Patch), got
            m = got.apply()
            assert_same(m, compile_rules(patchable=True, sources=infos([specs])), probes(specs))
        else:
            assert isinstance(got, str) and "since the compile" in got
