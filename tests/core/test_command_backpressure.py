"""manage.py commands that enqueue exit non-zero with the reason when RabbitMQ refuses (queue full), and
leave nothing half-done: the dataset is FAILED with the reason, the mail stays stored for a later publish."""
import os
import subprocess
import sys
from contextlib import contextmanager
from pathlib import Path

import pytest
from django.conf import settings
from kombu import Connection

from apps.datasets.models import Dataset
from apps.mail.models import Message
from project import topology
from tests.support import rabbit
from tests.support.workers import wait_for

ROOT = Path(settings.BASE_DIR)

pytestmark = pytest.mark.django_db(transaction=True)


def manage(*args, broker_url, worker_db_url):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.test", "CELERY_BROKER_URL": broker_url,
           "DATABASE_URL": worker_db_url}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)


@contextmanager
def full_vhost():
    """A vhost of its own (no worker consumes it) whose ``dataset`` and ``mail`` queues are at their bound:
    a policy lowers their max length to 0 (the stricter of the queue argument and the policy applies) and
    one message fills each (quorum queues refuse once over the bound). Yields (url, vhost)."""
    vhost = rabbit.create_vhost("platform-test-full")
    url = rabbit.vhost_url(vhost)
    try:
        rabbit.rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "--priority", "10", "test-full",
                           "^(dataset|mail)$", '{"max-length": 0, "overflow": "reject-publish"}')
        with Connection(url) as conn:
            channel = conn.channel()
            for queue in (*topology.work_queues(), *topology.dead_letter_queues()):
                queue(channel).declare()
            rabbit.wait_serving(url, topology.all_queue_names())
            for name in ("dataset", "mail"):
                rabbit.publish_raw(url, name, name, b"[[], {}, {}]", headers={"task": "filler", "id": f"fill-{name}"})
            channel.close()
        yield url, vhost
    finally:
        rabbit.delete_vhost(vhost)


@pytest.fixture(scope="module")
def full_broker_url():
    with full_vhost() as (url, _):
        yield url


def test_dataset_import_into_a_full_queue_exits_1_with_the_reason(full_broker_url, worker_db_url, tmp_path):
    csv = tmp_path / "small.csv"
    csv.write_text("a,b\n1,2\n")
    result = manage("dataset_import", str(csv), "--name", "bp-full", broker_url=full_broker_url, worker_db_url=worker_db_url)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [l for l in result.stderr.splitlines() if l.strip()]
    assert line.startswith("CommandError: RabbitMQ refused task datasets.start_import"), line
    assert "queue dataset is full" in line and "try again in" in line
    dataset = Dataset.objects.get(name="bp-full")
    assert dataset.status == "FAILED" and "not enqueued" in dataset.error  # not a QUEUED row waiting forever


def test_mail_send_into_a_full_queue_exits_1_and_keeps_the_message(full_broker_url, worker_db_url):
    result = manage("mail_send", "--to", "bp@example.com", "--subject", "bp", "--body", "b",
                    "--idempotency-key", "bp-full-1", broker_url=full_broker_url, worker_db_url=worker_db_url)
    assert result.returncode == 1, result.stdout + result.stderr
    [line] = [l for l in result.stderr.splitlines() if l.strip()]
    assert "is stored (QUEUED) but its delivery was not enqueued" in line and "queue mail is full" in line, line
    message = Message.objects.get(idempotency_key="bp-full-1")
    assert message.status == "QUEUED"  # accepted by the outbox, so not lost: requeue_stale publishes it later


def test_a_command_against_an_unreachable_broker_exits_1_with_the_reason(worker_db_url):
    result = manage("mail_send", "--to", "down@example.com", "--subject", "s", "--body", "b",
                    broker_url="amqp://guest:guest@127.0.0.1:1//", worker_db_url=worker_db_url)
    assert result.returncode == 1
    assert "Traceback" not in result.stderr
    assert "CommandError: " in result.stderr and ("not reachable" in result.stderr or "refused" in result.stderr.lower())


def test_a_retry_with_the_same_key_enqueues_what_a_full_queue_refused(worker_db_url):
    """429/exit 1 means "stored, not enqueued: retry". The retry publishes the stored message's delivery task
    (not mail.requeue_stale, 15 minutes later), or is refused again while the queue is still full."""
    args = ("mail_send", "--to", "retry@example.com", "--subject", "r", "--body", "b", "--idempotency-key", "bp-retry")
    with full_vhost() as (url, vhost):
        assert manage(*args, broker_url=url, worker_db_url=worker_db_url).returncode == 1
        message = Message.objects.get(idempotency_key="bp-retry")
        assert message.status == "QUEUED" and message.last_error.startswith("delivery not enqueued: ")
        again = manage(*args, broker_url=url, worker_db_url=worker_db_url)
        assert again.returncode == 1 and "is stored (QUEUED) but its delivery was not enqueued" in again.stderr
        assert Message.objects.filter(idempotency_key="bp-retry").count() == 1

        rabbit.rabbitmqctl("clear_policy", "-p", vhost, "test-full")
        wait_for(lambda: "test-full" not in rabbit.rabbitmqctl("list_queues", "-p", vhost, "name", "policy"),
                 message="the mail queue to drop the policy")
        rabbit.get_messages(url, "mail")  # the filler goes; the queue has room
        retried = manage(*args, broker_url=url, worker_db_url=worker_db_url)
        assert retried.returncode == 0, retried.stdout + retried.stderr
        assert "already exists (same idempotency key)" in retried.stdout
        [task] = rabbit.get_messages(url, "mail")
        assert task.headers["id"] == message.task_id and task.headers["task"] == "mail.send_message"
        message.refresh_from_db()
        assert message.status == "QUEUED" and message.last_error == ""
