"""``smtplug send``: send one message from the command line, on :func:`smtplug.sendmessage`.

In the spirit of swaks: the envelope, the servers, TLS and AUTH are options;
the message is built from ``--body``/``--attach``/``--subject`` or read as it
is (``--message FILE``, ``--message -`` for stdin). Only the public API is
used. The outcome is one line on stderr and, above all, the exit code (see
:data:`EPILOG`).
"""

from __future__ import annotations

import argparse
import getpass
import logging
import mimetypes
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from email.message import EmailMessage
from pathlib import Path
from typing import IO, Any, NoReturn, TextIO

import smtplug
from smtplug import (
    ConnectError,
    DeliveryUnknownError,
    InvalidInputError,
    SendResult,
    SMTPError,
)

__all__ = [
    "EXIT_NOT_SENT",
    "EXIT_NO_SERVER",
    "EXIT_PARTIAL",
    "EXIT_SENT",
    "EXIT_TEMPORARY",
    "EXIT_UNKNOWN",
    "EXIT_USAGE",
    "UsageProblem",
    "add_connection_options",
    "add_send_parser",
    "connection_options",
    "exit_code_for",
    "parse_server",
    "run_send",
]

#: What ``send`` hands to :func:`smtplug.sendmessage`: a built message, bytes
#: read from stdin, or an open message file (streamed).
_Message = EmailMessage | bytes | IO[bytes]

#: Sent: the server accepted the message for every recipient.
EXIT_SENT = 0
#: Sent, but some recipients were refused (only with ``--atleastone``).
EXIT_PARTIAL = 1
#: Not sent: refused or failed permanently (a 5xx, refused recipients).
EXIT_NOT_SENT = 2
#: Not sent: a temporary failure (4xx, lost connection, timeout): try again later.
EXIT_TEMPORARY = 3
#: Delivery unknown: the end of the message went, its reply did not come.
EXIT_UNKNOWN = 4
#: Bad usage or input (sysexits EX_USAGE); nothing was sent.
EXIT_USAGE = 64
#: No server could be used, and trying again will not help (sysexits EX_UNAVAILABLE).
EXIT_NO_SERVER = 69

#: The environment variable read for the password when ``--password-env`` is not given.
DEFAULT_PASSWORD_ENV = "SMTPLUG_PASSWORD"

#: Messages at least this large get a progress line (when stderr is a terminal).
PROGRESS_THRESHOLD = 1 << 20

DESCRIPTION = """\
Send one message by SMTP with smtplug.sendmessage, in the spirit of swaks.

The message is built from --subject, --body and --attach (an email message
with the files attached, their MIME types guessed from their names), or read
as it is, RFC 5322 text, from --message FILE (or --message - for stdin).
The envelope sender is --from (else the message's From); the recipients are
--to (else the message's To, Cc and Bcc). --header replaces the message's
field of that name (Bcc is never transmitted).

Servers are tried in the order given (failover), with STARTTLS by default,
the certificate and host name verified. A password is never taken from the
command line: it comes from --password-file, from the environment
(--password-env, default $SMTPLUG_PASSWORD when set) or from a prompt when
stdin is a terminal.

Quiet by default: one line on stderr says what happened, and warnings (TLS
not verified, TLS downgraded) are printed; --quiet prints nothing.
"""

EPILOG = f"""\
exit status:
  {EXIT_SENT:<3} sent: the server accepted the message for every recipient
  {EXIT_PARTIAL:<3} sent, but some recipients were refused (only with --atleastone)
  {EXIT_NOT_SENT:<3} not sent: refused or failed permanently (a 5xx reply, refused
      recipients, authentication failed, message too large)
  {EXIT_TEMPORARY:<3} not sent: temporary failure (a 4xx reply, every refused recipient
      4xx, connection lost, timeout, server unreachable): try again later
  {EXIT_UNKNOWN:<3} delivery unknown: the connection was lost after the end of the
      message was sent: it may have been delivered; do not resend blindly
  {EXIT_USAGE:<3} bad usage or input (options, addresses, files, no password);
      nothing was sent
  {EXIT_NO_SERVER:<3} no server could be used, permanently (certificate or host name
      not verified, --tls-policy require and no TLS, greeting refused)

examples:
  # a short note through the local MTA, plain text on port 25
  smtplug send --server localhost --no-tls --from me@example.org \\
      --to you@example.org --subject "Hello" --body "Hello there."

  # through a submission server, STARTTLS (the default) and AUTH, with the
  # password in a file; a report attached; a second server as fallback
  smtplug send --server mail.example.org:587 --server backup.example.org:587 \\
      --auth me@example.org --password-file ~/.smtp-password \\
      --from me@example.org --to team@example.org --subject "Report" \\
      --body "Attached." --attach report.pdf

  # a ready RFC 5322 message from stdin, implicit TLS (port 465), with
  # the session's transcript; recipients from its To/Cc/Bcc fields
  smtplug send --tls --server smtp.example.org --message - --transcript \\
      < note.eml

See docs/cli.md for more.
"""


