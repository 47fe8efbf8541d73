"""Django's PostgreSQL backend forced onto psycopg2 (PROJECT_DB_DRIVER=psycopg2).

Django prefers psycopg 3 whenever it imports, and errands itself needs psycopg 3, so
both are installed; this engine loads Django's backend while ``import psycopg``
fails, which makes Django pick psycopg2 (tests/test_django_psycopg2.py).
"""
