"""Enqueue many tasks at once with the same durability as one ``apply_async`` with publisher confirms.

``apply_async`` with ``confirm_publish`` waits for RabbitMQ's confirm after every message: one round trip
per task. ``enqueue_many`` publishes every message on one confirm-mode channel and then waits for all the
confirms together, so the round trips overlap. It returns only when RabbitMQ has confirmed every message,
and raises ``BulkPublishError`` naming the task ids it refused (a full queue nacks with reject-publish) or
did not confirm in time. Messages go through Celery's normal send path, so routing, delayed delivery and
the size guard are exactly as for ``apply_async``. Two things are done once per call instead of once per
message (each was a tenth to a quarter of the time in the profile, docs/benchmarks.md): the queues of the
topology are declared once, and the ``task-sent`` events (the ledger's QUEUED) leave as one batch after
the confirms, for the accepted messages only.
"""
from __future__ import annotations

import socket
import time
from collections.abc import Iterable

from celery import Signature
from celery.result import AsyncResult
from celery.utils.saferepr import saferepr
from kombu.serialization import dumps, loads
from kombu.utils.uuid import uuid

from apps.core.amqp import check_message_size
from apps.core.events import event_producer
from project import topology
from project.celery import app


class BulkPublishError(RuntimeError):
    def __init__(self, message: str, refused: list[str], unconfirmed: list[str]):
        super().__init__(message)
        self.refused = refused
        self.unconfirmed = unconfirmed


class _ConfirmTracker:
    """Delivery tags of a confirm-mode channel, settled in the order RabbitMQ confirms them.

    A confirm with ``multiple`` settles every still-unsettled tag up to its own; a tag is settled once,
    so a later multiple-ack never turns an earlier nack into an ack.
    """

    def __init__(self, channel):
        self.published = 0  # delivery tags are 1..published, in publish order
        self.states: dict[int, str] = {}
        self._lowest_unsettled = 1
        channel.events["basic_ack"].add(lambda tag, multiple: self._settle(tag, multiple, "acked"))
        channel.events["basic_nack"].add(lambda tag, multiple: self._settle(tag, multiple, "nacked"))

    def _settle(self, delivery_tag: int, multiple: bool, state: str) -> None:
        if multiple:
            for tag in range(self._lowest_unsettled, delivery_tag + 1):
                self.states.setdefault(tag, state)
        else:
            self.states.setdefault(delivery_tag, state)
        while self._lowest_unsettled in self.states:
            self._lowest_unsettled += 1

    def state(self, tag: int) -> str | None:
        return self.states.get(tag)

    def settled(self) -> bool:
        return self._lowest_unsettled > self.published


class _SentEvents:
    """Stands in for Celery's event dispatcher during a bulk publish: collects the task-sent events."""

    def __init__(self):
        self.dispatcher = app.events.Dispatcher(enabled=False)  # stamps clock, hostname, pid like Celery's
        self.events: list[dict] = []

    def publish(self, type, fields, producer, **kwargs):
        self.last_fields = fields
        self.events.append(self.dispatcher._prepare_event(type, fields))

    def send(self, connection, accepted: set[str]) -> None:
        batch = [event for event in self.events if event["uuid"] in accepted]
        if batch:  # one message, "task.multi": the ledger recorder and the live feed read lists
            self.dispatcher._publish(batch, event_producer(connection), "task.multi")


