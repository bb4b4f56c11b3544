"""The compiled matcher: every rule of every source, one ``match(key)`` per name.

Semantics (the precedence is documented in the README and tested against a naive matcher):

* Rule kinds: ``EXACT`` (the name only), ``SUBTREE`` (the name and every name below it),
  ``WILDCARD`` (names strictly below it, RPZ's ``*.x``). Each kind exists as block or allow.
* The most specific matching name wins: a rule at ``a.b.c`` beats one at ``b.c``.
* At the same name: allow beats block; then exact beats subtree/wildcard; then the source
  listed first in the config wins; then the rule that came first in its file.

Layout (chosen by ``bench/lookup.py``; see docs/performance.md). A label-per-node trie of
dicts costs ~440 bytes per name and walks one dict per label. Here:

* ``self`` names (an exact or subtree rule applies to the name itself) and ``below`` names
  (a subtree or wildcard rule applies to names under it) are two frozensets of key bytes.
  A lookup is one probe for the whole key, then one probe per parent suffix, nearest first;
  the top-level label is probed only when some rule sits on a single label. A set probe is
  one hash and, usually, one cache line; nothing is allocated but the suffix slices.
* Which rule a hit means (source, kind, origin) is needed only on a hit, so it lives in
  compact arrays reached through the key's hash: buckets of entries sorted by bucket, a
  16-bit tag to tell the entries of a bucket apart, then a class byte and an origin ref per
  entry. Names whose bucket and tag collide (a handful per million) go to a small dict.

Python's ``hash`` of bytes is randomised per process, so the index is built in the process
that uses it (workers fork after compiling and inherit it).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import accumulate, compress, count, islice, repeat
from operator import and_, itemgetter, ne, sub
from typing import TYPE_CHECKING, Any, Final, NamedTuple, Protocol

from blockgate.policy import Action

if TYPE_CHECKING:
    from blockgate.lists.base import Decision, Origin


class Kind(IntEnum):
    EXACT = 1
    SUBTREE = 2
    WILDCARD = 3


# Flag byte of a rule: bits 0-1 kind, bit 2 allow, bits 3-5 action override (0 = none).
KIND_MASK: Final = 0x03
ALLOW: Final = 0x04
ACTION_SHIFT: Final = 3
_SELF_KINDS: Final = frozenset({Kind.EXACT, Kind.SUBTREE})
_BELOW_KINDS: Final = frozenset({Kind.SUBTREE, Kind.WILDCARD})

# A DNS name has at most 127 labels (253 octets); one range object per possible dot count,
# built once, so the walk loop iterates a prebuilt range instead of testing for the last
# label. A TLS server name is unbounded: past that, the walk makes its range.
_MAX_DOTS: Final = 128
_WALK_SKIP_TOP: Final = tuple(range(max(0, n - 1)) for n in range(_MAX_DOTS))
_WALK_ALL: Final = tuple(range(n) for n in range(_MAX_DOTS))
# The index sorts entries by 30 bits of hash (one-digit ints); ~8 entries share a bucket.
_HASH_BITS: Final = 30
_TAG_BITS: Final = 16
_TAG_MASK: Final = (1 << _TAG_BITS) - 1
_LITTLE: Final = sys.byteorder == "little"
_HASH_MASK: Final = (1 << _HASH_BITS) - 1
_PER_BUCKET: Final = 8


class RuleSource(Protocol):
    """What the matcher needs from a parsed source (``lists.base.ParsedList`` is one)."""

    keys: list[bytes]
    flags: bytearray
    refs: array[int]
    payloads: dict[int, tuple[tuple[str, str], ...]]

    def origin(self, ref: int) -> Origin: ...


@dataclass(frozen=True, slots=True)
class SourceInfo:
    """A source as the config names it; ``rules`` gives origins and local data back."""

    name: str
    fmt: str = "domains"
    category: str | None = None
    action: Action | None = None
    ede: int | None = None
    rules: RuleSource | None = field(default=None, compare=False, repr=False)


@dataclass(frozen=True, slots=True)
class RuleClass:
    """Everything rules of one source with one flag byte have in common."""

    source: SourceInfo
    source_index: int
    kind: Kind
    allow: bool
    action: Action | None  # the rule's own action (RPZ, dnsmasq), else the source's
    index: int = 0  # position in ``Matcher.classes``: counters are lists indexed by it

    @property
    def priority(self) -> tuple[int, int, int]:
        """Sort key at one name: allow first, then exact, then config order."""
        return (0 if self.allow else 1, 0 if self.kind is Kind.EXACT else 1, self.source_index)


class _Side:
    """Keys of one side (self or below) and, per key, the winning rule's class and ref.

    The index: 30 bits of each key's hash; their top bits pick a bucket (``off[b]:off[b+1]``,
    about eight entries) and their low 16 bits are the entry's tag, which tells the entries
    of a bucket apart. Entries whose tag is not unique in their bucket go to ``overflow``
    (a few hundred per million names).
    ``find(key)`` must only be asked for a key that is in ``keys``.
    """

    __slots__ = ("bshift", "cls", "keys", "off", "only", "overflow", "ref", "tags")

    def __init__(self, keys: list[bytes], keyset: set[bytes], cls: array[int],
                 ref: array[int]) -> None:
        n = len(keys)
        self.bshift = _HASH_BITS - max(1, (n // _PER_BUCKET).bit_length())
        self.keys = keyset
        distinct = set(cls)
        self.only = distinct.pop() if len(distinct) == 1 else -1
        # Long-lived containers are made first and filled in place by ``_fill_index``; its
        # million temporary ints all die when it returns. A small object allocated while
        # they live (even a loop variable) would pin one of their memory arenas afterwards.
        self.off = array("I")
        self.tags = array("H")
        self.cls = array(cls.typecode)
        self.ref = array("I")
        clash = array("I")
        _fill_index(self, keys, cls, ref, clash)
        self.overflow: dict[bytes, tuple[int, int]] = {
            keys[i]: (self.only if self.only >= 0 else cls[i], ref[i]) for i in clash}

    def find(self, key: bytes) -> tuple[int, int]:
        if self.overflow:
            got = self.overflow.get(key)
            if got is not None:
                return got
        h = hash(key) & _HASH_MASK
        b = h >> self.bshift
        i = self.tags.index(h & _TAG_MASK, self.off[b], self.off[b + 1])
        return (self.only if self.only >= 0 else self.cls[i]), self.ref[i]

    def nbytes(self) -> int:
        arrays = (self.off, self.tags, self.cls, self.ref)
        return sum(a.itemsize * len(a) for a in arrays)


class Rule(NamedTuple):
    """The rule that decided a name. Created only on a hit, so it is a bare tuple; where the
    rule came from is looked up on first use (the hot path needs only ``rule_class``)."""

    rule_class: RuleClass
    key: bytes
    side: _Side

    @property
    def ref(self) -> int:
        return self.side.find(self.key)[1]

    @property
    def kind(self) -> Kind:
        return self.rule_class.kind

    @property
    def allow(self) -> bool:
        return self.rule_class.allow

    @property
    def source(self) -> str:
        return self.rule_class.source.name

    @property
    def category(self) -> str | None:
        return self.rule_class.source.category

    @property
    def action(self) -> Action | None:
        return self.rule_class.action

    def located(self) -> Origin | None:
        """File and line, registry record id and decision, from the source's columns."""
        rules = self.rule_class.source.rules
        return rules.origin(self.ref) if rules is not None else None

    @property
    def origin(self) -> str:
        o = self.located()
        return o.where if o is not None else f"ref {self.ref}"

    @property
    def record_id(self) -> int | None:
        o = self.located()
        return o.record_id if o is not None else None

    @property
    def decision(self) -> Decision | None:
        o = self.located()
        return o.decision if o is not None else None

    @property
    def payload(self) -> tuple[tuple[str, str], ...]:
        rules = self.rule_class.source.rules
        return rules.payloads.get(self.ref, ()) if rules is not None else ()

    @property
    def pattern(self) -> str:
        """The rule as a person would write it: ``name``, ``*.name`` or ``name (subtree)``."""
        name = self.key.decode("ascii", "replace")
        if self.kind is Kind.WILDCARD:
            return "*." + name
        if self.kind is Kind.SUBTREE:
            return name + " and below"
        return name


