"""feeds: the gates a fetched list must pass, the retry schedule, sidecars, body decoding.

Vectors: the judge table below is built from what the peers got wrong
(research/dns-anchors.md §3.3): an empty download, a truncated one (it parses, but holds a
fraction of the rules), a broken line that should not reject the whole feed, a digest that
does not match. Bodies for the decoder are the real registry and mirror samples in
tests/fixtures/lists, compressed here with the stdlib (gzip, zipfile) as the registry and
mirrors ship them.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import io
import zipfile

import pytest
from conftest import LIST_FIXTURES
from hypothesis import given
from hypothesis import strategies as st

from blockgate import lists
from blockgate.errors import FeedFormatError, ListFormatError
from blockgate.feeds import (
    ACCEPTED,
    NOT_MODIFIED,
    PATH_POLL,
    RETRY_CAP,
    RETRY_FIRST,
    Candidate,
    Feed,
    InForce,
    Limits,
    Validators,
    conditional_headers,
    judge,
    judge_error,
    open_inputs,
    parse_sidecar,
    retry_delay,
)
from blockgate.lists.base import Input

SHA = hashlib.sha256(b"x").hexdigest()
OTHER = hashlib.sha256(b"y").hexdigest()
DEFAULT = Limits()

# (id, limits, candidate, last good rules, pinned sha256, want reason)
JUDGE = [
    ("first-list", DEFAULT, Candidate(100, SHA, 10, 10, 0), None, None, ACCEPTED),
    ("same-size", DEFAULT, Candidate(100, SHA, 1000, 1000, 0), 1000, None, ACCEPTED),
    ("grew", DEFAULT, Candidate(100, SHA, 5000, 5000, 0), 1000, None, ACCEPTED),
    ("empty-body", DEFAULT, Candidate(0, SHA, 0, 0, 0), 1000, None, "empty"),
    ("empty-even-if-first", DEFAULT, Candidate(0, SHA, 0, 0, 0), None, None, "empty"),
    ("pinned-ok", DEFAULT, Candidate(100, SHA, 10, 10, 0), None, SHA, ACCEPTED),
    ("pinned-upper-case", DEFAULT, Candidate(100, SHA, 10, 10, 0), None, SHA.upper(), ACCEPTED),
    ("pinned-wrong", DEFAULT, Candidate(100, SHA, 10, 10, 0), None, OTHER, "sha256-mismatch"),
    # 1 % of 1000 lines may be broken (10), 11 may not
    ("issues-at-limit", DEFAULT, Candidate(100, SHA, 990, 1000, 10), 990, None, ACCEPTED),
    ("issues-over-limit", DEFAULT, Candidate(100, SHA, 989, 1000, 11), 990, None, "too-many-issues"),
    ("garbage-all-issues", DEFAULT, Candidate(100, SHA, 0, 40, 40), 990, None, "too-many-issues"),
    ("issues-ratio-zero", Limits(max_issue_ratio=0.0), Candidate(100, SHA, 9, 10, 1), None, None,
     "too-many-issues"),
    ("no-rules-no-lines", DEFAULT, Candidate(100, SHA, 0, 0, 0), None, None, "too-few-rules"),
    ("min-rules", Limits(min_rules=500), Candidate(100, SHA, 499, 499, 0), None, None, "too-few-rules"),
    ("min-rules-met", Limits(min_rules=500), Candidate(100, SHA, 500, 500, 0), None, None, ACCEPTED),
    # max_shrink 0.5: half the rules may go, not more
    ("shrank-half", DEFAULT, Candidate(100, SHA, 500, 500, 0), 1000, None, ACCEPTED),
    ("shrank-90", DEFAULT, Candidate(100, SHA, 100, 100, 0), 1000, None, "shrank"),
    ("shrank-one-too-many", DEFAULT, Candidate(100, SHA, 499, 499, 0), 1000, None, "shrank"),
    ("shrink-allowed", Limits(max_shrink=1.0), Candidate(100, SHA, 1, 1, 0), 1000, None, ACCEPTED),
    ("shrink-none-allowed", Limits(max_shrink=0.0), Candidate(100, SHA, 999, 999, 0), 1000, None,
     "shrank"),
    # the first failing gate is the reason
    ("mismatch-before-issues", DEFAULT, Candidate(100, SHA, 0, 10, 10), None, OTHER, "sha256-mismatch"),
    ("issues-before-shrink", DEFAULT, Candidate(100, SHA, 5, 10, 5), 1000, None, "too-many-issues"),
]


@pytest.mark.parametrize(("limits", "got", "last", "pinned", "want"),
                         [c[1:] for c in JUDGE], ids=[c[0] for c in JUDGE])
def test_judge(limits: Limits, got: Candidate, last: int | None, pinned: str | None, want: str) -> None:
    j = judge(limits, got, last, pinned)
    assert j.reason == want
    assert j.accepted == (want == ACCEPTED)
    assert j.detail  # every refusal says why, for the log line
    assert str(j).startswith(want)


def test_candidate_counts_rules_lines_and_issues_of_a_real_parse() -> None:
    body = b"a.example\nb.example\nbad..name\n*.c.example\n"
    parsed = lists.parse("domains", [Input("l.txt", io.BytesIO(body))])
    c = Candidate.of(parsed, len(body), hashlib.sha256(body).hexdigest())
    assert (c.rules, c.units, c.issues, c.size) == (3, 4, 1, len(body))
    assert judge(DEFAULT, c, None).reason == "too-many-issues"  # 25 % broken
    assert judge(Limits(max_issue_ratio=0.25), c, None).accepted


def test_limits_from_source_config() -> None:
    from blockgate.config import load
    cfg = load("sources:\n  - {name: a, format: domains, url: 'http://x/', max_issue_ratio: 0.2,"
               " min_rules: 7, max_shrink: 0.9}\n")
    assert Limits.of(cfg.sources[0]) == Limits(0.2, 7, 0.9)
    cfg = load("sources:\n  - {name: a, format: domains, url: 'http://x/'}\n")
    assert Limits.of(cfg.sources[0]) == DEFAULT == Limits(0.01, 1, 0.5)


@pytest.mark.parametrize(("size", "want"), [(0, "empty"), (10, "bad-xml")], ids=["empty", "broken"])
def test_judge_error(size: int, want: str) -> None:
    j = judge_error(ListFormatError("dump.xml:3", "not well-formed", "bad-xml"), size)
    assert (j.accepted, j.reason) == (False, want)


# -- schedule ---------------------------------------------------------------------------------

RETRIES = [
    ("first", 1, 3600.0, 0.0, RETRY_FIRST / 2),
    ("first-full-jitter", 1, 3600.0, 1.0, RETRY_FIRST),
    ("second", 2, 3600.0, 1.0, 2 * RETRY_FIRST),
    ("fifth", 5, 3600.0, 1.0, 16 * RETRY_FIRST),
    ("capped", 30, 3600.0, 1.0, RETRY_CAP),
    ("huge-failure-count", 10**6, 3600.0, 1.0, RETRY_CAP),
    ("never-after-refresh", 3, 5.0, 1.0, 5.0),
    ("refresh-halved-by-jitter", 3, 5.0, 0.0, 2.5),
]


@pytest.mark.parametrize(("failures", "refresh", "jitter", "want"), [c[1:] for c in RETRIES],
                         ids=[c[0] for c in RETRIES])
def test_retry_delay(failures: int, refresh: float, jitter: float, want: float) -> None:
    assert retry_delay(failures, refresh, jitter) == pytest.approx(want)


@given(st.integers(1, 100), st.floats(0.1, 1e6), st.floats(0.0, 1.0))
def test_retry_delay_is_bounded_and_grows(failures: int, refresh: float, jitter: float) -> None:
    d = retry_delay(failures, refresh, jitter)
    assert 0 < d <= min(refresh, RETRY_CAP)
    assert retry_delay(failures + 1, refresh, jitter) >= d


# -- HTTP helpers -------------------------------------------------------------------------------


@pytest.mark.parametrize(("v", "want"), [
    (Validators(), {}),
    (Validators('"abc"', None), {"If-None-Match": '"abc"'}),
    (Validators(None, "Wed, 21 Oct 2015 07:28:00 GMT"),
     {"If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT"}),
    (Validators('W/"x"', "Wed, 21 Oct 2015 07:28:00 GMT"),
     {"If-None-Match": 'W/"x"', "If-Modified-Since": "Wed, 21 Oct 2015 07:28:00 GMT"}),
], ids=["none", "etag", "last-modified", "both"])
def test_conditional_headers(v: Validators, want: dict[str, str]) -> None:
    assert conditional_headers(v) == want


SIDECARS = [
    ("bare", SHA.encode(), "dump.zip", SHA),
    ("bare-newline-upper", SHA.upper().encode() + b"\n", "dump.zip", SHA),
    ("sha256sum", SHA.encode() + b"  dump.zip\n", "dump.zip", SHA),
    ("sha256sum-binary", SHA.encode() + b" *dump.zip\n", "dump.zip", SHA),
    ("several-lines", OTHER.encode() + b"  dump.csv\n" + SHA.encode() + b"  dump.zip\n", "dump.zip", SHA),
    ("several-with-path", OTHER.encode() + b"  a/dump.csv\n" + SHA.encode() + b"  ./dump.zip\n",
     "dump.zip", SHA),
]


@pytest.mark.parametrize(("data", "name", "want"), [c[1:] for c in SIDECARS], ids=[c[0] for c in SIDECARS])
def test_parse_sidecar(data: bytes, name: str, want: str) -> None:
    assert parse_sidecar(data, name) == want


@pytest.mark.parametrize("data", [
    b"", b"\n\n", b"not a digest\n", SHA.encode()[:63], SHA.encode() + b"0",
    OTHER.encode() + b"  a\n" + SHA.encode() + b"  b\n", b"<html>404</html>",
], ids=["empty", "blank", "text", "short", "long", "none-named", "html"])
def test_parse_sidecar_refuses(data: bytes) -> None:
    with pytest.raises(FeedFormatError) as e:
        parse_sidecar(data, "dump.zip")
    assert e.value.reason == "sha256-sidecar"


@given(st.binary(max_size=300), st.text(max_size=10))
def test_parse_sidecar_raises_only_its_error(data: bytes, name: str) -> None:
    try:
        got = parse_sidecar(data, name)
    except FeedFormatError:
        return
    assert len(got) == 64 and int(got, 16) >= 0


# -- bodies ---------------------------------------------------------------------------------------

RKN = (LIST_FIXTURES / "rkn-dump-fragment-2019-a.xml").read_bytes()
ZI = (LIST_FIXTURES / "zi-dump-2018-mid-sample.csv").read_bytes()
DOMAINS = b"".join(b"n%d.example\n" % i for i in range(500))


def zipped(members: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        for name, data in members.items():
            z.writestr(name, data)
    return buf.getvalue()


def parse_body(fmt: str, body: bytes, name: str = "body", max_bytes: int = 1 << 30) -> tuple[int, list[str]]:
    inputs = open_inputs(fmt, [Input(name, io.BytesIO(body))], max_bytes)
    parsed = lists.parse(fmt, inputs)
    return len(parsed), parsed.files


def rules_of(fmt: str, body: bytes) -> int:
    return len(lists.parse(fmt, [Input("plain", io.BytesIO(body))]))


@pytest.mark.parametrize(("fmt", "plain"), [("rkn-xml", RKN), ("zi-csv", ZI), ("domains", DOMAINS)],
                         ids=["rkn-xml", "zi-csv", "domains"])
def test_gzip_body_gives_the_same_rules(fmt: str, plain: bytes) -> None:
    n, files = parse_body(fmt, gzip.compress(plain), "list.gz")
    assert n == rules_of(fmt, plain) > 0
    assert files == ["list"]


def test_rkn_zip_is_left_to_the_registry_parser() -> None:
    n, files = parse_body("rkn-xml", zipped({"dump.xml": RKN, "dump.xml.sig": b"sig"}), "dump.zip")
    assert n == rules_of("rkn-xml", RKN)
    assert files == ["dump.zip/dump.xml"]


def test_zip_of_split_csv_files_is_one_source() -> None:
    lines = ZI.splitlines(keepends=True)
    half = len(lines) // 2
    body = zipped({"dump-01.csv": b"".join(lines[half:]), "dump-00.csv": b"".join(lines[:half])})
    n, files = parse_body("zi-csv", body, "dump.zip")
    assert n == rules_of("zi-csv", ZI)
    assert files == ["dump.zip/dump-00.csv", "dump.zip/dump-01.csv"]  # name order


@pytest.mark.parametrize(("fmt", "body", "reason"), [
    ("domains", gzip.compress(DOMAINS)[:40], "bad-gzip"),
    ("rkn-xml", gzip.compress(RKN)[:-12], "bad-gzip"),
    ("domains", b"\x1f\x8b" + b"\x00" * 30, "bad-gzip"),
    ("domains", zipped({"a.txt": DOMAINS})[:60], "bad-zip"),
    ("domains", zipped({"empty/": b""}), "bad-zip"),
    ("rkn-xml", zipped({"dump.xml": RKN})[: len(RKN) // 3], "bad-zip"),
    ("rkn-xml", zipped({"other.xml": RKN}), "no-dump-xml"),
], ids=["truncated-gzip", "truncated-gzip-rkn", "gzip-garbage", "truncated-zip", "zip-of-nothing",
        "truncated-rkn-zip", "zip-without-dump-xml"])
def test_broken_bodies_are_list_format_errors(fmt: str, body: bytes, reason: str) -> None:
    with pytest.raises(ListFormatError) as e:
        parse_body(fmt, body)
    assert e.value.reason == reason


def test_decoded_size_is_capped() -> None:
    """A 20 kB gzip of 10 MB: refused at the cap, not decoded whole."""
    bomb = gzip.compress(b"a.example\n" * 1_000_000)
    assert len(bomb) < 100_000
    with pytest.raises(ListFormatError) as e:
        parse_body("domains", bomb, max_bytes=1 << 20)
    assert e.value.reason == "too-large"
    assert parse_body("domains", bomb, max_bytes=10 << 20)[0] == 1_000_000


@given(st.binary(max_size=400), st.sampled_from(["domains", "rkn-xml", "zi-csv", "hosts"]),
       st.sampled_from([b"", b"\x1f\x8b", b"PK\x03\x04"]))
def test_random_bodies_raise_only_list_format_error(data: bytes, fmt: str, magic: bytes) -> None:
    with contextlib.suppress(ListFormatError):
        parse_body(fmt, magic + data)


# -- per-source state ------------------------------------------------------------------------------


def test_feed_schedule_successes_failures_and_counts() -> None:
    f = Feed("reg", "url", "https://x/dump.zip", refresh=1800.0)
    assert f.due == 0.0  # at once
    assert f.done(ACCEPTED, "10 rules", mono=100.0, wall=5000.0, jitter=0.5) == 1800.0
    assert (f.due, f.due_wall, f.failures, f.last_success) == (1900.0, 6800.0, 0, 5000.0)
    delays = [f.done("http-500", "HTTP 500", mono=200.0 + i, wall=6000.0 + i, jitter=1.0) for i in range(4)]
    assert delays == [RETRY_FIRST, 2 * RETRY_FIRST, 4 * RETRY_FIRST, 8 * RETRY_FIRST]
    assert f.failures == 4 and f.last_success == 5000.0
    assert f.done(NOT_MODIFIED, "304", mono=300.0, wall=7000.0, jitter=0.0) == 1800.0
    assert f.failures == 0 and f.last_success == 7000.0
    f.in_force = InForce(10, 4000.0, SHA, '"e"', None)
    st = f.state(wall=7100.0)
    assert (st.rules, st.in_force, st.list_age, st.etag, st.sha256) == (10, True, 3100.0, '"e"', SHA)
    assert (st.last_result, st.last_detail, st.next_attempt) == (NOT_MODIFIED, "304", 8800.0)
    assert st.results == ((ACCEPTED, 1), ("http-500", 4), (NOT_MODIFIED, 1))
    f.now(mono=350.0)
    assert f.due == 350.0


def test_path_feeds_are_looked_at_every_few_seconds() -> None:
    assert Feed("l", "path", "/srv/l.txt", refresh=1800.0).interval == PATH_POLL
    assert Feed("l", "path", "/srv/l.txt", refresh=0.5).interval == 0.5
    assert Feed("u", "url", "http://x/", refresh=1800.0).interval == 1800.0
    f = Feed("l", "path", "/srv/l.txt", refresh=1800.0)
    assert f.done("missing", "no such file", 0.0, 0.0, 1.0) == PATH_POLL  # retries never wait longer


def test_state_without_a_list() -> None:
    st = Feed("u", "url", "http://x/", 60.0).state(wall=1.0)
    assert (st.in_force, st.rules, st.list_age, st.accepted_at, st.last_attempt, st.results) == \
        (False, 0, None, None, None, ())
