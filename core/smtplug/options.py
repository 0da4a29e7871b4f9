"""The options of smtplug's calls, defined once.

:class:`ClientOptions` are the connection options (Tcllib's ``-servers``,
``-ports``, ``-usetls`` ... and smtplug's own), :class:`MessageOptions` the
per-message ones; :class:`SendOptions` is both, for the one-shot calls. Each
name, type and default is written here and nowhere else: ``Client``,
``AsyncClient``, ``sendmessage`` and ``asendmessage`` take ``**options``
and get their signature (for type checkers, ``help()`` and editors) from
these classes through :func:`init_signature` and its two siblings. Values are checked where they
are used (:mod:`smtplug.api`), before any connection is opened.
"""

from __future__ import annotations

import dataclasses
import inspect
import os
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Concatenate, Literal, ParamSpec, TypeVar

from smtplug.errors import InvalidInputError, UnknownOptionError
from smtplug.protocol.dsn import DSN
from smtplug.retry import Retry
from smtplug.session import Timeouts
from smtplug.source import MessageInput

__all__ = [
    "ClientOptions",
    "MessageOptions",
    "PoolOptions",
    "SendLimits",
    "SendOptions",
    "as_list",
    "build",
    "check_flag",
    "function_signature",
    "init_signature",
    "method_signature",
    "split",
]

P = ParamSpec("P")
R = TypeVar("R")
T = TypeVar("T")

Path = str | os.PathLike[str]

#: Tcllib's ``-tlspolicy`` command: ``function(code, diagnostic) -> "secure" | "insecure"``.
TLSPolicyCallable = Callable[[int, str], str]


@dataclass(frozen=True, kw_only=True)
class SendLimits:
    """How long a send may take and whether it is tried again: options of
    ``Client`` (the default for its sends) and of each send (which overrides
    it).

    ``retry``: a :class:`smtplug.Retry` policy, or None (on a client: no
    retry; on a send: the client's); ``False`` on a send: no retry for it.
    ``deadline``: seconds the whole send may take, all its attempts and the
    backoff between them; every wait is capped by what is left; None (on a
    send: the client's; on a client: no overall limit, only the per-phase
    waits).
    """

    retry: Retry | Literal[False] | None = None
    deadline: float | None = None


@dataclass(frozen=True, kw_only=True)
class ClientOptions(SendLimits):
    """How to reach and talk to the server: the options of ``Client``."""

    servers: str | Sequence[str] = "localhost"
    ports: int | Sequence[int] = 25
    client: str | None = None
    usetls: bool = True
    tlsimport: bool = False
    transport: str | None = None
    tlspolicy: str | TLSPolicyCallable | None = None
    tls_backend: str = "stdlib"
    cafile: Path | None = None
    capath: Path | None = None
    client_cert: Path | None = None
    client_key: Path | None = None
    tls_verify: bool = True
    tls_context: object | None = None
    username: str | None = None
    password: str | None = dataclasses.field(default=None, repr=False)
    oauth_token: str | Callable[[], str] | None = dataclasses.field(default=None, repr=False)
    authzid: str | None = None
    mechanisms: Sequence[str] | None = None
    insecure_cleartext_auth: bool = False
    debug: bool = False
    transcript: bool = False
    maxsecs: float | None = None
    timeout: float | None = None
    timeouts: Timeouts | Mapping[str, float] | None = None
    plugins: Sequence[object] = ()
    block_plugins: Sequence[str] = ()


@dataclass(frozen=True, kw_only=True)
class MessageOptions(SendLimits):
    """What one message needs besides the connection: the options of
    ``Client.sendmessage``."""

    originator: str | None = None
    recipients: str | Sequence[str] | None = None
    header: Sequence[tuple[str, str]] = ()
    atleastone: bool = False
    queue: bool = False
    progress: Callable[[int], None] | None = None
    dsn: DSN | None = None
    requiretls: bool = False
    mail_options: Sequence[str] = ()
    rcpt_options: Sequence[str] = ()


@dataclass(frozen=True, kw_only=True)
class SendOptions(MessageOptions, ClientOptions):
    """Both: the options of the one-shot ``sendmessage``."""


