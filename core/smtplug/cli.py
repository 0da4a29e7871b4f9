"""The ``smtplug`` command: ``smtplug send``, ``smtplug send-many``, ``smtplug demo`` and
``smtplug plugins``.

Usage errors exit with 64 (sysexits EX_USAGE), not argparse's 2, which
``smtplug send`` uses for "not sent" (see :mod:`smtplug.cli_send` and
:mod:`smtplug.cli_batch`).
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import NoReturn

from smtplug import __version__
from smtplug.cli_batch import add_send_many_parser
from smtplug.cli_send import EXIT_USAGE, add_send_parser
from smtplug.errors import SMTPError
from smtplug.plugins import installed, new_manager

__all__ = ["main"]

_KINDS = (
    ("transports", "smtplug_register_transports"),
    ("asyncio transports", "smtplug_register_async_transports"),
    ("TLS backends", "smtplug_register_tls_backends"),
    ("SASL mechanisms", "smtplug_register_sasl_mechanisms"),
    ("TLS policies", "smtplug_register_tls_policies"),
)


def _plugins() -> int:
    """List every installed plugin and what it registers."""
    plugins = installed()
    if not plugins:
        print("no smtplug plugins are installed")
        return 1
    for entry in plugins:
        manager = new_manager()
        manager.register(entry.plugin, name=entry.name)
        print(f"{entry.name}  ({entry.value}, from {entry.distribution})")
        hooks = []
        for label, hook_name in _KINDS:
            names = [obj.name for batch in getattr(manager.hook, hook_name)() for obj in batch]
            if names:
                hooks.append(f"{label}: {', '.join(names)}")
        observed = [
            name
            for name in ("smtplug_on_event", "smtplug_on_command", "smtplug_on_reply")
            if getattr(manager.hook, name).get_hookimpls()
        ]
        if observed:
            hooks.append(f"observes: {', '.join(observed)}")
        for line in hooks or ["(registers nothing)"]:
            print(f"    {line}")
    return 0


class _Parser(argparse.ArgumentParser):
    """argparse, with EX_USAGE (64) for a usage error."""

    def error(self, message: str) -> NoReturn:
        self.print_usage(sys.stderr)
        self.exit(EXIT_USAGE, f"{self.prog}: error: {message}\n")


def _secret_on_argv(argv: Sequence[str]) -> bool:
    """Whether a ``--password`` option was given: refused without echoing it."""
    return any(arg == "--password" or arg.startswith("--password=") for arg in argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Run the ``smtplug`` command; returns the exit status."""
    if argv is None:
        argv = sys.argv[1:]
    argv = list(argv)
    if _secret_on_argv(argv):
        # Not argparse's "unrecognized arguments: --password SECRET": that
        # would print the password.
        print(
            "smtplug: error: --password is not supported: a password on the command line "
            "is visible to every user of this machine; use --password-file FILE, "
            "--password-env NAME (default $SMTPLUG_PASSWORD) or the prompt",
            file=sys.stderr,
        )
        return EXIT_USAGE
    parser = _Parser(
        prog="smtplug",
        description="A pluggable SMTP client (Tcllib's smtp::sendmessage).",
        allow_abbrev=False,
    )
    parser.add_argument("--version", action="version", version=f"smtplug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    add_send_parser(sub)
    add_send_many_parser(sub)
    demo = sub.add_parser(
        "demo",
        help="send a message through the real client to a local in-process server",
    )
    demo.add_argument("--to", default="someone@somewhere.example", help="the recipient")
    demo.add_argument("--subject", default="This is the subject.")
    demo.add_argument("--body", default="This is the message.")
    sub.add_parser("plugins", help="list the installed plugins and what each registers")
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:  # --help, --version, usage errors
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE

    if args.command in ("send", "send-many"):
        send = args.handler
        try:
            return int(send(args, sub.choices[args.command]))
        except SystemExit as exc:  # a usage error found after parsing
            return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    try:
        if args.command == "plugins":
            return _plugins()
        from smtplug.demo import run_demo

        return run_demo(sys.stdout, recipient=args.to, subject=args.subject, body=args.body)
    except SMTPError as exc:
        print(f"smtplug: {type(exc).__name__}: {exc}", file=sys.stderr)
        return 2


if __name__ == "__main__":  # pragma: no cover
    raise SystemExit(main())
