"""errands' settings from a Django project's settings.

Read from the ``ERRANDS`` dict (keys are errands' setting names: ``"import"``,
``"middleware"``, ``"schedule"``, ...) and from ``ERRANDS_<NAME>`` settings, the
latter winning. They are handed to ``errands.configure()``, errands' lowest
priority source: ``ERRANDS_*`` environment variables and command-line flags
still override them.

Keys that belong to the Django integration itself:

* ``database``: the alias in ``DATABASES`` whose database errands uses (default
  ``"default"``) when no ``database_url`` is given. Enqueues then join the open
  transaction of that Django connection.
* ``migrate_with_django``: create or upgrade errands' tables whenever Django's
  ``migrate`` runs on that database, including test databases (default True).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

from django.conf import settings as django_settings
from django.db import connections

from errands.errors import ConfigurationError

BOOTSTRAP_MODULE = "errands.contrib.django.bootstrap"
CONNECTIONS_MIDDLEWARE = "errands.contrib.django.middleware.CloseOldConnections"
_PREFIX = "ERRANDS_"
_OWN_KEYS = ("database", "migrate_with_django")


@dataclass(frozen=True)
class DjangoSettings:
    """The integration's own keys, and the values to hand to ``errands.configure``."""

    database: str | None  # Django alias errands shares, or None with an explicit URL
    migrate_with_django: bool
    errands_values: dict[str, Any]


def read() -> DjangoSettings:
    values = _raw_values()
    own = {key: values.pop(key) for key in _OWN_KEYS if key in values}
    alias = str(own.get("database", "default"))
    shares_django_database = "database_url" not in values
    if shares_django_database:
        values["database_url"] = database_url(alias)
    values["import"] = _with_first(BOOTSTRAP_MODULE, values.get("import", ()))
    values["middleware"] = _with_first(CONNECTIONS_MIDDLEWARE, values.get("middleware", ()))
    return DjangoSettings(
        database=alias if shares_django_database else None,
        migrate_with_django=bool(own.get("migrate_with_django", True)),
        errands_values=values,
    )


def _raw_values() -> dict[str, Any]:
    table = getattr(django_settings, "ERRANDS", {})
    if not isinstance(table, Mapping):
        raise ConfigurationError("settings.ERRANDS must be a dict of errands settings")
    values = {str(key).lower(): value for key, value in table.items()}
    for name in dir(django_settings):
        if name.startswith(_PREFIX):
            values[name.removeprefix(_PREFIX).lower()] = getattr(django_settings, name)
    return values


def _with_first(first: str, names: Any) -> list[str]:
    listed = [names] if isinstance(names, str) else list(names)
    return [first, *(name for name in listed if name != first)]


def database_url(alias: str) -> str:
    """An errands database URL for the Django database ``alias`` (as currently connected,
    so a test database is named once Django switched to it)."""
    if alias not in connections:
        raise ConfigurationError(
            f"ERRANDS['database'] = {alias!r} is not in DATABASES; "
            "name one of its aliases, or set ERRANDS['database_url']"
        )
    params = connections[alias].settings_dict
    engine = str(params.get("ENGINE", ""))
    if "postgresql" in engine or "postgis" in engine:
        return _postgres_url(params)
    if "sqlite3" in engine or "spatialite" in engine:
        return _sqlite_url(alias, params)
    raise ConfigurationError(
        f"errands cannot use the Django database {alias!r} (ENGINE {engine!r}): errands "
        "runs on PostgreSQL or SQLite; set ERRANDS['database_url']"
    )


def _postgres_url(params: Mapping[str, Any]) -> str:
    user = quote(str(params.get("USER") or ""), safe="")
    password = quote(str(params.get("PASSWORD") or ""), safe="")
    credentials = f"{user}:{password}@" if password else (f"{user}@" if user else "")
    host = str(params.get("HOST") or "")
    location = f"[{host}]" if ":" in host else quote(host, safe="/")
    port = f":{params['PORT']}" if params.get("PORT") else ""
    name = quote(str(params.get("NAME") or ""), safe="")
    # libpq options (sslmode, connect_timeout, ...) travel as query parameters; Django's
    # own keys (pool, server_side_binding, ...) are not libpq's and are left out.
    options = {
        key: value
        for key, value in (params.get("OPTIONS") or {}).items()
        if isinstance(value, str | int) and key in _LIBPQ_OPTIONS
    }
    query = f"?{urlencode(options)}" if options else ""
    return f"postgresql://{credentials}{location}{port}/{name}{query}"


_LIBPQ_OPTIONS = frozenset(
    {
        "sslmode",
        "sslrootcert",
        "sslcert",
        "sslkey",
        "connect_timeout",
        "application_name",
        "options",
        "target_session_attrs",
        "passfile",
        "service",
    }
)


def _sqlite_url(alias: str, params: Mapping[str, Any]) -> str:
    name = str(params.get("NAME") or "")
    if not name or name == ":memory:" or "mode=memory" in name:
        raise ConfigurationError(
            f"the Django database {alias!r} is an in-memory SQLite database, which a worker "
            "cannot share; name a file in DATABASES, or set ERRANDS['database_url']"
        )
    return f"sqlite:///{os.path.abspath(name)}"
