"""Control actions (writes). Views, admin actions and commands call these; each one is audited."""
from __future__ import annotations

import getpass
import logging
import uuid
from datetime import timedelta

from django.conf import settings
from django.db import transaction
from django.utils import timezone

from apps.control import deadletters, selectors, states
from apps.control.errors import Conflict, ControlError, NotFound, Unavailable
from apps.control.models import ControlAction, DeadLetter, PausedQueue, TaskRecord
from apps.core.amqp import QueueFull
from apps.core.broker import BrokerUnavailable
from apps.core.bulk import confirmed_batch
from project import topology

logger = logging.getLogger(__name__)


def _app():
    from project.celery import app

    return app


# --- audit --------------------------------------------------------------------------------------------
def audit(actor, action: str, target: str = "", params: dict | None = None, outcome: dict | None = None) -> ControlAction:
    if actor is not None and getattr(actor, "is_authenticated", False):
        name, user = actor.get_username(), actor
    else:
        name, user = f"cli:{_os_user()}", None
    return ControlAction.objects.create(actor=user, actor_name=name, action=action, target=target[:500],
                                        params=params or {}, outcome=outcome or {})


def _os_user() -> str:
    try:
        return getpass.getuser()
    except Exception:  # noqa: BLE001
        return "unknown"


# --- ownership (per-user live stream) -----------------------------------------------------------------
def record_owner(task_id: str, user) -> None:
    """Say whose task this is, so the user's live stream and task list include it. Call from the service
    that enqueues the task (one write in the request, not in the publish path)."""
    TaskRecord.objects.bulk_create([TaskRecord(task_id=task_id)], ignore_conflicts=True)
    TaskRecord.objects.filter(task_id=task_id).update(owner=user)


# --- cancel / retry -------------------------------------------------------------------------------------
def cancel_task(task_id: str, actor=None, force: bool = False) -> TaskRecord:
    """Queued: never starts (revoked everywhere + a flag every worker loads at start). Running: the task
    stops at its next ``raise_if_cancelled``; ``force`` also terminates it (prefork only)."""
    app = _app()
    with transaction.atomic():
        record = TaskRecord.objects.select_for_update().filter(task_id=task_id).first()
        if record is None:
            raise NotFound(f"no task with id {task_id!r} in the ledger")
        if record.state in states.TERMINAL and not (record.provisional and record.state == states.CANCELLED):
            raise Conflict(f"task {task_id} already finished ({record.state}); only queued or running tasks can be cancelled")
        if force and record.state not in states.RUNNING:
            raise ControlError(f"force applies to running tasks; task {task_id} is {record.state}")
        pool = _pool_for_queue(record.queue)
        if force and pool != "prefork":
            raise ControlError(f"forced termination needs a prefork worker; queue {record.queue!r} runs on "
                               f"{pool or 'an unknown pool'}: cancel without force (cooperative)")
        was = record.state
        record.cancel_requested_at = record.cancel_requested_at or timezone.now()
        if record.state in (states.QUEUED, states.RETRY):
            record.state, record.provisional = states.CANCELLED, True
            record.finished_at = timezone.now()
        record.save()
    # SIGKILL, not Celery's default SIGTERM: the worker start scripts set REMAP_SIGTERM=SIGQUIT (soft shutdown,
    # issue 14), and billiard then makes pool children ignore SIGTERM (billiard.common.TERMSIGS_IGNORE). A
    # SIGTERM "terminate" left the task running to its end while the pool took the child for dead, and a task
    # later given to that child was received and never started (CI, 2026-12-02).
    app.control.revoke(task_id, terminate=force, signal="SIGKILL")
    audit(actor, "task.cancel", task_id, {"force": force}, {"state_before": was, "state": record.state})
    return record


def _pool_for_queue(queue: str) -> str | None:
    lane = topology.LANES_BY_NAME.get(queue)
    return topology.ROLES[lane.role]["pool"] if lane else None


