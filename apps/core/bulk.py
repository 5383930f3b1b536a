"""Enqueue many tasks at once with the same durability as one ``apply_async`` with publisher confirms.

``apply_async`` with ``confirm_publish`` waits for RabbitMQ's confirm after every message: one round trip
per task. A confirmed batch publishes every message on one confirm-mode channel and then waits for all the
confirms together, so the round trips overlap. It ends only when RabbitMQ has confirmed every message,
and raises ``BulkPublishError`` naming the task ids it refused (a full queue nacks with reject-publish) or
did not confirm in time.

* ``confirmed_batch()``: a context in which every task message the thread sends (apply_async, delay, a
  group, a chord's header; apps/core/amqp.py routes them here) joins the batch. Messages go through
  Celery's normal send path, so routing, delayed delivery and the size guard are as for ``apply_async``.
  The dataset chunk fan-out (a chord) and ``manage.py demo`` use it; ``ConfirmedBatch.publish`` takes
  ready-made messages (dead-letter replays).
* ``enqueue_many(signatures)``: a batch of signatures, with message templates on top (``_Templates``).

Done once per batch instead of once per message (each was a tenth to a quarter of the time in the
profile, docs/benchmarks.md): the topology's queues are declared once, and the ``task-sent`` events (the
ledger's QUEUED) leave as one message after the confirms, for the accepted messages only.
"""
from __future__ import annotations

import logging
import socket
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from functools import partial

from celery import Signature, signals
from celery.result import AsyncResult
from kombu.utils.uuid import uuid

from apps.core import compat
from apps.core.amqp import set_active_batch, set_recorder
from apps.core.events import event_producer
from apps.core.single import (derivable_task, derive_message, record_template, send_after_publish,
                              send_before_publish, sent_event_for)
from project import topology
from project.celery import app

logger = logging.getLogger(__name__)

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
    """Stands in for Celery's event dispatcher during a batch: collects the task-sent events."""

    def __init__(self):
        self.dispatcher = app.events.Dispatcher(enabled=False)  # stamps clock, hostname, pid like Celery's
        self.events: list[dict] = []

    def publish(self, type, fields, producer, **kwargs):
        """What Celery's task sender calls with a message's task-sent event (its ``event_dispatcher``)."""
        self.events.append(compat.prepare_task_sent_event(self.dispatcher, fields))

    def send(self, connection, accepted: set[str]) -> None:
        batch = [event for event in self.events if event["uuid"] in accepted]
        if batch:  # one message, "task.multi": the ledger recorder and the live feed read lists
            compat.publish_task_sent_events(self.dispatcher, batch, event_producer(connection))


