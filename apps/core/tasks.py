"""The base class of every platform task, and the platform's own small tasks.

``PlatformTask`` owns the policy apps should not re-invent per task:
* bounded retries for transient errors only, with exponential backoff and jitter (Celery autoretry);
* time limits on the eventlet pool, which Celery enforces only on prefork (see ``green_time_limits``).
Apps add their own transient errors with ``autoretry_for = PlatformTask.autoretry_for + (...)``.
"""
from __future__ import annotations

import os
import socket
import sys
from contextlib import contextmanager

import kombu.exceptions
from celery import Task, shared_task
from celery.exceptions import SoftTimeLimitExceeded, TimeLimitExceeded
from django import db
from django.conf import settings
from kombu.utils.objects import cached_property

from apps.core import single

# Errors worth retrying: the world was briefly unavailable. Anything else is a bug or bad input, and
# retrying it only delays the FAILURE an operator needs to see.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    db.OperationalError,  # database restarting, connection dropped, SQLite busy past its timeout
    db.InterfaceError,  # "connection already closed"
    kombu.exceptions.OperationalError,  # broker unreachable while publishing a sub-task
    ConnectionError,  # refused, reset, broken pipe
    TimeoutError,  # includes socket.timeout
    socket.gaierror,  # DNS hiccup
)


MIN_RETRY_SECONDS = 1


def running_on_eventlet() -> bool:
    """True in a worker started with ``-P eventlet`` (Celery monkey-patches only then)."""
    eventlet = sys.modules.get("eventlet")
    return bool(eventlet) and eventlet.patcher.is_monkey_patched("socket")


@contextmanager
def green_time_limits(soft: float | None, hard: float | None):
    """Enforce Celery's soft and hard time limits inside an eventlet green thread.

    Soft raises ``SoftTimeLimitExceeded`` in the task (it may clean up); hard raises
    ``TimeLimitExceeded``, which the task cannot outlive by catching the soft one. Both fire at the
    task's next cooperative yield (any socket, sleep or lock); pure CPU loops never yield, which is
    one more reason CPU work belongs on the prefork lane.
    """
    import eventlet

    timers = []
    if hard:
        timers.append(eventlet.Timeout(hard, TimeLimitExceeded(f"hard time limit ({hard}s) exceeded")))
    if soft and (not hard or soft < hard):
        timers.append(eventlet.Timeout(soft, SoftTimeLimitExceeded(f"soft time limit ({soft}s) exceeded")))
    try:
        yield
    finally:
        for timer in timers:
            timer.cancel()


class PlatformTask(Task):
    autoretry_for = TRANSIENT_ERRORS
    retry_backoff = True  # 1s, 2s, 4s ... between attempts
    retry_backoff_max = settings.PLATFORM_TASK_RETRY_BACKOFF_MAX
    retry_jitter = True  # spread retries so a recovered service is not hit by all of them at once
    max_retries = settings.PLATFORM_TASK_MAX_RETRIES

    def apply_async(self, args=None, kwargs=None, task_id=None, producer=None, link=None, link_error=None,
                    shadow=None, **options):
        """A plain call (arguments only) is sent from a per-process message template (apps/core/single.py)."""
        def celery_apply_async():
            return super(PlatformTask, self).apply_async(args, kwargs, task_id, producer, link, link_error, shadow,
                                                         **options)

        if options or producer or link or link_error or shadow or not self._plain_message_template_ok:
            return celery_apply_async()
        return single.apply_async(self, args, kwargs, task_id, celery_apply_async)

    @cached_property
    def _plain_message_template_ok(self) -> bool:
        """Whether every plain call of this task makes the same message but for id and arguments."""
        return (type(self).shadow_name is Task.shadow_name and self._dump_pydantic_arguments is None
                and not self.expires and not getattr(self, "countdown", None) and self.app.conf.task_protocol == 2)

    def effective_time_limits(self) -> tuple[float | None, float | None]:
        """(soft, hard) as Celery would apply them: per call, else per task, else the app default."""
        hard, soft = self.request.timelimit or (None, None)
        conf = self.app.conf
        hard = hard or self.time_limit or conf.task_time_limit
        soft = soft or self.soft_time_limit or conf.task_soft_time_limit
        return soft, hard

    def retry(self, args=None, kwargs=None, exc=None, throw=True, eta=None, countdown=None, max_retries=None,
              **options):
        """Every retry waits at least MIN_RETRY_SECONDS, even when full jitter (or a caller) says 0.

        An immediate retry is a hot loop against whatever just failed, and on the eventlet pool it let
        the second attempt start before the first one's retry bookkeeping finished (both share the task
        id; OpenTelemetry's task span lost its retry reason). A delay of 1 s also sends the retry through
        RabbitMQ's delay queues instead of a worker's memory.
        """
        if eta is None and countdown is not None and countdown < MIN_RETRY_SECONDS:
            countdown = MIN_RETRY_SECONDS
        return super().retry(args=args, kwargs=kwargs, exc=exc, throw=throw, eta=eta, countdown=countdown,
                             max_retries=max_retries, **options)

    def __call__(self, *args, **kwargs):
        if running_on_eventlet() and not self.request.is_eager:
            with green_time_limits(*self.effective_time_limits()):
                return super().__call__(*args, **kwargs)
        return super().__call__(*args, **kwargs)


def where_am_i() -> dict:
    """Which worker, pool and queue ran this task: the probes' answer."""
    from celery import current_task

    request = current_task.request
    return {
        "hostname": request.hostname,
        "queue": (request.delivery_info or {}).get("routing_key"),
        "pool": "eventlet" if running_on_eventlet() else "prefork",
        "pid": os.getpid(),
    }


@shared_task(name="core.probe")
def probe() -> dict:
    """A no-op that reports where it ran: used by health checks, the demo and tests."""
    return where_am_i()