class _Templates:
    """Messages derived from the first one Celery built, per task name, within one ``enqueue_many`` call.

    Celery's per-message work (routing, option merging, building the protocol-2 message, configuration
    lookups) was most of what bulk enqueue spent per message after the confirms overlapped
    (docs/benchmarks.md). A signature with no options of its own whose task already has a template in
    this call gets a copy of that message with what differs per call replaced: the id (and the root id
    when the template was its own root), the arguments and their reprs, the body, and its task-sent
    event. The size guard applies to every body. Trace context and publish time stamps are the template's
    (the same publishing span, microseconds apart). Anything else goes through Celery.
    """

    def __init__(self, producer, sent_events: _SentEvents):
        self.sent_events = sent_events
        self.by_task: dict[str, tuple[dict, dict, dict, bool]] = {}
        self.last_publish: tuple | None = None
        self.publish = producer.publish
        self.repr_size = app.amqp.argsrepr_maxsize

        def recording_publish(body, **kwargs):
            self.last_publish = (body, kwargs)
            return self.publish(body, **kwargs)

        producer.publish = recording_publish

    @staticmethod
    def eligible(signature: Signature) -> bool:
        return type(signature) is Signature and not signature.options

    def remember(self, signature: Signature, result: AsyncResult) -> None:
        """Keep the message Celery just published for ``signature`` as its task's template."""
        body, kwargs = self.last_publish
        headers = kwargs.get("headers") or {}
        if headers.get("id") != result.id or headers.get("eta"):
            return  # not a plain task message (delayed, or something else was published last)
        embed = loads(body, kwargs["content_type"], kwargs["content_encoding"])[2]
        fields = dict(self.sent_events.last_fields)
        self.by_task[signature.task] = (kwargs, embed, fields, headers.get("root_id") == result.id)

    def send(self, signature: Signature) -> AsyncResult | None:
        template = self.by_task.get(signature.task)
        if template is None:
            return None
        kwargs, embed, fields, own_root = template
        task_id = uuid()
        args, call_kwargs = tuple(signature.args), dict(signature.kwargs)
        content_type, content_encoding, body = dumps((args, call_kwargs, embed), kwargs["content_type"].split("/")[-1])
        check_message_size(signature.task, body)
        headers = dict(kwargs["headers"])
        headers["id"] = task_id
        if own_root:
            headers["root_id"] = task_id
        headers["argsrepr"] = saferepr(args, self.repr_size)
        headers["kwargsrepr"] = saferepr(call_kwargs, self.repr_size)
        self.publish(body, **{**kwargs, "headers": headers, "correlation_id": task_id})
        self.sent_events.events.append(self.sent_events.dispatcher._prepare_event("task-sent", {
            **fields, "uuid": task_id, "root_id": headers["root_id"], "args": headers["argsrepr"],
            "kwargs": headers["kwargsrepr"]}))
        return app.tasks[signature.task].AsyncResult(task_id)


def _routed_to_topology(signature: Signature) -> bool:
    """True when settings route this task (no queue/exchange given by the caller): its queue is one of
    the topology's work queues, all declared once per call, so the per-message declare can be skipped."""
    return not ({"queue", "exchange", "routing_key", "declare"} & set(signature.options))


def enqueue_many(signatures: Iterable[Signature], confirm_timeout: float = 30) -> list[AsyncResult]:
    """Publish every signature; return their results once RabbitMQ confirmed all of them."""
    # Errors are raised only after the connection is back in the pool: kombu closes a pooled connection
    # that an exception passes through and then still returns it to the pool, closed (kombu 5.7).
    error: Exception | None = None
    results: list[AsyncResult] = []
    with app.pool.acquire(block=True) as connection:
        channel = connection.channel()
        try:
            channel.confirm_select()
            tracker = _ConfirmTracker(channel)
            raw_publish = channel._basic_publish

            def publish_without_waiting(*args, **kwargs):
                kwargs.pop("confirm_timeout", None)
                tracker.published += 1
                return raw_publish(*args, **kwargs)

            channel.basic_publish = publish_without_waiting  # confirms are collected below, not one by one
            producer = app.amqp.Producer(channel, auto_declare=False)
            for queue in topology.work_queues():
                producer.maybe_declare(queue)  # cached per connection: a no-op after the first call
            sent_events = _SentEvents()
            templates = _Templates(producer, sent_events)
            task_tags: list[tuple[int, AsyncResult]] = []
            for signature in signatures:
                before = tracker.published
                eligible = templates.eligible(signature)
                result = templates.send(signature) if eligible else None
                if result is None:
                    if type(signature) is Signature:  # one task; a chain or group keeps Celery's own path
                        options = {"event_dispatcher": sent_events}
                        if _routed_to_topology(signature):
                            options["declare"] = []
                    else:
                        options = {}
                    result = signature.apply_async(producer=producer, **options)
                    if eligible:
                        templates.remember(signature, result)
                task_tags.append((before + 1, result))  # the task message is the first publish of the call

            deadline = time.monotonic() + confirm_timeout
            while not tracker.settled() and time.monotonic() < deadline:
                try:
                    connection.drain_events(timeout=max(0.01, deadline - time.monotonic()))
                except socket.timeout:
                    break
            refused = [r.id for tag, r in task_tags if tracker.state(tag) == "nacked"]
            unconfirmed = [r.id for tag, r in task_tags if tracker.state(tag) is None]
            if refused or unconfirmed:
                error = BulkPublishError(
                    f"{len(refused)} of {len(task_tags)} messages refused by RabbitMQ (queue full?) and "
                    f"{len(unconfirmed)} not confirmed within {confirm_timeout}s; the others were accepted",
                    refused, unconfirmed)
            results = [result for _, result in task_tags]
            sent_events.send(connection, {r.id for tag, r in task_tags if tracker.state(tag) == "acked"})
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the pooled connection's context
            error = exc
        finally:
            channel.close()
    if error is not None:
        raise error
    return results
