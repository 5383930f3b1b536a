"""The one place the platform reaches inside Celery, kombu or py-amqp (CONVENTIONS: "compatibility module").
Each entry says what it fixes, the measurement behind it, and which test breaks when an upgrade moves what
it relies on (tests/core/test_compat.py).

The first three entries are about failover of a connection whose URL list names several nodes of one RabbitMQ cluster
(``CELERY_BROKER_URL="amqp://a;amqp://b;amqp://c"``), measured in the minority-partition case
(tests/cluster/test_node_faults.py: the node leading the queues is cut off, no RST). Before them the
publisher's stall there was 22.5-24 s: 1.3 s until py-amqp's TCP_USER_TIMEOUT failed the publish on the cut
node, then 14.1 s in a ``queue.declare`` on the next node, then a nack or confirm timeout there, then the
third node. A single-URL connection keeps kombu's behaviour in those three.

1. ``KeptDeclarations``: a failover keeps what the connection declared.
   kombu caches the entities (exchange, queue, binding) a connection declared in
   ``Connection.declared_entities`` and empties that set whenever the connection closes, switches to the
   next URL (``switch``), is collected or reconnects (``_connection_factory``), so the first publish after
   a failover declares its queue again. On the next node of the same cluster the queue exists already, and
   during a partition that declare blocks until the node's net_ticktime declares the cut node down (14.1 s
   in the case; 17.7 s in a bare kombu probe, while a publish without it was confirmed after 6.6 s).
   Durable queues, exchanges and bindings are cluster-wide definitions that survive node failures: the
   platform topology's entries are kept (``clear`` forgets only the others; transient ones such as
   ``celery.pidbox`` are gone after a restart of the nodes and must be declared again).

2. ``FailoverConnection.maybe_switch_next``: leave a node without the closing handshake.
   kombu's ``switch`` closes the old connection politely: ``Channel.Close`` then ``Connection.Close``, each
   waiting for its ``-Ok``. A node that just let a confirm time out is the node that does not answer: that
   wait took 6.4 s in the case (after a 10 s confirm timeout on the node whose queue leader was cut off).
   The socket is dropped instead (``collect``, what kombu does after a fork); RabbitMQ closes the channel
   and connection when it sees the socket go. Nothing is lost: an unconfirmed message is published again
   on the next node by kombu's retry, as before (task bodies are keyed: a copy is a guarded re-run).

3. ``FailoverConnection.maybe_switch_next``: the next node is one not found unreachable just now.
   kombu's round-robin cycle goes back to the first node after the last one, whatever happened to it. In
   the case, after the surviving nodes had answered with a confirm timeout (10 s) and a nack (5.5 s), the
   cycle came back to the cut node and spent the 4 s connect timeout on it (20.8 s in all). A node whose
   connection failed at the socket level (a connect that failed, a socket error on an open connection:
   not a confirm timeout or a nack, which say the node answers) is skipped by every connection of the
   process for UNREACHABLE_SECONDS, unless every node is; a connection that (re)connects while its own
   node is marked moves on first (``_connection_factory``): after the heal in the case, pooled connections
   still on the cut node each spent the connect timeout there and raised it to the caller (2 publishes).
   A connect that fails at the socket level inside ``_connection_factory`` marks its node and tries the next
   one there: kombu gives a first connect a retry budget of the connect timeout, so a timed-out connect was
   raised without trying another node, and each new pooled connection (one per publish after an error)
   started on the cut node again: 4 s and an error for each of five publishes in a row (partition case).

4. ``FailoverConnection.recoverable_connection_errors``: a nack is an answer, not a broken connection.
   py-amqp lists ``MessageNacked`` among its recoverable *connection* errors, so kombu's ``ensure`` (Celery's
   publish retry policy, and the fallback of apps/core/single.py) closed the connection, reconnected and
   published the refused message again, up to ``max_retries`` (3) times: one refused publish cost 4
   publishes and 3 connects (7.7 ms CPU and 17.8 ms wall against 2.3 ms for an accepted one, measured in
   bench/http_load.py --backpressure; ~200 HTTP 429 answers/s, p99 0.8-1.1 s). RabbitMQ's nack is its
   answer about that message (the queue is at its bound, or has no leader right now) on a channel that
   stays open: the platform raises it at once as ``QueueFull``. Applies to single-node connections too.
   The cost: a quorum queue electing a leader (kill -9 of its node) nacks promptly for about a second, and
   those publishes, which the retries over new connections used to get through, are now refused to the
   caller (15 in one cluster pass, 4-6 before; HTTP 429 with Retry-After). The pooled connection is still
   replaced after a nack (kombu does so for any exception in its block): keeping it also kept a channel
   whose quorum-queue client pointed at a killed leader, and it nacked one lane for the rest of the case.

kombu names relied on: ``Connection.recoverable_connection_errors`` (read by ``ensure`` and
``_reraise_as_library_errors``), ``Queue.__hash__``/``Exchange.__hash__`` as the cache keys, ``Connection.declared_entities`` (a set the instance owns), ``Connection.alt``,
``Connection.maybe_switch_next`` (called inside the ``except`` of ``ensure`` and ``_ensure_connection``),
``collect``, ``_connection``, ``_connection_factory``, ``cycle``, ``ConnectionPool.new`` building
``PooledConnection(pool, **connection._info())``.
"""
from __future__ import annotations

