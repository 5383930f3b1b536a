"""Tasks that exist only for the tests: registered in workers started with project.settings.test.

Side effects are lines appended to a file the test names, so a test can count exactly how many
times a task body ran, across processes and redeliveries.
"""
from __future__ import annotations

import os
import signal
import time

import celery
from celery import shared_task

from apps.core.tasks import where_am_i


@celery.signals.worker_shutting_down.connect
def hang_at_shutdown(**kwargs) -> None:
    """A worker started with TEST_HANG_AT_SHUTDOWN=1 gets stuck in its shutdown (Celery sends this signal from
    its shutdown handler, after the soft-shutdown window): the shutdown deadline's test
    (tests/core/test_graceful_shutdown.py) needs a stuck shutdown on cue."""
    if os.environ.get("TEST_HANG_AT_SHUTDOWN") == "1":
        time.sleep(3600)


def mark(path: str, text: str = "") -> None:
    with open(path, "a") as f:
        f.write(f"{time.time():.3f} {os.getpid()} {text}\n")


@shared_task(name="tests.cpu.echo")
def cpu_echo(value):
    return {"value": value, **where_am_i()}


@shared_task(name="tests.io.echo")
def io_echo(value):
    return {"value": value, **where_am_i()}


@shared_task(name="tests.cpu.mark")
def cpu_mark(path: str, text: str = ""):
    mark(path, text)
    return where_am_i()


@shared_task(name="tests.io.mark")
def io_mark(path: str, text: str = ""):
    mark(path, text)
    return where_am_i()


@shared_task(name="tests.cpu.crash")
def cpu_crash(path: str):
    """Kill the process running it, every time: a poison message."""
    mark(path, "crash")
    os.kill(os.getpid(), signal.SIGKILL)


@shared_task(name="tests.cpu.sleep")
def cpu_sleep(seconds: float, path: str | None = None):
    if path:
        mark(path, "start")
    time.sleep(seconds)
    if path:
        mark(path, "end")
    return seconds


def sleep_in_steps(seconds: float, step: float = 0.1) -> None:
    """Sleep as a task doing I/O with short timeouts does: a limit can end it on every io pool. (eventlet
    interrupts any green sleep; on the threads pool a limit waits for the blocking call to return.)"""
    deadline = time.monotonic() + seconds
    while (left := deadline - time.monotonic()) > 0:
        time.sleep(min(step, left))


@shared_task(name="tests.io.sleep", bind=True)
def io_sleep(self, seconds: float, path: str | None = None, catch_soft: bool = False):
    from celery.exceptions import SoftTimeLimitExceeded

    if path:
        mark(path, "start")
    try:
        sleep_in_steps(seconds)
    except SoftTimeLimitExceeded:
        if path:
            mark(path, "soft")
        if not catch_soft:
            raise
        sleep_in_steps(seconds)  # ignores the soft limit: only the hard limit can stop it now
    if path:
        mark(path, "end")
    return seconds


@shared_task(name="tests.io.flaky", bind=True)
def io_flaky(self, path: str, failures: int, error: str = "ConnectionError"):
    """Fail with ``error`` for the first ``failures`` attempts, then succeed."""
    mark(path, f"attempt {self.request.retries}")
    if self.request.retries < failures:
        raise {"ConnectionError": ConnectionError, "ValueError": ValueError}[error](f"attempt {self.request.retries}")
    return self.request.retries


@shared_task(name="tests.io.always_transient", bind=True, max_retries=2)
def io_always_transient(self, path: str):
    mark(path, f"attempt {self.request.retries}")
    raise ConnectionError(f"still down at attempt {self.request.retries}")


def log_attempt(directory: str, key: str) -> None:
    with open(os.path.join(directory, "attempts.log"), "a") as f:
        f.write(f"{key} {os.getpid()}\n")


def apply_effect_once(directory: str, key: str) -> None:
    """The idempotent-effect pattern: the effect is keyed, and a second application is a no-op.

    A re-run that finds the effect already applied (its ack was lost to a crash) is logged, so a test
    can tell those guarded re-runs from a duplicated effect (which the key makes impossible).
    """
    try:
        fd = os.open(os.path.join(directory, f"effect-{key}"), os.O_CREAT | os.O_EXCL | os.O_WRONLY)
        os.close(fd)
    except FileExistsError:
        with open(os.path.join(directory, "duplicates.log"), "a") as f:
            f.write(f"{key}\n")


@shared_task(name="tests.cpu.effect")
def cpu_effect(directory: str, key: str, seconds: float = 0.0):
    log_attempt(directory, key)
    time.sleep(seconds)  # the work, during which a fault can strike
    apply_effect_once(directory, key)


@shared_task(name="tests.io.effect")
def io_effect(directory: str, key: str, seconds: float = 0.0, touch_db: bool = False):
    log_attempt(directory, key)
    if touch_db:
        from django_celery_results.models import TaskResult

        TaskResult.objects.exists()  # a real query: fails while the database is unreachable
    time.sleep(seconds)
    apply_effect_once(directory, key)


@shared_task(name="tests.io.lineage", bind=True)
def io_lineage(self, value):
    """Where this call sits in its task tree, and a header a publish-signal receiver may have added."""
    return {"value": value, "id": self.request.id, "parent_id": self.request.parent_id,
            "root_id": self.request.root_id, "probe": self.request.get("x-test-probe")}


@shared_task(name="tests.io.spawn", bind=True)
def io_spawn(self, count: int):
    """Plain calls from inside a running task: they must carry this task as parent and root."""
    return [io_lineage.delay(f"child-{i}").id for i in range(count)]


@shared_task(name="tests.io.block_hub")
def io_block_hub(seconds: float, path: str | None = None):
    """Block the whole eventlet worker (a stuck consumer): the unpatched sleep never yields to the hub."""
    import eventlet.patcher

    if path:
        mark(path, "start")
    eventlet.patcher.original("time").sleep(seconds)
    if path:
        mark(path, "end")
    return seconds


class DiesAfterItsFirstReturn(celery.Task):
    """After the first run's result (and its chord part) is stored, kill the whole worker, children too,
    before the message is acked: as a host cut off or lost right after a task ran. RabbitMQ redelivers the
    message and the task returns a second time."""

    def after_return(self, status, retval, task_id, args, kwargs, einfo):
        if open(args[0]).read().count("\n") == 1:
            os.killpg(os.getpgid(0), signal.SIGKILL)


@shared_task(name="tests.cpu.returns_twice", base=DiesAfterItsFirstReturn)
def cpu_returns_twice(path: str):
    mark(path, "ran")
    return "twice"


@shared_task(name="tests.io.worker_internals")
def io_worker_internals():
    """What the worker applied from apps/core/compat.py and consumer.py (tests/core/test_compat.py)."""
    from celery import current_app
    from celery.worker import loops

    return {"backend": id(current_app.backend),
            "drain_without_waiting": getattr(loops._quick_drain, "platform_without_waiting", False)}
