"""What a server said it can do: the extensions of its EHLO reply.

Theory of operation
-------------------
A 250 reply to EHLO (RFC 5321 section 4.1.1.1) carries the server's name and a
greeting on its first line and one extension per further line: a keyword,
then parameters separated by spaces. :meth:`Capabilities.from_ehlo` turns such
a :class:`~smtplug.protocol.replies.Reply` into an immutable
:class:`Capabilities`; a HELO reply (:meth:`Capabilities.from_helo`) gives one
with no extensions at all.

Keywords are case-insensitive and stored upper-cased. A line whose keyword is
not a valid RFC 5321 ``ehlo-keyword`` is skipped, not fatal: servers
advertise odd things and the client only looks for what it knows. Two old
forms are understood as Tcllib does: ``AUTH=PLAIN LOGIN`` (pre-RFC 2554
servers) adds to ``AUTH``, and ``TLS`` counts as ``STARTTLS``.

The reply text was already escaped by the parser, so nothing here can carry a
control character into a log.
"""

from __future__ import annotations

import functools
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from types import MappingProxyType

from smtplug.protocol.replies import Reply

__all__ = ["Capabilities"]

# RFC 5321: ehlo-keyword = (ALPHA / DIGIT) *(ALPHA / DIGIT / "-")
_KEYWORD = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*\Z")
_SIZE = re.compile(r"[0-9]{1,20}\Z")


def _dedupe(items: tuple[str, ...]) -> tuple[str, ...]:
    return tuple(dict.fromkeys(items))


def _freeze(keywords: Mapping[str, tuple[str, ...]]) -> Mapping[str, tuple[str, ...]]:
    return MappingProxyType({key.upper(): tuple(value) for key, value in keywords.items()})


@dataclass(frozen=True, slots=True)
class Capabilities:
    """The server's name and the ESMTP extensions it advertised.

    ``keywords`` maps each upper-cased keyword to its parameters. It is a
    read-only mapping; a plain dict given to the constructor is copied.
    """

    domain: str
    keywords: Mapping[str, tuple[str, ...]] = field(
        default_factory=lambda: MappingProxyType({}), hash=False
    )
    esmtp: bool = True

    def __post_init__(self) -> None:
        object.__setattr__(self, "keywords", _freeze(self.keywords))

    def has(self, keyword: str) -> bool:
        """True if the server advertised ``keyword`` (case-insensitive)."""
        return keyword.upper() in self.keywords

    def params(self, keyword: str) -> tuple[str, ...]:
        """The parameters of ``keyword``; empty if absent or without any."""
        return self.keywords.get(keyword.upper(), ())

    @property
    def size_limit(self) -> int | None:
        """The ``SIZE`` limit in octets (0: no fixed limit), or None.

        None when SIZE is not advertised or its parameter is missing or not a
        non-negative decimal number.
        """
        params = self.params("SIZE")
        if not params or _SIZE.match(params[0]) is None:
            return None
        return int(params[0])

    @property
    def auth_mechanisms(self) -> tuple[str, ...]:
        """SASL mechanisms from ``AUTH`` and ``AUTH=``, upper-cased, in order, once each."""
        return _dedupe(tuple(mechanism.upper() for mechanism in self.params("AUTH")))

    @property
    def starttls(self) -> bool:
        """True if STARTTLS (or the old ``TLS`` keyword) was advertised."""
        return self.has("STARTTLS") or self.has("TLS")

    @classmethod
    def from_ehlo(cls, reply: Reply) -> Capabilities:
        """Capabilities from a positive reply to EHLO.

        Raises :class:`ValueError` for a reply that is not 2xx.
        """
        if not reply.is_positive:
            raise ValueError(f"not a positive EHLO reply: {reply.code}")
        if cls is Capabilities:
            # A server answers every EHLO alike: an answer seen before is not
            # parsed again (the result is immutable, so it can be shared).
            return _remembered_ehlo(tuple(reply.lines))
        return cls(*_ehlo(reply.lines), esmtp=True)

    @classmethod
    def from_helo(cls, reply: Reply) -> Capabilities:
        """Capabilities from a positive reply to HELO: no extensions."""
        if not reply.is_positive:
            raise ValueError(f"not a positive HELO reply: {reply.code}")
        first = reply.lines[0].split() if reply.lines else []
        return cls(first[0] if first else "", {}, esmtp=False)


def _ehlo(lines: tuple[str, ...]) -> tuple[str, dict[str, tuple[str, ...]]]:
    """The domain and the keywords of an EHLO reply's lines."""
    first = lines[0].split() if lines else []
    keywords: dict[str, tuple[str, ...]] = {}
    for line in lines[1:]:
        words = line.split()
        if not words:
            continue
        keyword, params = words[0], tuple(words[1:])
        if keyword[:5].upper() == "AUTH=":
            keyword = "AUTH"
            params = (words[0][5:], *params) if words[0][5:] else params
        elif _KEYWORD.match(keyword) is None:
            continue
        keyword = keyword.upper()
        if keyword == "AUTH":
            keywords[keyword] = _dedupe(keywords.get(keyword, ()) + params)
        else:
            keywords.setdefault(keyword, params)
    return (first[0] if first else ""), keywords


@functools.lru_cache(maxsize=64)
def _remembered_ehlo(lines: tuple[str, ...]) -> Capabilities:
    return Capabilities(*_ehlo(lines), esmtp=True)
