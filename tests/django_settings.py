"""The minimal Django settings the backend's tests run with.

``configure()`` hands them to ``django.conf.settings`` once per process (no
DJANGO_SETTINGS_MODULE, no pytest-django), in the configuration the installed
Django wants:

- Django 6.1 and later (``MAILERS_DJANGO``): ``MAILERS``, with smtplug's
  backend as the default mailer and no deprecated EMAIL_* setting; a test
  builds its mailer with :func:`mailer` (its own MAILERS entry).
- Before: ``EMAIL_BACKEND`` and Django's default EMAIL_* settings.

:func:`deprecated_email_settings` gives a test the EMAIL_* configuration of a
project that has not moved to MAILERS, on either Django; :func:`legacy` also
checks the warnings it gives. :func:`deprecations_are_errors` makes every
Django deprecation warning fail a test module.
"""

from __future__ import annotations

import os
import warnings
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import django
import django.utils.deprecation
import pytest

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


@contextmanager
def legacy(**email_settings: Any) -> Iterator[list[warnings.WarningMessage]]:
    """:func:`deprecated_email_settings`, for a backend made directly or by
    ``get_connection()``, with the warnings checked.

    On Django 6.1 that configuration is deprecated: Django warns when the
    settings are set, when a backend is made directly and at
    ``get_connection()``. Those warnings are recorded (and yielded); none may
    come from smtplug's code, which reads the settings as Django's own backend
    does. Before 6.1 no deprecation warning may come at all (the filters of
    :func:`deprecations_are_errors`).
    """
    if not MAILERS_DJANGO:
        with deprecated_email_settings(**email_settings):
            yield []
        return
    import smtplug

    smtplug_dir = os.path.dirname(smtplug.__file__) + os.sep
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        with deprecated_email_settings(**email_settings):
            yield caught
    from_smtplug = [
        f"{w.filename}:{w.lineno}: {w.message}"
        for w in caught
        if w.filename.startswith(smtplug_dir)
    ]
    assert from_smtplug == []


def deprecations_are_errors() -> list[pytest.MarkDecorator]:
    """``pytestmark`` for a module whose tests fail on any of Django's
    deprecation warnings (RemovedInDjango2028Warning on 6.1, its
    predecessors' before), unless a test expects them."""
    names = sorted(
        name
        for name, value in vars(django.utils.deprecation).items()
        if name.startswith("Removed") and isinstance(value, type) and issubclass(value, Warning)
    )
    return [pytest.mark.filterwarnings(f"error::django.utils.deprecation.{name}") for name in names]
