"""Authentication (RFC 4954), in one place: the plan, the choice, the exchange.

Theory of operation. :func:`auth_plan` checks the caller's ``username``,
``password``, ``oauth_token``, ``authzid``, ``mechanisms`` and
``insecure_cleartext_auth`` before any connection and makes an
:class:`AuthPlan`. Once a session is open, :func:`authenticate` (a program:
it yields actions) picks the mechanisms both sides support, strongest first
(or in the caller's ``mechanisms=`` order), and runs each in turn until one
succeeds, as Tcllib does; never in the clear to a host that is not loopback
unless the caller opted in, and never a weaker mechanism after a failure on
an unencrypted link. An OAuth token the server refused is renewed once.
:func:`exchange_step` is one AUTH exchange with one mechanism (a session
step): secrets are never displayed. A failure is raised as
:class:`~smtplug.errors.AuthenticationError` naming every mechanism tried.
"""

from __future__ import annotations

import dataclasses
import functools
import inspect
import ipaddress
from collections.abc import Callable, Generator, Mapping
from dataclasses import dataclass
from typing import Any

from smtplug import events
from smtplug.actions import Action, Receive, Send
from smtplug.errors import AuthenticationError, InvalidInputError, ProtocolError, SMTPError
from smtplug.interfaces import SASLCredentials, SASLExchange, SASLMechanism
from smtplug.options import as_list, check_flag
from smtplug.plugins import Registry
from smtplug.protocol import Capabilities, Reply, commands
from smtplug.session import Timeouts, _expect
from smtplug.wire import Wire

__all__ = [
    "AuthArgs",
    "AuthPlan",
    "AuthRefused",
    "auth_plan",
    "authenticate",
    "exchange_step",
    "is_loopback",
]


@dataclass(frozen=True, slots=True)
class AuthPlan:
    """How to authenticate, validated before any connection.

    ``order`` is the caller's ``mechanisms=`` (restricts and orders), or None
    for every registered mechanism the server offers, strongest first.
    """

    credentials: SASLCredentials
    mechanisms: Mapping[str, SASLMechanism]
    order: tuple[str, ...] | None = None
    insecure_cleartext_auth: bool = False


@dataclass(frozen=True, slots=True)
class AuthArgs:
    """The authentication options of one call, as given."""

    username: object
    password: object = dataclasses.field(repr=False)
    oauth_token: object = dataclasses.field(repr=False)
    authzid: object
    mechanisms: object
    insecure_cleartext_auth: object


def _no_controls(what: str, value: str) -> str:
    if any(ord(c) < 32 or ord(c) == 127 for c in value):
        raise InvalidInputError(f"{what} contains a control character")
    return value


