"""Worker side of the control plane: state that must survive worker restarts, and two remote commands.

``ApplyControlState`` is a consumer bootstep (added in AppConfig.ready) that runs each time the worker's
consumer starts, before it processes any message:
* queues paused in the database (PausedQueue) and consumed by this worker are cancelled again;
* tasks cancelled while queued are put in the worker's revoked set, so a worker started after the
  cancel still never runs them (Celery keeps revoked ids only in memory).
``control_pause_queue`` / ``control_resume_queue`` are broadcast to every worker; each acts only on
queues its start script gave it (-Q), so resuming ``mail`` never makes the prefork worker consume mail.
"""
from __future__ import annotations

import logging
from datetime import timedelta

from celery import bootsteps
from celery.worker.control import control_command, ok
from celery.worker.consumer.tasks import Tasks

from apps.control import states
from apps.control.models import PausedQueue, TaskRecord

logger = logging.getLogger(__name__)

_home_queues: set[str] | None = None  # the queues this worker was started with (-Q)
REVOKED_LOOKBACK = timedelta(days=7)


def home_queues(consumer) -> set[str]:
    global _home_queues
    if _home_queues is None:
        _home_queues = set(consumer.app.amqp.queues.consume_from)
    return _home_queues


def paused_queue_names() -> set[str]:
    return set(PausedQueue.objects.values_list("queue", flat=True))


def pending_cancellations() -> list[str]:
    from django.utils import timezone

    return list(TaskRecord.objects.filter(
        cancel_requested_at__gte=timezone.now() - REVOKED_LOOKBACK,
        state__in=[*states.ACTIVE, states.CANCELLED],
    ).values_list("task_id", flat=True)[:50_000])


class ApplyControlState(bootsteps.StartStopStep):
    requires = (Tasks,)

    def start(self, c) -> None:
        from celery.worker import state as worker_state
        from django.db import close_old_connections

        home = home_queues(c)
        try:
            close_old_connections()
            paused = paused_queue_names() & home
            cancelled = pending_cancellations()
        finally:
            close_old_connections()
        for queue in sorted(paused):
            c.cancel_task_queue(queue)
            logger.warning("Queue %s is paused (control plane): not consuming it", queue)
        worker_state.revoked.update(cancelled)
        if cancelled:
            logger.info("Loaded %d cancelled task ids into the revoked set", len(cancelled))


@control_command(args=[("queue", str)], signature="<queue>")
def control_pause_queue(state, queue):
    """Stop consuming ``queue`` if this worker consumes it (tasks already running finish)."""
    consumer = state.consumer
    if queue not in home_queues(consumer):
        return ok(f"not consuming {queue}")
    # Like Celery's own cancel_consumer: run it from the consumer's loop, not inside the pidbox handler
    # (on eventlet, touching the connection from here is a second reader on the socket).
    consumer.call_soon(consumer.cancel_task_queue, queue)
    return ok(f"paused {queue}")


@control_command(args=[("queue", str)], signature="<queue>")
def control_resume_queue(state, queue):
    consumer = state.consumer
    if queue not in home_queues(consumer):
        return ok(f"not consuming {queue}")
    consumer.call_soon(consumer.add_task_queue, queue)
    return ok(f"resumed {queue}")
