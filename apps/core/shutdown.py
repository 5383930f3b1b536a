"""Soft shutdown on the eventlet pool, owned here because Celery's does not work there.

The worker start scripts map SIGTERM to Celery's cold shutdown (REMAP_SIGTERM=SIGQUIT): on prefork it
waits ``worker_soft_shutdown_timeout`` for running tasks, then cancels the rest, which the pool reports
as lost and acks_late + reject_on_worker_lost requeue (tests/core/test_graceful_shutdown.py). On eventlet
(Celery 5.7, eventlet 0.41) neither half works, both seen here:

* the handler runs inside the hub's poll and its wait is a green sleep, which eventlet refuses there
  ("RuntimeError: do not call blocking functions from the mainloop"); the worker logged an unrecoverable
  error and then waited, unbounded, for its running tasks;
* run in a green thread instead, the handler's basic_cancel read the consumer's socket while the main
  loop was reading it ("Second simultaneous read on fileno 4"); and cancelling a task kills its green
  thread, which the eventlet pool reports as a success (``_make_killable_target`` returns
  ``(False, None, None)``), so Celery would ack a task that never finished: lost, not requeued.

On the threads pool (IO_POOL=threads) Celery's cancel fails too (``_on_threads_pool``).

So on eventlet and threads, SIGTERM (and SIGQUIT) start this instead: no new task starts (``PlatformConsumer.holding``:
deliveries stay unacked), running tasks get the same ``worker_soft_shutdown_timeout``; when they are done
the worker stops as in a warm shutdown (sooner than Celery's fixed wait); if some still run at the end of
the window the process exits at once without acking them, so RabbitMQ requeues them when the connection
drops, as it would after the kubelet's SIGKILL.

On every pool the first shutdown signal also arms a deadline (``arm_shutdown_deadline``): a worker still
running ``PLATFORM_SHUTDOWN_OVERRUN_SECONDS`` after its window writes the Python stack of every thread to
its log and exits 1 (``faulthandler``, a C watchdog thread that works while the main thread is stuck).
Its unacked messages requeue when the connection drops, and the children die with it (Celery sets their
parent-death signal), so nothing is lost and the log says where it was stuck; the overrun is less than
topology.SHUTDOWN_MARGIN_SECONDS, so this comes before the kubelet's SIGKILL.

On prefork, Celery runs its whole cold shutdown inside the signal handler, on top of whatever the main
thread was doing, and that shutdown cancels the task consumer on the worker's broker connection (a
basic_cancel written, its reply read). A CI run's deadline stacks showed the signal landing inside py-amqp's
frame writer (an ack): basic_cancel then waited for the writer's lock, held below it on the same thread, and
the worker hung until the deadline. Read frames are no safer: a reply read in the middle of a half-read frame
misreads the stream. So a shutdown signal that interrupts py-amqp code is handled a moment later
(``DEFER_SECONDS``, re-sent to the process), once the main thread has left it.
"""
from __future__ import annotations

import faulthandler
import logging
import os
import signal
import sys
import threading
import time

from celery import signals
from celery.utils.log import get_logger

from apps.core.tasks import running_on_eventlet

logger = get_logger(__name__)

SHUTDOWN_SIGNALS = ("SIGTERM", "SIGQUIT")
EXIT_WITH_TASKS_REQUEUED = 1
POLL_SECONDS = 0.2
# How long after the soft-shutdown window a worker that has not exited counts as stuck.
SHUTDOWN_OVERRUN_SECONDS = float(os.environ.get("PLATFORM_SHUTDOWN_OVERRUN_SECONDS", 20))
# How soon a shutdown signal that landed inside py-amqp code is handled again (a frame write takes
# microseconds; a write blocked on a full socket keeps it waiting, bounded by the deadline).
DEFER_SECONDS = 0.05
BROKER_CLIENT_PACKAGE = "amqp"


def arm_shutdown_deadline(window: float) -> None:
    """Exit 1 with every thread's stack in the log if the process still runs ``window`` + the overrun from now."""
    faulthandler.dump_traceback_later(window + SHUTDOWN_OVERRUN_SECONDS, exit=True, file=sys.__stderr__)


