"""From a message and Tcllib's options to an SMTP envelope and the bytes to send.

Theory of operation. The message (an ``email.message.Message``, ``bytes`` or
``str``) is turned into bytes once, then split into its header block and its
body. The body is never touched here (the DATA encoder normalises line endings
and dot-stuffs it on the way out). The header block is parsed into fields, and
the transmitted header block is rebuilt from them:

* fields named in the ``header`` option replace the message's own fields of
  that name (repeated address fields are joined into one, comma-separated);
* Bcc and Dcc (and their Resent- forms) are dropped;
* From, Sender, Date and Message-ID are added where Tcllib adds them (with
  the Resent- prefix when any ``header`` name starts with ``Resent-``).

The envelope follows Tcllib's ``sendmessage``: the originator comes from the
``originator`` option, else From (Resent-From), else the login name qualified
with this host's name; recipients from the ``recipients`` option, else To, cc,
Dcc and Bcc (or their Resent- forms). Address fields are read from the
``header`` option first and, where it gives none of a field, from the message.
Addresses are parsed with one strict parser (the standard library's RFC 5322
parser, with any defect an error, and whatever it raises on odd input caught
in one place, :func:`_stdlib`), and every address is checked with the same
rules the MAIL/RCPT encoders apply, so bad input fails here, before any
connection is opened. Every address field (From, Sender, To, Cc, Bcc, Dcc,
Reply-To and the Resent- forms), the ``header`` option's and the message's
own, is parsed so, whether the envelope is read from it or not: a malformed
field is refused, never sent as it is or as the standard library would repair
it. An ``EmailMessage`` whose address fields hold a non-ASCII address is
serialised in UTF-8 (RFC 6532), as smtplib's ``send_message`` does, and then
needs SMTPUTF8.
"""

from __future__ import annotations

import email.headerregistry
import email.message
import email.policy
import email.utils
import functools
import re
import threading
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from email.errors import MessageDefect, NonASCIILocalPartDefect
from types import MappingProxyType
from typing import NamedTuple, TypeVar

from smtplug.errors import InvalidInputError
from smtplug.protocol.commands import check_address
from smtplug.source import FIELD_LINE, Body, MessageInput, read_message

__all__ = ["DISALLOWED_HEADERS", "PreparedMessage", "parse_addresses", "prepare"]

#: Names the ``header`` option refuses, as Tcllib does: they belong to the MIME part.
DISALLOWED_HEADERS = frozenset(
    {"content-type", "content-transfer-encoding", "content-md5", "mime-version"}
)

#: Address fields: repeated ``header`` values for these are joined into one field.
_ADDRESS_FIELDS = frozenset(
    f"{prefix}{name}"
    for prefix in ("", "resent-")
    for name in ("from", "sender", "to", "cc", "bcc", "dcc", "reply-to")
)
_NEVER_SENT = frozenset({"bcc", "dcc", "resent-bcc", "resent-dcc"})

_FIELD_NAME = re.compile(rb"[!-9;-~]+")  # RFC 5322 ftext: printable US-ASCII but ":"
_BAD_VALUE_CHARS = re.compile(r"[\x00-\x08\x0a-\x1f\x7f]")
_MAX_LINE = 998


@dataclass(frozen=True, slots=True)
class PreparedMessage:
    """The envelope, and the message to transmit (before DATA encoding): the
    rebuilt header block (ending with its empty line) and the caller's body."""

    sender: str  # "" is the null reverse-path
    recipients: tuple[str, ...]
    header: bytes
    body: Body
    resent: bool
    smtputf8: bool = False
    """An address (in the envelope or a header field smtplug wrote) is not
    ASCII: the message needs a server that offers SMTPUTF8 (RFC 6531)."""

    @property
    def size(self) -> int | None:
        """Octets of the message, when known (for SIZE, RFC 1870)."""
        return None if self.body.size is None else len(self.header) + self.body.size

    @property
    def ascii(self) -> bool | None:
        """Whether the message is 7-bit, when known."""
        if self.body.ascii is None:
            return None
        return self.body.ascii and self.header.isascii()

    @property
    def data(self) -> bytes:
        """The whole message in one piece (a copy: for tests and small messages)."""
        return self.header + b"".join(bytes(chunk) for chunk in self.body.chunks())