def retry_task(task_id: str, actor=None) -> TaskRecord:
    """Republish the stored call under a new id linked to the old one."""
    app = _app()
    record = TaskRecord.objects.filter(task_id=task_id).first()
    if record is None:
        raise NotFound(f"no task with id {task_id!r} in the ledger")
    if record.state not in states.TERMINAL:
        raise Conflict(f"task {task_id} is {record.state}; only finished tasks can be retried (cancel it first)")
    if not record.name or record.call is None:
        raise Conflict(f"the call of task {task_id} is not known (its arguments were too large to record), "
                       "so it cannot be retried from the ledger")
    if record.name not in deadletters.registered_tasks():
        raise Conflict(f"task {record.name!r} no longer exists in this project; nothing was published")
    new_id = str(uuid.uuid4())
    TaskRecord.objects.create(task_id=new_id, name=record.name, queue=record.queue, retry_of=task_id,
                              owner=record.owner, args=record.args, kwargs=record.kwargs, call=record.call,
                              sent_at=timezone.now(), provisional=True)
    try:
        app.send_task(record.name, args=record.call["args"], kwargs=record.call["kwargs"], task_id=new_id)
    except Exception as exc:
        TaskRecord.objects.filter(task_id=new_id).delete()
        raise Unavailable(f"could not publish the retry: {exc}") from exc
    audit(actor, "task.retry", task_id, {}, {"new_task_id": new_id})
    return TaskRecord.objects.get(task_id=new_id)


# --- queues -----------------------------------------------------------------------------------------------
def _check_work_queue(name: str) -> None:
    if name not in topology.LANES_BY_NAME:
        raise NotFound(f"unknown queue {name!r}; work queues: {', '.join(topology.LANES_BY_NAME)}")


def pause_queue(name: str, actor=None, reason: str = "") -> PausedQueue:
    _check_work_queue(name)
    paused, created = PausedQueue.objects.get_or_create(
        queue=name, defaults={"paused_by": actor if getattr(actor, "is_authenticated", False) else None,
                              "reason": reason[:500]})
    if not created:
        raise Conflict(f"queue {name!r} is already paused (since {paused.paused_at:%Y-%m-%d %H:%M:%S} UTC)")
    replies = _app().control.broadcast("control_pause_queue", arguments={"queue": name}, reply=True, timeout=2)
    audit(actor, "queue.pause", name, {"reason": reason}, {"workers": _reply_map(replies)})
    return paused


def resume_queue(name: str, actor=None) -> dict:
    _check_work_queue(name)
    deleted, _ = PausedQueue.objects.filter(queue=name).delete()
    if not deleted:
        raise Conflict(f"queue {name!r} is not paused")
    replies = _app().control.broadcast("control_resume_queue", arguments={"queue": name}, reply=True, timeout=2)
    outcome = {"workers": _reply_map(replies)}
    audit(actor, "queue.resume", name, {}, outcome)
    return outcome


def _reply_map(replies) -> dict:
    out = {}
    for reply in replies or []:
        for host, answer in reply.items():
            out[host] = answer.get("ok") or answer.get("error") if isinstance(answer, dict) else str(answer)
    return out


# --- workers ------------------------------------------------------------------------------------------
def _require_online(hostname: str) -> None:
    if not _app().control.ping(destination=[hostname], timeout=1.5):
        raise NotFound(f"no worker named {hostname!r} is online")


def restart_pool(hostname: str, actor=None) -> dict:
    _require_online(hostname)
    replies = _app().control.pool_restart(destination=[hostname], reply=True, timeout=5)
    outcome = _reply_map(replies)
    audit(actor, "worker.pool_restart", hostname, {}, outcome)
    answer = outcome.get(hostname)
    if answer is None:
        raise Unavailable(f"worker {hostname} did not answer the pool restart")
    if "not" in str(answer).lower() and "restart" in str(answer).lower() or "error" in str(answer).lower():
        raise Conflict(f"worker {hostname} refused the pool restart: {answer}")
    return outcome


