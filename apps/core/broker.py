"""Talking to RabbitMQ directly: reachability and queue depths (passive declares, nothing created), and
the one rule for transient broker errors outside Celery's own retry paths (``BrokerSession``).

A quorum queue can be declared and still not serve for a moment (its Raft member starts a few ms after
the declare is visible to other connections), and the same happens after a node restart and during every
leader election: ``basic.get`` then fails with 541 INTERNAL_ERROR "noproc", a connection-level error that
closes the whole connection. Such an error is retried a few times on a fresh connection; when it persists
the caller gets ``BrokerUnavailable`` with the reason, which pages show as "unavailable: <reason>", the
API as 503 and commands as one line with exit 1.
"""
from __future__ import annotations

import logging
import time
from dataclasses import dataclass
from typing import Callable, TypeVar

import amqp.exceptions
import kombu.exceptions
from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from apps.core import cluster
from project import topology

logger = logging.getLogger(__name__)

START_HINT = "start it with `rabbitmq-server -detached` (or `docker compose -f compose/docker-compose.yml up -d rabbitmq`)"

# Errors that say "RabbitMQ cannot serve this right now": the socket failed or timed out (OSError), kombu gave
# up reconnecting (OperationalError), or RabbitMQ closed the connection with a connection-level error
# (amqp ConnectionError: 541 internal_error/noproc, 320 connection_forced on a node shutdown, ...).
# Channel-level errors (404 no such queue, 406 wrong arguments) are answers, not transient.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    OSError, kombu.exceptions.OperationalError, amqp.exceptions.ConnectionError)
T = TypeVar("T")


class BrokerUnavailable(RuntimeError):
    """RabbitMQ (or one queue on it) could not serve a request, even after a short retry; the message says why."""


def describe(exc: BaseException) -> str:
    """One line for an operator: the broker's own words when it gave any."""
    text = str(exc).strip()
    return text if text else type(exc).__name__


class BrokerSession:
    """One connection for a series of short calls. A transient error closes it, and the call is made again on a
    fresh connection after a short pause (``attempts`` in all); if it still fails, ``BrokerUnavailable``.

    ``call(what, fn)`` runs ``fn(channel)``; channel-level errors propagate to the caller unchanged, and the
    next call gets a new channel.
    """

    def __init__(self, url: str | None = None, attempts: int = 3, pause: float = 0.3, connect_timeout: float = 4):
        self.url, self.attempts, self.pause, self.connect_timeout = url, attempts, pause, connect_timeout
        self._connection: Connection | None = None
        self._channel = None
        self.unreachable = False  # the last call could not even connect: callers stop asking about more queues

    def __enter__(self) -> "BrokerSession":
        return self

    def __exit__(self, *exc_info) -> None:
        self.close()

    def channel(self):
        if self._connection is None:
            nodes = len(cluster.broker_urls(self.url))  # a node list: each node once before giving up
            self._connection = cluster.connection(self.url, connect_timeout=self.connect_timeout)
            self._connection.ensure_connection(max_retries=nodes, timeout=self.connect_timeout * nodes)
        if self._channel is None or not getattr(self._channel, "is_open", True):
            self._channel = self._connection.channel()
        return self._channel

    def call(self, what: str, fn: Callable[..., T]) -> T:
        for attempt in range(1, self.attempts + 1):
            connected = False
            try:
                channel = self.channel()
                connected = True
                return fn(channel)
            except TRANSIENT_ERRORS as exc:
                self.close()  # a connection-level error closed it anyway; the next attempt starts clean
                if attempt == self.attempts:
                    self.unreachable = not connected
                    if self.unreachable:
                        raise BrokerUnavailable(f"RabbitMQ is not reachable ({describe(exc)}); {START_HINT}") from exc
                    raise BrokerUnavailable(f"{what} unavailable: {describe(exc)}") from exc
                logger.debug("%s: transient broker error (%s); retrying on a fresh connection", what, describe(exc))
                time.sleep(self.pause * attempt)
        raise AssertionError("unreachable")

    def reset_channel(self) -> None:
        """After a channel-level error the broker has closed the channel: the next call opens another."""
        self._channel = None

    def close(self) -> None:
        connection, self._connection, self._channel = self._connection, None, None
        if connection is not None:
            try:
                connection.release()
            except Exception:  # noqa: BLE001  (already closed by the broker)
                pass