class _Field(NamedTuple):
    """One header field (a tuple: many are made per message, and cheaply)."""

    name: str  # as written
    lower: str
    raw: bytes  # the whole field, folding and line ending included
    value: str  # unfolded, for address parsing


_FOLD = re.compile(r"\r?\n(?=[ \t])")


def _field(raw: bytes, name: str) -> _Field:
    text = raw.split(b":", 1)[1].decode("utf-8", "surrogateescape")
    value = _FOLD.sub("", text).strip("\r\n").strip()
    return _Field(name, name.lower(), raw, value)


def _check_text(what: str, value: object) -> str:
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a str, not {type(value).__name__}")
    if _BAD_VALUE_CHARS.search(value):
        raise InvalidInputError(f"{what} contains a CR, LF, NUL or other control character")
    if not value.isascii():
        try:
            value.encode("utf-8")
        except UnicodeEncodeError:  # a lone surrogate: no bytes can say it
            raise InvalidInputError(f"{what} is not valid Unicode text") from None
    return value


def parse_addresses(what: str, value: str, *, hostname: str) -> list[str]:
    """The addr-specs in an RFC 5322 address list, strictly.

    Display names and comments are allowed; groups give their members. Any
    defect the parser reports is an :class:`InvalidInputError` naming ``what``.
    A bare local part (``alice``) is qualified with ``hostname``, as Tcllib's
    address parser does. Results are cached: a bulk sender parses the same
    From and To fields again and again.
    """
    return list(_addresses(what, value, hostname))


def _addresses(
    what: str, value: object, hostname: str, index: int | None = None
) -> tuple[str, ...]:
    """:func:`parse_addresses` as a tuple; ``what`` (``what[index]``) is
    worded only for an error, and a value seen before costs one cache lookup."""
    if not isinstance(value, str):
        _check_text(what if index is None else f"{what}[{index}]", value)
    try:
        return _parse_addresses(value, hostname)
    except _AddressError as exc:
        name = what if index is None else f"{what}[{index}]"
        problem, text = exc.args
        if text is None:
            raise InvalidInputError(f"{name} {problem}") from None
        raise InvalidInputError(f"{problem} in {name}: {text}") from None


class _AddressError(Exception):
    """(what is wrong, the offending text or None), for :func:`_addresses` to word."""


_T = TypeVar("_T")


def _stdlib(value: str, call: Callable[[], _T], problem: str = "malformed address") -> _T:
    """``call()``: the standard library's header code (``email.headerregistry``,
    ``email._header_value_parser`` under it, ``email.policy`` folding) run on
    the caller's ``value``.

    This is the one place its exceptions are caught. On odd input (U+0085 or
    U+2028 before a lone "<", an unclosed angle bracket, quote or comment,
    a long line of junk ...) it raises ``IndexError``, ``HeaderParseError``,
    ``ValueError``, ``TypeError``, ``UnicodeError``, which of them depending
    on the Python version; each is an :class:`_AddressError` here, which the
    caller words as an :class:`InvalidInputError` naming the field.
    """
    try:
        return call()
    except Exception as exc:
        raise _AddressError(problem, f"{value!r}: {type(exc).__name__}") from None


def _address_header(
    value: str,
) -> tuple[tuple[email.headerregistry.Address, ...], tuple[MessageDefect, ...]]:
    """The addresses in an address list, and the defects the parser found."""
    header = email.policy.default.header_factory("To", value)
    return tuple(header.addresses), tuple(header.defects)


@functools.lru_cache(maxsize=4096)
def _parse_addresses(value: str, hostname: str) -> tuple[str, ...]:
    if _BAD_VALUE_CHARS.search(value):  # cached values passed this check
        raise _AddressError("contains a CR, LF, NUL or other control character", None)
    addresses = _plain_addresses(value)
    if addresses is None:
        addresses = _strict_addresses(value, hostname)
    for address in addresses:
        try:
            check_address(address, smtputf8=True)
        except InvalidInputError as exc:
            raise _AddressError("invalid address", exc.diagnostic) from None
    return addresses