def interrupted_broker_client(frame) -> bool:
    """Whether the interrupted stack (a signal handler's ``frame``) is inside py-amqp: writing or reading a
    frame on a connection the handler may use."""
    while frame is not None:
        module = frame.f_globals.get("__name__", "")
        if module == BROKER_CLIENT_PACKAGE or module.startswith(BROKER_CLIENT_PACKAGE + "."):
            return True
        frame = frame.f_back
    return False


def _arming(handler, window: float, armed: list):
    """``handler`` (Celery's, for a shutdown signal), arming the deadline first and run only outside py-amqp
    code; ``armed`` is shared by the signals of one worker, so the deadline counts from the first of them."""
    deferred = []  # a re-sent signal on its way: a second signal meanwhile is not sent twice

    def send_again(signum):
        deferred.clear()
        os.kill(os.getpid(), signum)

    def arm_then_handle(signum, frame):
        if not armed:
            armed.append(signum)
            arm_shutdown_deadline(window)
        if interrupted_broker_client(frame):
            if not deferred:
                deferred.append(signum)
                logger.info("Shutdown signal %s arrived inside a broker frame; handling it in %ss",
                            signum, DEFER_SECONDS)
                timer = threading.Timer(DEFER_SECONDS, send_again, (signum,))
                timer.daemon = True
                timer.start()
            return None
        return handler(signum, frame)

    return arm_then_handle


def _on_threads_pool(consumer) -> bool:
    """The threads pool (IO_POOL=threads): Celery's cold shutdown ends in "Unrecoverable error:
    NotImplementedError(... does not implement kill_job)" at the end of the window and then waits, unbounded,
    for the running tasks (seen here, Celery 5.7): a thread cannot be cancelled. The same answer as eventlet."""
    return type(getattr(consumer, "pool", None)).__module__ == "celery.concurrency.thread"


@signals.worker_ready.connect
def own_the_soft_shutdown_on_eventlet(sender=None, **kwargs) -> None:
    """Replace Celery's SIGTERM/SIGQUIT handlers (installed before worker_ready) on eventlet and threads
    workers; on prefork, wrap them (and SIGINT's) so the first one arms the shutdown deadline."""
    if running_on_eventlet():
        import eventlet

        spawn, sleep = eventlet.spawn_n, eventlet.sleep
    elif _on_threads_pool(sender):
        import threading

        def spawn(target, *args):
            threading.Thread(target=target, args=args, name="platform-soft-shutdown", daemon=True).start()

        sleep = time.sleep
    else:  # prefork: Celery's own soft shutdown, with the deadline armed first
        window, armed = float(sender.app.conf.worker_soft_shutdown_timeout), []
        for name in (*SHUTDOWN_SIGNALS, "SIGINT"):
            signum = getattr(signal, name)
            current = signal.getsignal(signum)
            if callable(current):  # Celery's handler; a default or ignored signal keeps its meaning
                signal.signal(signum, _arming(current, window, armed))
        return
    handler = _start_soft_shutdown(sender, spawn, sleep)
    for name in SHUTDOWN_SIGNALS:
        signal.signal(getattr(signal, name), handler)


def _start_soft_shutdown(consumer, spawn, sleep):
    started = []

    def on_signal(signum, frame):
        if started:  # one soft shutdown; the kubelet's SIGKILL ends it if it ever overruns
            return
        started.append(signum)
        arm_shutdown_deadline(float(consumer.app.conf.worker_soft_shutdown_timeout))
        consumer.holding = True
        spawn(_finish_or_give_back, consumer, sleep)

    return on_signal


def _finish_or_give_back(consumer, sleep) -> None:
    from celery.worker import state

    window = float(consumer.app.conf.worker_soft_shutdown_timeout)
    logger.warning("Soft shutdown: waiting up to %ss for %d running task(s); starting no new ones",
                   window, len(state.active_requests))
    deadline = time.monotonic() + window
    while state.active_requests and time.monotonic() < deadline:
        sleep(POLL_SECONDS)
    if not state.active_requests:
        logger.warning("Soft shutdown: no task running, stopping")
        state.should_stop = 0  # the consumer loop raises WorkerShutdown at its next turn: a warm shutdown
        return
    logger.warning("Soft shutdown: %d task(s) still running after %ss; exiting without acknowledging them, "
                   "RabbitMQ requeues them", len(state.active_requests), window)
    logging.shutdown()  # flush the log lines above
    os._exit(EXIT_WITH_TASKS_REQUEUED)
