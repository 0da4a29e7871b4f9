"""A scripted fake SMTP server, for testing code that sends mail.

:class:`ScriptedServer` listens on 127.0.0.1 (a port the OS picks) and runs
its own asyncio event loop in a daemon thread, so a test can talk to it with
any blocking client. It answers every command with sensible defaults, and a
*script* replaces any answer with raw bytes: well-formed, malformed, endless,
slow, or none at all. It records every byte each client sent.

::

    import smtplug
    from smtplug.testing import CLOSE, Answer, ScriptedServer

    script = {
        "MAIL": b"250 2.1.0 OK\\r\\n",
        ("RCPT", 2): b"550 5.1.1 No such user\\r\\n",  # the 2nd RCPT of a connection
        ".": Answer(b"421 4.3.0 Going down\\r\\n", then=CLOSE),  # the end of the message
    }
    with ScriptedServer(script, capabilities=["8BITMIME", "PIPELINING"]) as server:
        try:
            smtplug.sendmessage(message, servers="127.0.0.1", ports=server.port, usetls=False)
        except smtplug.ResponseError:
            ...
        server.wait_idle()
        session = server.sessions[0]
        session.received                    # every byte the client sent, exactly
        [c.verb for c in session.commands]  # ["EHLO", "MAIL", "RCPT", "RCPT", "DATA", "."]
        session.transactions[0].data        # the DATA octets, dot-stuffed, with ".\\r\\n"

A script maps a command verb (``"MAIL"``), or a verb and its occurrence on
the connection counted from 1 (``("RCPT", 2)``), to a *rule*. Besides the
client's verbs there are three pseudo-verbs: ``"."`` (the end of a message:
the final "." after DATA, or a ``BDAT ... LAST`` chunk, whose rules are tried
before the ``"BDAT"`` ones), ``"SASL"`` (a line the client sent in answer to a
334 challenge) and ``"GREETING"`` (what a callable given as the ``greeting``
option receives). A rule is one of:

* ``bytes``: sent as they are (several replies, half a line, anything);
* an iterable of ``bytes`` chunks (a generator may be endless; it is read
  lazily and written with flow control);
* an :class:`Answer`: data plus what to do next (``then=``) and drip-feeding
  (``drip=(octets, seconds)``: pieces of that many octets, that long apart);
* an :class:`Action`: :data:`CLOSE`, :data:`RESET` (TCP RST), :data:`STALL`
  (never answer again) or :data:`SILENT` (no answer; read the next command);
* a callable taking the :class:`Command` and returning a rule, or None for
  the default answer (it runs in the server's thread).

Unscripted commands get the defaults: 220 greeting, 250 to EHLO with the
``capabilities`` (``tls_capabilities`` after TLS), 250 to HELO, MAIL, RCPT,
RSET and NOOP, 354 to DATA, 250 at the end of the message, 250 to BDAT,
221 to QUIT (then the connection is closed), 235 to AUTH and SASL lines
(501 to a "*"), 220 to STARTTLS followed by a real TLS handshake when a
``tls_context`` was given (454 otherwise), 502 to anything else.

After a 354 to DATA the server reads the message up to the line "." (exactly
CR LF "." CR LF); a BDAT chunk is read octet-exact before it is answered.
After a 220 to STARTTLS, whatever the client sent before the handshake is
discarded (it stays in ``received``). Commands are parsed only while the
server is answering: after :data:`STALL` the raw bytes are still recorded in
``received``, but not parsed.
"""

from smtplug.testing.script import (
    CLOSE,
    GREETING,
    RESET,
    SILENT,
    STALL,
    Action,
    Answer,
    Command,
    Rule,
    Session,
    Transaction,
)
from smtplug.testing.server import ScriptedServer

__all__ = [
    "CLOSE",
    "GREETING",
    "RESET",
    "SILENT",
    "STALL",
    "Action",
    "Answer",
    "Command",
    "Rule",
    "ScriptedServer",
    "Session",
    "Transaction",
]
