"""Test helpers that talk to the real RabbitMQ: throwaway vhosts, runtime settings, raw publishes."""
from __future__ import annotations

import subprocess
import uuid
from contextlib import contextmanager
from dataclasses import dataclass

from kombu import Connection, Exchange, Queue

from tests.support import tier


# The harness's own connections (reading queues, raw publishes) wait this long for RabbitMQ's handshake:
# kombu's 5 s was once too short in a CI run while the broker deleted other test vhosts' quorum queues
# (TimeoutError in read_frame during connect), failing a test that was not about connecting.
HARNESS_CONNECT_TIMEOUT = 30


def rabbitmqctl(*args: str, timeout: float = 180) -> str:
    tier.forbid_in_fast_tier(f"rabbitmqctl {args[0] if args else ''}")
    result = subprocess.run(["rabbitmqctl", "-q", *args], capture_output=True, text=True, timeout=timeout)
    if result.returncode != 0:
        raise RuntimeError(f"rabbitmqctl {' '.join(args)} failed: {result.stderr.strip() or result.stdout.strip()}")
    return result.stdout


def create_vhost(prefix: str = "platform-test") -> str:
    vhost = f"{prefix}-{uuid.uuid4().hex[:8]}"
    rabbitmqctl("add_vhost", vhost)
    rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
    return vhost


def delete_vhost(vhost: str) -> None:
    """Best effort: a vhost holds ~36 quorum queues and deleting it can take a while on a busy broker;
    a slow cleanup must not fail the run that used it."""
    try:
        rabbitmqctl("delete_vhost", vhost)
    except (RuntimeError, subprocess.TimeoutExpired) as exc:
        import warnings

        warnings.warn(f"could not delete RabbitMQ vhost {vhost}: {exc}", stacklevel=2)


def vhost_url(vhost: str) -> str:
    return f"amqp://guest:guest@127.0.0.1:5672/{vhost}"


def quorum_queue(name: str, max_length: int | None = None) -> Queue:
    """A quorum queue on a direct exchange of the same name; with ``max_length``, bounded like the lanes
    (reject-publish: RabbitMQ nacks what does not fit)."""
    arguments = {"x-queue-type": "quorum"}
    if max_length is not None:
        arguments.update({"x-max-length": max_length, "x-overflow": "reject-publish"})
    return Queue(name, Exchange(name, type="direct"), routing_key=name, queue_arguments=arguments)


def serves(url: str, name: str) -> bool:
    """True when quorum queue ``name`` answers a passive declare and a ``basic.get``. Just after a declare its
    Raft member may not run yet, and a ``basic.get`` then fails with 541 "noproc" (issue 20). The get runs only
    on an empty queue (a queue holding messages has had a leader accept them); a message that arrives in
    between is rejected back at once."""
    import amqp.exceptions

    try:
        with Connection(url, connect_timeout=4) as connection:
            channel = connection.channel()
            _, messages, _ = channel.queue_declare(queue=name, passive=True)
            if messages == 0:
                message = channel.basic_get(queue=name, no_ack=False)
                if message is not None:
                    channel.basic_reject(message.delivery_tag, requeue=True)
            return True
    except (OSError, amqp.exceptions.ConnectionError, amqp.exceptions.ChannelError):
        return False


def wait_serving(url: str, names, timeout: float = 30) -> None:
    """Wait until every queue in ``names`` serves (``serves``): tests never race a queue's start."""
    import time

    deadline = time.monotonic() + timeout
    pending = list(names)
    while pending:
        pending = [name for name in pending if not serves(url, name)]
        if pending and time.monotonic() > deadline:
            raise AssertionError(f"queues not serving after {timeout}s: {', '.join(pending)}")
        if pending:
            time.sleep(0.05)


def _quorum_member(vhost: str, name: str, action: str) -> str:
    """Stop or restart this node's Raft member of quorum queue ``name`` (ra, the library under quorum queues)."""
    return rabbitmqctl("eval", f'{{ok, Q}} = rabbit_amqqueue:lookup(rabbit_misc:r(<<"{vhost}">>, queue, '
                               f'<<"{name}">>)), ra:{action}(quorum_queues, amqqueue:get_pid(Q)).')


@contextmanager
def quorum_member_down(url: str, name: str):
    """Quorum queue ``name`` declared but not serving, as during a leader election or just after a declare:
    ``basic.get`` fails with 541 INTERNAL_ERROR "noproc" (and publishes are nacked) until the block ends."""
    vhost = url.rsplit("/", 1)[1]
    _quorum_member(vhost, name, "stop_server")
    try:
        yield
    finally:
        _quorum_member(vhost, name, "restart_server")
        wait_serving(url, [name])