@dataclass(frozen=True, kw_only=True)
class PoolOptions(ClientOptions):
    """The options of ``Pool`` and ``AsyncPool``: ``Client``'s, and the pool's own.

    ``max_connections``: connections open at most at once. A connection is
    closed (QUIT) once it carried ``max_messages_per_connection`` messages,
    or once it is ``max_lifetime`` seconds old, or when it was idle longer
    than ``idle_timeout`` seconds; None: no such limit.

    Rate limits (None: none): ``rate_limit`` messages per second for the
    whole pool, of which ``rate_burst`` may start at once after a quiet
    spell; ``rate_limit_per_connection`` messages per second on each
    connection. A sender waits for them before its message is started.
    """

    max_connections: int = 8
    max_messages_per_connection: int | None = None
    max_lifetime: float | None = None
    idle_timeout: float | None = None
    rate_limit: float | None = None
    rate_burst: int = 1
    rate_limit_per_connection: float | None = None


def check_flag(name: str, value: object) -> bool:
    if not isinstance(value, bool):
        raise InvalidInputError(f"{name} must be True or False, not {value!r}")
    return value


def as_list(name: str, value: object, kind: type) -> list[Any]:
    items = [value] if isinstance(value, kind) else value
    if isinstance(items, str | bytes) or not isinstance(items, Iterable):
        raise InvalidInputError(f"{name} must be a {kind.__name__} or a list of them")
    items = list(items)
    for item in items:
        if not isinstance(item, kind) or isinstance(item, bool):
            raise InvalidInputError(f"{name} must hold {kind.__name__} values, not {item!r}")
    return items


CLIENT_FIELDS = frozenset(f.name for f in dataclasses.fields(ClientOptions))


def build(kind: Callable[..., T], options: Mapping[str, Any], *, of: object = None) -> T:
    """``kind(**options)``, an unknown name an :class:`UnknownOptionError`
    listing the options of ``of`` (default: of ``kind``)."""
    try:
        return kind(**options)
    except TypeError:
        known = {f.name for f in dataclasses.fields(of or kind)}  # type: ignore[arg-type]
        unknown = sorted(set(options) - known)
        raise UnknownOptionError(
            f"unknown option{'s' if len(unknown) > 1 else ''} {', '.join(unknown)}"
            f" (the options are: {', '.join(sorted(known))})"
        ) from None


def split(options: Mapping[str, Any]) -> tuple[dict[str, Any], MessageOptions]:
    """A one-shot call's options: the connection's by name, and the message's
    (built; a name of neither is an :class:`UnknownOptionError`)."""
    connection = {}
    message = {}
    for name, value in options.items():
        if name in CLIENT_FIELDS:
            connection[name] = value
        else:
            message[name] = value
    return connection, build(MessageOptions, message, of=SendOptions)


def _with_signature(
    function: Callable[..., Any], options: Callable[..., Any], leading: int
) -> None:
    keywords = list(inspect.signature(options).parameters.values())
    own = inspect.signature(function)
    first = list(own.parameters.values())[:leading]
    function.__signature__ = own.replace(parameters=[*first, *keywords])  # type: ignore[attr-defined]


def init_signature(
    options: Callable[P, Any],
) -> Callable[[Callable[..., None]], Callable[Concatenate[Any, P], None]]:
    """Give ``__init__(self, **options)`` the keywords of ``options``.

    For type checkers (through the ParamSpec) and at run time
    (``__signature__``, which ``help()``, ``inspect`` and editors read); the
    function itself is returned unchanged, so a call costs nothing more.
    """

    def apply(function: Callable[..., None]) -> Callable[Concatenate[Any, P], None]:
        _with_signature(function, options, 1)
        return function

    return apply


def method_signature(
    options: Callable[P, Any],
) -> Callable[[Callable[..., R]], Callable[Concatenate[Any, MessageInput, P], R]]:
    """:func:`init_signature` for ``method(self, message, **options)``."""

    def apply(function: Callable[..., R]) -> Callable[Concatenate[Any, MessageInput, P], R]:
        _with_signature(function, options, 2)
        return function

    return apply


def function_signature(
    options: Callable[P, Any],
) -> Callable[[Callable[..., R]], Callable[Concatenate[MessageInput, P], R]]:
    """:func:`init_signature` for ``function(message, **options)``."""

    def apply(function: Callable[..., R]) -> Callable[Concatenate[MessageInput, P], R]:
        _with_signature(function, options, 1)
        return function

    return apply