def auth_plan(registry: Registry, args: AuthArgs) -> AuthPlan | None:
    cleartext = check_flag("insecure_cleartext_auth", args.insecure_cleartext_auth)
    username, password, token = args.username, args.password, args.oauth_token
    if username is None:
        if password is not None or token is not None:
            raise InvalidInputError("password or oauth_token given without username")
        if args.mechanisms is not None or args.authzid is not None:
            raise InvalidInputError("mechanisms or authzid given without username")
        return None
    if not isinstance(username, str) or not username:
        raise InvalidInputError("username must be a non-empty str")
    _no_controls("username", username)
    if password is not None:
        if not isinstance(password, str):
            raise InvalidInputError("password must be a str")
        _no_controls("password", password)
    token_source: Callable[[], str] | None
    token_refresh: Callable[[], str] | None = None  # a str token is never renewed
    if token is None:
        token_source = None
    elif isinstance(token, str):
        _no_controls("oauth_token", token)
        token_source = functools.partial(str, token)
    elif callable(token):
        token_source = token
        token_refresh = _token_refresh(token)
    else:
        raise InvalidInputError("oauth_token must be a str or a callable returning one")
    if args.authzid is not None and not isinstance(args.authzid, str):
        raise InvalidInputError("authzid must be a str")
    order: tuple[str, ...] | None = None
    if args.mechanisms is not None:
        names = [name.upper() for name in as_list("mechanisms", args.mechanisms, str)]
        unknown = [name for name in names if name not in registry.sasl_mechanisms]
        if unknown or not names:
            raise InvalidInputError(
                f"mechanisms names no installed SASL mechanism: {unknown or 'empty list'}; "
                f"installed: {sorted(registry.sasl_mechanisms) or 'none'}"
            )
        order = tuple(dict.fromkeys(names))
    if not registry.sasl_mechanisms:
        raise InvalidInputError(
            "username given but no SASL mechanism plugin is installed, so smtplug "
            "cannot authenticate (and will not send unauthenticated instead)"
        )
    if password is None and token_source is None and not (order and set(order) & _NO_SECRET):
        raise InvalidInputError(
            "username given without password or oauth_token (EXTERNAL and ANONYMOUS, "
            "which need neither, are used only when named in mechanisms=)"
        )
    credentials = SASLCredentials(
        username=username,
        password=password,
        oauth_token=token_source,
        authzid=args.authzid,
        oauth_refresh=token_refresh,
    )
    return AuthPlan(credentials, registry.sasl_mechanisms, order, cleartext)


def _token_refresh(provider: Callable[..., str]) -> Callable[[], str]:
    """How to ask an ``oauth_token`` provider for a new token after a refusal:
    ``provider(refused=True)`` when its signature takes that keyword, else
    ``provider()`` as for the first token (see :class:`smtplug.interfaces.OAuthTokenProvider`)."""
    try:
        inspect.signature(provider).bind(refused=True)
    except (TypeError, ValueError):  # no such parameter, or no signature to read
        return provider
    return functools.partial(provider, refused=True)


