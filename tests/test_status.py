"""status: the daemon's status document as text (the document is what the daemon sends)."""

from __future__ import annotations

import pytest

from blockgate.status import age, format_status, when

NOW = 1_790_000_000.0  # 2026-09-21T...Z


@pytest.mark.parametrize(("seconds", "want"), [
    (None, "-"), (0, "0s"), (59.9, "59s"), (60, "1m00s"), (307, "5m07s"), (3600, "1h00m"),
    (11_520, "3h12m"), (86_400, "1d00h"), (187_200, "2d04h"), (-5, "0s"),
], ids=["none", "zero", "seconds", "minute", "minutes", "hour", "hours", "day", "days", "clock-skew"])
def test_age(seconds: float | None, want: str) -> None:
    assert age(seconds) == want


def test_when() -> None:
    assert when(None, NOW) == "never"
    assert when(NOW - 90, NOW).endswith("(1m30s ago)")
    assert when(NOW + 30, NOW).endswith("(in 30s)")
    assert when(0.0, 0.0) == "1970-01-01 00:00:00Z (0s ago)"


DOC = {
    "version": "0.1.0", "pid": 4242, "now": NOW, "generation": 3, "rules": 1200, "names": 1190,
    "listen": ["127.0.0.1:5353"],
    "workers": [{"pid": 1, "slot": 0, "generation": 3, "state": "serving"},
                {"pid": 2, "slot": 0, "generation": 2, "state": "draining"}],
    "last_swap": {"generation": 3, "at": NOW - 10, "compile_seconds": 1.234, "ready_seconds": 0.05},
    "reloads": {"ok": 1, "refused": 1, "last_errors": ["c.yaml:3: sources[0].format: 'x' is not one of"]},
    "sources": [
        {"name": "registry", "kind": "url", "origin": "https://r.test/dump.zip", "rules": 1200,
         "in_force": True, "last_attempt": NOW - 5, "last_result": "http-500", "last_detail": "HTTP 500",
         "last_success": NOW - 3600, "accepted_at": NOW - 7200, "list_age": 7200.0, "etag": '"abc"',
         "last_modified": None, "sha256": "0" * 64, "failures": 2, "next_attempt": NOW + 20,
         "results": [["accepted", 2], ["http-500", 2], ["not-modified", 30]]},
        {"name": "local", "kind": "path", "origin": "/srv/l.txt", "rules": 0, "in_force": False,
         "last_attempt": None, "last_result": None, "last_detail": "", "last_success": None,
         "accepted_at": None, "list_age": None, "etag": None, "last_modified": None, "sha256": None,
         "failures": 0, "next_attempt": None, "results": []},
    ],
}


def test_format_status() -> None:
    lines = format_status(DOC)
    assert lines[0] == ("blockgate 0.1.0 pid 4242: 1200 rules on 1190 names, generation 3, "
                        "1 workers serving on 127.0.0.1:5353")
    assert lines[1].startswith("last swap ") and "compiled in 1.23 s, new workers ready in 0.05 s" in lines[1]
    assert "reloads: 1 ok, 1 refused" in lines
    assert "  c.yaml:3: sources[0].format: 'x' is not one of" in lines
    text = "\n".join(lines)
    assert "registry (url https://r.test/dump.zip): 1200 rules, list age 2h00m (accepted " in text
    assert "  last attempt " in text and "(5s ago): http-500 (HTTP 500)" in text
    assert "2 failures in a row" in text and "next attempt " in text and "(in 20s)" in text
    assert "  etag \"abc\", last-modified -" in text
    assert "  attempts: accepted 2, http-500 2, not-modified 30" in text
    assert "local (path /srv/l.txt): NO LIST IN FORCE" in text
    assert "last attempt never: -" in text


def test_format_status_of_a_minimal_document() -> None:
    assert format_status({})[0].startswith("blockgate None pid None")
