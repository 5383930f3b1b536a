"""Monitoring events without publisher confirms.

``confirm_publish`` in the broker transport options applies to every channel of every connection,
including the ones events travel on:

* the worker's event dispatcher (heartbeats, task-received/started/succeeded): on the eventlet pool a
  confirm wait deadlocked the io worker (seen here with Celery 5.7 / py-amqp 5.4): the heartbeat green
  thread held the dispatcher's mutex while it waited for a confirm, and the main loop, about to announce
  a received task, waited for that mutex, so no task ran;
* the ``task-sent`` event every ``apply_async`` publishes on the task's own producer (Celery reuses it):
  a second confirm round trip per task, 18% of a single ``apply_async`` in the profile (docs/benchmarks.md).

Events are transient monitoring data, sent fire-and-forget on a channel without confirms; task
messages keep theirs.
"""
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from kombu import Producer


def _without_confirms(channel):
    # py-amqp turns confirms on per channel, by binding basic_publish to basic_publish_confirm on the
    # instance when the connection asks for them; dropping that binding restores the plain publish.
    channel.__dict__.pop("basic_publish", None)
    return channel


def event_producer(connection) -> Producer:
    """A producer on a confirm-less channel of ``connection``, kept on the connection (pooled connections
    are used by one holder at a time) and made again after a reconnect."""
    producer = getattr(connection, "_platform_event_producer", None)
    if producer is None or producer.channel.connection is not connection.connection:
        producer = Producer(_without_confirms(connection.channel()), auto_declare=False)
        connection._platform_event_producer = producer
    return producer


class UnconfirmedEventDispatcher(EventDispatcher):
    def __init__(self, connection=None, *args, **kwargs):
        if connection is not None:
            # For the connection as it is now, and for every reconnect kombu makes from these options.
            connection.transport_options = {**(connection.transport_options or {}), "confirm_publish": False}
            if connection.connected:
                connection.connection.confirm_publish = False
        super().__init__(connection, *args, **kwargs)

    def publish(self, type, fields, producer, *args, **kwargs):
        """Events published on a caller's producer (``task-sent``) go on a confirm-less channel beside it."""
        if producer is not None and (producer.connection.transport_options or {}).get("confirm_publish"):
            producer = event_producer(producer.connection)
        return super().publish(type, fields, producer, *args, **kwargs)


class PlatformEvents(Events):
    dispatcher_cls = "apps.core.events:UnconfirmedEventDispatcher"