def _fill_index(side: _Side, keys: list[bytes], cls: array[int], ref: array[int],
                clash: array[int]) -> None:
    """Group the entries by bucket and fill the side's columns.

    A counting sort in one Python pass costs less here than ``sorted`` plus the C-level
    gathers it would need (about 0.6 s against 1.1 s for 900k entries on the reference
    machine). Entries keep their rule order inside a bucket, where ``tags.index`` scans.
    Entries whose tag is not unique in their bucket (found bucket by bucket, in C) stay,
    but their indices go to ``clash``: ``find`` answers them from ``overflow`` first.
    """
    bshift = side.bshift
    nbuckets = 1 << (_HASH_BITS - bshift)
    # An array, not a list: a million 30-bit ints are 32 MiB of objects, 4 MiB here.
    hs = array("I", map(and_, map(hash, keys), repeat(_HASH_MASK)))
    counts = [0] * (nbuckets + 1)
    for h in hs:
        counts[(h >> bshift) + 1] += 1
    bounds = array("I", accumulate(counts))
    del counts
    starts = array("I", bounds)
    n = len(hs)
    placed = array("I", bytes(4 * n))
    refs = array("I", bytes(4 * n))
    many = side.only < 0
    classes = array(cls.typecode, bytes(cls.itemsize * n))
    if many:
        for h, r, c in zip(hs, ref, cls, strict=True):
            b = h >> bshift
            p = starts[b]
            starts[b] = p + 1
            placed[p] = h
            refs[p] = r
            classes[p] = c
    else:
        for h, r in zip(hs, ref, strict=True):
            b = h >> bshift
            p = starts[b]
            starts[b] = p + 1
            placed[p] = h
            refs[p] = r
    twins = _twins(placed, bounds)
    if twins:  # a handful of entries, answered from ``overflow`` before the arrays
        clash.extend(compress(range(n), map(twins.__contains__, hs)))
    side.off.extend(bounds)
    side.ref.extend(refs)
    if many:
        side.cls.extend(classes)
    side.tags.extend(_low16(placed))


