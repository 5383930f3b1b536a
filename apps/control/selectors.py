"""Reads: the ledger, queue depths, workers. No writes here."""
from __future__ import annotations

from django.contrib.auth import get_user_model
from django.db.models import Count, F, Min
from django.utils import timezone

from apps.control import states
from apps.control.errors import Unavailable
from apps.control.models import DeadLetter, PausedQueue, TaskRecord
from apps.core.broker import BrokerUnavailable, queue_depths
from apps.core.health import worker_report
from apps.core.prepared import PreparedRead
from apps.core.workers import held_task_ids
from project import topology


def _app():
    from project.celery import app

    return app


def tasks_visible_to(user):
    qs = TaskRecord.objects.all()
    return qs if user.is_staff else qs.filter(owner=user)


def with_owner_name(tasks):
    """Tasks with ``owner_username`` (what TaskSerializer shows as owner) from a join: no User row built."""
    return tasks.annotate(owner_username=F(f"owner__{get_user_model().USERNAME_FIELD}"))


# The task detail read, compiled once (apps/core/prepared.py): staff see every task, others their own.
_ANY_TASK = PreparedRead(TaskRecord, lambda task_id: with_owner_name(TaskRecord.objects.filter(task_id=task_id))
                         .order_by(), task_id=str)
_OWN_TASK = PreparedRead(TaskRecord, lambda task_id, owner_id: with_owner_name(
    TaskRecord.objects.filter(task_id=task_id, owner_id=owner_id)).order_by(), task_id=str, owner_id=int)


def task_visible_to(user, task_id: str) -> TaskRecord | None:
    """The task ``task_id`` if ``user`` may see it (as ``tasks_visible_to``), with ``owner_username``."""
    if user.is_staff:
        return _ANY_TASK.first(task_id=task_id)
    return _OWN_TASK.first(task_id=task_id, owner_id=user.pk)


def queue_depth_map() -> dict[str, int | None]:
    """Messages per queue; None where the queue is not declared or RabbitMQ could not say (after a short retry).
    Raises ``BrokerUnavailable`` when RabbitMQ cannot be reached at all."""
    return {d.name: d.messages for d in queue_depths(topology.all_queue_names())}


def workers(timeout: float = 1.5, live: bool = False) -> list[dict]:
    """Online workers: role, pool, concurrency, queues, the tasks each is running, and how old that is.

    By default from what is already known: the recorder's worker registry (apps/core/workers.py), paused
    queues taken out, running tasks from the ledger. ``live``: a broadcast inspection (waits ``timeout``)."""
    if live:
        return worker_report(timeout=timeout, include_active=True, live=True)
    paused = set(PausedQueue.objects.values_list("queue", flat=True))
    found = worker_report(live=False)
    running: dict[str, list[dict]] = {}
    for task_id, name, hostname, started in TaskRecord.objects.filter(
            state__in=states.RUNNING, worker__in=[w["hostname"] for w in found]).values_list(
            "task_id", "name", "worker", "started_at"):
        running.setdefault(hostname, []).append({"id": task_id, "name": name,
                                                 "started": started.timestamp() if started else None})
    for worker in found:
        worker["queues"] = [q for q in worker["queues"] if q not in paused]
        worker["active_tasks"] = running.get(worker["hostname"], [])
    return found


def task_ids_held_by_workers(timeout: float = 1.5) -> set[str]:
    """Tasks this deployment's workers hold right now (a broadcast; foreign workers do not count)."""
    return held_task_ids(timeout=timeout)


def queues_status(with_depths: bool = True) -> list[dict]:
    """Each work queue: pause state, depths, dead letters. A queue RabbitMQ could not answer for has its depths
    as None and ``unavailable`` saying why; RabbitMQ unreachable raises ``Unavailable`` (503, one line)."""
    paused = {p.queue: p for p in PausedQueue.objects.all()}
    try:
        answers = {d.name: d for d in queue_depths(topology.all_queue_names())} if with_depths else {}
    except (BrokerUnavailable, OSError) as exc:
        raise Unavailable(str(exc)) from exc
    depths = {name: d.messages for name, d in answers.items()}
    out = []
    for lane in topology.LANES:
        p = paused.get(lane.name)
        dead = topology.dead_letter_queue_name(lane.name)
        problems = [answers[n].unavailable for n in (lane.name, dead) if n in answers and answers[n].unavailable]
        out.append({
            "name": lane.name, "role": lane.role, "paused": p is not None,
            "unavailable": "; ".join(problems) or None,
            "paused_at": p.paused_at if p else None, "paused_reason": p.reason if p else "",
            "messages": depths.get(lane.name),
            "dead_letter_queue": topology.dead_letter_queue_name(lane.name),
            "dead_letter_messages": depths.get(topology.dead_letter_queue_name(lane.name)),
            "dead_letters_stored": DeadLetter.objects.filter(queue=lane.name, replayed_at__isnull=True).count(),
        })
    return out


def state_counts() -> dict:
    by_state = dict(TaskRecord.objects.values_list("state").annotate(n=Count("id")).values_list("state", "n"))
    by_queue: dict[str, dict[str, int]] = {}
    for queue, state, n in TaskRecord.objects.values_list("queue", "state").annotate(n=Count("id")):
        by_queue.setdefault(queue or "unknown", {})[state] = n
    return {"by_state": {s: by_state.get(s, 0) for s in states.ALL}, "by_queue": by_queue}


def oldest_queued_age(now=None) -> dict[str, float]:
    """Seconds since the oldest task still QUEUED in each queue was published (from the ledger). A task
    due later (countdown/ETA) is not waiting for a worker yet, so it does not count until it is due."""
    now = now or timezone.now()
    rows = (TaskRecord.objects.filter(state=states.QUEUED).exclude(eta__gt=now)
            .values("queue").annotate(oldest=Min("sent_at")))
    return {r["queue"]: (now - r["oldest"]).total_seconds() for r in rows if r["oldest"] and r["queue"]}


def oldest_dead_letter_age(now=None) -> dict[str, float]:
    now = now or timezone.now()
    rows = DeadLetter.objects.filter(replayed_at__isnull=True).values("dead_letter_queue").annotate(
        oldest=Min("dead_at"), stored=Min("stored_at"))
    return {r["dead_letter_queue"]: (now - (r["oldest"] or r["stored"])).total_seconds() for r in rows}


def dead_letters_matching(ids=None, queues=None, reasons=None, task_name=None):
    """Dead letters selected by id, queue, reason and task name (each optional): the API and `manage.py dlq`."""
    qs = DeadLetter.objects.all()
    if ids:
        qs = qs.filter(id__in=ids)
    if queues:
        qs = qs.filter(queue__in=queues)
    if reasons:
        qs = qs.filter(reason__in=reasons)
    if task_name:
        qs = qs.filter(task_name=task_name)
    return qs
