"""The base class of every platform task, and the platform's own small tasks.

``PlatformTask`` owns the policy apps should not re-invent per task:
* bounded retries for transient errors only, with exponential backoff and jitter (Celery autoretry);
* time limits on the io role's pools (eventlet, threads), which Celery enforces only on prefork (see
  ``green_time_limits`` and ``ThreadTimeLimits``).
Apps add their own transient errors with ``autoretry_for = PlatformTask.autoretry_for + (...)``.
"""
from __future__ import annotations

import ctypes
import heapq
import itertools
import os
import socket
import sys
import threading
import time
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


def running_in_pool_thread() -> bool:
    """True in a task run by a pool of OS threads (``-P threads``): prefork and solo run tasks in the main
    thread of their process. Check ``running_on_eventlet`` first (green threads are not the main thread)."""
    return threading.current_thread() is not threading.main_thread()


def pool_name() -> str:
    if running_on_eventlet():
        return "eventlet"
    return "threads" if running_in_pool_thread() else "prefork"


class _AsyncSoftLimit(SoftTimeLimitExceeded):
    """Raised inside a task's OS thread at its soft limit; the task sees a SoftTimeLimitExceeded."""


class _AsyncHardLimit(TimeLimitExceeded):
    """Raised inside a task's OS thread at its hard limit, and again every HARD_REPEAT_SECONDS until it ends."""


def _limit_exception(base: type[BaseException], message: str) -> type[BaseException]:
    """A subclass of ``base`` whose instances say ``message``: an exception raised in another thread is
    given as a class, so the message (the same as on eventlet) travels in the class. Made only when a limit
    fires, and named as Celery's own, so results, logs and mail's last_error read the same on every pool."""
    name = "SoftTimeLimitExceeded" if issubclass(base, SoftTimeLimitExceeded) else "TimeLimitExceeded"
    return type(name, (base,), {"__init__": lambda self, *args: base.__init__(self, *(args or (message,)))})


_limits_here = threading.local()  # the running task's limit deadline in this OS thread (seconds_to_limit)


def seconds_to_limit() -> float | None:
    """Seconds until the running task's first time limit on the threads pool, else None.

    Code that blocks in a socket can bound its timeout by this: an exception raised in an OS thread waits
    for the blocking call to return (ThreadTimeLimits)."""
    deadline = getattr(_limits_here, "deadline", None)
    return None if deadline is None else deadline - time.monotonic()


