"""Test-only tasks for tests/mail: what the database does inside the eventlet io worker."""
from __future__ import annotations

import os
import sys

from celery import shared_task
from django.db import connection


@shared_task(name="tests.io.mail_db_sleep")
def mail_db_sleep(seconds: float) -> dict:
    """Hold a database query for ``seconds`` (PostgreSQL pg_sleep; SQLite has none, so a plain query)."""
    with connection.cursor() as cursor:
        if connection.vendor == "postgresql":
            cursor.execute("SELECT pg_sleep(%s)", [seconds])
        else:
            cursor.execute("SELECT 1")
    waiting = sys.modules.get("psycopg.waiting")
    pool = getattr(connection, "pool", None)
    return {
        "vendor": connection.vendor,
        "pid": os.getpid(),
        "wait_func": getattr(getattr(waiting, "wait", None), "__name__", None),
        "pool_max_size": pool.max_size if pool is not None else None,
    }
