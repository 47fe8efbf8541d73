"""The Django app ``errands.contrib.django``: add it to ``INSTALLED_APPS``."""

from __future__ import annotations

from typing import Any

from django.apps import AppConfig
from django.apps import apps as django_apps
from django.db.models.signals import post_migrate
from django.utils.module_loading import autodiscover_modules

from errands import api, registry, settings

TASKS_MODULE = "errands.contrib.django.tasks"  # where RunTask, the job of Django tasks, lives


class ErrandsConfig(AppConfig):
    """Configures errands from Django's settings when Django starts.

    * errands' settings come from ``settings.ERRANDS`` (see ``conf``), its database
      from ``DATABASES`` unless ``database_url`` is given;
    * enqueues join the transaction of the shared Django connection;
    * model instances are stored as job parameters by reference;
    * every installed app's ``jobs`` module is imported, so its jobs register, and
      stored job paths may import modules inside it (and ``RunTask``'s module), as
      inside the ``import`` setting (see :mod:`errands.registry`);
    * Django's ``migrate`` also creates errands' tables (``migrate_with_django``).
    """

    name = "errands.contrib.django"
    label = "errands"
    verbose_name = "errands"

    def ready(self) -> None:
        from errands.contrib.django import conf, references
        from errands.contrib.django.backends import opener

        configured = conf.read()
        settings.configure(**configured.errands_values)
        api.set_backend_opener(opener(configured.database))
        references.register()
        autodiscover_modules("jobs")
        jobs_packages = [f"{app.name}.jobs" for app in django_apps.get_app_configs()]
        registry.allow_imports_from([TASKS_MODULE, *jobs_packages])
        if configured.migrate_with_django and configured.database is not None:
            post_migrate.connect(migrate_errands, sender=self)


def migrate_errands(sender: AppConfig, using: str, verbosity: int = 1, **kwargs: Any) -> None:
    """After Django's ``migrate`` on errands' database, create or upgrade errands' tables.

    Django's test runner names a test database only when it creates it, so the
    database URL is worked out again here.
    """
    from errands.contrib.django import conf

    configured = conf.read()
    if using != configured.database:
        return
    settings.configure(database_url=configured.errands_values["database_url"])
    applied = api.backend().migrate()
    if applied and verbosity >= 1:
        print(f"  Applied errands schema versions {', '.join(map(str, applied))}")
