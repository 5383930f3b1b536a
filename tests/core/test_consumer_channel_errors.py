"""A channel error while a worker's consumer (re)connects restarts the consumer; it never ends the worker.

On a cluster, a quorum queue's declare can fail with a channel error while its leader is elected (404 "failed
to perform operation on queue ... due to timeout"): Celery's default calls that an "Unrecoverable error" and
the worker exits (CELERY_BROKER_CHANNEL_ERROR_RETRY in project/settings/base.py). A single node makes the
same code path deterministic with another channel error: a dead-letter queue redeclared with other arguments
(406 PRECONDITION_FAILED), which the worker meets when it declares the topology on reconnecting.
"""
import pytest
from kombu import Connection

from project import topology
from tests.support import rabbit
from tests.support.tasks import cpu_echo
from tests.support.workers import Worker, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_a_channel_error_on_reconnect_is_retried_and_the_worker_resumes(worker_db_url):
    broken = topology.dead_letter_queues()[-1].name
    with rabbit.own_vhost("platform-test-channel-error") as url:
        worker = Worker("cpu", url, worker_db_url, env={"CPU_CONCURRENCY": "1"}).start()
        try:
            worker.wait_ready()
            with Connection(url) as connection:  # the same name, other arguments: every declare now gets 406
                channel = connection.channel()
                channel.queue_delete(broken)
                channel.queue_declare(broken, durable=True, auto_delete=False)
            vhost = url.rsplit("/", 1)[1]
            rabbit.rabbitmqctl("close_all_connections", "-p", vhost, "test: the consumer must reconnect")

            def retried():
                worker.assert_alive()  # Celery's default: "Unrecoverable error: PreconditionFailed(406 ...)", exit
                return worker.log().count("PRECONDITION_FAILED") >= 3

            wait_for(retried, timeout=60, message="the worker to meet the channel error and try again")

            with Connection(url) as connection:  # the operator deletes the wrong queue: the worker declares it
                connection.channel().queue_delete(broken)
            worker.wait_queues_serve()
            assert cpu_echo.delay("after").get(timeout=60)["value"] == "after"
            worker.assert_alive()
        finally:
            worker.stop()