class UsageProblem(Exception):
    """A usage problem found after parsing (reported like argparse's; never
    leaves the command)."""


def parse_server(text: str, default_port: int) -> tuple[str, int]:
    """``host``, ``host:port``, ``[v6]``, ``[v6]:port``, a bare IPv6 address,
    or a socket path (``/path``, ``unix:/path``: the LMTP transport's)
    -> ``(host, port)``. Raises :class:`UsageProblem` for malformed input."""
    host, port_text = text, ""
    if text.startswith(("/", "unix:")):
        return text, default_port  # a socket path: the transport (--transport lmtp) takes it
    if text.startswith("["):
        end = text.find("]")
        if end < 0:
            raise UsageProblem(f"--server {text!r}: missing ']'")
        host, rest = text[1:end], text[end + 1 :]
        if rest:
            if not rest.startswith(":"):
                raise UsageProblem(f"--server {text!r}: expected ':port' after ']'")
            port_text = rest[1:]
    elif text.count(":") == 1:
        host, port_text = text.split(":")
    # more than one colon without brackets: a bare IPv6 address, default port
    if not host:
        raise UsageProblem(f"--server {text!r}: no host name")
    if port_text == "" and (text.endswith(":")):
        raise UsageProblem(f"--server {text!r}: empty port")
    if port_text:
        if not port_text.isdigit() or not 0 < int(port_text) < 65536:
            raise UsageProblem(f"--server {text!r}: the port must be a number from 1 to 65535")
        return host, int(port_text)
    return host, default_port


def _parse_header(text: str) -> tuple[str, str]:
    name, colon, value = text.partition(":")
    name = name.strip()
    if not colon or not name:
        raise UsageProblem(f"--header {text!r}: expected 'Name: value'")
    return name, value.strip()


