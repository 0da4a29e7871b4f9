"""The ``smtplug`` command: ``smtplug demo`` and ``smtplug plugins``."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from smtplug import __version__
from smtplug.errors import SMTPError
from smtplug.plugins import installed, new_manager

__all__ = ["main"]

_KINDS = (
    ("transports", "smtplug_register_transports"),
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


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="smtplug", description="A pluggable SMTP client (Tcllib's smtp::sendmessage)."
    )
    parser.add_argument("--version", action="version", version=f"smtplug {__version__}")
    sub = parser.add_subparsers(dest="command", required=True)
    demo = sub.add_parser(
        "demo",
        help="send a message through the real client to a local in-process server",
    )
    demo.add_argument("--to", default="someone@somewhere.example", help="the recipient")
    demo.add_argument("--subject", default="This is the subject.")
    demo.add_argument("--body", default="This is the message.")
    sub.add_parser("plugins", help="list the installed plugins and what each registers")
    args = parser.parse_args(argv)

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
