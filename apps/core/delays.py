"""Delayed delivery for direct exchanges, on top of kombu's native-delayed-delivery levels.

Celery holds a countdown/ETA task unacked in worker memory until it is due; past RabbitMQ's
``consumer_timeout`` the broker closes the channel and the task is redelivered, again and again.
Celery's native delayed delivery fixes that only for topic/fanout exchanges. We reuse its broker side
(28 quorum queues ``celery_delayed_N`` with TTL 2^N s, chained by dead-lettering, ending at the topic
exchange ``celery_delayed_delivery``) and add the one missing piece for a direct topology: each work
queue is bound to that topic exchange with ``#.<routing key>``, beside its own direct exchange.
A delayed message therefore waits in RabbitMQ, not in a worker, and reaches its queue when due.
"""
from __future__ import annotations

import threading
from datetime import datetime, timezone

from kombu import Connection, Queue
from kombu.transport.native_delayed_delivery import (
    calculate_routing_key,
    declare_native_delayed_delivery_exchanges_and_queues,
)

from apps.core import compat
from project.topology import DELAY_DELIVERY_EXCHANGE

MIN_DELAY_SECONDS = 1  # below this, publish directly: the worker's timer is the better tool
MAX_DELAY_SECONDS = 2**28 - 1  # 28 levels: about 8.5 years

_lock = threading.Lock()
_levels_declared: set[str] = set()  # broker URLs whose delay levels this process declared
_bound_queues: set[tuple[str, str]] = set()  # (broker URL, queue) pairs bound to the delivery exchange


def seconds_until(eta: str | datetime, now: datetime | None = None) -> float:
    when = datetime.fromisoformat(eta) if isinstance(eta, str) else eta
    if when.tzinfo is None:
        when = when.replace(tzinfo=timezone.utc)
    return (when - (now or datetime.now(timezone.utc))).total_seconds()


def delay_routing_key(delay_seconds: float, routing_key: str) -> str:
    """The routing key that walks the delay levels for ``delay_seconds`` and then reaches ``routing_key``.

    Rounds up, so a message never arrives before its ETA; strips a delay prefix a retried message
    carries from its previous delivery.
    """
    whole = min(MAX_DELAY_SECONDS, max(MIN_DELAY_SECONDS, int(-(-delay_seconds // 1))))
    return calculate_routing_key(whole, routing_key)


def strip_delay_prefix(routing_key: str) -> str:
    return compat.strip_delay_prefix(routing_key)  # kombu's own pattern


def ensure_delay_topology(connection: Connection, queues: list[Queue]) -> None:
    """Declare the delay levels (once per process and broker) and bind ``queues`` to their exit."""
    key = connection.as_uri()
    with _lock:
        if key not in _levels_declared:
            declare_native_delayed_delivery_exchanges_and_queues(connection, "quorum")
            _levels_declared.add(key)
        pending = [queue for queue in queues if (key, queue.name) not in _bound_queues]
        if not pending:
            return
        channel = connection.channel()
        try:
            for queue in pending:
                bound = queue.bind(channel)
                bound.declare()
                bound.bind_to(DELAY_DELIVERY_EXCHANGE, routing_key=f"#.{queue.routing_key}")
                _bound_queues.add((key, queue.name))
        finally:
            channel.close()