def add_connection_options(parser: argparse.ArgumentParser) -> None:
    """Add the server, TLS and authentication option groups to ``parser``
    (``smtplug send`` and ``smtplug send-many`` share them); read them back
    with :func:`connection_options`."""
    server = parser.add_argument_group("server")
    server.add_argument(
        "--server",
        metavar="HOST[:PORT]",
        action="append",
        default=[],
        help="a server to try, in order (repeatable: failover); IPv6 as [::1]:25; "
        "default: localhost; default port 25, 465 with --tls",
    )
    server.add_argument("--client", metavar="NAME", help="the EHLO/HELO name")
    server.add_argument(
        "--transport",
        metavar="NAME",
        help="the transport plugin by name: 'lmtp' (RFC 2033, to a local delivery "
        "agent: over TCP, or a Unix socket given as --server /path or unix:/path); "
        "default: SMTP (STARTTLS, or implicit TLS with --tls); 'smtplug plugins' "
        "lists what is installed",
    )
    server.add_argument(
        "--timeout",
        metavar="SECONDS",
        type=float,
        help="limit every wait but the one for the final reply (default: RFC 5321's per phase)",
    )

    tls = parser.add_argument_group("TLS")
    mode = tls.add_mutually_exclusive_group()
    mode.add_argument(
        "--starttls",
        dest="tls_mode",
        action="store_const",
        const="starttls",
        help="STARTTLS when the server offers it (the default)",
    )
    mode.add_argument(
        "--tls",
        dest="tls_mode",
        action="store_const",
        const="tls",
        help="implicit TLS from the first byte (default port 465)",
    )
    mode.add_argument(
        "--no-tls",
        dest="tls_mode",
        action="store_const",
        const="none",
        help="no TLS at all: anyone on the path can read and change the session",
    )
    parser.set_defaults(tls_mode="starttls")
    tls.add_argument(
        "--tls-policy",
        metavar="POLICY",
        help="what a failed STARTTLS means: 'opportunistic' (the default: go on in plain "
        "text when the server does not offer or refuses it, never after a failed "
        "certificate check) or 'require' (give that server up)",
    )
    tls.add_argument("--cafile", metavar="FILE", help="trust the CA certificates in FILE")
    tls.add_argument(
        "--capath",
        metavar="DIR",
        help="trust the CA certificates in DIR (OpenSSL's hashed directory, c_rehash)",
    )
    tls.add_argument(
        "--tls-backend",
        metavar="NAME",
        default="stdlib",
        help="'stdlib' (ssl, the default) or 'pyopenssl'",
    )
    tls.add_argument("--client-cert", metavar="FILE", help="present the client certificate in FILE")
    tls.add_argument(
        "--client-key", metavar="FILE", help="the key of --client-cert (if not in that file)"
    )
    tls.add_argument(
        "--insecure-no-verify",
        action="store_true",
        help="do NOT verify the server's certificate and host name (anyone on the path "
        "can read and change the session)",
    )

    auth = parser.add_argument_group("authentication")
    auth.add_argument("--auth", metavar="USER", help="authenticate (AUTH) as USER")
    auth.add_argument(
        "--authzid",
        metavar="IDENTITY",
        help="act as IDENTITY once authenticated as --auth USER (the SASL authorization "
        "identity: only PLAIN, EXTERNAL and OAUTHBEARER carry one, the others are then "
        "not used; the server must allow it)",
    )
    secret = auth.add_mutually_exclusive_group()
    secret.add_argument(
        "--password-file",
        metavar="FILE",
        help="read the password from the first line of FILE",
    )
    secret.add_argument(
        "--password-env",
        metavar="NAME",
        help=f"read the password from the environment variable NAME "
        f"(default: ${DEFAULT_PASSWORD_ENV} when set; else a prompt when stdin is a terminal)",
    )
    auth.add_argument(
        "--mechanism",
        metavar="NAME",
        action="append",
        default=[],
        help="a SASL mechanism to use, in order (repeatable; default: the strongest both "
        "sides support)",
    )
    auth.add_argument(
        "--oauth-token-env",
        metavar="NAME",
        help="an OAuth 2.0 token for XOAUTH2/OAUTHBEARER from the environment variable NAME",
    )
    auth.add_argument(
        "--insecure-cleartext-auth",
        action="store_true",
        help="allow AUTH without TLS to a host that is not loopback (reveals the password)",
    )


def add_send_parser(sub: Any) -> argparse.ArgumentParser:
    """Add the ``send`` subcommand to the subparsers action ``sub``."""
    parser: argparse.ArgumentParser = sub.add_parser(
        "send",
        help="send one message (swaks-style options); see 'smtplug send --help'",
        description=DESCRIPTION,
        epilog=EPILOG,
        formatter_class=argparse.RawDescriptionHelpFormatter,
        allow_abbrev=False,
    )

    message = parser.add_argument_group("message")
    message.add_argument("--subject", metavar="TEXT", help="the Subject field")
    message.add_argument("--body", metavar="TEXT", help="the text of the message (default: empty)")
    message.add_argument(
        "--attach",
        metavar="FILE",
        action="append",
        default=[],
        help="attach FILE, its MIME type guessed from its name (repeatable)",
    )
    message.add_argument(
        "--message",
        metavar="FILE",
        help="send FILE as it is (RFC 5322: header fields, blank line, body); "
        "'-' reads stdin. Not with --body or --attach",
    )
    message.add_argument(
        "--header",
        metavar="'NAME: VALUE'",
        action="append",
        default=[],
        help="a header field, replacing the message's own of that name (repeatable; "
        "repeated address fields are joined)",
    )

    envelope = parser.add_argument_group("envelope")
    envelope.add_argument(
        "--from",
        dest="sender",
        metavar="ADDRESS",
        help="the envelope sender (MAIL FROM); '' for the null sender <>; "
        "default: the message's From; also the From field when the message has none",
    )
    envelope.add_argument(
        "--to",
        metavar="ADDRESS",
        action="append",
        default=[],
        help="a recipient (repeatable; required unless the message's To/Cc/Bcc give "
        "recipients); also the To field of a message built from --body/--attach",
    )
    envelope.add_argument(
        "--atleastone",
        action="store_true",
        help="send to the accepted recipients even when some are refused (exit 1)",
    )
    envelope.add_argument(
        "--queue", action="store_true", help="ask a server offering XQUE to queue the message"
    )
    envelope.add_argument(
        "--dsn-notify",
        metavar="WHEN",
        help="delivery status notifications (RFC 3461) for every recipient: NEVER, or a "
        "comma-separated list of SUCCESS, FAILURE, DELAY; the message is not sent when "
        "the server does not offer DSN",
    )
    envelope.add_argument(
        "--dsn-ret", choices=["FULL", "HDRS"], help="what a failure report returns (DSN RET)"
    )
    envelope.add_argument(
        "--dsn-envid", metavar="ID", help="an envelope identifier echoed in reports (DSN ENVID)"
    )
    envelope.add_argument(
        "--dsn-orcpt",
        action="store_true",
        help="send each recipient's address as its original recipient (DSN ORCPT)",
    )
    envelope.add_argument(
        "--requiretls",
        action="store_true",
        help="REQUIRETLS (RFC 8689): only over verified TLS, to a server offering it",
    )

    add_connection_options(parser)

    output = parser.add_argument_group("output")
    loudness = output.add_mutually_exclusive_group()
    loudness.add_argument(
        "--quiet", action="store_true", help="print nothing: only the exit status tells"
    )
    loudness.add_argument(
        "--transcript",
        action="store_true",
        help="print the session's transcript on stderr (credentials redacted, the "
        "message summarised)",
    )
    parser.set_defaults(handler=run_send)
    return parser


