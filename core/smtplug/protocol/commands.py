"""SMTP command encoders: validated arguments in, exact wire bytes out.

Theory of operation
-------------------
Each function returns the complete command line to write, ending in CRLF, or
raises :class:`~smtplug.errors.InvalidInputError` *before* producing a single
byte. Nothing here does I/O or keeps state.

The validation is what makes command injection impossible: an argument can
never contain CR, LF, NUL, any other C0 control character or DEL, so a
caller-supplied string can never end a command early and smuggle in another
(``"a@b>\\r\\nRCPT TO:<victim@c"``). Every line is also held to RFC 5321's
512 octets including CRLF (section 4.5.3.1.4).

Addresses (:func:`check_address`) may not contain ``<``, ``>`` or whitespace
outside a quoted local part (``"john doe"@example.org``). Non-ASCII addresses
are sent as UTF-8, and only when the caller passes ``smtputf8=True`` (which it
does when the server advertised SMTPUTF8, RFC 6531). ESMTP parameters of MAIL
and RCPT must be ``keyword[=value]`` per RFC 5321 section 4.1.2.
"""

from __future__ import annotations

import base64
import re
from collections.abc import Iterable, Sequence

from smtplug.errors import InvalidInputError, ProtocolError

__all__ = [
    "MAX_ADDRESS",
    "MAX_AUTH_LINE",
    "MAX_COMMAND_LINE",
    "auth",
    "bdat",
    "check_address",
    "check_param",
    "command",
    "data",
    "decode_challenge",
    "ehlo",
    "hello",
    "helo",
    "initial_response_fits",
    "mail",
    "noop",
    "qued",
    "quit",
    "rcpt",
    "rcpts",
    "rset",
    "sasl_cancel",
    "sasl_response",
    "starttls",
]

MAX_COMMAND_LINE = 512
"""Octets in a command line, CRLF included (RFC 5321 section 4.5.3.1.4)."""

MAX_ADDRESS = 254
"""Octets in an address: a path holds 256 with its "<" and ">" (RFC 5321 4.5.3.1.3)."""

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_SPACE = re.compile(r"\s")
_VERB = re.compile(r"[A-Za-z0-9]+\Z")
# esmtp-param = esmtp-keyword ["=" esmtp-value]; value: %d33-60 / %d62-126
_PARAM = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]*(?:=[\x21-\x3c\x3e-\x7e]+)?\Z")
_SHOW = 60
# An address every rule of check_address accepts at a glance: printable ASCII
# without space, quote, backslash, "<" or ">", and short enough.
_PLAIN_ADDRESS = re.compile(rf"[\x21\x23-\x3b\x3d\x3f-\x5b\x5d-\x7e]{{1,{MAX_ADDRESS}}}\Z")
_MECHANISM = re.compile(r"[A-Z0-9_-]{1,20}\Z")  # RFC 4422 sasl-mech
_BASE64 = re.compile(r"[A-Za-z0-9+/]*={0,2}\Z")

MAX_AUTH_LINE = 12288
"""Octets in a SASL response line (the answer to a 334), CRLF included (RFC 4954 section 4)."""


def _show(value: str) -> str:
    """``repr`` of a refused value (controls escaped), truncated."""
    if len(value) > _SHOW:
        return repr(value[:_SHOW]) + "..."
    return repr(value)


def _check_text(what: str, value: object) -> str:
    """Refuse a non-string or a string with a control character."""
    if not isinstance(value, str):
        raise InvalidInputError(f"{what} must be a string, not {type(value).__name__}")
    if _CONTROL.search(value) is not None:
        raise InvalidInputError(
            f"{what} contains a control character (CR, LF, NUL, ... or DEL): {_show(value)}"
        )
    return value


def _check_word(what: str, value: object) -> str:
    """A non-empty, whitespace-free ASCII argument (domain, SASL data, ...)."""
    text = _check_text(what, value)
    if not text:
        raise InvalidInputError(f"{what} is empty")
    if not text.isascii():
        raise InvalidInputError(f"{what} must be ASCII: {_show(text)}")
    if _SPACE.search(text) is not None:
        raise InvalidInputError(f"{what} contains whitespace: {_show(text)}")
    return text


def _line(text: str, limit: int = MAX_COMMAND_LINE) -> bytes:
    """Encode a validated command (without CRLF), enforcing the line limit."""
    wire = text.encode("utf-8") + b"\r\n"
    if len(wire) > limit:
        raise InvalidInputError(
            f"command line of {len(wire)} octets exceeds the {limit} octets allowed: {_show(text)}"
        )
    return wire


