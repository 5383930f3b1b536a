"""The recorder through the real broker: events any client can publish never stop the ledger."""
import json
import time

import pytest

from apps.control import states
from apps.control.models import TaskRecord
from apps.control.recorder import EVENT_EXCHANGE
from tests.support import rabbit
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def sent_event(task_id: str, **fields) -> dict:
    return {"type": "task-sent", "uuid": task_id, "name": "tests.io.echo", "queue": "ops_trace",
            "timestamp": time.time(), "args": "(1,)", "kwargs": "{}", "retries": 0, **fields}


def test_a_bad_event_is_dropped_with_the_reason_and_the_rest_of_its_batch_is_recorded(recorder, broker_url):
    # One message, so one batch: a timestamp that is not a number (the batch used to fail, be redelivered
    # and fail again, forever), a repr Celery truncated (its "..." parses as Ellipsis, which is not JSON:
    # a CI run's ledger stopped 5 minutes on one), a counter that is not a number, and a good event.
    events = [sent_event("bad-timestamp", timestamp="soon"),
              sent_event("truncated-args", args="([1, 2, ...],)"),
              sent_event("bad-retries", retries="many"),
              sent_event("good")]
    rabbit.publish_raw(broker_url, EVENT_EXCHANGE, "task.multi", json.dumps(events).encode())

    good = wait_for(lambda: TaskRecord.objects.filter(task_id="good").first(), timeout=30, message="the good event")
    assert good.state == states.QUEUED and good.call == {"args": [1], "kwargs": {}}
    truncated = TaskRecord.objects.get(task_id="truncated-args")
    assert truncated.call is None and "..." in truncated.args  # shown as sent; not replayable as a call
    assert TaskRecord.objects.get(task_id="bad-retries").retries == 0
    assert not TaskRecord.objects.filter(task_id="bad-timestamp").exists()
    wait_for(lambda: "dropped 1 event(s) of task bad-timestamp" in recorder.log(), timeout=10,
             message="the recorder to log the dropped event")
    assert recorder.alive()

    # And it goes on recording.
    rabbit.publish_raw(broker_url, EVENT_EXCHANGE, "task.sent", json.dumps(sent_event("after")).encode())
    wait_for(lambda: TaskRecord.objects.filter(task_id="after").exists(), timeout=30, message="the next event")
