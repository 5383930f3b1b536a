"""Dead letters: moved from ``<queue>.dead`` into the database, classified, replayed with confirms.

Browsing a quorum queue in place is unsafe: basic.get + requeue reorders messages and bumps their
delivery count, and messages held by one browser are invisible to another. So ``drain`` takes each
message with basic.get (manual ack), stores it in DeadLetter, commits, and only then acks it. A crash
between commit and ack leaves the message in the queue; the next drain finds the same fingerprint and
just acks it. Nothing is lost; nothing is stored twice.
"""
from __future__ import annotations

import hashlib
import json
from datetime import datetime, timezone

from django.conf import settings
from django.db import transaction

from apps.core import cluster
from project import topology

# Source queues by dead-letter queue name.
DEAD_LETTER_QUEUES = {topology.dead_letter_queue_name(lane.name): lane.name for lane in topology.LANES}
STRIP_ON_REPLAY = ("x-death", "x-first-death-exchange", "x-first-death-queue", "x-first-death-reason",
                   "x-last-death-exchange", "x-last-death-queue", "x-last-death-reason", "x-delivery-count")


def _jsonable(value):
    """AMQP header values (datetimes, bytes, nested tables) as JSON."""
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, datetime):
        return value.isoformat()
    if isinstance(value, bytes):
        return value.decode("utf-8", errors="replace")
    return value


def _death(headers: dict) -> dict:
    deaths = headers.get("x-death") or []
    return deaths[0] if deaths and isinstance(deaths[0], dict) else {}


def _death_time(death: dict) -> datetime | None:
    when = death.get("time")
    if isinstance(when, datetime):
        return when if when.tzinfo else when.replace(tzinfo=timezone.utc)
    if isinstance(when, str):
        try:
            return datetime.fromisoformat(when)
        except ValueError:
            return None
    return None


def classify(headers: dict, content_type: str | None, body: bytes, registered: set[str]) -> tuple[str, str]:
    """(reason, detail). RabbitMQ says rejected / delivery_limit / expired / maxlen; a rejection is
    narrowed down by what the consumer (apps/core/consumer.py) rejects."""
    death = _death(headers)
    reason = str(death.get("reason") or headers.get("x-first-death-reason") or "unknown")
    if reason == "delivery_limit":
        return "delivery_limit", "redelivered past the queue's x-delivery-limit (the task kept killing its worker)"
    if reason == "expired":
        return "expired", "message TTL expired before a worker took it"
    if reason == "maxlen":
        return "maxlen", "the queue was full"
    if reason != "rejected":
        return "unknown", f"dead-letter reason {reason!r}"
    task = headers.get("task")
    if content_type not in ("application/json",):
        return "rejected", f"content type {content_type!r} is not accepted (JSON only)"
    if not task:
        return "rejected", "no Celery task headers"
    if len(body) > settings.PLATFORM_MAX_MESSAGE_BYTES:
        return "rejected", f"{len(body)} bytes, over PLATFORM_MAX_MESSAGE_BYTES"
    try:
        json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return "rejected", "body cannot be decoded as JSON"
    if task not in registered:
        return "unknown_task", f"task {task!r} is not registered in any worker of this project"
    return "exception", f"task {task!r} rejected its own message (raised Reject)"


def registered_tasks() -> set[str]:
    from apps.control.redaction import task_registry

    return set(task_registry())


def fingerprint(headers: dict, body: bytes, death: dict) -> str:
    digest = hashlib.sha256()
    digest.update(json.dumps(_jsonable({k: v for k, v in headers.items() if k != "x-death"}), sort_keys=True,
                             default=str).encode())
    digest.update(body)
    digest.update(str(_jsonable(death.get("time"))).encode())
    digest.update(str(death.get("count")).encode())
    return digest.hexdigest()