import importlib.metadata
import logging
import sys
import threading
import time
from contextlib import contextmanager

from amqp.exceptions import MessageNacked
from celery.app.routes import MapRoute
from celery.backends.base import Backend
from celery.utils.functional import maybe_evaluate
from kombu import Producer
from kombu.connection import ConnectionPool, PooledConnection
from kombu.entity import maybe_delivery_mode
from kombu.utils.url import parse_url

UNREACHABLE_SECONDS = 30.0  # three worker heartbeats: a partition the suite holds lasts that long
_unreachable: dict[tuple, float] = {}  # (host, port) -> monotonic time until which failovers skip it
_lock = threading.Lock()


def _node(url_or_connection) -> tuple:
    if isinstance(url_or_connection, str):
        parts = parse_url(url_or_connection)
        return parts.get("hostname"), parts.get("port")
    return url_or_connection.hostname, url_or_connection.port


def _failed_at_socket_level(connection) -> bool:
    """Whether the error being handled (kombu calls maybe_switch_next inside its ``except``) says the node
    cannot be reached: a connect that failed, or a socket error on an open connection. A confirm timeout
    (a TimeoutError without errno on an open connection) or a nack says the node answers."""
    exc = sys.exc_info()[1]
    if exc is None:
        return False
    if connection._connection is None:  # the connect itself failed
        return True
    return isinstance(exc, OSError) and (exc.errno is not None or "closed connection" in str(exc))


def mark_unreachable(node: tuple) -> None:
    with _lock:
        _unreachable[node] = time.monotonic() + UNREACHABLE_SECONDS


def is_unreachable(node: tuple) -> bool:
    with _lock:
        until = _unreachable.get(node)
        return until is not None and until > time.monotonic()


_DURABLE: frozenset | None = None


def _durable_topology() -> frozenset:
    """kombu's cache keys of the platform's work and dead-letter queues and their exchanges: durable
    definitions, which a cluster keeps across node failures and restarts."""
    global _DURABLE
    if _DURABLE is None:
        from project import topology

        entities = set()
        for queue in (*topology.work_queues(), *topology.dead_letter_queues()):
            if queue.durable and not queue.auto_delete and not queue.exclusive:
                entities.add(hash(queue))
                if queue.exchange is not None and queue.exchange.durable and not queue.exchange.auto_delete:
                    entities.add(hash(queue.exchange))
        _DURABLE = frozenset(entities)
    return _DURABLE


class KeptDeclarations(set):
    """``Connection.declared_entities`` for a failover list: kombu's ``clear()`` calls (on switch,
    close, collect, reconnect) keep the declarations of the platform's durable topology and forget the
    rest; ``forget()`` empties it.

    Only the durable topology: a transient entity (Celery's ``celery.pidbox`` fanout exchange, reply
    queues) does not survive a restart of the nodes, and must be declared again after one. Keeping every
    declaration made the workers publish to a vanished ``celery.pidbox`` after the majority-loss case
    (404 NOT_FOUND, both host workers exited)."""

    def clear(self) -> None:  # kombu calls it on every reconnect
        kept = self & _durable_topology()
        super().clear()
        self.update(kept)

    def forget(self) -> None:
        super().clear()


def is_failover_list(connection) -> bool:
    return len(connection.alt or ()) > 1