def routed_to(queue: Queue) -> dict:
    """apply_async / Signature.set options that send a task to ``queue`` (built by ``quorum_queue``)."""
    return {"queue": queue, "exchange": queue.name, "routing_key": queue.name}


def declare_over_bound(url: str, queue: Queue) -> None:
    """Declare a bounded ``queue`` and fill it one message over its bound. Quorum queues enforce the bound
    approximately: at the bound, a burst of fast publishes from a new channel was accepted here; one over
    it, every publish from a new channel was refused."""
    with Connection(url, connect_timeout=HARNESS_CONNECT_TIMEOUT,
                    transport_options={"confirm_publish": True}) as connection:
        queue(connection.default_channel).declare()
        wait_serving(url, [queue.name])
        producer = connection.Producer()
        for _ in range(queue.queue_arguments["x-max-length"] + 1):
            producer.publish(b"{}", exchange=queue.name, routing_key=queue.name)


def point_app_at(app, url: str) -> None:
    """Point the Celery app at ``url``; its connection and producer pools are per URL, so drop them."""
    app.conf.broker_url = url
    app._pool = None
    app.amqp._producer_pool = None


@contextmanager
def own_vhost(prefix: str = "platform-test"):
    """A throwaway vhost with the Celery app pointed at it; the app and the broker are restored after."""
    from project.celery import app

    vhost = create_vhost(prefix)
    url = vhost_url(vhost)
    previous = app.conf.broker_url
    point_app_at(app, url)
    try:
        yield url
    finally:
        point_app_at(app, previous)
        delete_vhost(vhost)


def set_consumer_timeout(milliseconds: int) -> None:
    """Change RabbitMQ's consumer_timeout at runtime (applies to channels opened afterwards)."""
    rabbitmqctl("eval", f"application:set_env(rabbit, consumer_timeout, {milliseconds}).")


def list_table(vhost: str, what: str, *columns: str) -> list[list[str]]:
    out = rabbitmqctl(f"list_{what}", "-p", vhost, "--no-table-headers", *columns)
    return [line.split("\t") for line in out.splitlines() if line.strip()]


def queue_message_count(url: str, queue: str) -> int:
    with Connection(url, connect_timeout=HARNESS_CONNECT_TIMEOUT) as conn:
        channel = conn.channel()
        _, count, _ = channel.queue_declare(queue=queue, passive=True)
        channel.close()
        return count


def get_messages(url: str, queue: str, limit: int = 100) -> list:
    """Take up to ``limit`` messages off ``queue`` (acked: the test owns them)."""
    messages = []
    with Connection(url, connect_timeout=HARNESS_CONNECT_TIMEOUT) as conn:
        channel = conn.channel()
        for _ in range(limit):
            message = channel.basic_get(queue=queue, no_ack=True)
            if message is None:
                break
            messages.append(message)
        channel.close()
    return messages


def publish_raw(url: str, exchange: str, routing_key: str, body: bytes, headers: dict | None = None,
                content_type: str = "application/json", content_encoding: str = "utf-8") -> None:
    """Publish bytes exactly as given (no Celery, no serializer), with publisher confirms."""
    with Connection(url, connect_timeout=HARNESS_CONNECT_TIMEOUT,
                    transport_options={"confirm_publish": True}) as conn:
        producer = conn.Producer()
        producer.publish(body, exchange=exchange, routing_key=routing_key, headers=headers or {},
                         content_type=content_type, content_encoding=content_encoding,
                         delivery_mode=2, serializer=None)


@dataclass
class WireCounts:
    publishes: int = 0  # basic.publish frames py-amqp wrote
    connects: int = 0  # AMQP connections py-amqp opened


@contextmanager
def counting_publishes_and_connects(monkeypatch):
    """Count what this process puts on the wire while the block runs: a spy around py-amqp's publish and
    connect (both still run), to show how many publishes and new connections one call cost."""
    import amqp
    import amqp.channel

    counts = WireCounts()
    publish, connect = amqp.channel.Channel._basic_publish, amqp.Connection.connect

    def counted_publish(self, *args, **kwargs):
        counts.publishes += 1
        return publish(self, *args, **kwargs)

    def counted_connect(self, *args, **kwargs):
        counts.connects += 1
        return connect(self, *args, **kwargs)

    with monkeypatch.context() as patch:
        patch.setattr(amqp.channel.Channel, "_basic_publish", counted_publish)
        patch.setattr(amqp.Connection, "connect", counted_connect)
        yield counts