# A plain address list: items "local@domain", "Words <local@domain>" or
# "<local@domain>" (ASCII dot-atoms, display names of atoms), comma-separated,
# spaces and tabs around them. Nothing in it can be a quote, comment, group,
# route, encoded word or bare local part, so the strict parser reads each
# item as its addr-spec, as written, without a defect (pinned by
# tests/test_envelope_fast_paths.py): one match instead of about 50 us an
# address in the standard library's parser.
_PLAIN_ATOM = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~-]+"
_PLAIN_ADDR = rf"{_PLAIN_ATOM}(?:\.{_PLAIN_ATOM})*@{_PLAIN_ATOM}(?:\.{_PLAIN_ATOM})*"
_PLAIN_PHRASE = rf"{_PLAIN_ATOM}(?:[ \t]+{_PLAIN_ATOM})*[ \t]*"
_PLAIN_ITEM = re.compile(rf"[ \t]*(?:({_PLAIN_ADDR})|(?:{_PLAIN_PHRASE})?<({_PLAIN_ADDR})>)[ \t]*")


def _plain_addresses(value: str) -> tuple[str, ...] | None:
    """The addresses of a plain address list, or None when ``value`` is not
    one (then :func:`_strict_addresses` decides)."""
    if "=?" in value:  # the strict parser may read an encoded word there
        return None
    addresses = []
    for item in value.split(","):
        match = _PLAIN_ITEM.fullmatch(item)
        if match is None:
            return None
        addresses.append(match.group(1) or match.group(2))
    return tuple(addresses)


def _strict_addresses(value: str, hostname: str) -> tuple[str, ...]:
    """The addr-specs of ``value`` by the standard library's strict parser
    (any defect an :class:`_AddressError`), not yet checked as the MAIL/RCPT
    encoders check them."""
    # A bare local part: Tcllib's parser appends the host name; so do we, before
    # the strict parser sees it (it would call it a defect).
    items: list[str] = []
    for part in _split_top_level(value):
        stripped = part.strip()
        if _LOCAL_PART.fullmatch(stripped):
            part = f"{stripped}@{hostname}"
        items.append(part)
    joined = ", ".join(items)
    parsed, found = _stdlib(value, lambda: _address_header(joined))
    # A non-ASCII local part is no defect under SMTPUTF8; whether the server
    # offers it is checked before MAIL.
    defects = [d for d in found if not isinstance(d, NonASCIILocalPartDefect)]
    if defects:
        raise _AddressError("malformed address", f"{value!r}: {defects[0]}")
    return tuple(_addr_spec(address) for address in parsed)


# RFC 5322 dot-atom (and RFC 6532's UTF-8 in it), and a domain literal's dtext.
_ATEXT = r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~\-\u0080-\U0010ffff]+"
_DOT_ATOM = re.compile(rf"{_ATEXT}(?:\.{_ATEXT})*")
_DOMAIN_LITERAL = re.compile(r"\[[\x21-\x5a\x5e-\x7e]*\]")


def _addr_spec(address: email.headerregistry.Address) -> str:
    """The address as it goes on the wire: a local part that is no dot-atom
    quoted (the stdlib's ``addr_spec`` drops the quotes of ``"a..b"``); a domain
    that is neither a dot-atom nor a plain domain literal refused."""
    local, domain = address.username, address.domain
    if not local or not domain:
        raise _AddressError("malformed address", repr(address.addr_spec))
    if _DOT_ATOM.fullmatch(local) is None:
        local = '"' + local.replace("\\", "\\\\").replace('"', '\\"') + '"'
    if _DOT_ATOM.fullmatch(domain) is None and _DOMAIN_LITERAL.fullmatch(domain) is None:
        raise _AddressError("malformed domain", repr(address.addr_spec))
    return f"{local}@{domain}"


_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]+")


def _split_top_level(value: str) -> list[str]:
    """Split on commas outside quotes, angle brackets and comments."""
    parts: list[str] = []
    depth_angle = depth_comment = 0
    quoted = escaped = False
    start = 0
    for index, char in enumerate(value):
        if escaped:
            escaped = False
        elif char == "\\" and (quoted or depth_comment):
            escaped = True
        elif quoted:
            quoted = char != '"'
        elif char == "(":
            depth_comment += 1
        elif char == ")" and depth_comment:
            depth_comment -= 1
        elif depth_comment:
            pass  # a quote inside a comment starts nothing
        elif char == '"':
            quoted = True
        elif char == "<":
            depth_angle += 1
        elif char == ">" and depth_angle:
            depth_angle -= 1
        elif char == "," and not depth_angle:
            parts.append(value[start:index])
            start = index + 1
    parts.append(value[start:])
    return [part for part in parts if part.strip()]


