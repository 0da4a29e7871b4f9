"""The minimal Django settings the backend's tests run with.

``configure()`` hands them to ``django.conf.settings`` once per process (no
DJANGO_SETTINGS_MODULE, no pytest-django), in the configuration the installed
Django wants:

- Django 6.1 and later (``MAILERS_DJANGO``): ``MAILERS``, with smtplug's
  backend as the default mailer and no deprecated EMAIL_* setting; a test
  builds its mailer with :func:`mailer` (its own MAILERS entry).
- Before: ``EMAIL_BACKEND`` and Django's default EMAIL_* settings.

:func:`deprecated_email_settings` gives a test the EMAIL_* configuration of a
project that has not moved to MAILERS, on either Django.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import django

#: Django 6.1 configures email with MAILERS and deprecates the EMAIL_* settings.
MAILERS_DJANGO = django.VERSION >= (6, 1)

BACKEND = "smtplug.django.EmailBackend"

DEFAULT_CHARSET = "utf-8"
DEFAULT_FROM_EMAIL = "webmaster@example.com"
USE_TZ = True
if MAILERS_DJANGO:
    MAILERS = {"default": {"BACKEND": BACKEND, "OPTIONS": {"host": "127.0.0.1"}}}
else:
    EMAIL_BACKEND = BACKEND


def configure() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(**{name: value for name, value in globals().items() if name.isupper()})


def mailer(alias: str = "default", **options: Any) -> Any:
    """The backend ``mail.mailers[alias]`` makes from a MAILERS entry with
    these OPTIONS (Django 6.1 and later)."""
    from django.core import mail
    from django.test import override_settings

    with override_settings(MAILERS={alias: {"BACKEND": BACKEND, "OPTIONS": options}}):
        return mail.mailers[alias]


@contextmanager
def deprecated_email_settings(**email_settings: Any) -> Iterator[None]:
    """Django's EMAIL_* settings (these over Django's defaults, and
    ``EMAIL_BACKEND`` smtplug's), without MAILERS: what a project that has not
    moved to MAILERS has. On Django 6.1, setting them warns, as loading such a
    project's settings does; the test expects that."""
    from django.conf import settings
    from django.test import override_settings

    with override_settings():
        if MAILERS_DJANGO:
            del settings.MAILERS
        with override_settings(**{"EMAIL_BACKEND": BACKEND, **email_settings}):
            yield