def _twins(placed: array[int], bounds: array[int]) -> set[int]:
    """Hash values of the entries whose tag is not unique in their bucket.

    Such entries cannot be told apart by ``tags.index``; they are rare (a few hundred per
    million names) and found bucket by bucket with C-level passes.
    """
    tags = array("H", (h & _TAG_MASK for h in placed)) if len(placed) < 4096 else _low16(placed)
    ends = islice(bounds, 1, None)
    sizes = map(sub, ends, bounds)
    distinct = map(len, map(set, map(tags.__getitem__, map(slice, bounds, islice(bounds, 1, None)))))
    out: set[int] = set()
    for b in compress(count(), map(ne, sizes, distinct)):
        lo, hi = bounds[b], bounds[b + 1]
        seen: dict[int, int] = {}
        for h in placed[lo:hi]:
            t = h & _TAG_MASK
            if t in seen:
                out.add(h)
                out.add(seen[t])
            seen[t] = h
    return out


def _low16(values: array[int]) -> array[int]:
    """The low 16 bits of each 32-bit value, straight from the array's memory."""
    halves = memoryview(values).cast("B").cast("H")
    return array("H", halves[0 if _LITTLE else 1 :: 2].tobytes())


def _picker(order: list[int]) -> Callable[[Sequence[int]], Sequence[int]]:
    """``pick(seq)`` -> the items of ``seq`` at ``order``, in one C-level call."""
    if len(order) == 1:
        only = order[0]
        return lambda seq: (seq[only],)
    if not order:
        return lambda seq: ()
    return itemgetter(*order)


class Matcher:
    """An immutable compiled rule set. ``match(key)`` is the hot path.

    ``key`` is a lowercased ASCII name without the trailing dot, as ``bytes``.
    """

    match: Callable[[bytes], Rule | None]

    def __init__(self, classes: list[RuleClass], self_side: _Side, below_side: _Side,
                 sources: list[SourceInfo], stats: dict[str, Any]) -> None:
        self.classes = classes
        self.sources = sources
        self.stats = stats
        self._self = self_side
        self._below = below_side
        self.match = _make_match(classes, self_side, below_side)

    def __len__(self) -> int:
        return len(self._self.keys) + len(self._below.keys)

    @property
    def names(self) -> int:
        return len(self._self.keys | self._below.keys)

    def index_bytes(self) -> int:
        return self._self.nbytes() + self._below.nbytes()


