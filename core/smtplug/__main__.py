"""``python -m smtplug``: the ``smtplug`` command."""

from smtplug.cli import main

raise SystemExit(main())
