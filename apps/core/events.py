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
import atexit
import logging
import os
import threading
import time

from celery.app.events import Events
from celery.events.dispatcher import EventDispatcher
from kombu import Producer

from apps.core import compat

logger = logging.getLogger(__name__)


def event_producer(connection) -> Producer:
    """A producer on a confirm-less channel of ``connection``, kept on the connection (pooled connections
    are used by one holder at a time) and made again after a reconnect."""
    live = connection.default_channel.connection  # reconnects a pooled connection kombu closed after an error
    producer = getattr(connection, "_platform_event_producer", None)
    if producer is None or producer.channel.connection is not live:
        producer = Producer(compat.channel_without_confirms(connection.channel()), auto_declare=False)
        connection._platform_event_producer = producer
    return producer


class UnconfirmedEventDispatcher(EventDispatcher):
    def __init__(self, connection=None, *args, **kwargs):
        if connection is not None:
            compat.connection_without_confirms(connection)  # as it is now, and at every reconnect
        super().__init__(connection, *args, **kwargs)

    def publish(self, type, fields, producer, *args, **kwargs):
        """Events published on a caller's producer (``task-sent``) go on a confirm-less channel beside it."""
        if producer is not None and (producer.connection.transport_options or {}).get("confirm_publish"):
            producer = event_producer(producer.connection)
        return super().publish(type, fields, producer, *args, **kwargs)


class PlatformEvents(Events):
    dispatcher_cls = "apps.core.events:UnconfirmedEventDispatcher"


class SentEventBuffer:
    """``task-sent`` events of single ``apply_async`` calls, published in the background as batches.

    Publishing one event cost about 130 us of client time per call here, more than everything else a
    templated call does besides the broker round trip (docs/benchmarks.md). The ledger and the live
    feed read ``task.multi`` batches, as the workers' EventBatching step and bulk enqueue send them. A
    daemon thread (green under eventlet) flushes every ``interval`` seconds and at exit. Events are
    monitoring data, sent without confirms like every event: if RabbitMQ is unreachable at flush time the
    batch is dropped with a warning, and at most ``max_events`` wait (beyond that, new ones are dropped,
    counted in ``dropped`` and logged at the next flush). The ledger still learns the task from its
    task-received event.
    """

    def __init__(self, interval: float = 0.1, max_events: int = 10_000):
        self.app = None
        self.interval = interval
        self.max_events = max_events
        self.events: list[dict] = []
        self.dropped = 0  # events refused because max_events were waiting (this process, ever)
        self._dropped_reported = 0
        self._thread_pid: int | None = None
        self._swap_lock = threading.Lock()  # held for a list swap only: callers never wait on the network
        self._flush_lock = threading.Lock()  # one flush at a time (the thread, or atexit)
        os.register_at_fork(after_in_child=self._forget_parent)

    def _forget_parent(self) -> None:
        """In a forked child: the parent's events and flush thread are the parent's."""
        self.events, self._thread_pid = [], None
        self.dropped = self._dropped_reported = 0
        self._swap_lock, self._flush_lock = threading.Lock(), threading.Lock()

    def add(self, app, fields: dict) -> None:
        self.app = app
        event = {**fields, "timestamp": time.time()}
        with self._swap_lock:
            if len(self.events) >= self.max_events:
                self.dropped += 1
                return
            self.events.append(event)
        if self._thread_pid != os.getpid():  # first event in this process (or in a forked child)
            self._start()

    def _start(self) -> None:
        with self._flush_lock:
            if self._thread_pid == os.getpid():
                return
            self._thread_pid = os.getpid()
            threading.Thread(target=self._run, name="platform-sent-events", daemon=True).start()
            atexit.register(self.flush)

    def _run(self) -> None:
        while True:
            time.sleep(self.interval)
            self.flush()

    def flush(self) -> None:
        if not self.events and self.dropped == self._dropped_reported:
            return
        with self._flush_lock:
            with self._swap_lock:
                batch, self.events = self.events, []
                dropped, self._dropped_reported = self.dropped - self._dropped_reported, self.dropped
            if dropped:  # the ledger learns those tasks from task-received; say that it had to
                logger.warning("dropped %d task-sent events: more than %d were waiting to be published",
                               dropped, self.max_events)
            if not batch:
                return
            try:
                dispatcher = compat.celery_event_dispatcher(self.app)
                prepared = [compat.prepare_task_sent_event(dispatcher, fields) for fields in batch]
                with self.app.pool.acquire(block=True, timeout=5) as connection:
                    compat.publish_task_sent_events(dispatcher, prepared, event_producer(connection))
            except Exception as exc:  # noqa: BLE001 - monitoring data; the publishing caller is long gone
                logger.warning("dropped %d task-sent events: %r", len(batch), exc)
