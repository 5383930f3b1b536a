"""SIGTERM to a busy worker (what Kubernetes and docker stop send): Celery's soft shutdown, then requeue.

The start scripts map SIGTERM to Celery's cold shutdown (REMAP_SIGTERM=SIGQUIT), which first waits
worker_soft_shutdown_timeout for running tasks (on eventlet, apps/core/shutdown.py does the same: Celery's
own fails there). A task that ends within that window finishes and is acked; one that does not is cancelled
and, being acks_late, requeued, and runs once on another worker. Each case runs in its own vhost, so no
other worker can take the message.
"""
import os
import signal
import subprocess
import sys
from urllib.parse import urlsplit

import pytest
from celery import states
from django_celery_results.models import TaskResult

from tests.support import rabbit
from tests.support.tasks import cpu_sleep, io_sleep
from tests.support.workers import ROOT, Worker, wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

CASES = [("cpu", cpu_sleep, "dataset"), ("io", io_sleep, "ops_trace")]
WINDOW = 6  # seconds of soft shutdown for these workers (production windows are minutes: topology.ROLES)


def marks(path) -> list[str]:
    return [line.split()[-1] for line in path.read_text().splitlines()] if path.exists() else []


def messages_in(vhost: str, queue: str) -> int:
    """Ready + unacknowledged, as RabbitMQ counts them (what KEDA reads too)."""
    [[count]] = [row[1:] for row in rabbit.list_table(vhost, "queues", "name", "messages") if row[0] == queue]
    return int(count)


def start(role, url, db_url, **env):
    return Worker(role, url, db_url, env={"CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT": str(WINDOW),
                                          "CPU_CONCURRENCY": "1", "IO_CONCURRENCY": "5", **env}).start().wait_ready()


def sigterm_while_running(worker: Worker, path) -> None:
    wait_for(lambda: "start" in marks(path), timeout=60, message="the task to start")
    worker.kill(signal.SIGTERM)  # to the main process only, as the kubelet signals PID 1
    try:
        worker.wait_exit(timeout=WINDOW + 60)
    finally:
        worker.stop()


@pytest.mark.parametrize("role, task, queue", CASES)
def test_a_task_that_ends_within_the_window_finishes_and_is_acked(worker_db_url, tmp_path, role, task, queue):
    path = tmp_path / "marks.log"
    with rabbit.own_vhost("platform-k8s") as url:
        worker = start(role, url, worker_db_url)
        result = task.delay(WINDOW / 3, str(path))
        sigterm_while_running(worker, path)
        assert "soft shutdown" in worker.log().lower()  # Celery's on prefork, apps/core/shutdown.py's on eventlet
        assert marks(path) == ["start", "end"]
        assert TaskResult.objects.get(task_id=result.id).status == states.SUCCESS
        wait_for(lambda: messages_in(rabbit_vhost(url), queue) == 0, timeout=30,
                 message="an empty queue: the task acked, nothing left to run again")


# The io role on threads (IO_POOL=threads): Celery's own cold shutdown fails there ("does not implement
# kill_job") and then waits for the task, unbounded; apps/core/shutdown.py holds the window as on eventlet.
@pytest.mark.parametrize("role, task, queue, env", [*(case + ({},) for case in CASES),
                                                    pytest.param("io", io_sleep, "ops_trace", {"IO_POOL": "threads"},
                                                                 id="io-threads")])
def test_a_task_longer_than_the_window_is_requeued_and_runs_once_elsewhere(worker_db_url, tmp_path, role, task, queue,
                                                                           env):
    path = tmp_path / "marks.log"
    with rabbit.own_vhost("platform-k8s") as url:
        worker = start(role, url, worker_db_url, **env)
        result = task.delay(WINDOW * 3, str(path))
        sigterm_while_running(worker, path)
        assert "unrecoverable error" not in worker.log().lower()
        assert marks(path) == ["start"]  # cut off at the end of the window
        assert messages_in(rabbit_vhost(url), queue) == 1  # given back, not lost

        replacement = start(role, url, worker_db_url)
        try:
            assert result.get(timeout=WINDOW * 3 + 60) == WINDOW * 3
        finally:
            replacement.stop()
        assert marks(path) == ["start", "start", "end"]  # one interrupted attempt, one complete run
        # The result is stored before the ack (acks_late): wait for the ack, not for the result.
        wait_for(lambda: messages_in(rabbit_vhost(url), queue) == 0, timeout=30, message="the ack of the rerun")


def rabbit_vhost(url: str) -> str:
    return url.rsplit("/", 1)[1]


