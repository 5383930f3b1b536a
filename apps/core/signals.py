"""Database housekeeping: tuning applied once after migrate, connection lifetimes around tasks."""
from celery.signals import task_postrun, task_prerun
from django.conf import settings
from django.db import close_old_connections, connections
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


@task_prerun.connect
@task_postrun.connect
def close_old_database_connections(**kwargs):
    """Close a task's database connections by Django's own rules (CONN_MAX_AGE, health checks), as Django
    does around a web request. Celery would close them unconditionally around every task; where
    connections persist (the prefork lane) it is told to do so only every CELERY_DB_REUSE_MAX tasks, and
    this keeps a broken connection (database restarted) from reaching the next task. Elsewhere (eventlet's
    pooled connections, CONN_MAX_AGE 0) Celery's own close already does the job."""
    if settings.DATABASES["default"]["CONN_MAX_AGE"]:
        close_old_connections()
