"""The event recorder: Celery task events from RabbitMQ into the ledger, in batches.

Why events and not a database write when a task is published: the publish path stays a single
confirmed publish (plus the task-sent event Celery sends anyway, settings.CELERY_TASK_SEND_SENT_EVENT),
and workers write nothing extra per task. One recorder process consumes a durable queue bound to the
``celeryev`` exchange, so events published while it restarts wait for it; it acks a batch only after
the batch is committed (a crash replays the batch; applying an event twice is harmless).

It also consumes worker events (heartbeats, announcements, goodbyes) from ``core.worker_heartbeats`` into
the worker registry (apps/core/workers.py), which `health`, `stats/` and `workers/` answer from.
"""
from __future__ import annotations

import logging
import socket
import threading
import time
from collections import defaultdict

from django.db import IntegrityError, InterfaceError, OperationalError, close_old_connections, transaction
from django.utils import timezone
from kombu import Consumer, Exchange, Queue

from apps.control import ledger, states
from apps.control.models import DeadLetter, TaskRecord
from apps.core import cluster
from apps.core.broker import TRANSIENT_ERRORS, describe
from apps.core import workers

logger = logging.getLogger(__name__)

LEDGER_QUEUE = "control.ledger"
EVENT_EXCHANGE = "celeryev"
# Bounded so a recorder that stays down cannot fill the broker: the oldest events are dropped first.
LEDGER_QUEUE_MAX_LENGTH = 1_000_000
EVENT_FIELDS = [
    "name", "state", "queue", "worker", "attempts", "retries", "args", "kwargs", "call", "result", "error",
    "traceback", "progress_step", "progress_message", "progress_current", "progress_total", "parent_id",
    "root_id", "eta", "sent_at", "started_at", "finished_at", "runtime", "last_event_at", "provisional",
    "updated_at",
]


def event_exchange() -> Exchange:
    return Exchange(EVENT_EXCHANGE, type="topic", durable=True)


def ledger_queue() -> Queue:
    return Queue(LEDGER_QUEUE, event_exchange(), routing_key="task.#", durable=True,
                 queue_arguments={"x-max-length": LEDGER_QUEUE_MAX_LENGTH})


def task_events(bodies) -> list[dict]:
    events = []
    for body in bodies:
        for event in body if isinstance(body, list) else [body]:  # grouped events arrive as lists
            if isinstance(event, dict) and str(event.get("type", "")).startswith("task-") and event.get("uuid"):
                events.append(event)
    return events


def worker_events(bodies) -> list[dict]:
    return [event for body in bodies for event in (body if isinstance(body, list) else [body])
            if isinstance(event, dict) and str(event.get("type", "")).startswith("worker-")]


def _by_task(events: list[dict]) -> dict[str, list[dict]]:
    by_id: dict[str, list[dict]] = defaultdict(list)
    for event in events:
        by_id[str(event["uuid"])].append(event)
    return by_id


def record_events(events: list[dict]) -> int:
    """Apply events to the ledger in one transaction; return the number of rows touched.

    Most tasks start and finish within one batch, so their rows are built in memory and inserted in
    one bulk insert; only rows that already exist are updated.
    """
    by_id = _by_task(events)
    if not by_id:
        return 0
    ids = list(by_id)
    now = timezone.now()
    with transaction.atomic():
        existing = {r.task_id: r for r in TaskRecord.objects.select_for_update().filter(task_id__in=ids)}
        fresh = [TaskRecord(task_id=task_id) for task_id in ids if task_id not in existing]
        records = list(existing.values()) + fresh
        for record in records:
            for event in sorted(by_id[record.task_id], key=lambda e: float(e.get("timestamp") or 0)):
                ledger.apply_event(record, event)
            record.updated_at = now
        _note_dead_letters([r for r in records if r.state == states.FAILURE])
        if existing:
            TaskRecord.objects.bulk_update(list(existing.values()), EVENT_FIELDS, batch_size=100)
        if fresh:
            try:
                with transaction.atomic():
                    TaskRecord.objects.bulk_create(fresh, batch_size=500)
            except IntegrityError:
                # Someone (record_owner, a retry) created one of these rows meanwhile: take the slow path.
                _record_over_existing_rows({r.task_id: by_id[r.task_id] for r in fresh}, now)
    return len(records)


# The database is away, or chose this transaction as a deadlock victim: the batch is replayed later.
DATABASE_AWAY = (OperationalError, InterfaceError)


