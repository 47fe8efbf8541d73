"""A small Django project using errands, against PostgreSQL or SQLite.

tests/test_django.py picks the database through environment variables:
PROJECT_DB_ENGINE ("postgresql" or "sqlite"), PROJECT_DB_NAME (database name or
SQLite file), PROJECT_DB_HOST/USER, PROJECT_DB_DRIVER ("psycopg2" runs Django's
PostgreSQL backend on psycopg2 instead of psycopg 3); PROJECT_ERRANDS_URL gives errands a database
of its own instead of Django's.
"""

import os

BASE_DIR = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SECRET_KEY = "errands-test-project"
DEBUG = False
ALLOWED_HOSTS = ["*"]
USE_TZ = True
TIME_ZONE = "UTC"
ROOT_URLCONF = "project.urls"
DEFAULT_AUTO_FIELD = "django.db.models.BigAutoField"

INSTALLED_APPS = [
    "django.contrib.auth",
    "django.contrib.contenttypes",
    "django.contrib.sessions",
    "errands.contrib.django",
    "shop",
]
MIDDLEWARE = [
    "django.contrib.sessions.middleware.SessionMiddleware",
    "django.contrib.auth.middleware.AuthenticationMiddleware",
]

if os.environ.get("PROJECT_DB_ENGINE", "sqlite") == "postgresql":
    DATABASES = {
        "default": {
            "ENGINE": "project.postgresql_psycopg2"
            if os.environ.get("PROJECT_DB_DRIVER") == "psycopg2"
            else "django.db.backends.postgresql",
            "NAME": os.environ["PROJECT_DB_NAME"],
            "HOST": os.environ.get("PROJECT_DB_HOST", "127.0.0.1"),
            "USER": os.environ.get("PROJECT_DB_USER", "postgres"),
        }
    }
else:
    DATABASES = {
        "default": {
            "ENGINE": "django.db.backends.sqlite3",
            "NAME": os.environ.get("PROJECT_DB_NAME", os.path.join(BASE_DIR, "db.sqlite3")),
            "TEST": {"NAME": os.environ.get("PROJECT_TEST_DB_NAME")},
        }
    }

TASKS = {
    "default": {
        "BACKEND": "errands.contrib.django.ErrandsBackend",
        "QUEUES": [],  # any queue
        "OPTIONS": {"RETRIES": 0},
    }
}

ERRANDS = {
    "poll_interval": 0.1,
    "worker_max_processes": 2,
    "heartbeat_interval": 1,
}
if os.environ.get("PROJECT_ERRANDS_URL"):
    ERRANDS["database_url"] = os.environ["PROJECT_ERRANDS_URL"]

# errands closes its connections before Django drops the test database.
TEST_RUNNER = "errands.contrib.django.test.DiscoverRunner"