class ThreadTimeLimits:
    """Celery's soft and hard time limits for tasks on the threads pool, which enforces none.

    A thread cannot be killed, so one daemon thread per process raises the limit's exception inside the
    task's thread (CPython's ``PyThreadState_SetAsyncExc``): soft raises ``SoftTimeLimitExceeded`` once;
    hard raises ``TimeLimitExceeded`` and raises it again every HARD_REPEAT_SECONDS until the task has
    ended, so a task that catches it (or a broad ``except Exception``) cannot outlive its limit. The
    exception arrives at the task's next Python instruction: a call blocked in C (a socket read, a sleep)
    finishes first, which every network call of the platform bounds with its own timeout.
    """

    HARD_REPEAT_SECONDS = 1.0

    def __init__(self):
        self._lock = threading.Lock()
        self._wake = threading.Condition(self._lock)
        self._due: list = []  # heap of (when, seq, entry, exception type)
        self._ended = 0  # entries in the heap whose task has ended (dropped in bulk, see limit())
        self._seq = itertools.count()
        self._thread: threading.Thread | None = None

    @contextmanager
    def limit(self, soft: float | None, hard: float | None):
        if not soft and not hard:
            yield
            return
        entry = {"thread": threading.get_ident(), "armed": True, "soft": soft, "hard": hard}
        now = time.monotonic()
        _limits_here.deadline = now + min(limit for limit in (soft, hard) if limit)
        limits = [(now + hard, next(self._seq), entry, _AsyncHardLimit)] if hard else []
        if soft and (not hard or soft < hard):
            limits.append((now + soft, next(self._seq), entry, _AsyncSoftLimit))
        with self._lock:
            first = self._due[0][0] if self._due else None
            for item in limits:
                heapq.heappush(self._due, item)
            self._start()
            if first is None or self._due[0][0] < first:  # the watchdog sleeps until the first deadline
                self._wake.notify()
        try:
            yield
        finally:
            # A limit raised just as the task ended can be delivered at any instruction of this block, and
            # would skip the rest: the entry left armed, its hard limit would then hit the thread's next
            # task. So disarming is retried until it has run to its end; the limit that arrived is raised
            # after (the task did reach it).
            arrived = None
            while True:
                try:
                    self._disarm(entry, len(limits))
                    break
                except (_AsyncSoftLimit, _AsyncHardLimit) as exc:
                    arrived = arrived or exc
            _limits_here.deadline = None
            if arrived is not None:
                raise arrived

    def _disarm(self, entry: dict, count: int) -> None:
        with self._lock:
            if not entry["armed"]:
                _set_async_exc(entry["thread"], None)
                return
            entry["armed"] = False
            # A limit raised in the instant before this lock was taken but not delivered yet must not
            # surface in Celery's code after the task (storing the result): withdraw it.
            _set_async_exc(entry["thread"], None)
            # Most tasks end long before their limits: drop their entries in bulk instead of holding
            # every task of the last limit-length of time (330 s at 1,000 tasks/s).
            self._ended += count
            if self._ended > 1000 and self._ended * 2 > len(self._due):
                self._due = [item for item in self._due if item[2]["armed"]]
                heapq.heapify(self._due)
                self._ended = 0

    def _start(self) -> None:
        if self._thread is None or not self._thread.is_alive():
            self._thread = threading.Thread(target=self._run, name="platform-time-limits", daemon=True)
            self._thread.start()

    def _run(self) -> None:
        with self._lock:
            while True:
                while self._due and not self._due[0][2]["armed"]:
                    heapq.heappop(self._due)  # the task ended before this limit
                    self._ended = max(0, self._ended - 1)
                if not self._due:
                    self._wake.wait()
                    continue
                when, _, entry, exc_type = self._due[0]
                delay = when - time.monotonic()
                if delay > 0:
                    self._wake.wait(delay)
                    continue
                heapq.heappop(self._due)
                limit = entry["hard"] if exc_type is _AsyncHardLimit else entry["soft"]
                kind = "hard" if exc_type is _AsyncHardLimit else "soft"
                _set_async_exc(entry["thread"], _limit_exception(exc_type, f"{kind} time limit ({limit}s) exceeded"))
                if exc_type is _AsyncHardLimit:
                    heapq.heappush(self._due, (when + self.HARD_REPEAT_SECONDS, next(self._seq), entry, exc_type))


def _set_async_exc(thread_id: int, exc_type: type[BaseException] | None) -> None:
    """Raise ``exc_type`` in thread ``thread_id`` at its next Python instruction (None withdraws it)."""
    ctypes.pythonapi.PyThreadState_SetAsyncExc(ctypes.c_ulong(thread_id),
                                               ctypes.py_object(exc_type) if exc_type else None)


thread_time_limits = ThreadTimeLimits()


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
        return single.derivable_task(self)

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
        if self.request.is_eager or self.request.called_directly:  # not run by a worker: no pool's limits
            return super().__call__(*args, **kwargs)
        if running_on_eventlet():
            with green_time_limits(*self.effective_time_limits()):
                return super().__call__(*args, **kwargs)
        if running_in_pool_thread():
            with thread_time_limits.limit(*self.effective_time_limits()):
                return super().__call__(*args, **kwargs)
        return super().__call__(*args, **kwargs)


def where_am_i() -> dict:
    """Which worker, pool and queue ran this task: the probes' answer."""
    from celery import current_task

    request = current_task.request
    return {
        "hostname": request.hostname,
        "queue": (request.delivery_info or {}).get("routing_key"),
        "pool": pool_name(),
        "pid": os.getpid(),
    }


@shared_task(name="core.probe")
def probe() -> dict:
    """A no-op that reports where it ran: used by health checks, the demo and tests."""
    return where_am_i()