_NO_SECRET = frozenset({"EXTERNAL", "ANONYMOUS"})


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback address literals (no DNS lookup)."""
    if host.lower().rstrip(".") == "localhost" or host.lower().endswith(".localhost"):
        return True
    try:
        return ipaddress.ip_address(host.split("%", 1)[0]).is_loopback
    except ValueError:
        return False


def _candidates(auth: AuthPlan, offered: tuple[str, ...]) -> list[SASLMechanism]:
    if auth.order is not None:
        names = [name for name in auth.order if name in offered]
    else:
        # EXTERNAL and ANONYMOUS only when asked for by name.
        names = [name for name in offered if name in auth.mechanisms and name not in _ON_REQUEST]
        names.sort(key=lambda name: -auth.mechanisms[name].strength)
    return [auth.mechanisms[name] for name in names if name in auth.mechanisms]


_ON_REQUEST = frozenset({"EXTERNAL", "ANONYMOUS"})


def authenticate(
    auth: AuthPlan, timeouts: Timeouts, usetls: bool, wire: Wire, capabilities: Capabilities
) -> Generator[Any, Any, None]:
    """AUTH with the strongest usable mechanism, then the next, as Tcllib does.

    Refuses to authenticate in the clear to a host that is not loopback unless
    the caller opted in; on an unencrypted link a failed mechanism is never
    followed by a weaker one (a man in the middle could be forcing that).
    """
    info = wire.info
    tls = wire.tls_info
    offered = capabilities.auth_mechanisms
    if not offered:
        after = " (not even after STARTTLS)" if tls is not None and usetls else ""
        raise AuthenticationError(
            f"{info.server} does not offer AUTH{after}; username was given, so smtplug "
            "does not send the message unauthenticated"
        )
    if tls is None and not is_loopback(info.server) and not auth.insecure_cleartext_auth:
        raise AuthenticationError(
            f"not authenticating to {info.server} over an unencrypted connection: the "
            "password (or a guessable challenge response) would cross the network in the "
            "clear. Use TLS (usetls=True with a server offering STARTTLS, or tlsimport=True), "
            "or pass insecure_cleartext_auth=True to accept the risk"
        )
    credentials = dataclasses.replace(
        auth.credentials, hostname=info.server, port=info.port, tls=tls
    )
    candidates = [m for m in _candidates(auth, offered) if m.supported(credentials)]
    if not candidates:
        usable = sorted(name for name, m in auth.mechanisms.items() if m.supported(credentials))
        raise AuthenticationError(
            f"no usable SASL mechanism: {info.server} offers {', '.join(offered)}; "
            f"smtplug can use {', '.join(usable) or 'none'} with the credentials given"
            + (f" (restricted to {', '.join(auth.order)})" if auth.order is not None else "")
        )
    tried: list[str] = []
    last: AuthenticationError | None = None
    failed_strength: int | None = None
    renewable = credentials.oauth_refresh is not None  # one token renewal at most
    pending = [(mechanism, credentials) for mechanism in candidates]
    while pending:
        mechanism, attempt = pending.pop(0)
        renewed = attempt is not credentials
        if tls is None and failed_strength is not None and mechanism.strength < failed_strength:
            wire.event(events.AuthWeakerSkipped(mechanism.name))
            break
        took_token: list[bool] = []
        try:
            try:
                exchange = mechanism.start(_watch_token(attempt, took_token))
            except AuthenticationError:
                raise
            except Exception as exc:
                raise AuthenticationError(
                    f"{mechanism.name}: the mechanism could not start ({type(exc).__name__})"
                ) from exc
            yield from wire.step(exchange_step(mechanism.name, exchange, timeouts))
        except AuthenticationError as exc:
            tried.append(_renewed(mechanism.name, exc.diagnostic) if renewed else exc.diagnostic)
            last = exc
            failed_strength = mechanism.strength
            wire.event(events.AuthFailed(mechanism.name))
            if wire.broken or exc.server_unverified:
                break
            if renewable and took_token and _token_refused(exc):
                # The token may have expired: ask the provider for a new one and
                # try the same mechanism once more with it (never the token shown).
                renewable = False
                pending.insert(0, (mechanism, _renewal(credentials)))
                wire.event(events.TokenRefresh(mechanism.name))
            continue
        wire.event(events.Authenticated(mechanism.name))
        return
    assert last is not None
    raise AuthenticationError(
        f"authentication to {info.server} failed; tried " + "; ".join(tried),
        last.code,
        server_unverified=last.server_unverified,
    )


def _watch_token(credentials: SASLCredentials, took: list[bool]) -> SASLCredentials:
    """``credentials`` whose ``oauth_token`` notes in ``took`` that it was called."""
    source = credentials.oauth_token
    if source is None:
        return credentials

    def token() -> str:
        took.append(True)
        return source()

    return dataclasses.replace(credentials, oauth_token=token)


def _token_refused(exc: AuthenticationError) -> bool:
    """The server refused the token (535, or a 5xx after its error challenge:
    RFC 7628 3.2.2), as opposed to a mechanism's own failure or a 4xx."""
    if not isinstance(exc, AuthRefused):
        return False
    return exc.code == 535 or (exc.challenged and 500 <= exc.code < 600)


def _renewal(credentials: SASLCredentials) -> SASLCredentials:
    """The credentials for the retry: the token is the provider's renewal."""
    return dataclasses.replace(
        credentials, oauth_token=credentials.oauth_refresh, oauth_refresh=None
    )


def _renewed(mechanism: str, diagnostic: str) -> str:
    """A retry's failure, told apart from the first attempt's."""
    again = f"{mechanism} again with a renewed token"
    prefix = f"{mechanism}: "
    if diagnostic.startswith(prefix):
        return f"{again}: {diagnostic[len(prefix) :]}"
    return f"{again}: {diagnostic}"