def _make_match(classes: list[RuleClass], sside: _Side, bside: _Side) -> Callable[[bytes], Rule | None]:
    """Build ``match`` as a closure: every name it touches is a local or a cell.

    A hit on a side with a single rule class costs one tuple; otherwise the class comes from
    the side's index (``_Side.find``).
    """
    self_keys, below_keys = sside.keys, bside.keys
    s_find, b_find = sside.find, bside.find
    s_only = classes[sside.only] if sside.only >= 0 else None
    b_only = classes[bside.only] if bside.only >= 0 else None
    new_rule = tuple.__new__
    rule_type = Rule
    top_level = not all(map(bytes.__contains__, below_keys, repeat(b".")))

    def hit_self(key: bytes) -> Rule:
        return new_rule(rule_type, (s_only or classes[s_find(key)[0]], key, sside))

    def hit_below(s: bytes) -> Rule:
        return new_rule(rule_type, (b_only or classes[b_find(s)[0]], s, bside))

    def match_to_top(key: bytes) -> Rule | None:
        """Used when some rule sits on a single label ("ru"): the walk goes up to it."""
        if key in self_keys:
            return hit_self(key)
        s = key
        n = key.count(46)
        for _ in _WALK_ALL[n] if n < _MAX_DOTS else range(n):
            s = s.partition(b".")[2]
            if s in below_keys:
                return hit_below(s)
        return None

    def match(key: bytes) -> Rule | None:
        # The parents of the name, nearest first, down to two labels; the first three are
        # written out (most names have at most four labels: no loop, no range object).
        # ``count(46)`` with an int needle skips the buffer protocol: ~30 % faster. A hit
        # builds its Rule right here: a helper call would cost ~7 % of the mix.
        if key in self_keys:
            return new_rule(rule_type, (s_only or classes[s_find(key)[0]], key, sside))
        n = key.count(46)
        if n < 2:
            return None
        s = key.partition(b".")[2]
        if s in below_keys:
            return new_rule(rule_type, (b_only or classes[b_find(s)[0]], s, bside))
        if n == 2:
            return None
        s = s.partition(b".")[2]
        if s in below_keys:
            return new_rule(rule_type, (b_only or classes[b_find(s)[0]], s, bside))
        if n == 3:
            return None
        s = s.partition(b".")[2]
        if s in below_keys:
            return new_rule(rule_type, (b_only or classes[b_find(s)[0]], s, bside))
        for _ in _WALK_SKIP_TOP[n - 3] if n - 3 < _MAX_DOTS else range(n - 4):
            s = s.partition(b".")[2]
            if s in below_keys:
                return new_rule(rule_type, (b_only or classes[b_find(s)[0]], s, bside))
        return None

    def match_compiled(key: bytes) -> Rule | None:
        """``match`` for the compiled build: the dots are found by a loop over the bytes
        and each parent is one slice, both native C there (``partition`` is a method call
        and a tuple per parent). Interpreted, a loop per byte is the slower of the two."""
        if key in self_keys:
            return new_rule(rule_type, (s_only or classes[s_find(key)[0]], key, sside))
        prev = -1
        for j in range(len(key)):
            if key[j] == 46:
                if prev >= 0:  # the parent after the previous dot has two labels or more
                    s = key[prev + 1 :]
                    if s in below_keys:
                        return new_rule(rule_type, (b_only or classes[b_find(s)[0]], s, bside))
                prev = j
        return None

    if top_level:
        return match_to_top
    return match_compiled if _NATIVE else match


# This module runs compiled (setup.py): a compiled function has no ``__code__``.
_NATIVE: Final = not hasattr(_make_match, "__code__")


# -- compiling ---------------------------------------------------------------------------


def _side_table(applies: frozenset[Kind]) -> bytes:
    """``flags.translate(table)`` -> 1 where a rule with those flags applies to the side."""
    return bytes(1 if (f & KIND_MASK) in applies else 0 for f in range(256))


