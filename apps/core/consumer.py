"""The worker's message consumer: bad messages are dead-lettered, never acked away, never executed.

Stock Celery rejects (requeue=False, so our queues dead-letter them) unknown task names, messages
without Celery headers and disallowed content types such as pickle, but it *acks* a body it cannot
decode, and it hands a body of any size to the pool. ``PlatformConsumer`` dead-letters both, and adds
the step that declares the rest of the topology (dead letters, delayed delivery for direct exchanges).
"""
from __future__ import annotations

from celery import bootsteps
from celery.utils.log import get_logger
from celery.worker.consumer import Consumer, Tasks
from celery.worker.consumer.events import Events
from django.conf import settings

from apps.core import compat
from apps.core.broker import declare_dead_letter_queues
from apps.core.delays import ensure_delay_topology
from apps.core.green_stacks import log_green_stacks_on_sigusr1  # noqa: F401 - connects worker_ready
from apps.core.probes import ProbeFiles
from apps.core.shutdown import own_the_soft_shutdown_on_eventlet  # noqa: F401 - connects worker_ready
from apps.core.tasks import running_on_eventlet

logger = get_logger(__name__)


class DeclareTopology(bootsteps.StartStopStep):
    """At worker start: dead-letter queues for every lane, delay levels, consumed queues bound to them.

    Uses the consumer's own connection: opening and closing a second connection here left the eventlet
    worker deaf to new deliveries (observed with eventlet 0.41 / py-amqp 5.4).
    """

    requires = (Tasks,)

    def start(self, c: Consumer) -> None:
        declare_dead_letter_queues(c.connection)
        ensure_delay_topology(c.connection, list(c.app.amqp.queues.consume_from.values()))


# How often a worker sends the task events it buffered (received, started, succeeded, progress).
EVENT_FLUSH_SECONDS = 0.1


class EventBatching(bootsteps.StartStopStep):
    """Send task events in batches on both pools, every EVENT_FLUSH_SECONDS or when 50 are waiting.

    * eventlet: Celery does not buffer task events at all on green pools (its own comment: "XXX This
      excludes eventlet/gevent, which should actually buffer"): three messages per task (received,
      started, succeeded) were 39% of the io worker's time in the profile (docs/benchmarks.md).
    * prefork: Celery buffers, but flushes at every turn of its event loop, so at high rates it still
      publishes a message per event or two: 28% of the worker's main process in the profile.

    Batches go out as ``task.multi`` messages, which every event receiver reads (the ledger recorder, the
    live feed, Flower). Events stay at most EVENT_FLUSH_SECONDS behind, and are flushed before Celery
    closes the dispatcher (this step stops before the Events step it requires).
    """

    requires = (Events,)
    _flusher = None
    _timer = None

    def start(self, c: Consumer) -> None:
        dispatcher = c.event_dispatcher
        if dispatcher is None or not dispatcher.enabled:
            return
        dispatcher.buffer_group = frozenset({"task"})
        dispatcher.buffer_limit = 50
        if c.hub is not None:  # prefork: a timer in Celery's own event loop instead of a flush per turn
            dispatcher.on_send_buffered = None
            self._timer = c.hub.call_repeatedly(EVENT_FLUSH_SECONDS, _flush, dispatcher)
        elif running_on_eventlet():
            import eventlet

            self._flusher = eventlet.spawn(self._flush_every, dispatcher)

    @staticmethod
    def _flush_every(dispatcher) -> None:
        import eventlet

        while True:
            eventlet.sleep(EVENT_FLUSH_SECONDS)
            _flush(dispatcher)

    def stop(self, c: Consumer) -> None:
        if self._flusher is not None:
            self._flusher.kill()
            self._flusher = None
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if c.event_dispatcher is not None:
            _flush(c.event_dispatcher)  # offline, the batch moves to the dispatcher's outbound buffer

    shutdown = stop


def _flush(dispatcher) -> None:
    try:
        dispatcher.flush(errors=True, groups=True)
    except Exception:  # noqa: BLE001 - monitoring must never stop the worker
        logger.debug("event flush failed", exc_info=True)


def share_backend_between_green_threads(app) -> None:
    """One result backend per worker process on eventlet, not one per task.

    Celery keeps ``app.backend`` per thread; eventlet makes that per green thread, and the pool runs every
    task in a new green thread, so each task built a new backend (16% of the io worker's time in the
    profile). Celery's ``result_backend_thread_safe`` shares one instance instead: the database backend
    holds no connection of its own (Django's connections stay per green thread), so one serves them all.
    Set here, on eventlet only, before a task builds its backend.
    """
    if running_on_eventlet():
        app.conf.result_backend_thread_safe = True


CELERY_DELAYED_DELIVERY_STEP = "celery.worker.consumer.delayed_delivery:DelayedDelivery"


class PlatformConsumer(Consumer):
    holding = False  # set at SIGTERM on eventlet: deliveries stay unstarted (apps/core/shutdown.py)

    class Blueprint(Consumer.Blueprint):
        # Celery's native-delayed-delivery step is left out: DeclareTopology does its work on the consumer's
        # own connection (and Celery's binds nothing on direct exchanges). Celery's step treats every node of
        # a cluster's URL list as a separate broker and retries each (sleeping 1 + 3 + 5 s) before the
        # consumer starts: with one node down, every reconnect stalled consumption 19.6 s (measured, kill -9
        # of a node of the 3-node cluster; tests/cluster). tests/core/test_cluster_consumer.py fails when
        # an upgrade renames the step.
        default_steps = [step for step in Consumer.Blueprint.default_steps if step != CELERY_DELAYED_DELIVERY_STEP]

    def __init__(self, *args, app=None, worker_options=None, **kwargs):
        # Celery's Mingle and Gossip steps each declare a new transient queue before the consumer runs (Mingle
        # then waits for the other workers' answers). On a cluster a new queue's declare waits, while a node
        # is cut off, until net_ticktime declares that node down: after a failover the consumer sat in
        # Mingle 13 s before taking a task (minority partition case, docs/reliability.md). The platform
        # needs neither: ApplyControlState (apps/control/worker.py) loads the cancelled task ids from the
        # database at every consumer start (what Mingle would ask the other workers for), and worker liveness
        # comes from heartbeat events to the recorder (Gossip only makes every worker read everyone's).
        # The same as the worker's --without-mingle --without-gossip, whatever the command line says.
        worker_options = {**(worker_options or {}), "without_mingle": True, "without_gossip": True}
        app.steps["consumer"].update({DeclareTopology, EventBatching, ProbeFiles})
        share_backend_between_green_threads(app)
        compat.drain_event_connection_without_waiting()  # green pools: 10 tasks/s without it (compat.py)
        super().__init__(*args, app=app, worker_options=worker_options, **kwargs)

    def on_ready(self):
        super().on_ready()
        self.probe_files.loop_started(self)  # both loops call on_ready once consuming (celery/worker/loops.py)

    def create_task_handler(self, *args, **kwargs):
        handle = super().create_task_handler(*args, **kwargs)
        max_bytes = settings.PLATFORM_MAX_MESSAGE_BYTES

        def on_task_received(message):
            if self.holding:
                return None  # unacked: RabbitMQ gives it back when this worker's connection closes
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
