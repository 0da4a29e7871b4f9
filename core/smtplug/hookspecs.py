"""Every hook smtplug defines, in one place (pluggy project name ``smtplug``).

Plugins are discovered through the entry-point group ``smtplug``; built-in
plugins (``smtplug_plugins.*``) load exactly the way a third party's do. A
plugin implements any of the hooks below with ``@smtplug.hookimpl``.

Two kinds of hooks:

* **Register-style** (``smtplug_register_*``): called once when a call to
  :func:`smtplug.sendmessage` builds its plugin registry. Each returns a
  sequence of objects of the matching :mod:`smtplug.interfaces` protocol; the
  core indexes them by ``name``. Two plugins registering the same name is an
  error (:class:`smtplug.errors.PluginError`), never a silent override.
* **Observation** (``smtplug_on_*``): called as the session runs. Their return
  values are ignored; an exception raised by an observer aborts the send.
  Secrets are already redacted in what they receive.
"""

from __future__ import annotations

from collections.abc import Sequence

import pluggy

from smtplug.events import Event
from smtplug.interfaces import (
    AsyncTransport,
    ConnectionInfo,
    SASLMechanism,
    TLSBackend,
    TLSPolicy,
    Transport,
)
from smtplug.protocol import Reply

PROJECT = "smtplug"

hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)


@hookspec
def smtplug_register_transports() -> Sequence[Transport]:  # type: ignore[empty-body]
    """Return the transports this plugin provides.

    Called once per registry build. A transport opens the byte channel to a
    server (``plain``: TCP; ``starttls``: TCP that can be upgraded;
    ``implicit-tls``: TLS from the first byte). The core picks one by name
    from the ``usetls``/``tlsimport`` options.
    """


@hookspec
def smtplug_register_async_transports() -> Sequence[AsyncTransport]:  # type: ignore[empty-body]
    """Return the asyncio variants of the transports this plugin provides.

    Called once per registry build. Each is registered under the name of the
    blocking transport it mirrors (``plain``, ``starttls``, ``implicit-tls``);
    :class:`smtplug.AsyncClient` and :func:`smtplug.asendmessage` pick them by
    the same rules. A transport without an async variant cannot be used from
    the async API (a clear error names it).
    """


@hookspec
def smtplug_register_tls_backends() -> Sequence[TLSBackend]:  # type: ignore[empty-body]
    """Return the TLS backends this plugin provides (``stdlib``, ``pyopenssl``).

    Called once per registry build; the caller chooses one with
    ``tls_backend=``.
    """


@hookspec
def smtplug_register_sasl_mechanisms() -> Sequence[SASLMechanism]:  # type: ignore[empty-body]
    """Return the SASL mechanisms this plugin provides.

    Called once per registry build. Each mechanism's ``name`` is the SASL name
    the server advertises after ``AUTH`` (upper case); ``strength`` orders
    them, strongest first.
    """


@hookspec
def smtplug_register_tls_policies() -> Sequence[TLSPolicy]:  # type: ignore[empty-body]
    """Return the named TLS policies this plugin provides.

    Called once per registry build. A policy named here can be chosen with
    ``tlspolicy="name"``; a callable passed as ``tlspolicy`` is used directly.
    """


@hookspec
def smtplug_on_event(info: ConnectionInfo, event: Event) -> None:
    """Observe a step of the session that is not a command or a reply.

    ``event`` is one of the frozen dataclasses of :mod:`smtplug.events`
    (:class:`~smtplug.events.Connecting`, :class:`~smtplug.events.ServerFailed`,
    :class:`~smtplug.events.TLSEstablished`, :class:`~smtplug.events.Authenticated`,
    :class:`~smtplug.events.Closed` ...): ``event.kind`` names it, its fields
    carry the data (never a credential). ``str(event)`` is the text of the
    ``-debug`` transcript (``"Trying mx.example:25..."``, ``"closed"``,
    ``"server failed: ..."``), the text this hook was called with before
    events were typed: an observer that does ``str(event)`` or ``f"{event}"``
    keeps working. The return value is ignored.
    """


@hookspec
def smtplug_on_command(info: ConnectionInfo, command: str) -> None:
    """Observe a command just written to the server.

    ``command`` is the line without CRLF, with credentials redacted (e.g.
    ``AUTH PLAIN <redacted>``); a message body is summarised as
    ``<message: N octets>``. The return value is ignored.
    """


@hookspec
def smtplug_on_reply(info: ConnectionInfo, reply: Reply) -> None:
    """Observe a complete reply just read from the server.

    ``reply`` is the parsed :class:`smtplug.protocol.Reply`, its text already
    escaped for display. The return value is ignored.
    """
