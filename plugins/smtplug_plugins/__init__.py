"""smtplug's built-in plugins.

Each module here is its own plugin and its own entry point in the ``smtplug``
group (see ``pyproject.toml``); the core never imports them by name.
"""
