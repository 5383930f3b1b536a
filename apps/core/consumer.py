"""The worker's message consumer: bad messages are dead-lettered, never acked away, never executed.

Stock Celery rejects (requeue=False, so our queues dead-letter them) unknown task names, messages
without Celery headers and disallowed content types such as pickle, but it *acks* a body it cannot
decode, and it hands a body of any size to the pool. ``PlatformConsumer`` dead-letters both, and adds
the step that declares the rest of the topology (dead letters, delayed delivery for direct exchanges).
"""
from __future__ import annotations

import logging


from celery import bootsteps
from celery.utils.log import get_logger
from celery.worker import loops
from celery.worker.consumer import Consumer, Tasks
from django.conf import settings

from apps.core.broker import declare_dead_letter_queues
from apps.core.delays import ensure_delay_topology

logger = get_logger(__name__)


class _DropDirectExchangeWarning(logging.Filter):
    """Celery's own delayed-delivery step warns that direct exchanges "will block the worker";
    DeclareTopology below binds them, so the warning is wrong here."""

    def filter(self, record: logging.LogRecord) -> bool:
        return "is a direct exchange" not in record.getMessage()


logging.getLogger("kombu.transport.native_delayed_delivery").addFilter(_DropDirectExchangeWarning())

# Celery 5.7's loop for green pools (synloop) drains the event dispatcher's connection after every
# consumer frame "so broker heartbeats are consumed", waiting up to 0.1 s each time. That capped the
# eventlet worker at about one task per 0.1 s (measured here: 10 tasks/s with 2,000 waiting). A
# zero-timeout drain still consumes whatever heartbeat frames are there, without waiting for one.
# This module is imported only by workers (worker_consumer), never by the web process.
_celery_quick_drain = loops._quick_drain


def _quick_drain_without_waiting(connection, timeout=0):
    return _celery_quick_drain(connection, timeout=0)


loops._quick_drain = _quick_drain_without_waiting


class DeclareTopology(bootsteps.StartStopStep):
    """At worker start: dead-letter queues for every lane, delay levels, consumed queues bound to them.

    Uses the consumer's own connection: opening and closing a second connection here left the eventlet
    worker deaf to new deliveries (observed with eventlet 0.41 / py-amqp 5.4).
    """

    requires = (Tasks,)

    def start(self, c: Consumer) -> None:
        declare_dead_letter_queues(c.connection)
        ensure_delay_topology(c.connection, list(c.app.amqp.queues.consume_from.values()))


class PlatformConsumer(Consumer):
    def __init__(self, *args, app=None, **kwargs):
        app.steps["consumer"].add(DeclareTopology)
        super().__init__(*args, app=app, **kwargs)

    def create_task_handler(self, *args, **kwargs):
        handle = super().create_task_handler(*args, **kwargs)
        max_bytes = settings.PLATFORM_MAX_MESSAGE_BYTES

        def on_task_received(message):
            if len(message.body) > max_bytes:
                logger.error(
                    "Rejected a %d-byte message (limit %d, PLATFORM_MAX_MESSAGE_BYTES) for task %r: "
                    "dead-lettered, not executed",
                    len(message.body), max_bytes, (message.headers or {}).get("task"),
                )
                message.reject_log_error(logger, self.connection_errors)
                return None
            return handle(message)

        return on_task_received

    def on_decode_error(self, message, exc):
        logger.error(
            "Rejected a message that cannot be decoded (%s; content-type %r, encoding %r, headers %r): "
            "dead-lettered, not executed",
            exc, message.content_type, message.content_encoding, message.headers, exc_info=True,
        )
        message.reject_log_error(logger, self.connection_errors)