# -- building the inputs -------------------------------------------------------


def _read_bytes(path: str, what: str) -> bytes:
    try:
        return Path(path).read_bytes()
    except OSError as exc:
        raise InvalidInputError(f"cannot read {what} {path!r}: {exc.strerror or exc}") from exc


def _attach(message: EmailMessage, path: str) -> None:
    data = _read_bytes(path, "--attach file")
    guessed, encoding = mimetypes.guess_type(path)
    if guessed is None or encoding is not None:
        guessed = "application/octet-stream"
    maintype, _, subtype = guessed.partition("/")
    message.add_attachment(
        data, maintype=maintype, subtype=subtype, filename=os.path.basename(path)
    )


def _build_message(args: argparse.Namespace, header: list[tuple[str, str]]) -> EmailMessage:
    message = EmailMessage()
    if args.subject is not None:
        message["Subject"] = args.subject
    given = {name.lower() for name, _ in header}
    if args.to and "to" not in given:
        message["To"] = ", ".join(args.to)
    message.set_content(args.body if args.body is not None else "")
    for path in args.attach:
        _attach(message, path)
    return message


@contextmanager
def _message_source(
    args: argparse.Namespace, header: list[tuple[str, str]], stdin: IO[bytes]
) -> Iterator[tuple[_Message, int | None]]:
    """The message to send and its size when known."""
    if args.message is None:
        yield _build_message(args, header), None
        return
    if args.body is not None or args.attach:
        raise UsageProblem("--message is the whole message: not with --body or --attach")
    if args.subject is not None:
        header.append(("Subject", args.subject))
    if args.message == "-":
        # Read whole, so that failover to the next server can send it again.
        data = stdin.read()
        yield data, len(data)
        return
    try:
        handle = open(args.message, "rb")  # noqa: SIM115 (closed below)
    except OSError as exc:
        raise InvalidInputError(
            f"cannot read --message file {args.message!r}: {exc.strerror or exc}"
        ) from exc
    with handle:
        yield handle, os.fstat(handle.fileno()).st_size


def _password(args: argparse.Namespace, can_prompt: bool) -> str | None:
    """The password for ``--auth``, from a file, the environment or a prompt
    (``can_prompt``: stdin is a terminal that the command does not read)."""
    if args.auth is None:
        if args.password_file or args.password_env or args.mechanism or args.oauth_token_env:
            raise UsageProblem(
                "--password-file, --password-env, --mechanism and --oauth-token-env "
                "need --auth USER"
            )
        return None
    if args.password_file is not None:
        data = _read_bytes(args.password_file, "--password-file")
        line = data.split(b"\n", 1)[0].removesuffix(b"\r")
        if not line:
            raise InvalidInputError(
                f"--password-file {args.password_file!r}: the first line is empty"
            )
        try:
            return line.decode("utf-8")
        except UnicodeDecodeError as exc:
            raise InvalidInputError(f"--password-file {args.password_file!r}: not UTF-8") from exc
    if args.password_env is not None:
        value = os.environ.get(args.password_env)
        if not value:
            raise InvalidInputError(
                f"--password-env: the environment variable {args.password_env} is not set"
            )
        return value
    if os.environ.get(DEFAULT_PASSWORD_ENV):
        return os.environ[DEFAULT_PASSWORD_ENV]
    if args.oauth_token_env is not None:
        return None
    if can_prompt:
        try:
            return getpass.getpass(f"smtplug: password for {args.auth}: ")
        except EOFError as exc:
            raise InvalidInputError("no password typed") from exc
    raise InvalidInputError(
        f"--auth {args.auth}: no password: use --password-file FILE, --password-env NAME, "
        f"set ${DEFAULT_PASSWORD_ENV}, or run on a terminal to be asked"
    )


