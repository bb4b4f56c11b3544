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

The daemon's matcher is ``patchable``: a new version of one source is compared with it as
it is parsed (``Differ``) and only the differences are written (``Patch``), so a swap holds
one rule set, not two (see the patching section below).
"""

from __future__ import annotations

import sys
from array import array
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from enum import IntEnum
from itertools import accumulate, compress, count, islice, repeat
from operator import and_, itemgetter, ne, rshift, sub
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


Entry = tuple[int, int]  # (class, ref) of one rule in an index


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
    flags: int = -1  # the flag byte its rules carry in the source's columns

    @property
    def priority(self) -> tuple[int, int, int]:
        """Sort key at one name: allow first, then exact, then config order."""
        return (0 if self.allow else 1, 0 if self.kind is Kind.EXACT else 1, self.source_index)


def _rule_class(src: SourceInfo, si: int, flags: int, index: int) -> RuleClass:
    """The class of the rules of source ``si`` that carry flag byte ``flags``."""
    act = flags >> ACTION_SHIFT
    return RuleClass(src, si, Kind(flags & KIND_MASK), bool(flags & ALLOW),
                     Action(act) if act else src.action, index, flags)


def _settings(src: SourceInfo) -> tuple[str, str, str | None, Action | None, int | None]:
    """What a source's classes depend on besides its rules: a patch needs them unchanged."""
    return (src.name, src.fmt, src.category, src.action, src.ede)


class _Side:
    """Keys of one side (self or below) and, per key, the winning rule's class and ref.

    The index: 30 bits of each key's hash; their top bits pick a bucket (``off[b]:off[b+1]``,
    about eight entries) and their low 16 bits are the entry's tag, which tells the entries
    of a bucket apart. Entries whose tag is not unique in their bucket go to ``overflow``
    (a few hundred per million names).
    ``find(key)`` must only be asked for a key that is in ``keys``.
    """

    __slots__ = ("bshift", "bykey", "cls", "extra", "fp", "keys", "off", "only", "overflow", "patched",
                 "ref", "tags")

    def __init__(self, keys: list[bytes], keyset: set[bytes], cls: array[int],
                 ref: array[int], extra: dict[bytes, tuple[Entry, ...]] | None = None,
                 patchable: bool = False) -> None:
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
        # For patches (``patchable``): per entry, 32 more bits of the key's hash and the key.
        # A patch tells a listed name from the name at its entry by hash alone (62 bits, keyed
        # per process), because reading a key object writes its reference count, which
        # would copy its page away from the workers that share it.
        self.fp = array("I")
        self.bykey: list[bytes] = []
        clash = array("I")
        _fill_index(self, keys, cls, ref, clash, patchable)
        self.overflow: dict[bytes, tuple[int, int]] = {
            keys[i]: (self.only if self.only >= 0 else cls[i], ref[i]) for i in clash}
        # The rules that lost at a name to its winner, (class, ref) each: what a patch needs
        # to find the next winner when the winner's source drops it. Empty without duplicates.
        self.extra: dict[bytes, tuple[Entry, ...]] = extra if extra is not None else {}
        self.patched = 0  # names added or removed by patches since the compile

    def find(self, key: bytes) -> tuple[int, int]:
        if self.overflow:
            got = self.overflow.get(key)
            if got is not None:
                return got
        h = hash(key) & _HASH_MASK
        b = h >> self.bshift
        i = self.tags.index(h & _TAG_MASK, self.off[b], self.off[b + 1])
        return (self.only if self.only >= 0 else self.cls[i]), self.ref[i]

    def entry_of(self, key: bytes) -> int:
        """The index entry that holds ``key``, or -1, by hash alone (``fp``): no key object
        of the side is read. Names in ``overflow`` are the caller's to check first."""
        h = hash(key)
        low = h & _HASH_MASK
        b = low >> self.bshift
        lo, hi = self.off[b], self.off[b + 1]
        tags = self.tags
        tag = low & _TAG_MASK
        fp = self.fp
        want = (h >> 32) & 0xFFFFFFFF
        for i in range(lo, hi):
            if tags[i] == tag and fp[i] == want:
                return i
        return -1

    def nbytes(self) -> int:
        arrays = (self.off, self.tags, self.cls, self.ref, self.fp)
        return sum(a.itemsize * len(a) for a in arrays) + 8 * len(self.bykey)


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
                clash: array[int], patchable: bool = False) -> None:
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
    if patchable:
        # 32 more bits of each key's hash, and the key, in entry order (``_Side.fp``).
        his = array("I", map(and_, map(rshift, map(hash, keys), repeat(32)), repeat(0xFFFFFFFF)))
        fps = array("I", bytes(4 * n))
        bykey: list[bytes] = [b""] * n
        for h, r, c, hi, k in zip(hs, ref, cls, his, keys, strict=True):
            b = h >> bshift
            p = starts[b]
            starts[b] = p + 1
            placed[p] = h
            refs[p] = r
            if many:
                classes[p] = c
            fps[p] = hi
            bykey[p] = k
        del his
        side.fp.extend(fps)
        del fps
        side.bykey = bykey
    elif many:
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
        self.match = _make_match(classes, self_side, below_side, bool(stats.get("top_level", True)))

    def __len__(self) -> int:
        return len(self._self.keys) + len(self._below.keys)

    @property
    def names(self) -> int:
        """Distinct names (kept by the compile and by patches: counting them again would
        read every key object)."""
        return int(self.stats["names"])

    def index_bytes(self) -> int:
        return self._self.nbytes() + self._below.nbytes()