@pytest.mark.filterwarnings("ignore:.*shutdown deadline hit")  # expected here; anywhere else it is news
def test_a_shutdown_stuck_after_its_window_exits_with_every_stack_in_the_log(worker_db_url, tmp_path):
    """apps/core/shutdown.py's deadline: a worker still running its overrun after the window writes where it
    is stuck and exits 1; its running task's message was never acked, so RabbitMQ has it back."""
    path = tmp_path / "marks.log"
    with rabbit.own_vhost("platform-k8s") as url:
        worker = start("cpu", url, worker_db_url, CELERY_WORKER_SOFT_SHUTDOWN_TIMEOUT="1",
                       PLATFORM_SHUTDOWN_OVERRUN_SECONDS="3", TEST_HANG_AT_SHUTDOWN="1")
        cpu_sleep.delay(60, str(path))
        wait_for(lambda: "start" in marks(path), timeout=60, message="the task to start")
        worker.kill(signal.SIGTERM)
        try:
            exit_code = worker.wait_exit(timeout=60)  # without the deadline: stuck for the receiver's hour
        finally:
            worker.stop()
        log = worker.log()
        assert exit_code == 1
        assert "Timeout (0:00:04)!" in log  # faulthandler's header: window 1 s + overrun 3 s
        assert "in hang_at_shutdown" in log  # the stack of the stuck main thread
        wait_for(lambda: messages_in(rabbit_vhost(url), "dataset") == 1, timeout=30,
                 message="the cancelled task's message back in its queue")
        assert marks(path) == ["start"]


# A shutdown handler that writes on the connection whose frame write it interrupted, as Celery's cold
# shutdown does (basic_cancel on the consumer's connection). Run in a process of its own: without the
# deferral the handler waits forever for the frame writer's lock (a CI run's stuck prefork shutdown).
INTERRUPTED_WRITE = r"""
import signal, sys, time
import django
django.setup()
import amqp
from amqp.transport import TCPTransport
from apps.core import shutdown

host, vhost = sys.argv[1], sys.argv[2]
write, interrupt = TCPTransport.write, []

def write_interrupted(self, data):
    if interrupt:
        interrupt.clear()
        signal.raise_signal(signal.SIGTERM)  # the handler runs as this returns: inside py-amqp's write_frame
    return write(self, data)

TCPTransport.write = write_interrupted  # before connect: the frame writer binds transport.write there
connection = amqp.Connection(host=host, userid="guest", password="guest", virtual_host=vhost)
connection.connect()
channel = connection.channel()
channel.queue_declare("shutdown-probe", auto_delete=False)
handled = []

def cold_shutdown(signum, frame):
    channel.basic_publish(amqp.Message("from the handler"), routing_key="shutdown-probe")
    handled.append(shutdown.interrupted_broker_client(frame))

signal.signal(signal.SIGTERM, shutdown._arming(cold_shutdown, window=60, armed=[]))
signal.raise_signal(signal.SIGTERM)  # outside py-amqp: handled at once
print("outside:", handled)
interrupt.append(True)
channel.basic_publish(amqp.Message("interrupted"), routing_key="shutdown-probe")
deadline = time.monotonic() + 5
while len(handled) < 2 and time.monotonic() < deadline:
    time.sleep(0.01)
bodies = []
while (message := channel.basic_get("shutdown-probe", no_ack=True)) is not None:
    bodies.append(message.body.decode() if isinstance(message.body, bytes) else message.body)
print("handled:", handled)
print("bodies:", bodies)
"""


def test_a_shutdown_signal_inside_a_frame_write_is_handled_after_it(tmp_path):

    script = tmp_path / "interrupted_write.py"
    script.write_text(INTERRUPTED_WRITE)
    with rabbit.own_vhost("platform-shutdown") as url:
        parts = urlsplit(url)
        try:
            run = subprocess.run([sys.executable, str(script), parts.netloc.rsplit("@", 1)[1], parts.path[1:]],
                                 cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT),
                                                "DJANGO_SETTINGS_MODULE": "project.settings.test"},
                                 capture_output=True, text=True, timeout=30)
        except subprocess.TimeoutExpired as stuck:
            pytest.fail(f"the handler never returned (deadlocked on the frame writer's lock?): {stuck.stdout!r}")
    assert run.returncode == 0, run.stderr[-3000:]
    lines = run.stdout.splitlines()
    assert "outside: [False]" in lines  # a signal elsewhere runs the handler at once
    assert "handled: [False, False]" in lines  # the deferred one ran outside py-amqp, a moment later
    # Every frame whole, in order: the first signal's, then the interrupted publish, then its deferred handler's.
    assert "bodies: ['from the handler', 'interrupted', 'from the handler']" in lines