def record_batch(events: list[dict]) -> int:
    """``record_events``, except that one task's bad events never hold up the others.

    Events come from any client of the vhost. A batch that fails for another reason than the database
    being away (a malformed field, a value the database refuses) used to fail whole, be redelivered and
    fail again, so the ledger stopped (a CI run: 5 minutes on one event whose arguments did not fit the
    ``call`` column). Such a batch is recorded again task by task; the events of a task that still fails
    are logged with the reason and dropped.
    """
    try:
        return record_events(events)
    except DATABASE_AWAY:
        raise
    except Exception:  # noqa: BLE001  (whatever a bad event makes the ledger code raise)
        logger.warning("Recorder batch of %d events failed; recording it task by task", len(events), exc_info=True)
    recorded = 0
    for task_id, task_events_ in _by_task(events).items():
        try:
            recorded += record_events(task_events_)
        except DATABASE_AWAY:
            raise
        except Exception as exc:  # noqa: BLE001
            logger.error("Recorder dropped %d event(s) of task %s it could not apply (%s: %s): %s",
                         len(task_events_), task_id, exc.__class__.__name__, exc,
                         [e.get("type") for e in task_events_])
    return recorded


def _record_over_existing_rows(by_id: dict[str, list[dict]], now) -> None:
    TaskRecord.objects.bulk_create([TaskRecord(task_id=task_id) for task_id in by_id], ignore_conflicts=True)
    records = list(TaskRecord.objects.select_for_update().filter(task_id__in=list(by_id)))
    for record in records:
        for event in sorted(by_id[record.task_id], key=lambda e: float(e.get("timestamp") or 0)):
            ledger.apply_event(record, event)
        record.updated_at = now
    _note_dead_letters([r for r in records if r.state == states.FAILURE])
    TaskRecord.objects.bulk_update(records, EVENT_FIELDS, batch_size=100)


def _note_dead_letters(failed: list[TaskRecord]) -> None:
    """A failure whose message was dead-lettered before this event arrived still says where it went."""
    if not failed:
        return
    notes = {letter.task_id: f"dead-lettered to {letter.dead_letter_queue} ({letter.reason}): {letter.detail}"
             for letter in DeadLetter.objects.filter(task_id__in=[r.task_id for r in failed], replayed_at__isnull=True)}
    for record in failed:
        note = notes.get(record.task_id)
        if note and note not in record.error:
            record.error = f"{note}; worker reported {record.error}" if record.error else note


class Recorder:
    def __init__(self, broker_url: str, batch_size: int = 500, flush_interval: float = 0.25):
        self.broker_url = broker_url
        self.batch_size = batch_size
        self.flush_interval = flush_interval
        self.stopping = threading.Event()
        self.recorded = 0

    def run(self) -> None:
        while not self.stopping.is_set():
            try:
                self._consume()
            except TRANSIENT_ERRORS as exc:  # includes 541 noproc / 320 on a node restart: no traceback
                logger.warning("Recorder lost the broker (%s); reconnecting in 2 s", describe(exc))
                self.stopping.wait(2)
            except Exception as exc:  # noqa: BLE001  (kombu/amqp connection errors have no common base)
                if self.stopping.is_set():
                    break
                logger.exception("Recorder error (%s); reconnecting in 2 s", exc)
                self.stopping.wait(2)

    def _consume(self) -> None:
        pending: list = []

        def on_message(body, message):
            pending.append((body, message))

        with cluster.connection(self.broker_url, heartbeat=30) as connection:
            connection.ensure_connection(max_retries=3)
            # Task events for the ledger; worker heartbeats for the worker registry (fast status).
            with Consumer(connection, queues=[ledger_queue(), workers.heartbeat_queue()], callbacks=[on_message],
                          accept=["json"], prefetch_count=self.batch_size):
                logger.info("Recorder consuming %s", LEDGER_QUEUE)
                first_at = None
                while not self.stopping.is_set():
                    try:
                        connection.drain_events(timeout=self.flush_interval)
                    except socket.timeout:
                        connection.heartbeat_check()
                    if pending and first_at is None:
                        first_at = time.monotonic()
                    if pending and (len(pending) >= self.batch_size
                                    or time.monotonic() - first_at >= self.flush_interval):
                        self._flush(pending)
                        pending.clear()
                        first_at = None

    def _flush(self, pending: list) -> None:
        close_old_connections()
        bodies = [body for body, _ in pending]
        self.recorded += record_batch(task_events(bodies))
        try:
            workers.record_worker_events(worker_events(bodies))
        except DATABASE_AWAY:
            raise
        except Exception:  # noqa: BLE001  (a malformed worker event: the registry misses one heartbeat)
            logger.exception("Recorder dropped a batch of worker events it could not apply")
        pending[-1][1].ack(multiple=True)  # only after the commit: a crash replays, never loses