_SELF_TABLE: Final = _side_table(_SELF_KINDS)
_BELOW_TABLE: Final = _side_table(_BELOW_KINDS)


@dataclass(slots=True)
class _SideInput:
    """The rules of every source that apply to one side, concatenated in config order."""

    keys: list[bytes] = field(default_factory=list)
    cls: array[int] = field(default_factory=lambda: array("B"))
    ref: array[int] = field(default_factory=lambda: array("I"))

    def extend(self, rules: RuleSource, table: bytes, cls_of: array[int]) -> None:
        mask = rules.flags.translate(table)
        if self.cls.typecode == "B":
            classes: Iterable[int] = rules.flags.translate(cls_of.tobytes())
        else:
            classes = map(cls_of.__getitem__, rules.flags)
        if mask.count(0) == 0:  # every rule applies: no filtering pass
            self.keys.extend(rules.keys)
            self.cls.extend(classes)
            self.ref.extend(rules.refs)
            return
        self.keys.extend(compress(rules.keys, mask))
        self.cls.extend(compress(classes, mask))
        self.ref.extend(compress(rules.refs, mask))

    def dedupe(self, classes: list[RuleClass]) -> tuple[set[bytes], int]:
        """Keep one rule per name: the best priority, then the earliest.

        Returns the set of names (kept by the side) and the number of rules dropped.
        """
        n = len(self.keys)
        # The names listed more than once are found while the set is built: a second sighting
        # finds the name in it already. (A copy of the set, or a Counter of every key, would
        # cost 32-64 MiB more per million names, and this runs while the rule set in force
        # is still in memory: a swap.)
        keyset: set[bytes] = set()
        multi: set[bytes] = set()
        add = keyset.add
        for k in self.keys:
            if k in keyset:
                multi.add(k)
            else:
                add(k)
        if not multi:
            return keyset, 0
        best: dict[bytes, int] = {}
        for i, k in enumerate(self.keys):
            if k in multi:
                j = best.get(k)
                if j is None or classes[self.cls[i]].priority < classes[self.cls[j]].priority:
                    best[k] = i
        keep = bytearray(b"\x01") * n
        for i, k in enumerate(self.keys):
            if k in multi and best[k] != i:
                keep[i] = 0
        self.keys = list(compress(self.keys, keep))
        self.cls = array(self.cls.typecode, compress(self.cls, keep))
        self.ref = array("I", compress(self.ref, keep))
        return keyset, n - len(self.keys)


def compile_rules(sources: Sequence[SourceInfo]) -> Matcher:
    """Compile the rules of ``sources`` (config order; each has ``rules``) into a Matcher.

    The sources' columns are only read; callers may drop them afterwards (origins and local
    data are still asked of ``SourceInfo.rules`` on a hit).
    """
    classes: list[RuleClass] = []
    class_of: list[dict[int, int]] = []  # per source: flag byte -> class id
    for si, src in enumerate(sources):
        local: dict[int, int] = {}
        for flags in sorted(set(src.rules.flags)) if src.rules is not None else ():
            act = flags >> ACTION_SHIFT
            local[flags] = len(classes)
            classes.append(RuleClass(src, si, Kind(flags & KIND_MASK), bool(flags & ALLOW),
                                     Action(act) if act else src.action, len(classes)))
        class_of.append(local)
    code = "H" if len(classes) > 255 else "B"
    sside, bside = _SideInput(cls=array(code)), _SideInput(cls=array(code))
    for src, local in zip(sources, class_of, strict=True):
        if src.rules is None:
            continue
        cls_of = array(code, [local.get(f, 0) for f in range(256)])
        sside.extend(src.rules, _SELF_TABLE, cls_of)
        bside.extend(src.rules, _BELOW_TABLE, cls_of)
    sset, sdrop = sside.dedupe(classes)
    bset, bdrop = bside.dedupe(classes)
    self_side = _Side(sside.keys, sset, sside.cls, sside.ref)
    del sside
    below_side = _Side(bside.keys, bset, bside.cls, bside.ref)
    del bside
    stats: dict[str, Any] = {"shadowed": sdrop + bdrop, "self_names": len(sset),
                             "below_names": len(bset)}
    return Matcher(classes, self_side, below_side, list(sources), stats)
