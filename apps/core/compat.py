"""The one place the platform reaches inside Celery, kombu or py-amqp (CONVENTIONS: "compatibility module").
Each entry says what it fixes, the measurement behind it, and which test breaks when an upgrade moves what
it relies on (tests/core/test_compat.py).

Both entries are about failover of a connection whose URL list names several nodes of one RabbitMQ cluster
(``CELERY_BROKER_URL="amqp://a;amqp://b;amqp://c"``), measured in the minority-partition case
(tests/cluster/test_node_faults.py: the node leading the queues is cut off, no RST). Before them the
publisher's stall there was 22.5-24 s: 1.3 s until py-amqp's TCP_USER_TIMEOUT failed the publish on the cut
node, then 14.1 s in a ``queue.declare`` on the next node, then a nack or confirm timeout there, then the
third node. A single-URL connection keeps kombu's behaviour in both.

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

kombu names relied on: ``Queue.__hash__``/``Exchange.__hash__`` as the cache keys, ``Connection.declared_entities`` (a set the instance owns), ``Connection.alt``,
``Connection.maybe_switch_next`` (called inside the ``except`` of ``ensure`` and ``_ensure_connection``),
``collect``, ``_connection``, ``_connection_factory``, ``cycle``, ``ConnectionPool.new`` building
``PooledConnection(pool, **connection._info())``.
"""
from __future__ import annotations

import sys
import threading
import time

from kombu.connection import ConnectionPool, PooledConnection
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
    """Mixin for kombu Connection classes: the failover behaviours above, on a node list only."""

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        if is_failover_list(self):
            self.declared_entities = KeptDeclarations(self.declared_entities)

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
        if self.cycle and is_failover_list(self) and is_unreachable(_node(self)):
            url = self._next_url(fallback_to_next=False)
            if url is not None:
                self.switch(url)
        return super()._connection_factory()

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
