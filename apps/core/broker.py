"""Talking to RabbitMQ directly: reachability and queue depths (passive declares, nothing created)."""
from __future__ import annotations

from dataclasses import dataclass

from kombu import Connection
from kombu.utils.url import maybe_sanitize_url

from apps.core import cluster
from project import topology

START_HINT = "start it with `rabbitmq-server -detached` (or `docker compose -f compose/docker-compose.yml up -d rabbitmq`)"



class BrokerUnavailable(RuntimeError):
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
    messages: int | None  # None: the queue does not exist (nothing declared it yet)
    consumers: int | None


def queue_depths(names: list[str], url: str | None = None) -> list[QueueDepth]:
    from project.celery import app

    depths = []
    with cluster.connection(url or app.conf.broker_url, connect_timeout=4) as connection:
        channel = connection.channel()
        for name in names:
            try:
                _, messages, consumers = channel.queue_declare(queue=name, passive=True)
                depths.append(QueueDepth(name, messages, consumers))
            except connection.channel_errors:  # 404: not declared; the channel is closed by the broker
                depths.append(QueueDepth(name, None, None))
                channel = connection.channel()
        channel.close()
    return depths


def declare_dead_letter_queues(connection: Connection) -> None:
    """Declare the dead-letter exchange and one dead-letter queue per lane (idempotent)."""
    channel = connection.channel()
    try:
        for queue in topology.dead_letter_queues():
            queue.bind(channel).declare()
    finally:
        channel.close()