def _single_mailbox(what: str, value: str, hostname: str) -> str:
    addresses = parse_addresses(what, value, hostname=hostname)
    if len(addresses) != 1:
        raise InvalidInputError(
            f"{what} must hold exactly one mailbox, not {len(addresses)}: {value!r}"
        )
    return addresses[0]


@dataclass(frozen=True, slots=True)
class _Header:
    """A message's header block, split into fields (shared: never mutated)."""

    fields: tuple[_Field, ...]
    by_name: Mapping[str, tuple[_Field, ...]]  # lower-cased name -> its fields
    kept: bytes  # every field but Bcc/Dcc, each ending in a line break


_REMEMBERED_HEADER = 8192  # octets: longer header blocks are parsed every time


def _parse_header(head: bytes) -> _Header:
    """The header fields of a header block (as :func:`read_message` returns it).

    A bulk sender sends the same header block again and again (to other
    recipients): a block seen before is not parsed again.
    """
    if len(head) <= _REMEMBERED_HEADER:
        return _remembered_header(head)
    return _split_header(head)


# A header field with its continuation lines, each ending in LF (the last
# may end the block without one): group 1 the name, group 2 the rest after
# the colon.
_FIELD = re.compile(rb"([!-9;-~]+)[ \t]*:([^\n]*(?:\n[ \t][^\n]*)*)(?:\n|\Z)")


def _split_header(head: bytes) -> _Header:
    """:func:`_split_header_lines` in one regex pass, for a block whose every
    CR is half of a CRLF (the usual case; the same result, property-tested)."""
    if head.count(b"\r") != head.count(b"\r\n"):
        return _split_header_lines(head)
    fields: list[_Field] = []
    pos, end = 0, len(head)
    match = _FIELD.match
    while pos < end:
        found = match(head, pos)
        if found is None:  # a malformed line: worded by the line split
            return _split_header_lines(head)
        name = found.group(1).decode("ascii")
        text = found.group(2).decode("utf-8", "surrogateescape")
        if "\n" in text:
            text = _FOLD.sub("", text)
        fields.append(_Field(name, name.lower(), found.group(0), text.strip("\r\n").strip()))
        pos = found.end()
    return _header(tuple(fields))


def _split_header_lines(head: bytes) -> _Header:
    lines: list[tuple[bytes, str]] = []  # (raw, name) of each field
    for line in head.splitlines(keepends=True):
        if line[:1] in (b" ", b"\t") and lines:
            lines[-1] = (lines[-1][0] + line, lines[-1][1])
            continue
        match = FIELD_LINE.match(line)
        if match is None:  # a bare CR split a line (read_message splits at LF only)
            raise InvalidInputError(f"malformed header line: {line[:60]!r}")
        lines.append((line, match.group(1).decode("ascii")))
    return _header(tuple(_field(raw, name) for raw, name in lines))


def _header(fields: tuple[_Field, ...]) -> _Header:
    by_name: dict[str, tuple[_Field, ...]] = {}
    for f in fields:
        by_name[f.lower] = (*by_name.get(f.lower, ()), f)
    kept = b"".join(_line_ended(f.raw) for f in fields if f.lower not in _NEVER_SENT)
    return _Header(fields, MappingProxyType(by_name), kept)


_remembered_header = functools.lru_cache(maxsize=64)(_split_header)


def _line_ended(raw: bytes) -> bytes:
    return raw if raw.endswith(b"\n") else raw + b"\r\n"


def _render(name: str, value: str, *, utf8: bool = False) -> bytes:
    """One header field, folded and encoded as needed, CRLF-terminated.

    Non-ASCII text becomes RFC 2047 encoded words; with ``utf8`` (a field that
    holds a non-ASCII address, which no encoded word may hold) the field is
    written in UTF-8 (RFC 6532), for an SMTPUTF8 server only.
    """
    line = f"{name}: {value}\r\n"
    if line.isascii() and len(line) <= _MAX_LINE + 2:
        return line.encode("ascii")
    policy = email.policy.SMTPUTF8 if utf8 else email.policy.SMTP
    charset = "utf-8" if utf8 else "ascii"

    def fold() -> bytes:
        folded: str = policy.header_factory(name, value).fold(policy=policy)
        return folded.encode(charset)

    try:
        return _stdlib(value, fold, "cannot be written")
    except _AddressError as exc:
        raise InvalidInputError(f"header {name} {exc.args[0]}: {exc.args[1]}") from None


