"""Database tuning that belongs to the database file, applied once after migrate."""
from django.db import connections
from django.db.models.signals import post_migrate
from django.dispatch import receiver


@receiver(post_migrate)
def use_sqlite_wal(using, **kwargs):
    """WAL is persistent in an SQLite file: readers no longer block the writer (web, workers, beat)."""
    connection = connections[using]
    if connection.vendor == "sqlite" and not connection.settings_dict["NAME"].startswith(":memory:") \
            and "mode=memory" not in connection.settings_dict["NAME"]:
        with connection.cursor() as cursor:
            cursor.execute("PRAGMA journal_mode=WAL")