def _oauth_token(args: argparse.Namespace) -> str | None:
    if args.oauth_token_env is None:
        return None
    value = os.environ.get(args.oauth_token_env)
    if not value:
        raise InvalidInputError(
            f"--oauth-token-env: the environment variable {args.oauth_token_env} is not set"
        )
    return value


def connection_options(args: argparse.Namespace, *, can_prompt: bool) -> dict[str, Any]:
    """The options of :func:`add_connection_options` as keyword arguments of
    :func:`smtplug.sendmessage` (and of :class:`smtplug.Pool`): the servers,
    TLS and credentials, the password read as ``--auth`` asks (a prompt only
    when ``can_prompt``). Raises :class:`UsageProblem` or
    :class:`~smtplug.InvalidInputError`."""
    default_port = 465 if args.tls_mode == "tls" else 25
    pairs = [parse_server(text, default_port) for text in args.server] or [
        ("localhost", default_port)
    ]
    password = _password(args, can_prompt)
    oauth_token = _oauth_token(args)
    return {
        "servers": [host for host, _ in pairs],
        "ports": [port for _, port in pairs],
        "client": args.client,
        "usetls": args.tls_mode == "starttls",
        "tlsimport": args.tls_mode == "tls",
        "tlspolicy": args.tls_policy,
        "tls_backend": args.tls_backend,
        "cafile": args.cafile,
        "capath": args.capath,
        "client_cert": args.client_cert,
        "client_key": args.client_key,
        "tls_verify": not args.insecure_no_verify,
        "username": args.auth,
        "authzid": args.authzid,
        "password": password,
        "oauth_token": oauth_token,
        "mechanisms": args.mechanism or None,
        "insecure_cleartext_auth": args.insecure_cleartext_auth,
        "timeout": args.timeout,
        "transport": args.transport,
    }


# -- output --------------------------------------------------------------------