class FailoverConnection:
    """Mixin for kombu Connection classes: the failover behaviours above (entries 1-3) on a node list only;
    entry 4 on every connection."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if is_failover_list(self):
            self.declared_entities = KeptDeclarations(self.declared_entities)

    @property
    def recoverable_connection_errors(self):
        # Entry 4 above: a nack is raised at once, never retried over a new connection.
        return tuple(error for error in super().recoverable_connection_errors if not issubclass(error, MessageNacked))

    def maybe_switch_next(self):
        if not (self.cycle and is_failover_list(self)):
            return super().maybe_switch_next()
        if _failed_at_socket_level(self):
            mark_unreachable(_node(self))
        if self._connection is not None:
            self.collect()  # drop the socket: no Close/Close-Ok round trips with a node that stopped answering
        self.switch(self._next_url(fallback_to_next=True))

    def _connection_factory(self):
        # A connection that starts (a new pooled one starts on the first URL) or reconnects on a node another
        # connection of this process just found unreachable goes to the next reachable one instead: the
        # connect timeout (4 s) is not spent again, and kombu would raise that first failure to the caller.
        if not (self.cycle and is_failover_list(self)):
            return super()._connection_factory()
        if is_unreachable(_node(self)):
            url = self._next_url(fallback_to_next=False)
            if url is not None:
                self.switch(url)
        while True:
            try:
                return super()._connection_factory()
            except OSError:
                # A connect that failed at the socket level (refused, or no answer within the connect
                # timeout) marks its node and moves on to the next one not marked, here: kombu's own retry
                # budget for a first connect is the connect timeout, so a timed-out connect was raised to
                # the caller without trying another node, and the next new pooled connection started on
                # the same node (a publish failed after 4 s, five times in a row, in the partition case).
                mark_unreachable(_node(self))
                url = self._next_url(fallback_to_next=False)
                if url is None:  # every node failed just now: the error is the answer
                    raise
                self.switch(url)

    def _next_url(self, fallback_to_next: bool):
        """The next URL of the cycle whose node was not found unreachable just now; when every node was:
        the next one (``fallback_to_next``, after a full turn of the cycle) or None."""
        for _ in range(len(self.alt)):
            url = next(self.cycle)
            if not is_unreachable(_node(url)):
                return url
        return next(self.cycle) if fallback_to_next else None

    def Pool(self, limit=None, **kwargs):  # noqa: N802 - kombu's name
        return FailoverConnectionPool(self, limit=limit, **kwargs)


class FailoverPooledConnection(FailoverConnection, PooledConnection):
    """What the pool hands out: kombu's PooledConnection (closes itself on an exception in its block)."""


class FailoverConnectionPool(ConnectionPool):
    """kombu's ``ConnectionPool.new`` builds ``PooledConnection`` from the source's ``_info()``, not with the
    source's class (kombu 5.7), so a subclass's behaviour would stop at the pool Celery publishes through."""

    def new(self):
        return FailoverPooledConnection(self, **dict(self.connection._info(resolve=False)))


# --- Worker and events: the green worker loop, task events without confirms, delay routing keys, a log filter,
# Celery's pydantic marker ---
#
# Tests: tests/core/test_compat.py, from test_the_celery_names_the_worker_and_events_rely_on_are_where_they_were.


def drain_event_connection_without_waiting() -> None:
    """Make Celery's green-pool loop (``celery.worker.loops.synloop``) drain the event dispatcher's connection
    without waiting.

    synloop calls ``loops._quick_drain(connection)`` after every consumer frame "so broker heartbeats are
    consumed", and that waits up to 0.1 s each time: it capped the eventlet worker at about one task per
    0.1 s (measured: 10 tasks/s with 2,000 waiting). A zero-timeout drain still consumes the heartbeat frames
    that are there, without waiting for one. The replacement is module-wide (synloop looks the name up at
    each call), so only the worker applies it (PlatformConsumer, never imported by the web process); applying
    it again changes nothing. asynloop (prefork) calls it once after the first ``consume``: zero there too.
    """
    from celery.worker import loops

    if getattr(loops._quick_drain, "platform_without_waiting", False):
        return
    celery_quick_drain = loops._quick_drain

    def quick_drain_without_waiting(connection, timeout=0):
        return celery_quick_drain(connection, timeout=0)

    quick_drain_without_waiting.platform_without_waiting = True
    loops._quick_drain = quick_drain_without_waiting


