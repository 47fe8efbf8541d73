"""Django's ``django.db.backends.postgresql`` as loaded without psycopg 3 (see __init__)."""

import sys

_DJANGO_POSTGRES = "django.db.backends.postgresql"
_hidden = {
    name: sys.modules.pop(name)
    for name in list(sys.modules)
    if name == "psycopg" or name.startswith(("psycopg.", _DJANGO_POSTGRES))
}
sys.modules["psycopg"] = None  # type: ignore[assignment]  # `import psycopg` fails
try:
    from django.db.backends.postgresql import base as _base
    from django.db.backends.postgresql.psycopg_any import is_psycopg3
finally:
    del sys.modules["psycopg"]
    # psycopg 3 comes back for errands; Django's backend modules stay the psycopg2 ones.
    sys.modules.update({k: v for k, v in _hidden.items() if not k.startswith(_DJANGO_POSTGRES)})

assert not is_psycopg3, "Django's backend should have loaded psycopg2"

DatabaseWrapper = _base.DatabaseWrapper