def _render_addresses(name: str, value: str, addresses: tuple[str, ...], hostname: str) -> bytes:
    """An address field, written so that it holds exactly ``addresses`` (what
    ``value`` was parsed to): a field the standard library's folding would
    change is refused, never sent changed."""
    rendered = _render(name, value, utf8=not all(a.isascii() for a in addresses))
    if rendered == f"{name}: {value}\r\n".encode():
        return rendered
    written = _field(rendered, name).value
    try:
        again = _parse_addresses(written, hostname)
    except _AddressError:
        again = None
    if again != addresses:
        raise InvalidInputError(f"header {name} cannot be written unchanged: {value!r}")
    return rendered


_SINGLE_MAILBOX = frozenset({"sender", "resent-sender"})


def _field_addresses(name: str, value: str, hostname: str) -> tuple[str, ...]:
    """The addresses of address field ``name``, strictly (Sender: exactly one)."""
    addresses = _addresses(name, value, hostname)
    if name.lower() in _SINGLE_MAILBOX and len(addresses) != 1:
        raise InvalidInputError(
            f"{name} must hold exactly one mailbox, not {len(addresses)}: {value!r}"
        )
    return addresses


def _international(message: email.message.Message, hostname: str) -> bool:
    """Whether the message object must be serialised in UTF-8 (RFC 6532).

    Under ``email.policy.default`` the standard library writes a non-ASCII
    local part as an encoded word (``=?utf-8?q?j=C3=BCrgen?=@example.test``),
    which no address may be (RFC 2047 section 5). smtplib's ``send_message``
    then serialises with ``policy.clone(utf8=True)``; so does smtplug, when an
    address field holds a non-ASCII address. A compat32 message has no such
    policy: it is serialised as it is.
    """
    policy = message.policy
    if not isinstance(policy, email.policy.EmailPolicy) or policy.utf8:
        return False
    for name, value in message.raw_items():
        text = str(value)
        if name.lower() not in _ADDRESS_FIELDS or text.isascii():
            continue
        if _SURROGATE.search(text):  # parsed from bytes: written back as they were
            continue
        text = re.sub(r"\r?\n(?=[ \t])", "", text)
        if not "".join(_addresses(name, text, hostname)).isascii():
            return True
    return False


_SURROGATE = re.compile(r"[\ud800-\udfff]")


def _check_header_option(header: object) -> list[tuple[str, str]]:
    if isinstance(header, str | bytes) or not isinstance(header, Iterable):
        raise InvalidInputError("header must be a list of (name, value) pairs")
    pairs: list[tuple[str, str]] = []
    for item in header:
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise InvalidInputError(f"header expects a name and a value, not {item!r}")
        name, value = item
        if not isinstance(name, str) or not _FIELD_NAME.fullmatch(name.encode("utf-8")):
            raise InvalidInputError(f"invalid header name {name!r}")
        if name.lower() in DISALLOWED_HEADERS:
            raise InvalidInputError(
                "Content-Type, Content-Transfer-Encoding, Content-MD5, and MIME-Version "
                "cannot be user-specified"
            )
        pairs.append((name, _check_text(f"header {name}", value)))
    return pairs


