"""``smtplug.sendmessage``: Tcllib's ``::smtp::sendmessage`` in Python.

This layer validates the options (Tcllib's names and defaults), builds the
envelope, picks the plugins, runs the session steps through the driver and
returns the result. It holds no socket code: connections are opened by the
transport plugins.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
import getpass
import math
import operator
import os
import platform
import re
import threading
from collections.abc import Iterable, Iterator, Mapping
from dataclasses import dataclass
from typing import Any

from smtplug import auth, envelope, retry, session
from smtplug.connect import ConnectionPlan
from smtplug.drivers.blocking import BlockingDriver
from smtplug.errors import InvalidInputError, PluginError
from smtplug.interfaces import (
    SMTP,
    AsyncTransport,
    Dialect,
    TLSBackend,
    TLSOptions,
    TLSPolicy,
    Transport,
)
from smtplug.observe import Observers
from smtplug.options import (
    ClientOptions,
    MessageOptions,
    SendOptions,
    TLSPolicyCallable,
    as_list,
    build,
    check_flag,
    function_signature,
    init_signature,
    method_signature,
    split,
)
from smtplug.plugins import Registry, build_registry
from smtplug.program import Conduct, interrupted_after_delivery
from smtplug.protocol import commands
from smtplug.protocol.data import LineCheck
from smtplug.protocol.dsn import MailParameters, mail_parameters
from smtplug.results import SendResult
from smtplug.source import MessageInput
from smtplug.tlssetup import CallablePolicy

__all__ = ["Client", "SendResult", "TLSPolicyCallable", "sendmessage"]


def _seconds(name: str, value: object) -> float:
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise InvalidInputError(f"{name} must be a number of seconds, not {value!r}")
    if not (math.isfinite(value) and value > 0):
        raise InvalidInputError(f"{name} must be a positive number of seconds, not {value!r}")
    return float(value)


def _timeouts(timeout: object, maxsecs: object, timeouts: object) -> session.Timeouts:
    """The waits: RFC 5321's, ``timeouts`` by phase, or ``timeout`` for every
    wait but the final one and ``maxsecs`` (Tcllib's) for that one."""
    if timeouts is not None and (timeout is not None or maxsecs is not None):
        raise InvalidInputError("give either timeouts, or timeout and maxsecs, not both")
    if timeouts is None:
        return _simple_timeouts(
            None if timeout is None else _seconds("timeout", timeout),
            None if maxsecs is None else _seconds("maxsecs", maxsecs),
        )
    values: dict[str, float]
    if isinstance(timeouts, session.Timeouts):
        values = {phase: getattr(timeouts, phase) for phase in session.PHASES}
    elif isinstance(timeouts, Mapping):
        unknown = sorted(str(name) for name in timeouts if name not in session.PHASES)
        if unknown:
            raise InvalidInputError(
                f"unknown timeouts {unknown}: the phases are {', '.join(session.PHASES)}"
            )
        values = dict(timeouts)
    else:
        raise InvalidInputError(
            f"timeouts must be a smtplug.Timeouts or a mapping of phase to seconds, "
            f"not {timeouts!r}"
        )
    checked = {phase: _seconds(f"timeouts[{phase!r}]", value) for phase, value in values.items()}
    return session.Timeouts(**checked)


@functools.lru_cache(maxsize=64)
def _simple_timeouts(every: float | None, final: float | None) -> session.Timeouts:
    """``timeout`` for every wait but the final one, ``maxsecs`` for that one
    (both checked already; the result is immutable, so it is made once)."""
    values = {} if every is None else dict.fromkeys(session.PHASES, every)
    values.pop("final", None)
    if final is not None:
        values["final"] = final
    return session.Timeouts(**values)


_NOT_IN_A_NAME = re.compile(r"[\s/]")  # whitespace (any script's) or a slash


def _servers_and_ports(
    servers: object, ports: object, transport: Transport
) -> list[tuple[str, int]]:
    server_list: list[str] = as_list("servers", servers, str)
    port_list: list[int] = as_list("ports", ports, int)
    if not server_list:
        raise InvalidInputError("servers is empty")
    # A transport may take addresses of its own (a socket path), checked by it.
    accepts = getattr(transport, "accepts_server", None)
    for server in server_list:
        if accepts is not None and accepts(server):
            continue
        if not server or not server.isprintable() or _NOT_IN_A_NAME.search(server):
            raise InvalidInputError(f"invalid server name {server!r}")
        try:
            # What the resolver (and TLS's server name) will do with it: a
            # label that is empty or over 63 characters fails there, with a
            # UnicodeError out of socket.getaddrinfo, not an OSError.
            server.encode("idna")
        except UnicodeError as exc:
            raise InvalidInputError(
                f"invalid server name {server!r}: {exc.__cause__ or exc}"
            ) from None
    for port in port_list:
        if not 0 < port < 65536:
            raise InvalidInputError(f"invalid port {port!r}")
    # Tcllib iterates ports in tandem with servers: missing ports are 25,
    # superfluous ports are ignored.
    return [
        (server, port_list[index] if index < len(port_list) else 25)
        for index, server in enumerate(server_list)
    ]


def _hostname() -> str:
    return platform.node() or "localhost"


def _login() -> str:
    try:
        return getpass.getuser()
    except Exception as exc:  # getuser raises OSError, or KeyError on odd systems
        raise InvalidInputError(
            f"no originator given and the login name is unknown ({exc}): give originator="
        ) from exc


@dataclass(frozen=True, slots=True)
class _TLSArgs:
    """The TLS options of one call, as given."""

    tls_backend: object
    cafile: object
    capath: object
    client_cert: object
    client_key: object
    tls_verify: object
    tls_context: object


def _tls_setup(registry: Registry, args: _TLSArgs) -> tuple[TLSBackend, TLSOptions]:
    if not isinstance(args.tls_backend, str):
        raise InvalidInputError("tls_backend must be the name of a TLS backend plugin")
    backend = registry.tls_backends.get(args.tls_backend)
    if backend is None:
        raise InvalidInputError(
            f"no TLS backend named {args.tls_backend!r} is installed "
            f"(installed: {sorted(registry.tls_backends) or 'none'})"
        )
    paths: dict[str, str | None] = {}
    for name in ("cafile", "capath", "client_cert", "client_key"):
        value = getattr(args, name)
        if value is not None and not isinstance(value, str | os.PathLike):
            raise InvalidInputError(f"{name} must be a path, not {type(value).__name__}")
        paths[name] = None if value is None else str(os.fspath(value))
    options = TLSOptions(
        verify=check_flag("tls_verify", args.tls_verify), context=args.tls_context, **paths
    )
    backend.check(options)
    return backend, options


def _plan(
    registry: Registry,
    *,
    servers: object,
    ports: object,
    client: object,
    usetls: bool,
    tlsimport: bool,
    transport_name: object,
    tlspolicy: object,
    tls: _TLSArgs,
    auth_args: auth.AuthArgs,
    timeouts: session.Timeouts,
) -> ConnectionPlan:
    if transport_name is not None:
        if not isinstance(transport_name, str):
            raise InvalidInputError("transport must be the name of a transport plugin")
        if tlsimport:
            raise InvalidInputError(
                "transport= and tlsimport=True both choose the transport: give one of them"
            )
        name = transport_name
    elif tlsimport:
        name = "implicit-tls"
    elif usetls and "starttls" in registry.transports:
        name = "starttls"
    else:
        # usetls without a STARTTLS transport: the policy decides ("unavailable").
        name = "plain"
    transport = registry.transports.get(name)
    if transport is None:
        why = (
            "transport= names"
            if transport_name is not None
            else "tlsimport=True needs"
            if tlsimport
            else "smtplug needs"
        )
        raise InvalidInputError(
            f"{why} the {name!r} transport plugin, which is not installed or is blocked "
            f"(installed transports: {sorted(registry.transports) or 'none'})"
        )
    async_transport = registry.async_transports.get(name)
    dialect = _dialect(transport, async_transport)
    targets = _servers_and_ports(servers, ports, transport)
    if client is None:
        # Tcllib: "localhost" when the server list is just localhost, else
        # this host's name.
        client = "localhost" if [s for s, _ in targets] == ["localhost"] else _hostname()
    if not isinstance(client, str):
        raise InvalidInputError(f"client must be a str, not {client!r}")
    commands.hello(dialect.hello, client)  # validates the name before any connection
    transport_options: dict[str, Any] = {}
    if usetls or tlsimport:
        backend, tls_options = _tls_setup(registry, tls)
        transport_options = {"tls_backend": backend, "tls_options": tls_options}
    else:
        tls_options = TLSOptions()
    # Sessions saved by closing connections, resumed by the next ones.
    tls_sessions: dict[tuple[str, int], object] = {}
    transport_options["tls_sessions"] = tls_sessions

    policy: TLSPolicy
    if tlspolicy is None:
        tlspolicy = "opportunistic"
    if isinstance(tlspolicy, str):
        named = registry.tls_policies.get(tlspolicy)
        if named is None:
            raise InvalidInputError(
                f"no TLS policy named {tlspolicy!r} is installed "
                f"(installed: {sorted(registry.tls_policies) or 'none'})"
            )
        policy = named
    elif callable(tlspolicy):
        policy = CallablePolicy(tlspolicy)
    else:
        raise InvalidInputError("tlspolicy must be None, a policy name or a callable")

    auth_plan = auth.auth_plan(registry, auth_args)

    return ConnectionPlan(
        targets=tuple(targets),
        client=client,
        transport=transport,
        policy=policy,
        usetls=usetls,
        timeouts=timeouts,
        transport_options=transport_options,
        tls_verify=tls_options.verify,
        auth=auth_plan,
        async_transport=async_transport,
        tls_sessions=tls_sessions,
        dialect=dialect,
    )


def _dialect(transport: Transport, async_transport: AsyncTransport | None) -> Dialect:
    """The protocol a transport's servers speak (``dialect``, SMTP when it
    declares none); its asyncio variant must declare the same."""
    dialect = getattr(transport, "dialect", SMTP)
    if not isinstance(dialect, Dialect):
        raise PluginError(
            f"the {transport.name!r} transport's dialect is not a smtplug.interfaces.Dialect: "
            f"{dialect!r}"
        )
    other = dialect if async_transport is None else getattr(async_transport, "dialect", SMTP)
    if other is not dialect and other != dialect:
        raise PluginError(
            f"the {transport.name!r} transport and its asyncio variant declare different dialects"
        )
    return dialect


def _check_message_text(prepared: envelope.PreparedMessage) -> None:
    """NUL octets and overlong lines refused before any connection, for a body
    held in memory (a stream is checked as it is sent)."""
    body = prepared.body
    if not body.restartable or body.ascii is None:
        return
    check = LineCheck()
    check.feed(prepared.header)
    if body.whole is not None:
        check.feed(bytes(body.whole))  # (one chunk: no generator to run)
    else:
        for chunk in body.chunks():
            check.feed(bytes(chunk))
    body.checked = True


@dataclass(frozen=True, slots=True)
class Setup:
    """What a client is built from: its checked options, registry and plan."""

    registry: Registry
    observers: Observers
    plan: ConnectionPlan
    limits: retry.Limits = retry.NO_LIMITS
    """The default retry policy and deadline of its sends."""
    registry_block: frozenset[str] = frozenset()
    """The plugins blocked in the registry (the shared registry's key)."""

    def fresh(self, options: ClientOptions) -> Setup:
        """The same, with what a client changes made new: its TLS sessions
        (and the transport options that carry them) and its observers."""
        plan = self.plan
        sessions: dict[tuple[str, int], object] = {}
        transport_options = dict(plan.transport_options)
        transport_options["tls_sessions"] = sessions
        return Setup(
            self.registry,
            Observers(self.registry.hook, debug=options.debug, transcript=options.transcript),
            # (Field by field, not dataclasses.replace: that costs 3 µs a
            # connection; tests/test_connection_fast_paths.py checks that
            # every field of ConnectionPlan is carried over.)
            ConnectionPlan(
                plan.targets,
                plan.client,
                plan.transport,
                plan.policy,
                plan.usetls,
                plan.timeouts,
                transport_options,
                plan.tls_verify,
                plan.auth,
                plan.async_transport,
                sessions,
                plan.dialect,
            ),
            self.limits,
            self.registry_block,
        )


#: Exactly these types (no subclass: its ``==`` and hash could be anything)
#: make a memo key; ``type`` is in the key, so ``True`` is not ``1``.
_KEY_SCALARS = frozenset({type(None), bool, int, float, str})
_KEY_SEQUENCES = frozenset({list, tuple})

#: Options whose values are never part of a memo key: credentials (not kept
#: process-wide) and files (checked, and read, at each call). Given any, or
#: an object (a callable, a plugin, a context, a mapping), no memo.
_NOT_MEMOISED = (
    "username",
    "password",
    "oauth_token",
    "authzid",
    "mechanisms",
    "cafile",
    "capath",
    "client_cert",
    "client_key",
)

#: The options that may be given as a list (of plain values, for a key).
_SEQUENCE_OPTIONS = ("servers", "ports", "mechanisms", "plugins", "block_plugins")

#: The checked setups by their options (see :func:`setup`); bounded.
_SETUPS: dict[tuple[object, ...], Setup] = {}
_SETUPS_MAX = 64


_NAMES = [field.name for field in dataclasses.fields(ClientOptions)]
_SEQUENCE_AT = tuple(_NAMES.index(name) for name in _SEQUENCE_OPTIONS)
_not_memoised = operator.itemgetter(*(_NAMES.index(name) for name in _NOT_MEMOISED))


def _setup_key(o: ClientOptions) -> tuple[object, ...] | None:
    """The options as a memo key, or None when one of them cannot be one."""
    values = list(vars(o).values())  # (every field, in the order of _NAMES)
    if _not_memoised(values).count(None) != len(_NOT_MEMOISED):
        return None
    kinds = list(map(type, values))
    for index in _SEQUENCE_AT:
        kind = kinds[index]
        if kind in _KEY_SEQUENCES:
            value = values[index]
            items = tuple(map(type, value))
            if not _KEY_SCALARS.issuperset(items):
                return None
            values[index] = (kind, items, tuple(value))
            kinds[index] = type(None)  # (the kind is in the value)
    if not _KEY_SCALARS.issuperset(kinds):
        return None
    return (*kinds, *values)


def setup(options: ClientOptions) -> Setup:
    """Check the connection options and plan the connections (no I/O).

    The checked result of options that are all plain values (str, numbers,
    flags, lists of them; no credentials, files or objects) is kept, by
    their values and types, and handed out again, each time with the parts
    a client changes made new (its TLS sessions, transport options and
    observers): a one-shot call pays for the checks once per process (the
    TLS backend's ``check`` still runs at each call). Only a setup that
    passed every check is kept, and only while the shared registry it was
    planned with is the current one.
    """
    key = _setup_key(options)
    if key is None:
        return _setup(options)
    memo = _SETUPS.get(key)
    if memo is not None and memo.registry is build_registry(block=memo.registry_block):
        backend = memo.plan.transport_options.get("tls_backend")
        if backend is not None:  # (a backend's own check runs at each call, as before)
            backend.check(memo.plan.transport_options["tls_options"])
        return memo.fresh(options)
    built = _setup(options)
    if len(_SETUPS) >= _SETUPS_MAX:
        _SETUPS.clear()
    _SETUPS[key] = built
    return built.fresh(options)


def _setup(options: ClientOptions) -> Setup:
    o = options
    for name, value in (
        ("usetls", o.usetls),
        ("tlsimport", o.tlsimport),
        ("debug", o.debug),
        ("transcript", o.transcript),
    ):
        check_flag(name, value)
    timeouts_value = _timeouts(o.timeout, o.maxsecs, o.timeouts)
    block = as_list("block_plugins", o.block_plugins, str)
    plugins = o.plugins
    if isinstance(plugins, str | bytes) or not isinstance(plugins, Iterable):
        raise InvalidInputError("plugins must be a list of plugin objects")
    registry = build_registry(extra=plugins, block=block)
    plan = _plan(
        registry,
        servers=o.servers,
        ports=o.ports,
        client=o.client,
        usetls=o.usetls,
        tlsimport=o.tlsimport,
        transport_name=o.transport,
        tlspolicy=o.tlspolicy,
        tls=_TLSArgs(
            o.tls_backend,
            o.cafile,
            o.capath,
            o.client_cert,
            o.client_key,
            o.tls_verify,
            o.tls_context,
        ),
        auth_args=auth.AuthArgs(
            o.username,
            o.password,
            o.oauth_token,
            o.authzid,
            o.mechanisms,
            o.insecure_cleartext_auth,
        ),
        timeouts=timeouts_value,
    )
    observers = Observers(registry.hook, debug=o.debug, transcript=o.transcript)
    limits = retry.limits(o.retry, o.deadline)
    return Setup(registry, observers, plan, limits, frozenset(block))


def prepare(
    message: MessageInput, options: MessageOptions
) -> tuple[envelope.PreparedMessage, MailParameters | None]:
    """Check the per-message options and prepare the message (no I/O)."""
    _check_flags(options)
    prepared = prepare_message(message, options)
    return prepared, _extras(options)


def batch_extras(options: MessageOptions) -> MailParameters | None:
    """The checks of :func:`prepare` that do not depend on the message, made
    once for many messages sent with the same ``options`` (a pool's batch):
    the extra MAIL/RCPT parameters; raises what :func:`prepare` would raise
    for every one of them (after the message's own errors: the caller then
    prepares each with :func:`prepare`)."""
    _check_flags(options)
    return _extras(options)


def _check_flags(options: MessageOptions) -> None:
    check_flag("atleastone", options.atleastone)
    check_flag("queue", options.queue)
    if options.progress is not None and not callable(options.progress):
        raise InvalidInputError("progress must be a callable taking the octets sent")


def prepare_message(message: MessageInput, options: MessageOptions) -> envelope.PreparedMessage:
    """:func:`prepare`'s work on the message itself (the options checked)."""
    prepared = envelope.prepare(
        message,
        originator=options.originator,
        recipients=options.recipients,
        header=options.header,
        login=_login,
        hostname=_hostname(),
    )
    _check_message_text(prepared)
    return prepared


def _extras(options: MessageOptions) -> MailParameters | None:
    return mail_parameters(
        dsn=options.dsn,
        requiretls=options.requiretls,
        mail_options=options.mail_options,
        rcpt_options=options.rcpt_options,
    )


class Client:
    """A connection to an SMTP server, kept for any number of messages.

    Built from the connection options of :func:`sendmessage` (servers, ports,
    client, TLS, credentials, timeouts, plugins ...), all checked here before
    any connection is opened; the connection itself is opened by the first
    :meth:`sendmessage`. Use it as a context manager, or call :meth:`close`.

    ``c.sendmessage(message, **message_options)`` takes the per-message
    options of :func:`sendmessage` (``originator``, ``recipients``,
    ``header``, ``atleastone``, ``queue``, ``progress``, ``dsn``,
    ``requiretls``, ``mail_options`` and ``rcpt_options``) and returns the
    same :class:`SendResult`. After a failed transaction the session is reset
    (RSET) for the next message. When the server has closed an idle
    connection, or answers 421, before a transaction's MAIL was accepted, the
    client reconnects once and tries again; never once the message's end was
    sent.

    A Client may be shared between threads: its calls are serialised (one
    message at a time over its one connection; a thread waits for the one
    before it). Calling it again from inside one of its own sends (an
    observer or a ``progress`` callback) raises :class:`InvalidInputError`.
    For parallel sending, use one Client per thread.
    """

    @init_signature(ClientOptions)
    def __init__(self, **options: Any) -> None:
        built = setup(build(ClientOptions, options))
        self._registry = built.registry
        self._observers = built.observers
        self._plan = built.plan
        self._limits = built.limits
        self._conduct = Conduct(self._plan, self._observers)
        self._driver = BlockingDriver(
            self._plan.transport,
            self._plan.transport_options,
            self._observers,
            self._plan.tls_sessions,
        )
        self._lock = threading.Lock()
        self._owner: int | None = None  # the thread inside a call, if any

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def __repr__(self) -> str:
        state = "connected" if self._conduct.wire is not None else "not connected"
        targets = ", ".join(f"{server}:{port}" for server, port in self._plan.targets)
        return f"<smtplug.Client {targets} ({state})>"

    @property
    def connected(self) -> bool:
        """True while a session is open (it may still turn out to be stale)."""
        return self._conduct.connected

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        """One call at a time: other threads wait; a call from inside a call of
        the same thread (an observer or callback) is refused, not deadlocked."""
        me = threading.get_ident()
        if self._owner == me:
            raise _reentered()
        with self._lock:
            self._owner = me
            try:
                yield
            finally:
                self._owner = None

    def close(self) -> None:
        """QUIT (when the session is still sound) and close; never raises
        (waits for a send in progress in another thread)."""
        if self._owner == threading.get_ident():
            # From inside a send (an observer): that send ends the session.
            self._drop()
            return
        with self._exclusive():
            self._close()

    def _close(self) -> None:
        self._driver.run(self._conduct.close())

    def _drop(self) -> None:
        self._conduct.forget()
        self._driver.close()

    @method_signature(MessageOptions)
    def sendmessage(self, message: MessageInput, **options: Any) -> SendResult:
        """Send one message over this client's session (opened if needed).

        The same envelope rules, errors and result as :func:`smtplug.sendmessage`.
        ``progress``, if given, is called with the number of the message's
        octets sent so far, after each chunk.
        """
        # (What _exclusive does, written out: this runs for every message.)
        me = threading.get_ident()
        if self._owner == me:
            raise _reentered()
        with self._lock:
            self._owner = me
            try:
                return self._send(message, build(MessageOptions, options), last=False)
            finally:
                self._owner = None

    def _send(self, message: MessageInput, options: MessageOptions, *, last: bool) -> SendResult:
        conduct = self._conduct
        limits = retry.of_send(options.retry, options.deadline, self._limits)
        with self._observers.recording() as transcript:
            prepared, extras = prepare(message, options)
            program = retry.whole(
                lambda: conduct.send_prepared(prepared, extras, options, last=last),
                limits,
                prepared,
            )
            result: SendResult = self._driver.run(program)
        if transcript is not None:
            result.transcript = tuple(transcript)
        return result


def _reentered() -> InvalidInputError:
    return InvalidInputError(
        "this Client is in the middle of a send on this thread (the call came "
        "from an observer or callback): use another Client"
    )


@function_signature(SendOptions)
def sendmessage(message: MessageInput, **options: Any) -> SendResult:
    """Send ``message`` by SMTP, as Tcllib's ``::smtp::sendmessage`` does.

    Returns the refused recipients as a :class:`SendResult` (a list of
    ``(address, code, diagnostic)``; empty when every recipient was
    accepted). Raises a :class:`smtplug.SMTPError` subclass on failure; bad
    input raises :class:`smtplug.InvalidInputError` before any connection is
    opened. A one-shot use of :class:`Client`. See ``docs/options.md``.
    """
    connection_options, message_options = split(options)
    result: SendResult | None = None
    client = Client(**connection_options)
    try:
        # (The transcript, when kept, ends with the QUIT and the close.)
        with client._observers.recording() as transcript, client as connection:
            result = connection._send(message, message_options, last=True)
        if transcript is not None:
            result.transcript = tuple(transcript)
    except BaseException:
        if result is not None and result.accepted:
            interrupted_after_delivery(result)  # interrupted at the QUIT after it
        raise
    return result