def _row(dead_letter_queue: str, message, registered: set[str]):
    from apps.control.models import DeadLetter

    headers = dict(message.headers or {})
    properties = dict(message.properties or {})
    properties.pop("application_headers", None)
    body = message.body
    if isinstance(body, str):  # py-amqp decodes bodies that declare a text content_encoding
        body = body.encode(properties.get("content_encoding") or "utf-8")
    death = _death(headers)
    reason, detail = classify(headers, properties.get("content_type"), body, registered)
    routing_keys = death.get("routing-keys") or []
    return DeadLetter(
        fingerprint=fingerprint(headers, body, death),
        dead_letter_queue=dead_letter_queue,
        queue=str(death.get("queue") or DEAD_LETTER_QUEUES.get(dead_letter_queue, "")),
        reason=reason, detail=detail,
        task_id=str(headers.get("id") or "")[:255], task_name=str(headers.get("task") or "")[:255],
        exchange=str(death.get("exchange") or ""), routing_key=str(routing_keys[0] if routing_keys else ""),
        headers=_jsonable(headers), properties=_jsonable(properties), body=body,
        death_count=int(death.get("count") or 1), dead_at=_death_time(death),
    )


def drain(url: str | None = None, queues: list[str] | None = None, batch: int = 200, limit: int = 100_000) -> int:
    """Move dead letters from the broker into DeadLetter rows; return how many were stored."""
    from apps.control.models import DeadLetter
    from apps.control.services import mark_dead_lettered
    from project.celery import app

    registered = registered_tasks()
    stored = 0
    with cluster.connection(url or app.conf.broker_url, connect_timeout=4) as connection:
        for name in queues or list(DEAD_LETTER_QUEUES):
            channel = connection.channel()
            try:
                taken = 0
                while taken < limit:
                    messages = []
                    for _ in range(batch):
                        message = channel.basic_get(queue=name, no_ack=False)
                        if message is None:
                            break
                        messages.append(message)
                    if not messages:
                        break
                    rows = [_row(name, m, registered) for m in messages]
                    with transaction.atomic():
                        before = DeadLetter.objects.count()
                        DeadLetter.objects.bulk_create(rows, ignore_conflicts=True)
                        stored += DeadLetter.objects.count() - before
                        mark_dead_lettered(rows)
                    channel.basic_ack(messages[-1].delivery_tag, multiple=True)
                    taken += len(messages)
            except connection.channel_errors:
                pass  # not declared yet: no worker has started, nothing dead-lettered
            finally:
                try:
                    channel.close()
                except Exception:  # noqa: BLE001  (closed by the broker after a 404)
                    pass
    return stored


def replay_route(letter) -> tuple[str, str]:
    """Where the message was going: its original exchange and routing key; the lane's own exchange when
    it was on the delay path (those exchanges are only a way there)."""
    exchange, routing_key = letter.exchange, letter.routing_key
    if not exchange or exchange.startswith("celery_delayed") or letter.queue not in topology.LANES_BY_NAME:
        lane = topology.LANES_BY_NAME.get(letter.queue)
        if lane is not None:
            return lane.name, lane.name
    return exchange, routing_key


def publish_again(batch, letter) -> int:
    """Publish a stored dead letter to its original route in a confirmed batch (apps/core/bulk.py);
    returns its delivery tag, whose ``batch.state`` says whether RabbitMQ accepted it."""
    exchange, routing_key = replay_route(letter)
    headers = {k: v for k, v in (letter.headers or {}).items() if k not in STRIP_ON_REPLAY}
    properties = letter.properties or {}
    return batch.publish(
        bytes(letter.body), exchange=exchange, routing_key=routing_key, headers=headers, serializer=None,
        content_type=properties.get("content_type") or "application/json",
        content_encoding=properties.get("content_encoding") or "utf-8",
        delivery_mode=2, correlation_id=properties.get("correlation_id"), reply_to=properties.get("reply_to"),
        priority=properties.get("priority"),
    )
