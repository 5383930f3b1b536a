"""The publishing side of the topology: every task message leaves through here.

``PlatformAMQP`` wraps Celery's task sender (the one choke point for apply_async, retries, canvas and
send_task) to add what Celery lacks:

* delayed delivery on direct exchanges: a message due later than MIN_DELAY_SECONDS is published to the
  delay levels (apps/core/delays.py) instead of to a worker that would hold it unacked until due;
* a clear ``QueueFull`` error when RabbitMQ refuses a message because its queue is at its bound;
* a message-size guard: the body is serialized once, when the message is built, and a body over
  ``PLATFORM_MAX_MESSAGE_BYTES`` raises ``MessageTooLarge`` to the caller instead of being published;
* confirmed batches: inside ``apps.core.bulk.confirmed_batch`` every task message of the thread (from
  apply_async, a group, a chord's header...) goes on the batch's channel, and its publisher confirm is
  awaited with all the others when the batch ends instead of one round trip per message.
"""
from __future__ import annotations

import threading

import kombu.exceptions
from amqp.exceptions import MessageNacked
from celery.app.amqp import AMQP
from django.conf import settings
from kombu.serialization import dumps

from apps.core import compat, delays
from apps.core.cluster import ClusterConnection
from project.topology import DELAY_ENTRY_EXCHANGE, LANES_BY_NAME


class MessageTooLarge(ValueError):
    """A task message is larger than the platform accepts; pass ids or paths, not data."""


def check_message_size(name: str, body: bytes) -> None:
    """Refuse a serialized task body over ``PLATFORM_MAX_MESSAGE_BYTES`` before it is published."""
    max_bytes = settings.PLATFORM_MAX_MESSAGE_BYTES
    if len(body) > max_bytes:
        raise MessageTooLarge(
            f"task {name} message is {len(body)} bytes, over the limit of {max_bytes} bytes "
            "(PLATFORM_MAX_MESSAGE_BYTES): pass ids or file paths, not data"
        )


class QueueFull(kombu.exceptions.OperationalError):
    """RabbitMQ refused the message: its queue is at its bound (x-max-length, reject-publish).

    Nothing was enqueued. Callers retry later (the HTTP API answers 429 with Retry-After).
    """

    retry_after_seconds = 30


_publishing = threading.local()  # green-local under eventlet: one batch per green thread


def active_batch():
    """The ``apps.core.bulk.ConfirmedBatch`` task messages of this thread go into, if any."""
    return getattr(_publishing, "batch", None)


def queue_full_error(exc: Exception, name: str, task_id: str | None, queue: str | None) -> QueueFull | None:
    """The ``QueueFull`` to raise for ``exc`` when it is RabbitMQ's nack of a publish, else None."""
    # kombu re-raises the broker's nack as an OperationalError with an empty message.
    if not isinstance(exc, MessageNacked) and not isinstance(exc.__cause__ or exc.__context__, MessageNacked):
        return None
    lane = LANES_BY_NAME.get(queue)
    bound = f" (bound: {lane.max_length} messages)" if lane else ""
    # A quorum queue without a running leader (election, node restart) nacks too: same answer, retry later.
    return QueueFull(f"RabbitMQ refused task {name}[{task_id}]: queue {queue} is full{bound} or has no leader "
                     "right now; nothing was enqueued, retry later")


def take_recorder():
    """The template recorder apps/core/single.py or bulk.py left for this thread's next task message (once)."""
    recorder = getattr(_publishing, "recorder", None)
    if recorder is not None:
        _publishing.recorder = None
    return recorder


def set_recorder(recorder) -> None:
    _publishing.recorder = recorder


def set_active_batch(batch):
    """Make ``batch`` the active one for this thread; returns the one it replaces."""
    previous = active_batch()
    _publishing.batch = batch
    return previous


compat.drop_celerys_direct_exchange_warning()  # PlatformAMQP sends those through the delay levels


class PlatformAMQP(compat.TaskSenderHook, AMQP):
    # Every connection Celery opens (connection_for_write/read, the connection and producer pools) is one:
    # on a node list it fails over without declaring its queues again, without the closing handshake with the
    # node it leaves, and past nodes found unreachable just now (apps/core/compat.py, with the measurements).
    Connection = ClusterConnection

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        compat.derivation_enabled()  # decided when the process starts publishing; warns then if it is off

    def as_task_v2(self, task_id, name, *args, **kwargs):
        """Build the message, serialize its body once, and refuse it if too large.

        This runs before Celery takes a connection from its pool: an exception raised while a pooled
        connection is held leaves a closed connection in the pool (kombu 5.7), breaking later publishes.
        """
        message = super().as_task_v2(task_id, name, *args, **kwargs)
        content_type, content_encoding, data = dumps(message.body, self.app.conf.task_serializer)
        check_message_size(name, data)
        message.properties.update(content_type=content_type, content_encoding=content_encoding)
        return message._replace(body=data)

    def wrap_task_sender(self, send):
        """Wrap Celery's task sender (apps/core/compat.py: ``TaskSenderHook``)."""
        queues = self.queues
        # kombu reads no "confirm_timeout" transport option: only a per-publish argument bounds the wait
        # for a confirm. Without it, a publisher whose node was cut off (no RST, e.g. a network partition)
        # waited for the confirm until the partition healed (60 s in tests/cluster; celery#5906).
        confirm_timeout = self.app.conf.broker_transport_options.get("confirm_timeout")

        def send_task_message(producer, name, message, exchange=None, routing_key=None, queue=None, **kwargs):
            headers = message.headers
            batch = active_batch()
            if confirm_timeout and batch is None:  # a batch waits for its confirms itself, with its own bound
                kwargs.setdefault("confirm_timeout", confirm_timeout)
            if batch is not None:  # inside apps.core.bulk.confirmed_batch: confirmed together at its end
                producer = batch.producer
                kwargs["event_dispatcher"] = batch.sent_events
                if kwargs.get("declare") is None and getattr(queue, "name", queue) in batch.declared:
                    kwargs["declare"] = []  # the batch declared the topology's queues once
            eta = headers.get("eta")
            delay = delays.seconds_until(eta) if eta else 0
            if delay >= delays.MIN_DELAY_SECONDS:
                destination = queues[queue] if isinstance(queue, str) else queue
                target_key = delays.strip_delay_prefix(routing_key or destination.routing_key)
                delays.ensure_delay_topology(producer.connection, [destination] if destination else [])
                exchange, routing_key = DELAY_ENTRY_EXCHANGE, delays.delay_routing_key(delay, target_key)
                kwargs["exchange_type"] = "topic"
                kwargs["declare"] = []  # the delay levels are declared above; nothing else to declare

            recorder = take_recorder()  # apps/core/single.py, bulk.py: keep this call's message as a template
            try:
                if recorder is not None and delay < delays.MIN_DELAY_SECONDS:
                    sent = recorder(send, producer, name, message, exchange=exchange, routing_key=routing_key,
                                    queue=queue, **kwargs)
                else:
                    sent = send(producer, name, message, exchange=exchange, routing_key=routing_key, queue=queue,
                                **kwargs)
                if batch is not None:
                    batch.track_task(headers["id"])
                return sent
            except (MessageNacked, kombu.exceptions.OperationalError) as exc:
                full = queue_full_error(exc, name, headers.get("id"), queue.name if hasattr(queue, "name") else
                                        queue or routing_key)
                if full is None:
                    raise
                raise full from exc

        return send_task_message
