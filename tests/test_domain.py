"""List-side name normalisation and registry URL hosts."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from blockgate.domain import input_key, list_key, to_unicode, url_host
from blockgate.errors import DomainError

ACCEPTED = [
    # id, raw, key, star, idn
    ("lowercase-trailing-dot", "Example.COM.", b"example.com", False, False),
    ("leading-star", "*.Example.com", b"example.com", True, False),
    ("whitespace", "  linecinema.org \t", b"linecinema.org", False, False),
    ("underscore", "gde-kupit-spajs_orenburg.eurobro.biz", b"gde-kupit-spajs_orenburg.eurobro.biz",
     False, False),
    ("unicode-idn", "пример.рф", b"xn--e1afmkfd.xn--p1ai", False, True),
    ("unicode-uppercase", "ПРИМЕР.РФ", b"xn--e1afmkfd.xn--p1ai", False, True),
    ("latin-digits-cyrillic", "095у.рф", b"xn--095-ffd.xn--p1ai", False, True),
    ("unicode-mask", "*.1хбет-рабочее-зеркало.рус", b"xn--1---7cdbcc3adabx4bp1biwi1a1d9b.xn--p1acf",
     True, True),
    ("punycode-kept", "xn--e1afmkfd.xn--p1ai", b"xn--e1afmkfd.xn--p1ai", False, False),
    ("fullwidth-dot-mapped", "пример。рф", b"xn--e1afmkfd.xn--p1ai", False, True),
    ("label-63", "a" * 63 + ".com", ("a" * 63 + ".com").encode(), False, False),
    ("name-253", ".".join(["a" * 63] * 3 + ["b" * 61]), ".".join(["a" * 63] * 3 + ["b" * 61]).encode(),
     False, False),
    ("numeric-label-not-ip", "123.example.com", b"123.example.com", False, False),
]


@pytest.mark.parametrize(("raw", "key", "star", "idn"), [a[1:] for a in ACCEPTED],
                         ids=[a[0] for a in ACCEPTED])
def test_accepted(raw: str, key: bytes, star: bool, idn: bool) -> None:
    assert list_key(raw) == (key, star, idn)
    assert list_key(raw.encode()) == (key, star, idn)


REJECTED = [
    ("empty", "", "empty-name"),
    ("only-dot", ".", "empty-name"),
    ("empty-label", "a..b", "empty-label"),
    ("two-trailing-dots", "a.b..", "empty-label"),
    ("label-64", "a" * 64 + ".com", "label-too-long"),
    ("name-254", ".".join(["a" * 63] * 3 + ["b" * 62]), "name-too-long"),
    ("ipv4-literal", "128.199.35.197", "ip-literal"),
    ("ipv6-literal", "2001:db8::1", "ip-literal"),
    ("replacement-char", "bad\ufffd.ru", "replacement"),
    ("star-alone", "*", "bad-wildcard"),
    ("star-inside", "a.*.b", "bad-wildcard"),
    ("star-suffix", "a*.b", "bad-wildcard"),
    ("space-inside", "a b.com", "bad-character"),
    ("slash", "a/b.com", "bad-character"),
    ("idna-invalid", "a\u200d.com", "idna"),
]


@pytest.mark.parametrize(("raw", "reason"), [r[1:] for r in REJECTED], ids=[r[0] for r in REJECTED])
def test_rejected_with_reason(raw: str, reason: str) -> None:
    with pytest.raises(DomainError) as info:
        list_key(raw)
    assert info.value.reason == reason


URLS = [
    ("https", "https://standaards.com/", ("https", "standaards.com")),
    ("single-slash", "http:/premium-diploms.com/куплю-диплом", ("http", "premium-diploms.com")),
    ("backslashes", "http:\\\\example.com\\x", ("http", "example.com")),
    ("no-scheme", "//a.b/c", ("", "a.b")),
    ("userinfo-port", "https://user:pw@вебкритик.рф:443/x?y#z", ("https", "вебкритик.рф")),
    ("ipv6-brackets", "http://[2001:db8::1]:80/", ("http", "2001:db8::1")),
    ("other-scheme", "newcamd525://iserver4.tv:4001", ("newcamd525", "iserver4.tv")),
    ("query-only", "https://zvooq.icu?x=1;", ("https", "zvooq.icu")),
    ("trailing-dot-host", "http://e38.us./", ("http", "e38.us.")),
]


@pytest.mark.parametrize(("url", "expected"), [u[1:] for u in URLS], ids=[u[0] for u in URLS])
def test_url_host(url: str, expected: tuple[str, str]) -> None:
    assert url_host(url) == expected


def test_url_without_host() -> None:
    assert url_host("https:///path") is None


def test_input_key_refuses_patterns() -> None:
    assert input_key("WWW.Example.com.") == b"www.example.com"
    with pytest.raises(DomainError):
        input_key("*.example.com")


def test_to_unicode_round_trip() -> None:
    assert to_unicode(b"xn--e1afmkfd.xn--p1ai") == "пример.рф"
    assert to_unicode(b"xn--broken-label.com") == "xn--broken-label.com"


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=80), st.binary(max_size=80)))
def test_list_key_raises_only_domain_error(raw: str | bytes) -> None:
    try:
        key, _star, _idn = list_key(raw)
    except DomainError:
        return
    # whatever is accepted is a valid key and normalises to itself
    assert key.isascii() and key == key.lower() and len(key) <= 253
    assert list_key(key) == (key, False, False)