def channel_without_confirms(channel):
    """A py-amqp channel of a connection with ``confirm_publish`` that publishes without waiting for confirms.

    py-amqp turns confirms on per channel by binding ``basic_publish`` to ``basic_publish_confirm`` on the
    instance (``Channel.__init__``) when its connection asks for them; dropping that binding restores the
    plain publish. Events use it (apps/core/events.py): a confirm wait on the event channel deadlocked the
    io worker on eventlet, and the task-sent confirm cost 18% of an ``apply_async``.
    """
    channel.__dict__.pop("basic_publish", None)
    return channel


def connection_without_confirms(connection) -> None:
    """Every channel ``connection`` opens from now on, and after each reconnect, publishes without confirms.

    kombu builds each py-amqp connection from ``transport_options`` (``confirm_publish`` among them), and
    py-amqp reads its connection's ``confirm_publish`` when a channel opens: both are set, so the event
    dispatcher's channel never waits for a confirm (the eventlet deadlock above: the heartbeat green thread
    held the dispatcher's mutex while waiting for a confirm, and the loop waited for that mutex).
    """
    connection.transport_options = {**(connection.transport_options or {}), "confirm_publish": False}
    if connection.connected:
        connection.connection.confirm_publish = False


def celery_event_dispatcher(app):
    """Celery's own dispatcher for ``task-sent`` events (``app.amqp._event_dispatcher``, disabled: it only
    prepares events, each caller publishes on its own producer). The platform batches task-sent events
    (apps/core/events.py SentEventBuffer, one event cost ~130 us per apply_async) with the hostname, pid and
    logical clock Celery's own events carry."""
    return app.amqp._event_dispatcher


def prepare_event(dispatcher, type: str, fields: dict) -> dict:
    """The event ``dispatcher.send`` would publish (hostname, pid, clock, utcoffset; ``fields``' timestamp
    kept), for a batch: Celery's ``EventDispatcher._prepare_event``."""
    return dispatcher._prepare_event(type, fields)


def publish_event_batch(dispatcher, events: list[dict], producer, routing_key: str = "task.multi") -> None:
    """Publish ``events`` as one message (``task.multi``, what every event receiver reads as a batch) on
    ``producer``, the way the dispatcher flushes its own buffer: Celery's ``EventDispatcher._publish``.

    A failed publish raises. With Celery's default ``buffer_while_offline`` the batch went to the
    dispatcher's ``_outbound_buffer`` instead, which this disabled dispatcher never flushes: events kept in
    memory without bound, and the caller's "dropped N task-sent events" warning never logged."""
    dispatcher.buffer_while_offline = False  # this dispatcher only prepares and publishes batches
    dispatcher._publish(events, producer, routing_key)


def strip_delay_prefix(routing_key: str) -> str:
    """``routing_key`` without the delay-level prefix kombu's ``calculate_routing_key`` puts before it
    (``1.0.1...0.<key>``): a retried message carries its previous delivery's prefix. kombu's own pattern
    (``native_delayed_delivery._delay_prefix_re``), so the two stay in step on its number of levels."""
    from kombu.transport.native_delayed_delivery import _delay_prefix_re

    return _delay_prefix_re.sub("", routing_key, count=1)


CELERY_DIRECT_EXCHANGE_WARNING = "Direct exchanges are not supported with native delayed delivery"


class DropDirectExchangeWarning(logging.Filter):
    """Celery's ``send_task`` warns, on every delayed publish to a direct exchange when quorum queues are
    used, that the task "may block the worker process until the ETA arrives". PlatformAMQP publishes those
    through the delay levels (apps/core/delays.py), so the warning is wrong here. Celery has no setting for
    it: the record is matched by its text, which the compat test finds in ``Celery.send_task``."""

    def filter(self, record: logging.LogRecord) -> bool:
        return CELERY_DIRECT_EXCHANGE_WARNING not in record.getMessage()


def drop_celerys_direct_exchange_warning() -> None:
    """Install DropDirectExchangeWarning on Celery's logger (once)."""
    celery_logger = logging.getLogger("celery.app.base")
    if not any(isinstance(f, DropDirectExchangeWarning) for f in celery_logger.filters):
        celery_logger.addFilter(DropDirectExchangeWarning())


# --- Publishing: message derivation (apps/core/single.py, apps/core/bulk.py) and the task sender (apps/core/amqp.py) ---
#
# Single plain calls and ``enqueue_many`` copy a message Celery built instead of having Celery build each one
# (about 194 us of client CPU per call here, 0.48x -> 0.80x of a raw confirmed publish; bulk 2,633 -> 4,954
# messages/s: docs/benchmarks.md). That copy is proven equal to Celery's own message only on the versions
# tests/core/test_golden_messages.py ran on, pinned below (requirements/base.txt must pin the same:
# tests/core/test_compat.py). On any other installed version every task message goes through Celery's own
# path, with one warning when the process starts publishing (PlatformAMQP is built).
# The names below are what the derivation and the platform's task sender reach for inside Celery, kombu and
# py-amqp; tests/core/test_compat.py checks each one, so that an upgrade that moves one fails there.

