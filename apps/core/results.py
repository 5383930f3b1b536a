"""The result backend: django-celery-results' database backend, retrying through database blips, with
chord parts counted once.

Stock behaviour: if the database connection dies, storing STARTED (before the task body runs) raises,
Celery reports an internal error and acks the message, and the task never runs: lost, with nothing
recorded (seen here when PostgreSQL connections were terminated under load). Here a database error in
a result write is retryable: the dead connection is dropped and Celery's backend retry
(result_backend_always_retry, exponential backoff, bounded) writes again on a fresh connection.

Chords: the stock backend decrements a counter each time a header part returns. Delivery is at least
once: a part whose worker was cut off from the broker after the task ran (a host partition, a node loss)
is redelivered and returns twice. The counter then reached zero with a part still running, the callback
was not triggered (its results were not ready), the counter row was deleted, and the chord never
completed (a dataset import stayed RUNNING until the watchdog failed it; seen in the cluster cases).
Here a part's return asks the question directly: are all the header's results ready? The callback is
triggered once, by the return that finds them all ready while holding the counter's row; the row's delete
makes every later return (a redelivery) a no-op.
"""
from celery import maybe_signature, states
from celery.result import GroupResult
from django import db
from django.db import router, transaction
from django_celery_results.backends import DatabaseBackend
from django_celery_results.backends.database import trigger_callback
from django_celery_results.models import ChordCounter, TaskResult


class PlatformDatabaseBackend(DatabaseBackend):
    def exception_safe_to_retry(self, exc):
        if isinstance(exc, (db.OperationalError, db.InterfaceError)):
            for connection in db.connections.all(initialized_only=True):
                connection.close()  # this thread's (green thread's) connection: the retry reconnects
            return True
        return super().exception_safe_to_retry(exc)

    def on_chord_part_return(self, request, state, result, **kwargs):
        group_id = request.group
        if not group_id or not request.id:
            return
        with transaction.atomic(using=router.db_for_write(ChordCounter)):
            counter = ChordCounter.objects.select_for_update().filter(group_id=group_id).first()
            if counter is None:  # the callback was triggered already: this is a redelivered part's return
                return
            header = counter.group_result(app=self.app)
            waiting = self._parts_not_ready(header)
            if waiting:
                if counter.count != waiting:
                    counter.count = waiting  # what the admin shows: parts still to return
                    counter.save(update_fields=["count"])
                return
            counter.delete()
        trigger_callback(app=self.app, callback=maybe_signature(request.chord, app=self.app), group_result=header)

    @staticmethod
    def _parts_not_ready(header: GroupResult) -> int:
        if any(isinstance(part, GroupResult) for part in header.results):  # nested groups: Celery walks them
            return sum(not part.ready() for part in header.results)
        ids = [part.id for part in header.results]
        ready = TaskResult.objects.filter(task_id__in=ids, status__in=states.READY_STATES).count()
        return len(ids) - ready
