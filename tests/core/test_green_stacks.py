"""SIGUSR1 on an eventlet io worker logs every green thread's stack (apps/core/green_stacks.py)."""
import signal

import pytest

from tests.support import rabbit
from tests.support.tasks import io_sleep
from tests.support.workers import Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_sigusr1_logs_the_stack_of_a_task_waiting_in_a_green_thread(worker_db_url, tmp_path):
    path = tmp_path / "marks.log"
    # Its own vhost: the session's shared io worker must not take the task (a CI run: it did, and the
    # signalled worker had no task to show).
    with rabbit.own_vhost("platform-green") as url:
        worker = Worker("io", url, worker_db_url, env={"IO_POOL": "eventlet"}).start().wait_ready()  # green threads: eventlet only
        try:
            io_sleep.delay(30, str(path))
            wait_for(lambda: path.exists() and "start" in path.read_text(), timeout=60, message="the task to start")
            worker.kill(signal.SIGUSR1)
            wait_for(lambda: "the stacks of the green threads" in worker.log(), timeout=20, message="the green stacks")
            log = worker.log()
            assert worker.alive()  # a diagnostic, not a shutdown
        finally:
            worker.stop()
    dump = log[log.index("the stacks of the green threads"):]
    assert "in io_sleep" in dump and "in sleep_in_steps" in dump  # where the task's green thread waits
