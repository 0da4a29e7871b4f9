"""``smtplug.AsyncClient`` and ``smtplug.asendmessage``: the asyncio API.

The same options, defaults, results and errors as :class:`smtplug.Client` and
:func:`smtplug.sendmessage` (both take their options from
:mod:`smtplug.options`), the same programs (:mod:`smtplug.program`), run by
the asyncio driver (:mod:`smtplug.drivers.aio`) instead of the blocking one.
Nothing here blocks the event loop on the network, starts a thread or calls
``asyncio.run``; observers and ``progress`` callbacks are called in the
loop, so they should be quick. (A server given by name, such as the default
"localhost", is resolved by the loop's ``getaddrinfo``, which asyncio runs
in its default executor, a thread; an IP address needs no resolution.)

Cancelling a send (``task.cancel()``, ``asyncio.timeout``) closes its
connection, which is never reused; a send cancelled after the end of the
message was written is logged as delivery unknown (the ``CancelledError``
itself goes on to the caller, as asyncio requires).
"""

from __future__ import annotations

import asyncio
from typing import Any

from smtplug import retry
from smtplug.api import prepare, setup
from smtplug.drivers.aio import AsyncDriver, asyncio_transport
from smtplug.errors import InvalidInputError
from smtplug.options import (
    ClientOptions,
    MessageOptions,
    SendOptions,
    build,
    function_signature,
    init_signature,
    method_signature,
    split,
)
from smtplug.program import Conduct, interrupted_after_delivery
from smtplug.results import SendResult
from smtplug.source import MessageInput

__all__ = ["AsyncClient", "asendmessage"]


class AsyncClient:
    """:class:`smtplug.Client` for asyncio: a kept connection for many messages.

    ``async with smtplug.AsyncClient(servers=...) as client: await
    client.sendmessage(msg)``. The options are :class:`smtplug.Client`'s,
    checked here before any connection is opened.

    Tasks of one event loop may share it: their sends are serialised (one
    message at a time over the one connection). It belongs to the event loop
    that first uses it; using it from another loop raises
    :class:`InvalidInputError`. For parallel sending, use one AsyncClient per
    task (or a pool).
    """

    @init_signature(ClientOptions)
    def __init__(self, **options: Any) -> None:
        built = setup(build(ClientOptions, options))
        plan = built.plan
        transport = asyncio_transport(plan, "smtplug.Client")
        self._plan = plan
        self._observers = built.observers
        self._limits = built.limits
        self._conduct = Conduct(plan, built.observers)
        self._driver = AsyncDriver(
            transport, plan.transport_options, built.observers, plan.tls_sessions
        )
        self._lock = asyncio.Lock()
        self._loop: asyncio.AbstractEventLoop | None = None

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc_info: object) -> None:
        await self.close()

    def __repr__(self) -> str:
        state = "connected" if self._conduct.wire is not None else "not connected"
        targets = ", ".join(f"{server}:{port}" for server, port in self._plan.targets)
        return f"<smtplug.AsyncClient {targets} ({state})>"

    @property
    def connected(self) -> bool:
        """True while a session is open (it may still turn out to be stale)."""
        return self._conduct.connected

    def _own_loop(self) -> None:
        """This client belongs to the event loop that first used it."""
        loop = asyncio.get_running_loop()
        if self._loop is None:
            self._loop = loop
        elif self._loop is not loop:
            raise InvalidInputError(
                "this AsyncClient belongs to another event loop: use one per loop"
            )

    async def close(self) -> None:
        """QUIT (when the session is still sound) and close; never raises
        (waits for a send in progress in another task)."""
        self._own_loop()
        async with self._lock:
            await self._driver.run(self._conduct.close())

    @method_signature(MessageOptions)
    async def sendmessage(self, message: MessageInput, **options: Any) -> SendResult:
        """Send one message over this client's session (opened if needed):
        :meth:`smtplug.Client.sendmessage`, awaited."""
        checked = build(MessageOptions, options)
        self._own_loop()
        async with self._lock:
            return await self._send(message, checked, last=False)

    async def _send(
        self, message: MessageInput, options: MessageOptions, *, last: bool
    ) -> SendResult:
        conduct = self._conduct
        limits = retry.of_send(options.retry, options.deadline, self._limits)
        with self._observers.recording() as transcript:
            prepared, extras = prepare(message, options)
            program = retry.whole(
                lambda: conduct.send_prepared(prepared, extras, options, last=last),
                limits,
                prepared,
            )
            result: SendResult = await self._driver.run(program)
        if transcript is not None:
            result.transcript = tuple(transcript)
        return result


@function_signature(SendOptions)
async def asendmessage(message: MessageInput, **options: Any) -> SendResult:
    """:func:`smtplug.sendmessage` for asyncio: the same options, result and
    errors, awaited. A one-shot use of :class:`AsyncClient`."""
    connection_options, message_options = split(options)
    client = AsyncClient(**connection_options)
    result: SendResult | None = None
    try:
        # (The transcript, when kept, ends with the QUIT and the close.)
        with client._observers.recording() as transcript:
            async with client:
                result = await client._send(message, message_options, last=True)
        if transcript is not None:
            result.transcript = tuple(transcript)
    except BaseException:
        if result is not None and result.accepted:
            interrupted_after_delivery(result)  # cancelled at the QUIT after it
        raise
    return result
