"""Delivery status notifications (RFC 3461) and other MAIL/RCPT parameters.

Sans-IO: the parameter strings for MAIL and RCPT, checked before any byte is
sent. :class:`DSN` holds what the caller asks for: ``notify`` (``NEVER``, or
any of ``SUCCESS``, ``FAILURE``, ``DELAY``), for every recipient or per
recipient; ``ret`` (``FULL`` or ``HDRS``: what a failure report returns);
``envid`` (an envelope identifier echoed in reports); ``orcpt`` (send each
recipient's address as its original recipient). xtext (RFC 3461 section 4)
encodes ENVID and ORCPT.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field

from smtplug.errors import InvalidInputError
from smtplug.protocol.commands import check_param

__all__ = ["DSN", "MailParameters", "mail_parameters", "xtext"]

_NOTIFY = ("SUCCESS", "FAILURE", "DELAY")
#: What smtplug writes itself: a caller's mail_options/rcpt_options may not.
_OWN_MAIL = frozenset({"SIZE", "BODY", "SMTPUTF8", "RET", "ENVID", "REQUIRETLS"})
_OWN_RCPT = frozenset({"NOTIFY", "ORCPT"})
MAX_ENVID = 100  # RFC 3461 section 4.4: at most 100 characters


def xtext(text: str) -> str:
    """RFC 3461 xtext: ``+``, ``=`` and octets outside 33-126 as ``+XX``."""
    out = []
    for octet in text.encode("utf-8"):
        if 33 <= octet <= 126 and octet not in (0x2B, 0x3D):
            out.append(chr(octet))
        else:
            out.append(f"+{octet:02X}")
    return "".join(out)


def _notify(value: object, what: str) -> tuple[str, ...]:
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, Iterable) or isinstance(items, bytes):
        raise InvalidInputError(f"{what} must be 'NEVER' or some of {', '.join(_NOTIFY)}")
    names = []
    for item in items:
        if not isinstance(item, str):
            raise InvalidInputError(f"{what} must hold strings, not {item!r}")
        names.append(item.upper())
    if names == ["NEVER"]:
        return ("NEVER",)
    if not names or any(name not in _NOTIFY for name in names):
        raise InvalidInputError(
            f"{what} must be 'NEVER' or a non-empty set of {', '.join(_NOTIFY)}, not {value!r}"
        )
    return tuple(name for name in _NOTIFY if name in names)


@dataclass(frozen=True)
class DSN:
    """What delivery status notifications to ask for (RFC 3461).

    ``notify``: ``"NEVER"``, or some of ``"SUCCESS"``, ``"FAILURE"``,
    ``"DELAY"`` (a str or a sequence), for every recipient; or a mapping of
    recipient address to that, for some (the others get the server's
    default). ``ret``: ``"FULL"`` or ``"HDRS"``. ``envid``: up to 100
    printable ASCII characters. ``orcpt``: send ``ORCPT=rfc822;<address>``
    for every recipient. ``required``: when the server does not offer DSN,
    True (the default) refuses to send the message (``InvalidInputError``
    before MAIL), False sends it without the parameters.
    """

    notify: str | Sequence[str] | Mapping[str, str | Sequence[str]] | None = None
    ret: str | None = None
    envid: str | None = None
    orcpt: bool = False
    required: bool = True
    _rcpt: Mapping[str, tuple[str, ...]] | tuple[str, ...] | None = field(
        default=None, init=False, repr=False, compare=False
    )

    def __post_init__(self) -> None:
        notify: Mapping[str, tuple[str, ...]] | tuple[str, ...] | None = None
        if isinstance(self.notify, Mapping):
            notify = {}
            for address, value in self.notify.items():
                if not isinstance(address, str):
                    raise InvalidInputError(f"dsn notify keys must be addresses, not {address!r}")
                notify[address] = _notify(value, f"dsn notify for {address}")
        elif self.notify is not None:
            notify = _notify(self.notify, "dsn notify")
        object.__setattr__(self, "_rcpt", notify)
        if self.ret is not None and (
            not isinstance(self.ret, str) or self.ret.upper() not in ("FULL", "HDRS")
        ):
            raise InvalidInputError(f"dsn ret must be 'FULL' or 'HDRS', not {self.ret!r}")
        if self.envid is not None and (
            not isinstance(self.envid, str)
            or not self.envid
            or len(self.envid) > MAX_ENVID
            or not all(32 <= ord(c) <= 126 for c in self.envid)
        ):
            raise InvalidInputError(
                f"dsn envid must be 1 to {MAX_ENVID} printable ASCII characters, not {self.envid!r}"
            )
        for name in ("orcpt", "required"):
            if not isinstance(getattr(self, name), bool):
                raise InvalidInputError(f"dsn {name} must be True or False")

    def mail(self) -> list[str]:
        """The MAIL parameters this asks for."""
        params = []
        if self.ret is not None:
            params.append(f"RET={self.ret.upper()}")
        if self.envid is not None:
            params.append(f"ENVID={xtext(self.envid)}")
        return params

    def rcpt(self, address: str) -> list[str]:
        """The RCPT parameters for ``address``."""
        params = []
        notify = self._rcpt
        if isinstance(notify, Mapping):
            notify = notify.get(address)
        if notify:
            params.append("NOTIFY=" + ",".join(notify))
        if self.orcpt:
            if not address.isascii():
                raise InvalidInputError(
                    f"dsn orcpt for the non-ASCII address {address!r} is not supported "
                    "(RFC 6533's utf-8 address type is not implemented)"
                )
            params.append(f"ORCPT=rfc822;{xtext(address)}")
        return params


@dataclass(frozen=True, slots=True)
class MailParameters:
    """The extra MAIL and RCPT parameters of one message, checked."""

    mail: tuple[str, ...] = ()
    rcpt: tuple[str, ...] = ()  # for every recipient
    dsn: DSN | None = None
    requiretls: bool = False

    def for_rcpt(self, address: str) -> list[str]:
        params = list(self.rcpt)
        if self.dsn is not None:
            params += self.dsn.rcpt(address)
        return params


def _options(name: str, value: object, own: frozenset[str]) -> tuple[str, ...]:
    if isinstance(value, str | bytes) or not isinstance(value, Sequence):
        raise InvalidInputError(f"{name} must be a list of 'KEYWORD[=value]' strings")
    checked = []
    for param in value:
        if not isinstance(param, str):
            raise InvalidInputError(f"{name} must hold strings, not {param!r}")
        check_param(param)
        keyword = param.split("=", 1)[0].upper()
        if keyword in own:
            raise InvalidInputError(
                f"{name}: {keyword} is written by smtplug itself (use the dsn= and "
                "requiretls= options, or let smtplug declare SIZE, BODY and SMTPUTF8)"
            )
        checked.append(param)
    keywords = [p.split("=", 1)[0].upper() for p in checked]
    if len(set(keywords)) != len(keywords):
        raise InvalidInputError(f"{name} names a parameter twice: {checked}")
    return tuple(checked)


def mail_parameters(
    *, dsn: object, requiretls: object, mail_options: object, rcpt_options: object
) -> MailParameters | None:
    """The checked parameters, or None when there are none (the usual case)."""
    if dsn is None and requiretls is False and not mail_options and not rcpt_options:
        return None
    if dsn is not None and not isinstance(dsn, DSN):
        raise InvalidInputError("dsn must be a smtplug.DSN")
    if not isinstance(requiretls, bool):
        raise InvalidInputError("requiretls must be True or False")
    return MailParameters(
        mail=_options("mail_options", mail_options, _OWN_MAIL),
        rcpt=_options("rcpt_options", rcpt_options, _OWN_RCPT),
        dsn=dsn,
        requiretls=requiretls,
    )
