"""What a send returns: the refused recipients, typed, and where it went."""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import NamedTuple

from smtplug.interfaces import TLSInfo
from smtplug.protocol import Reply
from smtplug.protocol.replies import enhanced_status

__all__ = ["RefusedRecipient", "SendResult"]


class RefusedRecipient(NamedTuple):
    """One recipient the server refused: Tcllib's ``{address code diagnostic}``.

    A 3-tuple, so ``address, code, diagnostic = refused`` and comparisons with
    plain tuples work as they do with Tcllib's lists; :attr:`enhanced` and
    :attr:`transient` say more without changing that shape.
    """

    address: str
    code: int
    diagnostic: str

    @property
    def enhanced(self) -> str | None:
        """The RFC 3463 enhanced status code the diagnostic starts with
        (``"5.1.1"``), or None."""
        return enhanced_status(self.code, self.diagnostic)

    @property
    def transient(self) -> bool:
        """True for a temporary refusal (4xx): this recipient may be tried again
        later (in a new message to just the refused recipients)."""
        return 400 <= self.code < 500

    @property
    def permanent(self) -> bool:
        """True for a permanent refusal (5xx)."""
        return 500 <= self.code < 600


class SendResult(list[RefusedRecipient]):
    """The refused recipients, ``[(address, code, diagnostic), ...]``, as Tcllib
    returns them (each a :class:`RefusedRecipient`); also says whether and
    where the message was accepted.

    ``accepted`` is True only when the server answered the end of the message
    with success. A non-empty list with ``accepted`` True means the message
    went to the other recipients (``atleastone=True``); with ``accepted``
    False the transaction was reset and nothing was sent. ``recipients`` are
    the recipients of the message the server accepted: empty when nothing
    was sent. ``transcript`` is the send's redacted transcript (the lines
    ``debug=True`` prints) when the client was made with ``transcript=True``,
    otherwise None.

    With a retry policy (:class:`smtplug.Retry`): ``attempts`` is how many
    attempts the send took (1 without retry), and ``may_be_duplicate`` is
    True when an earlier attempt ended with the delivery unknown
    (``unknown="retry"``): the server may have the message more than once,
    all copies with the same Message-ID.
    """

    accepted: bool
    server: str | None
    port: int | None
    reply: Reply | None
    recipients: tuple[str, ...]
    tls: TLSInfo | None
    transcript: tuple[str, ...] | None
    attempts: int = 1
    may_be_duplicate: bool = False

    def __init__(
        self,
        refused: Iterable[tuple[str, int, str]] = (),
        *,
        accepted: bool = False,
        server: str | None = None,
        port: int | None = None,
        reply: Reply | None = None,
        recipients: Sequence[str] = (),
        tls: TLSInfo | None = None,
        transcript: tuple[str, ...] | None = None,
    ) -> None:
        super().__init__(RefusedRecipient(*entry) for entry in refused)
        self.accepted = accepted
        self.server = server
        self.port = port
        self.reply = reply
        self.recipients = tuple(recipients) if accepted else ()
        self.tls = tls  # what TLS negotiated, None for a plain session
        self.transcript = transcript

    def __repr__(self) -> str:
        return (
            f"SendResult({[tuple(entry) for entry in self]!r}, accepted={self.accepted!r}, "
            f"server={self.server!r}, port={self.port!r})"
        )
