"""Bad input on the wire: published raw to each queue, never executed, dead-lettered, worker stays up."""
import json
import pickle
import uuid

import pytest
from django.conf import settings

from apps.core.amqp import MessageTooLarge
from project import topology
from tests.support import rabbit
from tests.support.tasks import cpu_echo, io_echo
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)

MARK_TASK = {"dataset": "tests.cpu.mark", "mail": "tests.io.mark", "mail_bulk": "tests.io.mark", "ops_trace": "tests.io.mark"}


def celery_headers(task: str, task_id: str) -> dict:
    return {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "retries": 0, "argsrepr": "", "kwargsrepr": ""}


def bad_messages(queue: str, effects_path: str) -> dict[str, dict]:
    """Each kind of bad message, aimed at a real task that would leave a side effect if it ran."""
    task = MARK_TASK[queue]
    good_body = json.dumps([[effects_path, "ran"], {}, {}]).encode()
    return {
        "unknown task": dict(body=good_body, headers=celery_headers("no.such.task", str(uuid.uuid4()))),
        "non-JSON body": dict(body=b"{not json", headers=celery_headers(task, str(uuid.uuid4()))),
        "pickle payload": dict(body=pickle.dumps(([effects_path, "ran"], {}, {})),
                               headers=celery_headers(task, str(uuid.uuid4())),
                               content_type="application/x-python-serialize", content_encoding="binary"),
        "no Celery headers": dict(body=json.dumps({"hello": "world"}).encode(), headers={}),
        "oversized body": dict(body=json.dumps([[effects_path, "x" * (settings.PLATFORM_MAX_MESSAGE_BYTES + 1)], {}, {}]).encode(),
                               headers=celery_headers(task, str(uuid.uuid4()))),
    }


@pytest.mark.parametrize("queue", [lane.name for lane in topology.LANES])
def test_bad_messages_are_dead_lettered_never_executed_and_the_worker_stays_up(queue, cpu_worker, io_worker, broker_url, effects):
    worker = cpu_worker if queue == "dataset" else io_worker
    dead = topology.dead_letter_queue_name(queue)
    rabbit.get_messages(broker_url, dead, limit=1000)  # start from an empty dead-letter queue
    messages = bad_messages(queue, effects.path)
    for message in messages.values():
        rabbit.publish_raw(broker_url, exchange=queue, routing_key=queue, **message)

    wait_for(lambda: rabbit.queue_message_count(broker_url, dead) == len(messages), timeout=60,
             message=f"{len(messages)} dead letters in {dead}")
    dead_letters = rabbit.get_messages(broker_url, dead)
    assert len(dead_letters) == len(messages)
    for letter in dead_letters:
        death = letter.headers["x-death"][0]
        assert death["reason"] == "rejected" and death["queue"] == queue
    assert effects.lines() == []  # none of them ran
    assert worker.alive()
    # ... and the lane still works: a good task sent to the same queue completes on the same kind of worker.
    good = cpu_echo if queue == "dataset" else io_echo
    reply = good.apply_async(("still here",), queue=queue, exchange=queue, routing_key=queue).get(timeout=30)
    expected_pool = "prefork" if queue == "dataset" else "eventlet"
    assert (reply["value"], reply["queue"], reply["pool"]) == ("still here", queue, expected_pool)


def test_an_oversized_task_is_refused_at_publish_with_a_clear_error(cpu_worker, broker_url):
    before = rabbit.queue_message_count(broker_url, "ops_trace")
    with pytest.raises(MessageTooLarge, match=r"over the limit of \d+ bytes .*pass ids or file paths"):
        io_echo.delay("x" * (settings.PLATFORM_MAX_MESSAGE_BYTES + 10))
    assert rabbit.queue_message_count(broker_url, "ops_trace") == before
