"""The minimal Django settings the backend's tests run with.

``configure()`` hands them to ``django.conf.settings`` once per process (no
DJANGO_SETTINGS_MODULE, no pytest-django): the email settings are Django's
defaults but for the backend, and each test passes its host and port.
"""

from __future__ import annotations

EMAIL_BACKEND = "smtplug.django.EmailBackend"
DEFAULT_CHARSET = "utf-8"
DEFAULT_FROM_EMAIL = "webmaster@example.com"
USE_TZ = True


def configure() -> None:
    from django.conf import settings

    if not settings.configured:
        settings.configure(**{name: value for name, value in globals().items() if name.isupper()})
