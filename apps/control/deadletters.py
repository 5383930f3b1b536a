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

import amqp.exceptions
from django.conf import settings
from django.db import transaction
from django.utils import timezone as django_timezone

from apps.control import states
from apps.control.ledger import counter
from apps.control.models import DeadLetter, TaskRecord
from apps.control.redaction import task_registry
from apps.core.broker import BrokerSession, BrokerUnavailable
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
    """RabbitMQ's newest x-death entry; {} when the header is missing or not the list of tables it writes."""
    deaths = headers.get("x-death")
    return deaths[0] if isinstance(deaths, list) and deaths and isinstance(deaths[0], dict) else {}


def _death_count(death: dict) -> int:
    """RabbitMQ writes a long; anything else came from a publisher and counts as one death."""
    return max(1, counter(death.get("count")))


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
        death_count=_death_count(death), dead_at=_death_time(death),
    )


def drain(url: str | None = None, queues: list[str] | None = None, batch: int = 200, limit: int = 100_000) -> int:
    """Move dead letters from the broker into DeadLetter rows; return how many were stored.

    Each dead-letter queue is drained on its own; a queue RabbitMQ cannot serve even after a short retry on a
    fresh connection (apps/core/broker.py ``BrokerSession``) does not stop the others. When any was
    unavailable, ``BrokerUnavailable`` is raised at the end, naming each such queue and the broker's reason,
    after everything that could be stored was stored. Messages taken but not yet acked when a connection
    drops go back to their queue; the next drain stores them (fingerprints make that idempotent).
    """
    registered = registered_tasks()
    tally = {"stored": 0}  # kept across a retry: batches stored before a dropped connection count
    unavailable = []
    with BrokerSession(url) as session:
        for name in queues or list(DEAD_LETTER_QUEUES):
            def drain_queue(channel, name=name):
                try:
                    _drain_queue(channel, name, registered, batch, limit, tally)
                except amqp.exceptions.ChannelError:  # 404: not declared yet, nothing dead-lettered there
                    session.reset_channel()
            try:
                session.call(f"dead-letter queue {name}", drain_queue)
            except BrokerUnavailable as exc:
                if session.unreachable:
                    raise
                unavailable.append(str(exc))
    if unavailable:
        raise BrokerUnavailable("; ".join(unavailable) + f" ({tally['stored']} dead letter(s) stored from the "
                                "other queues)")
    return tally["stored"]


def _drain_queue(channel, name: str, registered: set[str], batch: int, limit: int, tally: dict) -> None:
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
            tally["stored"] += DeadLetter.objects.count() - before
            mark_dead_lettered(rows)
        channel.basic_ack(messages[-1].delivery_tag, multiple=True)
        taken += len(messages)


def mark_dead_lettered(rows: list[DeadLetter]) -> None:
    """A dead-lettered task is finished: FAILURE, with where it went and why (kept beside the error a
    worker may have reported, e.g. a task that raised Reject)."""
    for row in rows:
        if not row.task_id:
            continue
        note = f"dead-lettered to {row.dead_letter_queue} ({row.reason}): {row.detail}"
        for record in TaskRecord.objects.filter(task_id=row.task_id).exclude(state=states.SUCCESS):
            if record.state in states.ACTIVE or record.state in (states.LOST, states.FAILURE):
                record.state, record.provisional = states.FAILURE, False
                record.finished_at = record.finished_at or django_timezone.now()
                record.error = note if not record.error else f"{note}; worker reported {record.error}"
                record.save(update_fields=["state", "provisional", "finished_at", "error", "updated_at"])


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