def prepare(
    message: MessageInput,
    *,
    originator: str | None,
    recipients: str | Sequence[str] | None,
    header: Sequence[tuple[str, str]],
    login: Callable[[], str],
    hostname: str,
    date: str | None = None,
    message_id: str | None = None,
) -> PreparedMessage:
    """Validate the options and derive the envelope and transmitted bytes.

    ``login()`` and ``hostname`` give the fallback originator (``login@hostname``;
    ``login`` is called only when that fallback is needed)
    and qualify bare local parts; ``date`` and ``message_id`` are the values
    to add where the message has none (computed when not given).
    Raises :class:`InvalidInputError` for anything malformed.
    """
    pairs = _check_header_option(header)
    if originator is not None:
        _check_text("originator", originator)
    head, body = read_message(
        message,
        utf8=isinstance(message, email.message.Message) and _international(message, hostname),
    )
    key = (
        _memo_key(head, originator, recipients, pairs, hostname)
        if date is None and message_id is None and _MEMO_SIZE
        else None
    )
    if key is not None:
        known = _MEMO.get(key)
        if known is not None:
            sender, rcpt_tuple, header_bytes, resent, smtputf8 = known
            return PreparedMessage(sender, rcpt_tuple, header_bytes, body, resent, smtputf8)
    generated = False  # a value made for this call only (login, Date, Message-ID)
    parsed = _parse_header(head)

    # The header option: lower-cased name -> (name as first written, values).
    given: dict[str, tuple[str, list[str]]] = {}
    for name, value in pairs:
        given.setdefault(name.lower(), (name, []))[1].append(value)

    # Every address field, the header option's and the message's own, parsed
    # strictly whether it is read for the envelope or not: a malformed one is
    # refused, never sent as it is nor "repaired" on the way out.
    given_addresses: dict[str, tuple[str, ...]] = {}
    for lower, (name, field_values) in given.items():
        if lower in _ADDRESS_FIELDS:
            given_addresses[lower] = _field_addresses(name, ", ".join(field_values), hostname)
    shown_utf8 = any(
        not address.isascii()
        for lower, addresses in given_addresses.items()
        if lower not in _NEVER_SENT
        for address in addresses
    )
    for f in parsed.fields:
        if f.lower in _ADDRESS_FIELDS and f.lower not in given:
            addresses = _field_addresses(f.name, f.value, hostname)
            if f.lower not in _NEVER_SENT and not "".join(addresses).isascii():
                shown_utf8 = True

    resent = any(lower.startswith("resent-") for lower in given)
    prefix_lower, prefix = ("resent-", "Resent-") if resent else ("", "")

    own = parsed.by_name

    def values(field: str) -> list[str]:
        """A field's values: from the header option, else from the message."""
        lower = prefix_lower + field.lower()
        if lower in given:
            return list(given[lower][1])
        return [f.value for f in own.get(lower, ())]

    def present(field: str) -> bool:
        lower = prefix_lower + field.lower()
        return lower in given or lower in own

    added: list[tuple[str, str]] = []

    # --- originator -------------------------------------------------------
    if originator == "":
        sender = ""  # the null reverse-path: no From or Sender is added
    else:
        from_values = values("From")
        if originator is not None:
            sender = _single_mailbox("originator", originator, hostname)
            origin_text = originator
        elif from_values:
            origin_text = ", ".join(from_values)
            sender = _single_mailbox(prefix + "From", origin_text, hostname)
        else:
            generated = True
            origin_text = f"{login()}@{hostname}"
            sender = _single_mailbox("the login name", origin_text, hostname)
        if not from_values:
            added.append((prefix + "From", origin_text))
            from_addresses = [sender]
        else:
            from_addresses = parse_addresses(
                prefix + "From", ", ".join(from_values), hostname=hostname
            )
        if not present("Sender") and from_addresses != [sender]:
            # RFC 5322: Sender names the mailbox that sent the message: the
            # originator (Tcllib writes From's address here, which says nothing).
            added.append((prefix + "Sender", sender))

    # --- recipients -------------------------------------------------------
    if recipients is not None:
        if isinstance(recipients, str):
            rcpt = parse_addresses("recipients", recipients, hostname=hostname)
        elif isinstance(recipients, Iterable):
            rcpt = []
            for index, item in enumerate(recipients):
                if not isinstance(item, str):
                    raise InvalidInputError(
                        f"recipients[{index}] must be a str, not {type(item).__name__}"
                    )
                rcpt += _addresses("recipients", item, hostname, index)
        else:
            raise InvalidInputError("recipients must be a str or a list of str")
        if not rcpt:
            raise InvalidInputError("recipients is empty")
    else:
        rcpt = []
        for field in ("To", "cc", "Dcc", "Bcc"):
            for value in values(field):
                rcpt.extend(parse_addresses(prefix + field, value, hostname=hostname))
        if not rcpt:
            raise InvalidInputError(
                f"no recipients: give recipients= or a {prefix}To, {prefix}cc, "
                f"{prefix}Dcc or {prefix}Bcc field"
            )

    # --- Date, Message-ID ---------------------------------------------------
    if not present("Date"):
        generated = True
        added.append((prefix + "Date", date or email.utils.formatdate(localtime=True)))
    if not present("Message-ID"):
        generated = True
        added.append((prefix + "Message-ID", message_id or email.utils.make_msgid(domain=hostname)))

    # --- the transmitted header block ---------------------------------------
    out: list[bytes] = [
        parsed.kept
        if not given
        else b"".join(
            _line_ended(f.raw)
            for f in parsed.fields
            if f.lower not in given and f.lower not in _NEVER_SENT
        )
    ]
    for lower, (name, field_values) in given.items():
        if lower in _NEVER_SENT:
            continue
        if lower in _ADDRESS_FIELDS:
            joined = ", ".join(field_values)
            out.append(_render_addresses(name, joined, given_addresses[lower], hostname))
        else:
            out.extend(_render(name, value) for value in field_values)
    out.extend(
        _render_addresses(name, value, (sender,), hostname)
        if name.lower() in _ADDRESS_FIELDS
        else _render(name, value)
        for name, value in added
    )
    out.append(b"\r\n")
    header_bytes = b"".join(out)
    # A non-ASCII address in the envelope or in a transmitted field (written
    # in UTF-8: no encoded word may hold an address) needs SMTPUTF8. A From or
    # Sender added here holds the originator.
    smtputf8 = shown_utf8 or not (sender.isascii() and "".join(rcpt).isascii())
    prepared = PreparedMessage(sender, tuple(rcpt), header_bytes, body, resent, smtputf8)
    if key is not None and not generated:
        _remember(key, (sender, prepared.recipients, header_bytes, resent, smtputf8))
    return prepared