def _make_match(classes: list[RuleClass], sside: _Side, bside: _Side,
                top_level: bool) -> Callable[[bytes], Rule | None]:
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

    def dedupe(self, classes: list[RuleClass]) -> tuple[set[bytes], int, dict[bytes, tuple[Entry, ...]]]:
        """Keep one rule per name: the best priority, then the earliest.

        Returns the set of names (kept by the side), the number of rules dropped, and the
        dropped ones by name (class, ref), for patches.
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
            return keyset, 0, {}
        # The earliest rule is the one with the lowest ref (refs follow the files: line
        # numbers, or record indices), not the first in the columns: a parser may take a
        # file's lines in more than one pass. A patch breaks ties the same way.
        best: dict[bytes, int] = {}
        ref = self.ref
        for i, k in enumerate(self.keys):
            if k in multi:
                j = best.get(k)
                if j is None:
                    best[k] = i
                    continue
                pi, pj = classes[self.cls[i]].priority, classes[self.cls[j]].priority
                if pi < pj or (pi == pj and ref[i] < ref[j]):
                    best[k] = i
        keep = bytearray(b"\x01") * n
        losers: dict[bytes, list[tuple[int, int]]] = {}
        for i, k in enumerate(self.keys):
            if k in multi and best[k] != i:
                keep[i] = 0
                losers.setdefault(k, []).append((self.cls[i], self.ref[i]))
        self.keys = list(compress(self.keys, keep))
        self.cls = array(self.cls.typecode, compress(self.cls, keep))
        self.ref = array("I", compress(self.ref, keep))
        return keyset, n - len(self.keys), {k: tuple(v) for k, v in losers.items()}


def compile_rules(sources: Sequence[SourceInfo], patchable: bool = False) -> Matcher:
    """Compile the rules of ``sources`` (config order; each has ``rules``) into a Matcher.

    ``patchable``: keep what ``Differ`` needs (12 bytes per name more): the daemon's.

    The sources' columns are only read; callers may drop them afterwards (origins and local
    data are still asked of ``SourceInfo.rules`` on a hit).
    """
    classes: list[RuleClass] = []
    class_of: list[dict[int, int]] = []  # per source: flag byte -> class id
    for si, src in enumerate(sources):
        local: dict[int, int] = {}
        for flags in sorted(set(src.rules.flags)) if src.rules is not None else ():
            local[flags] = len(classes)
            classes.append(_rule_class(src, si, flags, len(classes)))
        class_of.append(local)
    code = "H" if len(classes) > 255 else "B"
    sside, bside = _SideInput(cls=array(code)), _SideInput(cls=array(code))
    for src, local in zip(sources, class_of, strict=True):
        if src.rules is None:
            continue
        cls_of = array(code, [local.get(f, 0) for f in range(256)])
        sside.extend(src.rules, _SELF_TABLE, cls_of)
        bside.extend(src.rules, _BELOW_TABLE, cls_of)
    sset, sdrop, sextra = sside.dedupe(classes)
    bset, bdrop, bextra = bside.dedupe(classes)
    self_side = _Side(sside.keys, sset, sside.cls, sside.ref, sextra, patchable)
    del sside
    below_side = _Side(bside.keys, bset, bside.cls, bside.ref, bextra, patchable)
    del bside
    both = sum(map(sset.__contains__, bset))
    stats: dict[str, Any] = {"shadowed": sdrop + bdrop, "self_names": len(sset),
                             "below_names": len(bset), "names": len(sset) + len(bset) - both,
                             "top_level": not all(map(bytes.__contains__, bset, repeat(b"."))),
                             "patchable": patchable}
    return Matcher(classes, self_side, below_side, list(sources), stats)


# -- patching: a new version of one source, applied to the rules in force ------------------
#
# A swap that compiles from scratch holds two full rule sets (the one in force, shared with
# the workers, and the new one) plus the compile's transient. A patch changes the rule set in
# force instead: the new version is compared with it name by name as it is parsed (nothing
# written; "X" below is the source being replaced), then only what differs is written. Names
# a patch adds are answered from ``overflow``; a name whose winner changes is rewritten where
# its index entry is; a name with no rule left leaves its set (its index entry stays,
# retired: its ``fp`` no longer matches). Past ``PATCH_MAX_SHARE`` of a side's entries added
# or removed since the compile, the next change compiles from scratch.

PATCH_MAX_SHARE: Final = 0.125
# A small rule set may take this many patched names before it is compiled again.
PATCH_MIN_ROOM: Final = 1024


@dataclass(slots=True)
class _SideDiff:
    """What a new version of one source changes on one side (computed, not yet written)."""

    side: _Side
    seen: bytearray  # per index entry: 1 where the source's rule stays (with ``new_ref``)
    new_ref: array[int]  # per index entry: that rule's ref in the new version
    over_seen: dict[bytes, Entry] = field(default_factory=dict)  # the same, for ``overflow``
    # Names that need their winner worked out again, with X's new rules for them in order.
    touched: dict[bytes, list[Entry]] = field(default_factory=dict)
    winners: dict[bytes, Entry | None] = field(default_factory=dict)  # None: no rule left
    extra: dict[bytes, tuple[Entry, ...]] = field(default_factory=dict)  # empty: none left
    added: int = 0
    removed: int = 0
    changed: int = 0

    @classmethod
    def of(cls, side: _Side) -> _SideDiff:
        npos = len(side.tags)
        return cls(side, bytearray(npos), array("I", bytes(4 * npos)))


def _best(entries: list[Entry], prio: list[tuple[int, int, int]]) -> int:
    """Index of the winner: best priority, then the lowest ref (as ``_SideInput.dedupe``)."""
    best = 0
    for i in range(1, len(entries)):
        c, r = entries[i]
        bc, br = entries[best]
        if prio[c] < prio[bc] or (prio[c] == prio[bc] and r < br):
            best = i
    return best


def _feed_side(d: _SideDiff, keys_: list[bytes], flags: bytearray, refs: array[int],
               table: bytes, cls_of: array[int]) -> None:
    """Compare a chunk of X's new rules (those on this side) with the side.

    No key object of the side is read (``_Side.entry_of``), except those in ``overflow`` and
    ``extra`` (a few): their pages stay shared with the workers."""
    side = d.side
    extra, overflow = side.extra, side.overflow
    only = side.only
    cls = side.cls
    seen, new_ref, over_seen, touched = d.seen, d.new_ref, d.over_seen, d.touched
    mask = flags.translate(table)
    for k, f, r, m in zip(keys_, flags, refs, mask, strict=True):
        if not m:
            continue
        c = cls_of[f]
        got = touched.get(k)
        if got is not None:
            got.append((c, r))
            continue
        # The first of X's rules for a name whose winner is X's rule of the same class stays
        # (it only takes its new ref); a second rule for the name, or another class, or a
        # name not in force, has the name worked out again.
        if extra and k in extra:
            touched[k] = [(c, r)]
            continue
        o = overflow.get(k) if overflow else None
        if o is not None:
            prev = over_seen.pop(k, None)
            if prev is not None:
                touched[k] = [prev, (c, r)]
            elif o[0] == c:
                over_seen[k] = (c, r)
            else:
                touched[k] = [(c, r)]
            continue
        pos = side.entry_of(k)
        if pos >= 0:
            if seen[pos]:
                seen[pos] = 0
                touched[k] = [(only if only >= 0 else cls[pos], new_ref[pos]), (c, r)]
                continue
            if (only if only >= 0 else cls[pos]) == c:
                seen[pos] = 1
                new_ref[pos] = r
                continue
        touched[k] = [(c, r)]


FLIP: Final = bytes([1, 0]) + bytes(254)  # ``bytes.translate`` table: 0 <-> 1 (a mask's inverse)


def _finish_side(d: _SideDiff, is_x: bytearray, prio: list[tuple[int, int, int]]) -> None:
    """X's rules in force that the new version lacks, then every touched name's winner."""
    side = d.side
    keys, extra, overflow = side.keys, side.extra, side.overflow
    only, cls, seen, over_seen, touched = side.only, side.cls, d.seen, d.over_seen, d.touched
    npos = len(side.tags)
    # Entries of X's rules that no new rule was matched to: from the columns, in C; only
    # their keys are read (``bykey``), and those of entries no longer in force are skipped.
    xmask: bytes | None = None
    if only >= 0:
        xmask = b"\x01" * npos if is_x[only] else None
    elif cls.typecode == "B":
        xmask = cls.tobytes().translate(bytes(is_x[i] if i < len(is_x) else 0 for i in range(256)))
    else:
        xmask = bytes(map(is_x.__getitem__, cls))
    if xmask is not None:
        fp, bykey = side.fp, side.bykey
        for pos in compress(range(npos), map(and_, xmask, seen.translate(FLIP))):
            k = bykey[pos]
            if k in touched or k in overflow or fp[pos] != (hash(k) >> 32) & 0xFFFFFFFF:
                continue
            touched[k] = []
    for k, o in overflow.items():
        if is_x[o[0]] and k not in over_seen and k not in touched:
            touched[k] = []
    for k, lost in extra.items():
        if k not in touched:
            for c, _ in lost:
                if is_x[c]:
                    touched[k] = []
                    break
    for k, mine in touched.items():
        now = side.find(k) if k in keys else None
        cands: list[Entry] = []
        if now is not None and not is_x[now[0]]:
            cands.append(now)
        lost = extra.get(k, ())
        for e in lost:
            if not is_x[e[0]]:
                cands.append(e)
        cands.extend(mine)
        if not cands:
            if now is not None:
                d.winners[k] = None
                d.removed += 1
            if lost:
                d.extra[k] = ()
            continue
        b = _best(cands, prio)
        win = cands[b]
        rest = tuple(cands[:b] + cands[b + 1:])
        if win != now:
            d.winners[k] = win
            if now is None:
                d.added += 1
            else:
                d.changed += 1
        if rest != lost:
            d.extra[k] = rest
    d.touched = {}


def _apply_side(d: _SideDiff) -> None:
    """Write a diff into its side. Only this process's copy is written: a worker forked
    before keeps its own pages."""
    side = d.side
    ref = side.ref
    new_ref = d.new_ref
    for pos in compress(range(len(d.seen)), d.seen):
        r = new_ref[pos]
        if ref[pos] != r:  # a page written is a page copied away from the workers
            ref[pos] = r
    side.overflow.update(d.over_seen)
    if side.only >= 0:
        for w in d.winners.values():
            if w is not None and w[0] != side.only:  # classes differ now: a column for them
                side.cls = array(side.cls.typecode, [side.only]) * len(side.tags)
                side.only = -1
                break
    keys, overflow, fp = side.keys, side.overflow, side.fp
    for k, w in d.winners.items():
        if w is None:
            pos = side.entry_of(k)  # also a name in ``overflow`` by hash clash has one
            if pos >= 0:
                fp[pos] ^= 0xFFFFFFFF  # the entry matches no name any more
            keys.discard(k)
            overflow.pop(k, None)
            side.patched += 1
        elif k in keys and k not in overflow:
            pos = side.entry_of(k)
            if side.only < 0:
                side.cls[pos] = w[0]
            ref[pos] = w[1]
        elif k in keys:
            overflow[k] = w
        else:
            keys.add(k)
            overflow[k] = w
            side.patched += 1
    for k, lost in d.extra.items():
        if lost:
            side.extra[k] = lost
        else:
            side.extra.pop(k, None)


class Patch:
    """A new version of source ``index`` compared with a matcher; ``apply`` writes it."""

    def __init__(self, matcher: Matcher, index: int, info: SourceInfo, classes: list[RuleClass],
                 diffs: tuple[_SideDiff, _SideDiff]) -> None:
        self.matcher = matcher
        self.index = index
        self.info = info
        self.classes = classes
        self.diffs = diffs
        self.added = sum(d.added for d in diffs)
        self.removed = sum(d.removed for d in diffs)
        self.changed = sum(d.changed for d in diffs)

    def apply(self) -> Matcher:
        """Write the changes into the matcher's sides and return the matcher over them.

        The old ``Matcher`` object must not be used afterwards (its classes are stale)."""
        old = self.matcher
        sside, bside = old._self, old._below
        sk, bk = sside.keys, bside.keys
        was = {k: k in sk or k in bk for d in self.diffs for k in d.winners}
        for d in self.diffs:
            _apply_side(d)
        sources = list(old.sources)
        sources[self.index] = self.info
        stats = dict(old.stats)
        top = bool(stats.get("top_level", True)) or any(
            w is not None and b"." not in k for k, w in self.diffs[1].winners.items())
        stats.update({
            "shadowed": sum(map(len, sside.extra.values())) + sum(map(len, bside.extra.values())),
            "self_names": len(sk), "below_names": len(bk), "top_level": top,
            "names": int(stats["names"]) + sum(int(k in sk or k in bk) - int(w) for k, w in was.items()),
            "patches": int(old.stats.get("patches", 0)) + 1,
        })
        return Matcher(self.classes, sside, bside, sources, stats)


class Differ:
    """Compares a new version of source ``index`` with ``matcher``, chunk by chunk as it is
    parsed (``feed``: a ``lists.base.RuleSink``), so that the new version's rules need not
    be kept; ``finish`` gives the Patch. Reads the matcher; writes nothing.

    ``src`` gives the source's settings (its ``rules`` are not read: they are what is fed).
    ``refusal`` says why a compile from scratch is needed instead (then ``feed`` does nothing).
    """

    def __init__(self, matcher: Matcher, index: int, src: SourceInfo) -> None:
        self.matcher = matcher
        self.index = index
        self.refusal: str | None = None
        self.src = src
        self.classes = list(matcher.classes)
        self.mine: dict[int, int] = {}  # flag byte -> class id of X
        # made by the first ``feed``: a fetch that ends in 304 or a refusal costs nothing
        self.diffs: tuple[_SideDiff, _SideDiff] | None = None
        self.code = matcher._self.cls.typecode
        self.cls_of = array(self.code, bytes(256 * array(self.code).itemsize))
        if not matcher.stats.get("patchable"):
            self.refusal = "the rule set in force was compiled without what a patch needs"
            return
        if not 0 <= index < len(matcher.sources):
            self.refusal = "the source is not in the rule set in force"
            return
        if _settings(matcher.sources[index]) != _settings(src):
            self.refusal = "the source's settings changed"
            return
        for c in self.classes:
            if c.source_index == index:
                self.mine[c.flags] = c.index
                self.cls_of[c.flags] = c.index

    def _new_class(self, f: int) -> None:
        i = len(self.classes)
        # ``finish`` gives it the new version's SourceInfo, as to every class of the source
        self.classes.append(_rule_class(self.src, self.index, f, i))
        self.mine[f] = i
        if i < 256 or self.code == "H":
            self.cls_of[f] = i

    def feed(self, keys: list[bytes], flags: bytearray, refs: array[int]) -> None:
        if self.refusal is not None:
            return
        for f in set(flags):
            if f not in self.mine:
                self._new_class(f)
        if self.code == "B" and len(self.classes) > 255:
            self.refusal = "more rule classes than the index holds"
            return
        s, b = self._diffs()
        _feed_side(s, keys, flags, refs, _SELF_TABLE, self.cls_of)
        _feed_side(b, keys, flags, refs, _BELOW_TABLE, self.cls_of)

    def _diffs(self) -> tuple[_SideDiff, _SideDiff]:
        if self.diffs is None:
            self.diffs = (_SideDiff.of(self.matcher._self), _SideDiff.of(self.matcher._below))
        return self.diffs

    def finish(self, info: SourceInfo) -> Patch | str:
        """The Patch that makes the matcher enforce ``info`` (the version fed, with its
        origins), or why a compile from scratch is needed."""
        if self.refusal is not None:
            return self.refusal
        if _settings(info) != _settings(self.src):
            return "the source's settings changed"
        index = self.index
        classes = [RuleClass(info, index, c.kind, c.allow, c.action, c.index, c.flags)
                   if c.source_index == index else c for c in self.classes]
        is_x = bytearray(len(classes))
        for i in self.mine.values():
            is_x[i] = 1
        prio = [c.priority for c in classes]
        diffs = self._diffs()
        for d in diffs:
            _finish_side(d, is_x, prio)
            room = max(PATCH_MAX_SHARE * len(d.side.tags), PATCH_MIN_ROOM)
            if d.side.patched + d.added + d.removed > room:
                return (f"{d.side.patched + d.added + d.removed} names added or removed since the "
                        f"compile, over {room:.0f}")
        return Patch(self.matcher, index, info, classes, diffs)


def patch_source(matcher: Matcher, index: int, info: SourceInfo) -> Patch | str:
    """The changes that make ``matcher`` enforce ``info`` as its source ``index``, or why a
    compile from scratch is needed instead. Reads the matcher; writes nothing."""
    rules = info.rules
    if rules is None:
        return "no rules"
    differ = Differ(matcher, index, info)
    differ.feed(rules.keys, rules.flags, rules.refs)
    return differ.finish(info)