def exchange_step(
    mechanism: str,
    exchange: SASLExchange,
    timeouts: Timeouts,
) -> Generator[Action, Reply | None, Reply]:
    """One AUTH exchange (RFC 4954) with one mechanism; secrets never displayed.

    Returns the 235 reply. A refusal raises :class:`AuthRefused` (an
    :class:`AuthenticationError`) with the server's code; a mechanism's own
    failure (a bad challenge, a server signature that does not verify)
    cancels the exchange with ``*`` first.
    A 421 raises :class:`ResponseError` (the server is closing).

    An initial response that would make the AUTH line longer than 512 octets
    is not put on it (RFC 4954 section 4 forbids that): ``AUTH mechanism`` goes
    alone, and the response answers the server's first, empty, 334 challenge
    (a non-empty one is a server error: the exchange is cancelled).
    """
    try:
        initial = exchange.initial_response()
    except Exception as exc:
        raise _mechanism_failed(mechanism, exc) from exc
    deferred: bytes | None = None
    if initial is not None and not commands.initial_response_fits(mechanism, initial):
        deferred = commands.sasl_response(initial)  # refused (too long) before AUTH is sent
        initial = None
    display = f"AUTH {mechanism}" + ("" if initial is None else " <redacted>")
    yield Send(commands.auth(mechanism, initial), display, timeouts.command)
    challenged = False  # the mechanism has answered a challenge
    while True:
        reply = yield Receive(timeouts.command, f"AUTH {mechanism}")
        assert reply is not None
        if reply.code == 334:
            try:
                challenge = commands.decode_challenge(reply.text)
                if deferred is None:
                    line = commands.sasl_response(exchange.respond(challenge))
                    challenged = True
                elif challenge:
                    raise ProtocolError(
                        "the server's first challenge is not empty, so the initial "
                        "response (too long for the AUTH line) was not sent (RFC 4954)"
                    )
                else:
                    line, deferred = deferred, None  # not a challenge to the mechanism
            except Exception as exc:
                # Abandon the exchange; the server answers 501 (RFC 4954).
                yield Send(commands.sasl_cancel(), "*", timeouts.command)
                cancelled = yield Receive(timeouts.command, "*")
                assert cancelled is not None
                raise _mechanism_failed(mechanism, exc) from exc
            yield Send(line, "<redacted>", timeouts.command)
        elif reply.code == 235:
            try:
                exchange.verify()
            except Exception as exc:
                failure = _mechanism_failed(mechanism, exc)
                raise AuthenticationError(
                    f"{failure.diagnostic} (the server accepted the login but did not prove "
                    "that it knows the password: it may be an impostor)",
                    failure.code,
                    server_unverified=True,
                ) from exc
            return reply
        elif reply.code == 421:
            _expect(reply, f"AUTH {mechanism}", 235)
        else:
            raise AuthRefused(
                f"{mechanism}: {reply.code} {reply.diagnostic}",
                reply.code,
                challenged=challenged,
            )


class AuthRefused(AuthenticationError):
    """The server's refusal ending :func:`authenticate` (not a mechanism's own
    failure); ``challenged`` when the mechanism had answered a 334 challenge
    before it (for XOAUTH2/OAUTHBEARER: the server's JSON error)."""

    def __init__(self, diagnostic: str, code: int, *, challenged: bool) -> None:
        super().__init__(diagnostic, code)
        self.challenged = challenged


def _mechanism_failed(mechanism: str, exc: Exception) -> AuthenticationError:
    """The error for a mechanism's own failure; never the text of a foreign
    exception (it could hold a secret), only its type."""
    if isinstance(exc, SMTPError):
        text = exc.diagnostic
        if not text.startswith(mechanism):
            text = f"{mechanism}: {text}"
        unverified = isinstance(exc, AuthenticationError) and exc.server_unverified
        return AuthenticationError(text, exc.code, server_unverified=unverified)
    return AuthenticationError(f"{mechanism}: the mechanism failed ({type(exc).__name__})")
