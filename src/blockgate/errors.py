"""One error root for everything blockgate raises on purpose.

Parsers raise only their own format error, carrying a short ``reason`` code that doubles as a
metric label (in the manner of h11's ``RemoteProtocolError`` and aioquic's alert descriptions).
Anything else escaping a parser is a bug.
"""

from __future__ import annotations


class BlockgateError(Exception):
    """Root of every error blockgate raises deliberately."""

    reason: str = "error"

    def __init__(self, message: str = "", reason: str | None = None) -> None:
        super().__init__(message or (reason or self.reason))
        if reason is not None:
            self.reason = reason


class FormatError(BlockgateError):
    """Bytes that do not follow their format. ``reason`` is a short stable code."""


class CursorError(FormatError):
    """A read past the end of a buffer (``reason`` is ``truncated``) or an impossible field."""

    reason = "truncated"


class DomainError(FormatError):
    """A domain name from a list that cannot become a key (``reason`` says why)."""


class ListFormatError(FormatError):
    """A list file that is broken as a whole: not XML, not a ZIP, unreadable.

    Line-level problems are never raised: they become located issues and the rest loads.
    """

    def __init__(self, where: str, message: str, reason: str = "broken") -> None:
        super().__init__(f"{where}: {message}", reason)
        self.where = where
        self.detail = message


class ConfigError(BlockgateError):
    """A configuration that cannot be used; ``errors`` holds every located problem."""

    reason = "config"

    def __init__(self, errors: list[str]) -> None:
        super().__init__("\n".join(errors))
        self.errors = errors


class FeedFormatError(FormatError):
    """A feed's side file (the SHA-256 sidecar) that does not say what it should."""


class FetchError(BlockgateError):
    """A download that did not give a body: ``reason`` is ``http-404``, ``timeout``,
    ``connection-reset``, ``truncated``, ``too-large``, ``tls``... (a metric label)."""
