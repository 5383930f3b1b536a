"""The result backend: django-celery-results' database backend, retrying through database blips.

Stock behaviour: if the database connection dies, storing STARTED (before the task body runs) raises,
Celery reports an internal error and acks the message, and the task never runs: lost, with nothing
recorded (seen here when PostgreSQL connections were terminated under load). Here a database error in
a result write is retryable: the dead connection is dropped and Celery's backend retry
(result_backend_always_retry, exponential backoff, bounded) writes again on a fresh connection.
"""
from django import db
from django_celery_results.backends import DatabaseBackend


class PlatformDatabaseBackend(DatabaseBackend):
    def exception_safe_to_retry(self, exc):
        if isinstance(exc, (db.OperationalError, db.InterfaceError)):
            for connection in db.connections.all(initialized_only=True):
                connection.close()  # this thread's (green thread's) connection: the retry reconnects
            return True
        return super().exception_safe_to_retry(exc)