def shutdown_worker(hostname: str, actor=None) -> dict:
    _require_online(hostname)
    _app().control.shutdown(destination=[hostname])
    audit(actor, "worker.shutdown", hostname, {}, {"sent": True})
    return {"hostname": hostname, "shutdown": "requested (warm: running tasks finish first)"}


# --- dead letters ---------------------------------------------------------------------------------------
# A skipped replay's ``code``: already_replayed, unknown_task, queue_full or unconfirmed. These two leave
# the letter stored and not enqueued (replay it again later):
NOT_ENQUEUED = frozenset({"queue_full", "unconfirmed"})


def replay_dead_letters(letters, actor=None) -> dict:
    """Republish each to its original route, all in one confirmed batch; skip those whose task no longer
    exists. Only letters RabbitMQ confirmed are marked replayed; a refused one (its queue is at its bound)
    or one not confirmed in time stays stored. Each entry of ``skipped`` has the letter's ``id``, a ``code``
    for programs and a ``reason`` for people."""
    registered = deadletters.registered_tasks()
    replayed, skipped, to_publish = [], [], []
    for letter in letters:
        if letter.replayed_at:
            skipped.append({"id": letter.id, "code": "already_replayed", "reason": "already replayed"})
        elif letter.task_name not in registered:
            skipped.append({"id": letter.id, "code": "unknown_task",
                            "reason": f"task {letter.task_name!r} no longer exists" if letter.task_name
                            else "not a Celery task message (no task header)"})
        else:
            to_publish.append(letter)
    if to_publish:
        _reopen([letter for letter in to_publish if letter.task_id])
        with confirmed_batch(raise_on_failure=False) as batch:
            published = [(letter, deadletters.publish_again(batch, letter)) for letter in to_publish]
        for letter, tag in published:
            state = batch.state(tag)
            if state == "acked":
                _mark_replayed(letter, actor)
                replayed.append(letter.id)
                continue
            _failed_again(letter)
            if state == "nacked":
                queue = deadletters.replay_route(letter)[1]
                skipped.append({"id": letter.id, "code": "queue_full",
                                "reason": f"refused by RabbitMQ: queue {queue} is full; still stored, replay it later"})
            else:
                skipped.append({"id": letter.id, "code": "unconfirmed",
                                "reason": "not confirmed by RabbitMQ in time; still stored (it may also have been "
                                          "enqueued: check the task in the ledger)"})
    outcome = {"replayed": replayed, "skipped": skipped}
    audit(actor, "deadletter.replay", ",".join(map(str, replayed))[:500], {"count": len(replayed) + len(skipped)}, outcome)
    return outcome


def _reopen(letters) -> None:
    """Before the publish: the ledger follows each task again from QUEUED. Done first because the
    replayed run can start, and its events arrive, before the confirm does."""
    for letter in letters:
        TaskRecord.objects.filter(task_id=letter.task_id).update(
            state=states.QUEUED, provisional=False, last_event_at=None, finished_at=None, sent_at=timezone.now(),
            reopened_at=letter.stored_at)


def _failed_again(letter) -> None:
    """RabbitMQ refused the replay or did not confirm it: FAILURE again, provisional (an unconfirmed
    publish may still have been enqueued, and then its run's events say what really happened)."""
    if letter.task_id:
        TaskRecord.objects.filter(task_id=letter.task_id, state=states.QUEUED).update(
            state=states.FAILURE, provisional=True, finished_at=timezone.now())


def _mark_replayed(letter, actor) -> None:
    DeadLetter.objects.filter(pk=letter.pk).update(
        replayed_at=timezone.now(), replayed_by=actor if getattr(actor, "is_authenticated", False) else None)