_publish_logger = logging.getLogger("apps.core.compat")

DERIVATION_TESTED_ON = {"celery": "5.7.0", "kombu": "5.7.0", "amqp": "5.4.2"}


def installed_versions() -> dict[str, str]:
    return {name: importlib.metadata.version(name) for name in DERIVATION_TESTED_ON}


_derivation: bool | None = None  # decided once per process, by derivation_enabled()


def derivation_enabled() -> bool:
    """Whether message derivation may be used: only on the versions the golden test ran on. Warns once."""
    global _derivation
    if _derivation is None:
        installed = installed_versions()
        _derivation = installed == DERIVATION_TESTED_ON
        if not _derivation:
            _publish_logger.warning(
                "task message derivation is off: it was proven equal to Celery's messages on %s, installed is %s; "
                "every task message is built by Celery (slower single and bulk publishing). Run "
                "tests/core/test_golden_messages.py on these versions, then update DERIVATION_TESTED_ON in "
                "apps/core/compat.py and requirements/base.txt together",
                _versions_text(DERIVATION_TESTED_ON), _versions_text(installed))
    return _derivation


def _versions_text(versions: dict) -> str:
    return ", ".join(f"{name} {version}" for name, version in versions.items())


def derivable_by_routes_and_backend(app) -> bool:
    """What a derived message assumes of the app beside the task: routes chosen by task name only (Celery's
    ``MapRoute``, what a ``task_routes`` dict or glob becomes; a router function may route on arguments), and
    a result backend with nothing to do per publish (``Backend.on_task_call``: the rpc and redis backends
    start consuming the reply there)."""
    routes = app.amqp.router.routes
    return (all(isinstance(maybe_evaluate(route), MapRoute) for route in routes)
            and type(app.backend).on_task_call is Backend.on_task_call)


def converts_arguments(task) -> bool:
    """Whether Celery converts this task's arguments per call before building the message (``pydantic=True``
    tasks: ``Task._dump_pydantic_arguments``, set by the task decorator)."""
    return task._dump_pydantic_arguments is not None


def check_call_arguments(task, args, kwargs) -> None:
    """Celery's argument check, as ``Task.apply_async`` makes it: ``Task.__header__`` (a copy of the task
    function's signature, set by the decorator; absent on class-based tasks) raises ``TypeError``."""
    if task.typing:
        header = getattr(task, "__header__", None)
        if header is not None:
            header(*args, **kwargs)


def library_errors(connection):
    """kombu's context that turns transport errors into kombu's own (``OperationalError``...): Celery's
    ``send_task`` publishes inside it, so a derived publish raises what Celery's would."""
    return connection._reraise_as_library_errors()


def declaration_keys(entities) -> frozenset:
    """kombu's cache keys of entities a publish declares (``hash(entity)``, see ``KeptDeclarations``)."""
    return frozenset(hash(entity) for entity in entities or ())


def declared_on(connection, keys: frozenset) -> bool:
    """Whether ``connection`` declared all of them already (kombu's ``Connection.declared_entities``)."""
    return keys <= connection.declared_entities


@contextmanager
def recording_publish(producer, record):
    """On this one producer, every ``publish(body, **kwargs)`` calls ``record(body, kwargs)`` first.

    How a template learns what Celery asked kombu to publish (exchange, routing key, properties, retry
    policy, declarations): Celery offers no hook between building a message and ``Producer.publish``
    (``before_task_publish`` comes before its last changes: routing to the default exchange, declarations).
    Yields the producer's own ``publish``."""
    original = producer.publish

    def recording(body, **kwargs):
        record(body, kwargs)
        return original(body, **kwargs)

    producer.publish = recording
    try:
        yield original
    finally:
        del producer.publish  # back to the class's method


def kept_task_producer(connection) -> Producer:
    """A producer kept on a pooled connection (one holder at a time), made again after a reconnect.

    Celery's producer pool re-binds its producer's exchange on every checkout: a third of the client time
    of a derived call in the profile (docs/benchmarks.md). The attribute is the platform's own, on kombu's
    connection object."""
    channel = connection.default_channel  # reconnects a pooled connection kombu closed after an error
    producer = getattr(connection, "_platform_task_producer", None)
    if producer is None or producer.channel is not channel:
        producer = Producer(channel, auto_declare=False)
        connection._platform_task_producer = producer
    return producer


