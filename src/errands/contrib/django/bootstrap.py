"""Imported first by every errands process of a Django project (it heads the
``import`` setting): sets Django up, which configures errands and imports the
installed apps' ``jobs`` modules (see ``apps.ErrandsConfig.ready``).

Worker children are fresh processes; they inherit ``DJANGO_SETTINGS_MODULE``
from the worker and get here through the ``import`` setting.
"""

from __future__ import annotations

import django
from django.apps import apps

if not apps.ready:
    django.setup()
