"""SIGUSR1 on an eventlet worker also logs the stack of every green thread.

Celery's SIGUSR1 handler ("cry") prints the stack of each OS thread; on eventlet nearly everything is a
green thread of the main OS thread, so it shows the hub waiting and nothing of what the green threads wait
for. A stalled consumer restart after a cluster node was cut off (a CI cluster pass: an io worker logged
"Connected to" and then nothing for 8 minutes) left no trace of where it waited; this gives the operator
and the test harness one.
"""
from __future__ import annotations

import gc
import signal
import traceback

from celery import signals
from celery.utils.log import get_logger

from apps.core.tasks import running_on_eventlet

logger = get_logger(__name__)


def green_stacks() -> str:
    """The stack of every live green thread that has one, innermost call last."""
    import greenlet

    out = []
    for obj in gc.get_objects():
        if isinstance(obj, greenlet.greenlet) and obj.gr_frame is not None:
            out.append(f"green thread {obj!r}:\n{''.join(traceback.format_stack(obj.gr_frame))}")
    return "\n".join(out)


@signals.worker_ready.connect
def log_green_stacks_on_sigusr1(sender=None, **kwargs) -> None:
    if not running_on_eventlet():
        return
    celery_cry = signal.getsignal(signal.SIGUSR1)

    def cry_with_green_threads(signum, frame):
        logger.warning("SIGUSR1: the stacks of the green threads:\n%s\nthe running one, interrupted:\n%s",
                       green_stacks(), "".join(traceback.format_stack(frame)))
        if callable(celery_cry):
            celery_cry(signum, frame)

    signal.signal(signal.SIGUSR1, cry_with_green_threads)