# kombu's Producer.publish sends this priority when none is given (0, not None: the property is on the wire).
# A constant, checked against kombu's signature by the tests: Sentry's Celery integration replaces
# Producer.publish with a (*args, **kwargs) wrapper, so it cannot be read at import in every process.
KOMBU_DEFAULT_PRIORITY = 0


def delivery_mode_property(delivery_mode):
    """The ``delivery_mode`` property kombu's ``Producer.publish`` sends for this argument."""
    return maybe_delivery_mode(delivery_mode)


def publish_prepared(channel, body: bytes, priority, content_type: str, content_encoding: str, headers: dict,
                     properties: dict, exchange: str, routing_key: str, **timeouts) -> None:
    """What kombu's ``Producer.publish`` ends in (``Producer._publish``): the transport channel's
    ``prepare_message`` and ``basic_publish`` (confirmed on a confirm-mode channel).

    Profiled against a raw kombu publish, kombu's argument handling around it (delivery details, body
    preparation, declaration and batch checks, two dict builds) cost more than the derivation itself; going
    straight to the channel made a derived call 0.74x -> 0.80x of a raw publish (docs/benchmarks.md)."""
    if isinstance(body, str):  # kombu's Producer._prepare: a serialized body is encoded with its content encoding
        body = body.encode(content_encoding)
    message = channel.prepare_message(body, priority, content_type, content_encoding, headers, properties)
    channel.basic_publish(message, exchange=exchange, routing_key=routing_key, **timeouts)


def publish_without_confirm_wait(channel, on_publish) -> None:
    """Make the confirm-mode py-amqp ``channel`` publish without waiting for each confirm.

    py-amqp's confirm-mode ``basic_publish`` (``basic_publish_confirm``) waits for the confirm of every
    message: one round trip each. A confirmed batch (apps/core/bulk.py) publishes with py-amqp's
    ``_basic_publish`` and collects the confirms for all messages at the end (``channel.events``); that is
    what takes bulk enqueue from about 700 to thousands of confirmed messages/s. ``on_publish()`` runs
    before each publish (delivery tags are counted by the caller)."""
    raw_publish = channel._basic_publish

    def publish(*args, **kwargs):
        kwargs.pop("confirm_timeout", None)
        on_publish()
        return raw_publish(*args, **kwargs)

    channel.basic_publish = publish


def prepare_task_sent_event(dispatcher, fields: dict) -> dict:
    """A ``task-sent`` event as Celery's dispatcher stamps it (clock, hostname, pid, utcoffset, timestamp),
    without publishing it: bulk enqueue sends the events of a batch as one message, for accepted ones only."""
    return prepare_event(dispatcher, "task-sent", fields)


def publish_task_sent_events(dispatcher, events: list, producer) -> None:
    """Publish prepared events as one ``task.multi`` message, as the workers' event batches go (the ledger
    recorder and the live feed read lists): one message per batch instead of one per task (27% of bulk
    enqueue in the profile, docs/benchmarks.md). A failed publish raises (see ``publish_event_batch``)."""
    publish_event_batch(dispatcher, events, producer)


# The keyword arguments Celery's task sender (``AMQP.send_task_message``) takes by name; the others it passes on
# to kombu's publish as message properties, and to ``before_task_publish`` receivers in ``properties``.
TASK_SENDER_ARGUMENTS = frozenset({"exchange", "routing_key", "queue", "event_dispatcher", "retry", "retry_policy",
                                   "serializer", "delivery_mode", "compression", "declare", "headers",
                                   "exchange_type", "timeout", "confirm_timeout"})


class TaskSenderHook:
    """Mixin for ``celery.app.amqp.AMQP``: ``wrap_task_sender(send)`` wraps the function Celery publishes every
    task message through (apply_async, retries, canvas, send_task): ``AMQP.send_task_message``, built by
    ``AMQP._create_task_sender``. Celery has no public hook there with the connection in hand (delayed
    delivery on direct exchanges, batches, the QueueFull error and the confirm timeout need it:
    apps/core/amqp.py)."""

    def _create_task_sender(self):
        return self.wrap_task_sender(super()._create_task_sender())

    def wrap_task_sender(self, send):
        return send