def _quote_end(address: str) -> int | None:
    """Index of the quote closing the quoted string ``address`` starts with."""
    i = 1
    while i < len(address):
        char = address[i]
        if char == "\\":
            i += 2
        elif char == '"':
            return i
        else:
            i += 1
    return None


def check_address(address: str, *, allow_empty: bool = False, smtputf8: bool = False) -> str:
    """Validate a mailbox for MAIL FROM / RCPT TO and return it unchanged.

    Refuses control characters, ``<``, ``>``, whitespace outside a quoted
    local part, the empty address (unless ``allow_empty``: the null reverse
    path), non-ASCII text unless ``smtputf8``, and more than
    :data:`MAX_ADDRESS` octets.
    """
    if type(address) is str and _PLAIN_ADDRESS.match(address) is not None:
        return address  # the common case, decided by one match
    _check_text("address", address)
    if not address:
        if allow_empty:
            return address
        raise InvalidInputError("empty address")
    if not address.isascii():
        if not smtputf8:
            raise InvalidInputError(
                f"address {_show(address)} is not ASCII: sending it needs SMTPUTF8 "
                "(the server must advertise it and the caller must pass smtputf8=True)"
            )
        try:
            address.encode("utf-8")
        except UnicodeEncodeError:
            raise InvalidInputError(f"address {_show(address)} is not valid Unicode") from None
    if len(address.encode("utf-8", "surrogatepass")) > MAX_ADDRESS:
        raise InvalidInputError(
            f"address {_show(address)} is longer than the {MAX_ADDRESS} octets a path "
            "may hold (RFC 5321 section 4.5.3.1.3: 256 with its angle brackets)"
        )
    if "<" in address or ">" in address:
        raise InvalidInputError(f"address {_show(address)} contains '<' or '>'")
    outside = address
    if address.startswith('"'):
        end = _quote_end(address)
        if end is None:
            raise InvalidInputError(f"address {_show(address)} has an unterminated quoted part")
        outside = address[end + 1 :]
    if _SPACE.search(outside) is not None:
        raise InvalidInputError(f"address {_show(address)} contains whitespace")
    return address


def check_param(param: str) -> str:
    """Validate one ESMTP parameter of MAIL or RCPT (``KEYWORD[=value]``)."""
    _check_text("ESMTP parameter", param)
    if _PARAM.match(param) is None:
        raise InvalidInputError(
            f"malformed ESMTP parameter {_show(param)}: expected keyword[=value], the value "
            "printable US-ASCII without '=' or spaces"
        )
    return param


def _path_command(
    prefix: str, address: str, params: Sequence[str], *, allow_empty: bool, smtputf8: bool
) -> bytes:
    # A list or tuple at a glance; a lone string would be split into characters.
    if type(params) not in (list, tuple) and (
        isinstance(params, str | bytes) or not isinstance(params, Sequence)
    ):
        raise InvalidInputError(
            f"ESMTP parameters must be a sequence of strings, not {type(params).__name__}"
        )
    check_address(address, allow_empty=allow_empty, smtputf8=smtputf8)
    if not params and address.isascii():  # at most 9 + 256 + 2 octets: within the limit
        return f"{prefix}<{address}>\r\n".encode("ascii")
    checked = [check_param(param) for param in params]
    return _line(" ".join([f"{prefix}<{address}>", *checked]))


def ehlo(domain: str) -> bytes:
    """``EHLO domain``: the client's name, non-empty ASCII without whitespace."""
    return hello("EHLO", domain)


def hello(verb: str, domain: str) -> bytes:
    """``verb domain``: a session's hello (``EHLO``, ``HELO``, LMTP's ``LHLO``),
    the client's name non-empty ASCII without whitespace."""
    return _line(f"{verb} {_check_word(f'{verb} domain', domain)}")


def helo(domain: str) -> bytes:
    """``HELO domain``, for servers that refuse EHLO."""
    return hello("HELO", domain)


def mail(reverse_path: str, params: Sequence[str] = (), *, smtputf8: bool = False) -> bytes:
    """``MAIL FROM:<reverse_path> [params]``; ``""`` is the null reverse path ``<>``."""
    return _path_command("MAIL FROM:", reverse_path, params, allow_empty=True, smtputf8=smtputf8)


def rcpt(forward_path: str, params: Sequence[str] = (), *, smtputf8: bool = False) -> bytes:
    """``RCPT TO:<forward_path> [params]``; the address must not be empty."""
    return _path_command("RCPT TO:", forward_path, params, allow_empty=False, smtputf8=smtputf8)