def check_broker(url: str | None = None, timeout: float = 4) -> None:
    """Raise BrokerUnavailable with one line that says where and how to start RabbitMQ."""
    from project.celery import app

    url = url or app.conf.broker_url
    try:
        with cluster.connection(url, connect_timeout=timeout) as connection:  # every node of the list, once
            connection.ensure_connection(max_retries=len(cluster.broker_urls(url)), timeout=timeout * len(cluster.broker_urls(url)))
    except Exception as exc:  # any failure to connect is the same answer for the operator
        raise BrokerUnavailable(
            f"RabbitMQ is not reachable at {maybe_sanitize_url(url)} ({exc}); {START_HINT}"
        ) from exc


@dataclass
class QueueDepth:
    name: str
    messages: int | None  # None: the queue does not exist (nothing declared it yet), or it is unavailable
    consumers: int | None
    unavailable: str | None = None  # why RabbitMQ could not say, after a short retry


# RabbitMQ 3.x answers a passive declare of a quorum queue with 0 messages and 0 consumers when the queue's
# Raft leader does not reply within 250 ms (rabbit_quorum_queue:stat/2 maps a timeout or an error to
# {ok, 0, 0}; read from the 3.10.8 beam). Most likely what a CI run's health check met under load: no
# consumer on a queue that had two. A zero answer is asked again ZERO_ANSWER_ASKS times (an empty,
# unconsumed queue costs two more round trips), and again while zero answers come as slowly as that
# timeout, up to SLOW_ZERO_BUDGET_SECONDS: three slow answers (750 ms) were once not enough (a local run of
# the health test while two workers started on the same two cores).
ZERO_ANSWER_ASKS = 3
SLOW_ZERO_ANSWER_SECONDS = 0.2  # a zero answer this slow is RabbitMQ's 250 ms leader timeout, not a count
SLOW_ZERO_BUDGET_SECONDS = 3.0


def _messages_and_consumers(channel, name: str) -> tuple[int, int]:
    started = time.monotonic()
    asks = 0
    while True:
        asked = time.monotonic()
        _, messages, consumers = channel.queue_declare(queue=name, passive=True)
        asks += 1
        if messages or consumers:
            return messages, consumers
        slow = time.monotonic() - asked >= SLOW_ZERO_ANSWER_SECONDS
        if (asks >= ZERO_ANSWER_ASKS and not slow) or time.monotonic() - started >= SLOW_ZERO_BUDGET_SECONDS:
            return messages, consumers


def queue_depths(names: list[str], url: str | None = None) -> list[QueueDepth]:
    """Depth and consumers of each queue. A queue RabbitMQ cannot answer for (after a short retry) is reported
    with ``unavailable`` set; only a broker that cannot be reached at all raises ``BrokerUnavailable``."""
    depths = []
    with BrokerSession(url) as session:
        session.call("RabbitMQ", lambda channel: None)  # unreachable: BrokerUnavailable, not a row per queue
        for name in names:
            def passive_declare(channel, name=name):
                try:
                    return QueueDepth(name, *_messages_and_consumers(channel, name))
                except amqp.exceptions.ChannelError:  # 404: not declared; the broker closed the channel
                    session.reset_channel()
                    return QueueDepth(name, None, None)
            try:
                depths.append(session.call(f"queue {name}", passive_declare))
            except BrokerUnavailable as exc:
                depths.append(QueueDepth(name, None, None, unavailable=str(exc)))
    return depths


def declare_dead_letter_queues(connection: Connection) -> None:
    """Declare the dead-letter exchange and one dead-letter queue per lane (idempotent)."""
    channel = connection.channel()
    try:
        for queue in topology.dead_letter_queues():
            queue.bind(channel).declare()
    finally:
        channel.close()
