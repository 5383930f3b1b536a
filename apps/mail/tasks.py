"""Mail tasks: thin adapters over services.deliver that own the retry and time-limit policy.

Two names for one body, one per lane (routes in settings by name): ``mail.send_message`` goes to the
transactional queue ``mail``, ``mail.bulk_send_message`` to ``mail_bulk``.
"""
from __future__ import annotations

import time

from celery import shared_task
from django.conf import settings

from apps.core.tasks import where_am_i
from apps.mail import services


class DeliveryFailed(Exception):
    """The message ended FAILED or TIMED_OUT: the task is a FAILURE too, so nobody mistakes it for sent."""


# Throttle waits up to this long are slept in the green thread; longer ones become a delayed retry.
INLINE_THROTTLE_WAIT = 5.0

TASK_OPTIONS = dict(
    bind=True,
    soft_time_limit=settings.MAIL_SEND_SOFT_TIME_LIMIT,  # enforced on eventlet by PlatformTask
    time_limit=settings.MAIL_SEND_TIME_LIMIT,
    # SMTP attempts are bounded by Message.max_attempts (in the database); this bounds the rest
    # (database errors, throttle deferrals, waiting for a dead worker's lease).
    max_retries=100,
)


def _deliver(task, message_id: int) -> str:
    soft_limit, _ = task.effective_time_limits()
    # Sleeping out a short throttle wait here is cheaper than a retry message, but never near the soft limit.
    inline_budget = min(INLINE_THROTTLE_WAIT, (soft_limit or 60) / 3)
    while True:
        outcome = services.deliver(message_id, task.request.id or "")
        if outcome.status == "THROTTLED" and outcome.retry_in <= inline_budget:
            inline_budget -= outcome.retry_in
            time.sleep(outcome.retry_in)  # green sleep: the hub serves other messages meanwhile
            continue
        break
    if outcome.status in ("RETRY", "THROTTLED", "BUSY"):
        raise task.retry(countdown=outcome.retry_in, exc=None)
    if outcome.status in ("FAILED", "TIMED_OUT"):
        raise DeliveryFailed(f"message {message_id} {outcome.status}: {outcome.detail}")
    return f"{outcome.status}: {outcome.detail}"[:500]


@shared_task(name="mail.send_message", **TASK_OPTIONS)
def send_message(self, message_id: int) -> str:
    """Deliver a transactional message (queue mail)."""
    return _deliver(self, message_id)


@shared_task(name="mail.bulk_send_message", ignore_result=True, **TASK_OPTIONS)
def bulk_send_message(self, message_id: int) -> str:
    """Deliver a bulk message (queue mail_bulk). No result row: the outbox row is the record, and
    5,000 newsletter results would only add database writes."""
    return _deliver(self, message_id)


# The most messages one batch task may carry (enqueue_bulk cuts MAIL_BULK_BATCH_SIZE): a bound on what a
# hostile or mistaken task message can ask of one green thread.
MAX_BATCH = 1000


def _message_ids(value) -> list[int]:
    if not isinstance(value, list) or not 1 <= len(value) <= MAX_BATCH \
            or not all(type(pk) is int and pk > 0 for pk in value):
        raise ValueError(f"message_ids must be a list of 1 to {MAX_BATCH} message ids (positive integers), "
                         f"got {str(value)[:100]}")
    return value


@shared_task(name="mail.bulk_send_batch", ignore_result=True, **TASK_OPTIONS)
def bulk_send_batch(self, message_ids: list[int]) -> str:
    """Deliver a batch of bulk messages (queue mail_bulk), one after another in this task: one claim for the
    batch, one outcome per message on its row. Messages not started within MAIL_BULK_BATCH_SECONDS (or half
    the soft time limit, if less) are handed back and go on in a continuation batch; retries, throttled and busy messages go on as single
    deliveries (mail.bulk_send_message). No result row: the outbox rows are the record."""
    soft_limit, _ = self.effective_time_limits()
    budget = min(settings.MAIL_BULK_BATCH_SECONDS, (soft_limit or 60) / 2)
    result = services.deliver_batch(_message_ids(message_ids), self.request.id or "", budget=budget)
    summary = ", ".join(f"{status} {n}" for status, n in sorted(result.counts.items()) if n)
    return (f"{summary}; later {len(result.later)}, continued {len(result.left)}")[:500]


@shared_task(name="mail.requeue_stale")
def requeue_stale() -> int:
    """Periodic: re-enqueue messages whose task message was lost or whose worker died mid-send."""
    return services.requeue_stale()


@shared_task(name="mail.probe")
def probe() -> dict:
    """A no-op on the transactional mail lane (eventlet): reports where it ran."""
    return where_am_i()