# -- the envelope of a message seen before -----------------------------------------
#
# A bulk sender prepares the same header block, with the same originator,
# recipients and header option, again and again. Everything prepare() derives
# from those (the envelope, the transmitted header block, SMTPUTF8) is a pure
# function of them unless prepare() made a value of its own (the login name,
# Date, Message-ID): such results are remembered (immutable values only; the
# body is the caller's each time), keyed on exactly the inputs, each an exact
# str, bytes or tuple of them, so that equal keys mean equal inputs. A call
# that fails is never remembered: it fails again, the same way.

#: Envelopes remembered at most (0: none; the oldest is forgotten first).
_MEMO_SIZE = 256
#: Header blocks longer than this, or more recipients, are not remembered.
_MEMO_MAX_HEAD = _REMEMBERED_HEADER
_MEMO_MAX_RECIPIENTS = 100  # (at most about 4 MB remembered in all)

_MemoKey = tuple[bytes, str | None, str | tuple[str, ...] | None, tuple[tuple[str, str], ...], str]
_MEMO: dict[_MemoKey, tuple[str, tuple[str, ...], bytes, bool, bool]] = {}
_MEMO_LOCK = threading.Lock()


def _memo_key(
    head: bytes,
    originator: object,
    recipients: object,
    pairs: list[tuple[str, str]],
    hostname: object,
) -> _MemoKey | None:
    """The key of a call's inputs, or None when they cannot be one (a type
    other than exactly str, a list of str, or a tuple of str: a subclass may
    compare equal to a value it does not behave as)."""
    if len(head) > _MEMO_MAX_HEAD or type(hostname) is not str:
        return None
    if originator is not None and type(originator) is not str:
        return None
    rcpt: str | tuple[str, ...] | None
    if recipients is None or type(recipients) is str:
        rcpt = recipients
    elif isinstance(recipients, list | tuple) and type(recipients) in (list, tuple):
        if len(recipients) > _MEMO_MAX_RECIPIENTS:
            return None
        for item in recipients:
            if type(item) is not str:
                return None
        rcpt = tuple(recipients)
    else:
        return None
    for name, value in pairs:  # (checked to be str by _check_header_option)
        if type(name) is not str or type(value) is not str:
            return None
    return (head, originator, rcpt, tuple(pairs), hostname)


def _remember(key: _MemoKey, value: tuple[str, tuple[str, ...], bytes, bool, bool]) -> None:
    with _MEMO_LOCK:
        while len(_MEMO) >= _MEMO_SIZE:
            del _MEMO[next(iter(_MEMO))]
        _MEMO[key] = value
