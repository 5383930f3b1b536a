"""Monitoring events without publisher confirms.

``confirm_publish`` in the broker transport options applies to every connection, including the one
the worker's event dispatcher uses for heartbeats and task events. On the eventlet pool that
deadlocked the io worker (seen here with Celery 5.7 / py-amqp 5.4): the heartbeat green thread held
the dispatcher's mutex while it waited for a confirm, and the main loop, about to announce a
received task, waited for that mutex, so no task ran. Events are transient monitoring data and
are sent fire-and-forget; task messages keep their confirms.
"""
from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher


class UnconfirmedEventDispatcher(EventDispatcher):
    def __init__(self, connection=None, *args, **kwargs):
        if connection is not None:
            # For the connection as it is now, and for every reconnect kombu makes from these options.
            connection.transport_options = {**(connection.transport_options or {}), "confirm_publish": False}
            if connection.connected:
                connection.connection.confirm_publish = False
        super().__init__(connection, *args, **kwargs)


class PlatformEvents(Events):
    dispatcher_cls = "apps.core.events:UnconfirmedEventDispatcher"