def replay_one(letter_id: int, actor=None) -> dict:
    letter = DeadLetter.objects.filter(pk=letter_id).first()
    if letter is None:
        raise NotFound(f"no dead letter with id {letter_id}")
    if letter.replayed_at:
        raise Conflict(f"dead letter {letter_id} was already replayed at {letter.replayed_at:%Y-%m-%d %H:%M:%S} UTC")
    if letter.task_name not in deadletters.registered_tasks():
        raise Conflict(f"dead letter {letter_id} is for task {letter.task_name!r}, which no longer exists in this "
                       "project; nothing was published (purge it instead)")
    outcome = replay_dead_letters([letter], actor)
    for skipped in outcome["skipped"]:  # one letter: RabbitMQ refused it, or did not confirm it in time
        if skipped["code"] == "queue_full":
            raise QueueFull(f"dead letter {letter_id} not replayed: {skipped['reason']}")
        raise Unavailable(f"dead letter {letter_id}: {skipped['reason']}")
    return outcome


def purge_dead_letters(letters_qs, actor=None, filters: dict | None = None) -> int:
    ids = list(letters_qs.values_list("id", flat=True))
    deleted, _ = DeadLetter.objects.filter(id__in=ids).delete()
    audit(actor, "deadletter.purge", "", filters or {}, {"deleted": deleted})
    return deleted


def refresh_dead_letters() -> int:
    """Drain the dead-letter queues into the store; ``Unavailable`` (503) names any queue RabbitMQ could not
    serve, after a short retry, and why."""
    try:
        return deadletters.drain()
    except BrokerUnavailable as exc:
        raise Unavailable(str(exc)) from exc


# --- LOST -------------------------------------------------------------------------------------------------
def sweep_lost(lost_after: int | None = None) -> list[str]:
    """Mark LOST the tasks that nobody holds any more. A task is LOST when all of these hold:
    * it is QUEUED, STARTED, PROGRESS or RETRY and no event about it arrived for ``lost_after`` seconds
      (CONTROL_LOST_AFTER), and it is not due later (ETA);
    * no online worker of this deployment reports it as active, reserved or scheduled (a worker of
      another stack on the same vhost does not count: it runs the task against another database);
    * its queue holds no ready message at all (so the broker cannot be holding it) and none of its
      dead letters is waiting in ``<queue>.dead``. A row whose queue the ledger never learnt (its
      task-sent event went elsewhere: to another stack's recorder on a shared vhost) is placed by its
      task name's route; with no name either, every work queue must be empty.
    When the broker or the workers cannot be asked, nothing is marked (unknown is not LOST).
    """
    lost_after = settings.CONTROL_LOST_AFTER if lost_after is None else lost_after
    now = timezone.now()
    cutoff = now - timedelta(seconds=lost_after)
    candidates = list(TaskRecord.objects.filter(state__in=states.ACTIVE, updated_at__lt=cutoff)
                      .exclude(eta__gt=cutoff).values_list("task_id", "name", "queue"))
    if not candidates:
        return []
    try:
        held = selectors.task_ids_held_by_workers()
        depths = selectors.queue_depth_map()
    except Exception as exc:  # noqa: BLE001  (can't tell: leave them)
        logger.warning("LOST sweep skipped: %s", exc)
        return []

    def nothing_waiting(queue: str) -> bool:
        queues = [queue] if queue else [lane.name for lane in topology.LANES]
        # A dead-letter queue not declared yet holds nothing; a work queue that is missing cannot tell.
        return all(depths.get(q) == 0 and not depths.get(topology.dead_letter_queue_name(q)) for q in queues)

    lost = [task_id for task_id, name, queue in candidates
            if task_id not in held and nothing_waiting(queue or _routed_queue(name))]
    if lost:
        TaskRecord.objects.filter(task_id__in=lost, state__in=states.ACTIVE, updated_at__lt=cutoff).update(
            state=states.LOST, provisional=True, finished_at=now,
            error=f"no event for {lost_after}s, no worker of this deployment holds it and its queue is empty")
    return lost


def _routed_queue(task_name: str) -> str:
    """The queue the task's route sends it to ("" when the name is unknown or routes nowhere)."""
    if not task_name:
        return ""
    try:
        queue = _app().amqp.router.route({}, task_name).get("queue")
    except Exception:  # noqa: BLE001  (an unroutable name: treat as unknown)
        return ""
    name = getattr(queue, "name", queue) or ""
    return name if name in topology.LANES_BY_NAME else ""