class ConfirmedBatch:
    """One confirm-mode channel whose publishes are confirmed together by ``settle``."""

    def __init__(self, connection):
        self.connection = connection
        self.channel = connection.channel()
        self.channel.confirm_select()
        self.tracker = _ConfirmTracker(self.channel)
        compat.publish_without_confirm_wait(self.channel, self._count_publish)  # confirms collected by settle()
        self.producer = app.amqp.Producer(self.channel, auto_declare=False)
        queues = topology.work_queues()
        for queue in queues:
            self.producer.maybe_declare(queue)  # cached per connection: a no-op after the first batch
        self.declared = {queue.name for queue in queues}
        self.sent_events = _SentEvents()
        self.tasks: list[tuple[int, str]] = []  # (delivery tag, task id) of every task message
        self.not_enqueued_handlers: dict[str, Callable[[str], None]] = {}

    def _count_publish(self) -> None:
        self.tracker.published += 1

    def publish(self, body: bytes, **kwargs) -> int:
        """Publish a ready-made message (``serializer=None``); returns its delivery tag for ``state``."""
        self.producer.publish(body, **kwargs)
        return self.tracker.published

    def track_task(self, task_id: str) -> None:
        """Called right after a task message was published on this batch's channel."""
        self.tasks.append((self.tracker.published, task_id))

    def state(self, tag: int) -> str | None:
        """"acked", "nacked" (refused: a full queue), or None (not confirmed)."""
        return self.tracker.state(tag)

    def if_not_enqueued(self, task_id: str, handler: Callable[[str], None]) -> None:
        """Call ``handler(reason)`` when the batch ends if RabbitMQ refused the task's message or did not
        confirm it: what a caller would do at once outside a batch, where apply_async raises."""
        self.not_enqueued_handlers[task_id] = handler

    def run_not_enqueued_handlers(self, timeout: float) -> None:
        for tag, task_id in self.tasks:
            handler = self.not_enqueued_handlers.get(task_id)
            state = self.state(tag)
            if handler is None or state == "acked":
                continue
            reason = ("refused by RabbitMQ (queue full)" if state == "nacked"
                      else f"not confirmed by RabbitMQ within {timeout}s")
            try:
                handler(reason)
            except Exception:  # noqa: BLE001 - the batch's own error is what the caller must see
                logger.exception("handling task %s not enqueued (%s) failed", task_id, reason)

    def settle(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while not self.tracker.settled() and time.monotonic() < deadline:
            try:
                self.connection.drain_events(timeout=max(0.01, deadline - time.monotonic()))
            except socket.timeout:
                break

    def send_sent_events(self) -> None:
        self.sent_events.send(self.connection, {task_id for tag, task_id in self.tasks if self.state(tag) == "acked"})

    def failure(self, timeout: float) -> BulkPublishError | None:
        refused = [task_id for tag, task_id in self.tasks if self.state(tag) == "nacked"]
        unconfirmed = [task_id for tag, task_id in self.tasks if self.state(tag) is None]
        if not (refused or unconfirmed):
            return None
        return BulkPublishError(
            f"{len(refused)} of {len(self.tasks)} messages refused by RabbitMQ (queue full?) and "
            f"{len(unconfirmed)} not confirmed within {timeout}s; the others were accepted", refused, unconfirmed)

    def close(self) -> None:
        try:
            self.channel.close()
        except Exception:  # noqa: BLE001 - the connection may already be gone; the error that matters is raised
            pass


@contextmanager
def confirmed_batch(confirm_timeout: float = 30, raise_on_failure: bool = True) -> Iterator[ConfirmedBatch]:
    """Every task message this thread publishes inside joins one batch, confirmed when the block ends.

    On leaving the block: wait for RabbitMQ's confirms, send the task-sent events of the accepted ones,
    and raise ``BulkPublishError`` if any task message was refused or not confirmed (unless
    ``raise_on_failure`` is False: then the caller reads ``batch.state(tag)``). An exception inside the
    block is re-raised after what was already published has been settled.
    """
    # Errors are raised only after the connection is back in the pool: kombu closes a pooled connection
    # that an exception passes through and then still returns it to the pool, closed (kombu 5.7).
    error: BaseException | None = None
    with app.pool.acquire(block=True) as connection:
        batch = None
        try:
            batch = ConfirmedBatch(connection)
            previous = set_active_batch(batch)
            try:
                yield batch
            except Exception as exc:  # noqa: BLE001 - re-raised below, after settling
                error = exc
            finally:
                set_active_batch(previous)
            batch.settle(confirm_timeout)
            batch.send_sent_events()
            batch.run_not_enqueued_handlers(confirm_timeout)
            if error is None and raise_on_failure:
                error = batch.failure(confirm_timeout)
        except Exception as exc:  # noqa: BLE001 - re-raised below, outside the pooled connection's context
            error = error or exc
        finally:
            if batch is not None:
                batch.close()
    if error is not None:
        raise error


class _Templates:
    """Messages derived from the first one Celery built, per task name, within one ``enqueue_many`` call.

    Celery's per-message work (routing, option merging, building the protocol-2 message, configuration
    lookups) was most of what bulk enqueue spent per message after the confirms overlapped
    (docs/benchmarks.md). A signature with no options of its own whose task already has a template in
    this call gets a copy of that message with what differs per call replaced, as for a single call
    (apps/core/single.py: ``record_template``, ``derive_message``): the id (and the root id when the
    template was its own root), the arguments and their reprs, the body, and its task-sent event; the
    publish signals are sent per message when anything listens. The size guard applies to every body.
    Anything else, and every signature on versions the derivation was not proven on, goes through Celery.
    """

    def __init__(self, batch: ConfirmedBatch):
        self.batch = batch
        self.by_task: dict = {}  # task name -> single.Template
        self.derivable: dict[str, bool] = {}  # task name -> whether its plain calls can be derived

    def eligible(self, signature: Signature) -> bool:
        if type(signature) is not Signature or signature.options or not compat.derivation_enabled():
            return False
        derivable = self.derivable.get(signature.task)
        if derivable is None:
            task = app.tasks.get(signature.task)
            derivable = self.derivable[signature.task] = task is not None and derivable_task(task)
        return derivable

    def _keep(self, task_name: str, send, producer, name, message, **kwargs):
        """The recorder apps/core/amqp.py calls with the signature's message: publish it, keep its template."""
        sent, template = record_template(app, send, producer, name, message, **kwargs)
        if template is not None and name == task_name:
            self.by_task[name] = template
        return sent

    def record(self, signature: Signature) -> AsyncResult:
        """Publish ``signature`` through Celery on the batch, keeping its message as its task's template."""
        set_recorder(partial(self._keep, signature.task))
        try:
            return signature.apply_async(producer=self.batch.producer)
        finally:
            set_recorder(None)

    def send(self, signature: Signature) -> AsyncResult | None:
        template = self.by_task.get(signature.task)
        if template is None:
            return None
        name, task_id, args, kwargs = signature.task, uuid(), tuple(signature.args), dict(signature.kwargs)
        compat.check_call_arguments(app.tasks[name], args, kwargs)  # TypeError for a wrong call, as Celery raises
        body, headers = derive_message(name, template, args, kwargs, task_id)
        properties = {**template.signal_properties, "correlation_id": task_id, "reply_to": app.thread_oid}
        if signals.before_task_publish.receivers:
            send_before_publish(name, template, body, headers, properties)
        self.batch.producer.publish(body, **{**template.publish_kwargs, **properties, "headers": headers})
        self.batch.track_task(task_id)
        if signals.after_task_publish.receivers:
            send_after_publish(name, template, body, headers)
        if template.sent_event is not None:
            self.batch.sent_events.events.append(compat.prepare_task_sent_event(
                self.batch.sent_events.dispatcher, sent_event_for(template.sent_event, headers)))
        result = app.tasks[name].AsyncResult(task_id)
        result.ignored = template.ignore_result
        if not template.own_root:  # sent from a running task: its child, as Celery's send_task records it
            parent = app.current_worker_task
            if parent is not None:
                parent.add_trail(result)
        return result


def enqueue_many(signatures: Iterable[Signature], confirm_timeout: float = 30) -> list[AsyncResult]:
    """Publish every signature; return their results once RabbitMQ confirmed all of them."""
    results: list[AsyncResult] = []
    with confirmed_batch(confirm_timeout) as batch:
        templates = _Templates(batch)
        for signature in signatures:
            eligible = templates.eligible(signature)
            result = templates.send(signature) if eligible else None
            if result is None and eligible:
                result = templates.record(signature)
            elif result is None:
                # Joins the batch either way (apps/core/amqp.py); passing its producer saves a pool checkout.
                producer = {"producer": batch.producer} if type(signature) is Signature else {}
                result = signature.apply_async(**producer)
            results.append(result)
    return results
