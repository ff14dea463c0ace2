"""Settings of the example project (see README.md beside manage.py).

The database comes from the environment: ``EXAMPLE_DB=sqlite`` (default, ``EXAMPLE_DB_NAME`` is
the file) or ``EXAMPLE_DB=postgresql`` (``EXAMPLE_DB_NAME`` on 127.0.0.1:5432, user postgres).
"""

from __future__ import annotations

import os
from pathlib import Path

BASE_DIR = Path(__file__).resolve().parent.parent
SECRET_KEY = "example-only-not-secret"
DEBUG = False
ALLOWED_HOSTS = ["127.0.0.1", "localhost"]

INSTALLED_APPS = [
    "django.contrib.admin",
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "django.contrib.messages",
    "django.contrib.staticfiles",
    "taskpipe.contrib.django",
    "shop",
]
MIDDLEWARE = [
    "django.middleware.security.SecurityMiddleware",
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.middleware.common.CommonMiddleware",
    "django.middleware.csrf.CsrfViewMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
    "django.contrib.messages.middleware.MessageMiddleware",
]
ROOT_URLCONF = "proj.urls"
TEMPLATES = [
    {
        "BACKEND": "django.template.backends.django.DjangoTemplates",
        "APP_DIRS": True,
        "OPTIONS": {
            "context_processors": [
                "django.template.context_processors.request",
                "django.contrib.auth.context_processors.auth",
                "django.contrib.messages.context_processors.messages",
            ]
        },
    }
]
STATIC_URL = "static/"
USE_TZ = True

if os.environ.get("EXAMPLE_DB", "sqlite") == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.postgresql",
            "NAME": os.environ.get("EXAMPLE_DB_NAME", "taskpipe_example"),
            "USER": "postgres",
            "HOST": "127.0.0.1",
            "PORT": "5432",
            "OPTIONS": {"application_name": os.environ.get("EXAMPLE_DB_APP", "taskpipe-example")},
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("EXAMPLE_DB_NAME", str(BASE_DIR / "db.sqlite3")),
        }
    }

TASKPIPE = {
    "broker": os.environ.get("TASKPIPE_BROKER_URL", "redis://127.0.0.1:6379/0"),
    "prefix": os.environ.get("TASKPIPE_PREFIX", "shop:"),
}