class _Progress:
    """A ``\\r`` progress line for a large message on a terminal."""

    def __init__(self, stream: TextIO, total: int | None) -> None:
        self._stream = stream
        self._total = total
        self._width = 0
        self._sent = 0
        self.shown = False

    def __call__(self, sent: int) -> None:
        large = self._total is not None and self._total >= PROGRESS_THRESHOLD
        if not (large or sent >= PROGRESS_THRESHOLD or self.shown):
            return
        mib = sent / (1 << 20)
        if self._total:
            percent = min(100, sent * 100 // self._total)
            line = f"\rsending: {mib:.1f} of {self._total / (1 << 20):.1f} MiB ({percent}%)"
        else:
            line = f"\rsending: {mib:.1f} MiB"
        self._stream.write(line.ljust(self._width))
        self._stream.flush()
        self._width = len(line)
        self._sent = sent
        self.shown = True

    def finish(self, done: bool) -> None:
        """End the line (``done``: the whole message went and was accepted)."""
        if self.shown:
            if done:
                line = f"\rsending: {self._sent / (1 << 20):.1f} MiB, done"
                self._stream.write(line.ljust(self._width))
            self._stream.write("\n")
            self._stream.flush()
            self.shown = False


def _refusals(result: SendResult) -> str:
    return "; ".join(f"{r.address}: {r.code} {r.diagnostic}" for r in result)


def _outcome(result: SendResult, asked: int, atleastone: bool) -> tuple[int, str]:
    """The exit code and the one-line outcome for a result (``asked``: how
    many recipients --to gave, 0 when they came from the message)."""
    where = f"{result.server}:{result.port}"
    if result.accepted:
        reply = result.reply
        said = f" ({reply.code} {reply.diagnostic})" if reply is not None else ""
        count = len(result.recipients)
        noun = "recipient" if count == 1 else "recipients"
        if not result:
            return EXIT_SENT, f"sent to {count} {noun} via {where}{said}"
        return (
            EXIT_PARTIAL,
            f"sent to {count} {noun} via {where}{said}; refused: {_refusals(result)}",
        )
    code = EXIT_TEMPORARY if all(r.transient for r in result) else EXIT_NOT_SENT
    hint = ""
    if not atleastone and len(result) < asked:
        hint = " (--atleastone sends it to the accepted recipients)"
    return code, f"not sent (recipients refused, via {where}): {_refusals(result)}{hint}"


def exit_code_for(error: SMTPError) -> int:
    """The exit status for an error raised by a send (see :data:`EPILOG`)."""
    if error.may_have_been_delivered or isinstance(error, DeliveryUnknownError):
        return EXIT_UNKNOWN
    if isinstance(error, InvalidInputError):
        return EXIT_USAGE
    if error.transient:
        return EXIT_TEMPORARY
    if isinstance(error, ConnectError):
        return EXIT_NO_SERVER
    return EXIT_NOT_SENT


@contextmanager
def _warnings_to(stream: TextIO | None) -> Iterator[None]:
    """The ``smtplug`` logger's warnings on ``stream`` (None: dropped) for the
    duration of one command."""
    logger = logging.getLogger("smtplug")
    handler: logging.Handler
    if stream is None:
        handler = logging.NullHandler()
    else:
        handler = logging.StreamHandler(stream)
        handler.setFormatter(logging.Formatter("smtplug: warning: %(message)s"))
    handler.setLevel(logging.WARNING)
    # The library's "message NOT sent: recipients refused" says what the
    # outcome line says; drop it there (if its text changes, it shows twice).
    handler.addFilter(lambda record: "message NOT sent" not in str(record.msg))
    logger.addHandler(handler)
    try:
        yield
    finally:
        logger.removeHandler(handler)


def _fail(parser: argparse.ArgumentParser, problem: str) -> NoReturn:
    parser.error(problem)


def _dsn(args: argparse.Namespace) -> smtplug.DSN | None:
    """The DSN the --dsn-* options ask for, or None."""
    asked = (args.dsn_notify, args.dsn_ret, args.dsn_envid)
    if all(value is None for value in asked) and not args.dsn_orcpt:
        return None
    notify = None if args.dsn_notify is None else args.dsn_notify.split(",")
    return smtplug.DSN(notify=notify, ret=args.dsn_ret, envid=args.dsn_envid, orcpt=args.dsn_orcpt)


def run_send(
    args: argparse.Namespace,
    parser: argparse.ArgumentParser,
    *,
    stdin: IO[bytes] | None = None,
    stdin_tty: bool | None = None,
    stderr: TextIO | None = None,
) -> int:
    """Run ``smtplug send`` with parsed ``args``; returns the exit status."""
    err = stderr if stderr is not None else sys.stderr
    if stdin is None:
        stdin = sys.stdin.buffer
    if stdin_tty is None:
        stdin_tty = sys.stdin.isatty()
    say: Callable[[str], None]
    if args.quiet:

        def say(line: str) -> None:
            pass
    else:

        def say(line: str) -> None:
            print(f"smtplug: {line}", file=err, flush=True)

    try:
        try:
            header = [_parse_header(text) for text in args.header]
            connection = connection_options(args, can_prompt=stdin_tty and args.message != "-")
            dsn = _dsn(args)
        except UsageProblem as exc:
            _fail(parser, str(exc))
        with _message_source(args, header, stdin) as (message, size):
            progress: _Progress | None = None
            if not args.quiet and not args.transcript and err.isatty():
                progress = _Progress(err, size)
            with _warnings_to(None if args.quiet else err):
                result: SendResult | None = None
                try:
                    result = smtplug.sendmessage(
                        message,
                        **connection,
                        queue=args.queue,
                        atleastone=args.atleastone,
                        originator=args.sender,
                        recipients=args.to or None,
                        header=header,
                        debug=args.transcript,
                        progress=progress,
                        dsn=dsn,
                        requiretls=args.requiretls,
                    )
                finally:
                    if progress is not None:
                        progress.finish(result is not None and result.accepted)
    except UsageProblem as exc:
        _fail(parser, str(exc))
    except SMTPError as exc:
        say(f"{type(exc).__name__}: {exc.code} {exc.diagnostic}")
        return exit_code_for(exc)
    code, line = _outcome(result, len(args.to), args.atleastone)
    say(line)
    return code