def rcpts(forward_paths: Iterable[str], *, smtputf8: bool = False) -> list[bytes]:
    """``[rcpt(path, smtputf8=smtputf8) for path in forward_paths]``: the same
    lines and errors, a plain ASCII address (the common case) encoded after
    the one match that decides it, without the calls around it."""
    plain = _PLAIN_ADDRESS.match
    return [
        f"RCPT TO:<{path}>\r\n".encode("ascii")
        if type(path) is str and plain(path) is not None
        else rcpt(path, smtputf8=smtputf8)
        for path in forward_paths
    ]


def data() -> bytes:
    """``DATA``."""
    return b"DATA\r\n"


def rset() -> bytes:
    """``RSET``."""
    return b"RSET\r\n"


def quit() -> bytes:
    """``QUIT``."""
    return b"QUIT\r\n"


def noop() -> bytes:
    """``NOOP``."""
    return b"NOOP\r\n"


def starttls() -> bytes:
    """``STARTTLS`` (RFC 3207)."""
    return b"STARTTLS\r\n"


def qued() -> bytes:
    """``QUED``: Tcllib's ``-queue``, sent when the server advertises XQUE."""
    return b"QUED\r\n"


def command(verb: str, *args: str) -> bytes:
    """Any command: ``verb`` (ASCII letters and digits) and arguments, space-separated.

    Each argument must be non-empty ASCII without whitespace or control
    characters (an empty SASL response is ``"="``, RFC 4954).
    """
    _check_text("command verb", verb)
    if _VERB.match(verb) is None:
        raise InvalidInputError(f"command verb must be ASCII letters and digits: {_show(verb)}")
    for arg in args:
        _check_word(f"{verb} argument", arg)
    return _line(" ".join([verb, *args]))


def bdat(size: int, *, last: bool = False) -> bytes:
    """``BDAT size [LAST]`` (RFC 3030); the ``size`` octets follow it directly."""
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise InvalidInputError(f"BDAT size must be a non-negative int, not {size!r}")
    return f"BDAT {size}{' LAST' if last else ''}\r\n".encode("ascii")


def auth(mechanism: str, initial_response: bytes | None = None) -> bytes:
    """``AUTH mechanism [initial-response]`` (RFC 4954).

    ``initial_response`` is the raw bytes (base64-encoded here); ``b""`` is
    sent as ``=``, None sends none. The line is held to the 512 octets of any
    command line: RFC 4954 section 4 forbids an initial response that would
    make it longer (check with :func:`initial_response_fits`, and send such a
    response with :func:`sasl_response` after the server's empty 334 instead).
    """
    _check_text("SASL mechanism", mechanism)
    if _MECHANISM.match(mechanism) is None:
        raise InvalidInputError(f"invalid SASL mechanism name: {_show(mechanism)}")
    if initial_response is None:
        return _line(f"AUTH {mechanism}")
    encoded = base64.b64encode(initial_response).decode("ascii") or "="
    return _secret_line(f"AUTH {mechanism} {encoded}", MAX_COMMAND_LINE)


def initial_response_fits(mechanism: str, initial_response: bytes) -> bool:
    """True when ``AUTH mechanism initial-response`` fits in 512 octets with its CRLF."""
    encoded = max(1, 4 * -(-len(initial_response) // 3))  # base64 length ("=" when empty)
    return len(f"AUTH {mechanism} ".encode()) + encoded + 2 <= MAX_COMMAND_LINE


def sasl_response(response: bytes) -> bytes:
    """One answer to a 334 challenge: the bytes base64-encoded (empty for b"")."""
    return _secret_line(base64.b64encode(response).decode("ascii"), MAX_AUTH_LINE)


def _secret_line(text: str, limit: int) -> bytes:
    """:func:`_line` for a line carrying credentials: its error names only the size."""
    wire = text.encode("ascii") + b"\r\n"
    if len(wire) > limit:
        raise InvalidInputError(
            f"SASL line of {len(wire)} octets exceeds the {limit} octets allowed"
        )
    return wire


def sasl_cancel() -> bytes:
    """``*``: abandon the authentication exchange (RFC 4954 section 4)."""
    return b"*\r\n"


def decode_challenge(text: str) -> bytes:
    """The bytes of a 334 challenge's text, strictly base64 (RFC 4954).

    Raises :class:`ProtocolError` for anything else: the server broke RFC 4954.
    """
    stripped = text.strip()
    if _BASE64.match(stripped) is None or len(stripped) % 4:
        raise ProtocolError(f"SASL challenge is not base64: {_show(stripped)}")
    return base64.b64decode(stripped, validate=True)
