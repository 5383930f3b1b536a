"""The ledger through a real broker, real workers and the real recorder process."""
import pytest

from apps.control import states
from apps.control.models import TaskRecord
from tests.control.conftest import wait_state
from tests.support.control_tasks import cpu_steps, io_secret
from tests.support.tasks import io_echo, io_flaky
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_success_is_recorded_with_queue_worker_timings_and_call(recorder, io_worker, api):
    result = io_echo.delay({"k": [1, 2]})
    wait_state(result.id, states.SUCCESS)
    # The queue and sent_at come from task-sent, which this process batches (every 0.1 s) apart from the
    # worker's events: it can be recorded after SUCCESS (a CI run saw queue '' right at SUCCESS).
    record = wait_for(lambda: TaskRecord.objects.filter(task_id=result.id, sent_at__isnull=False).first(),
                      timeout=30, message="the task-sent event in the ledger")
    assert record.name == "tests.io.echo" and record.queue == "ops_trace" and record.worker == io_worker.nodename
    assert record.attempts == 1 and record.sent_at and record.started_at <= record.finished_at
    assert record.call == {"args": [{"k": [1, 2]}], "kwargs": {}}
    assert "'value': {'k': [1, 2]}" in record.result

    body = api.get(f"/api/v1/tasks/{result.id}/").json()
    assert body["state"] == "SUCCESS" and body["queue"] == "ops_trace"


def test_retries_then_failure_are_recorded(recorder, io_worker, effects):
    result = io_flaky.apply_async(args=[effects.path, 1])  # fails once (transient), succeeds on attempt 2
    record = wait_state(result.id, states.SUCCESS, timeout=60)
    assert record.attempts == 2 and record.retries == 1

    failing = io_flaky.apply_async(args=[effects.path, 5, "ValueError"])  # not transient: fails at once
    record = wait_state(failing.id, states.FAILURE)
    assert "ValueError" in record.error and "Traceback" in record.traceback


def test_progress_is_recorded(recorder, cpu_worker):
    result = cpu_steps.delay(3, 0.1)
    record = wait_state(result.id, states.SUCCESS)
    assert record.progress_step == "step 3" and record.progress_current == 3 and record.progress_total == 3


def test_sensitive_arguments_never_reach_the_api(recorder, io_worker, api):
    result = io_secret.delay("ann", "tok-123", password="hunter2")
    wait_state(result.id, states.SUCCESS)
    body = api.get(f"/api/v1/tasks/{result.id}/").json()
    assert "tok-123" not in str(body) and "hunter2" not in str(body) and "[redacted]" in body["args"]


def test_list_filters_and_pagination(recorder, io_worker, api):
    ids = [io_echo.delay(i).id for i in range(3)]
    for task_id in ids:
        wait_state(task_id, states.SUCCESS)
    page = api.get("/api/v1/tasks/", {"state": "SUCCESS", "name": "tests.io.echo", "queue": "ops_trace",
                                      "page_size": 2}).json()
    assert page["count"] >= 3 and len(page["results"]) == 2 and page["pages"] >= 2
    assert {r["state"] for r in page["results"]} == {"SUCCESS"}
    assert api.get("/api/v1/tasks/", {"state": "FAILURE", "name": "tests.io.echo"}).json()["count"] == 0


def test_a_user_sees_only_their_own_tasks(recorder, io_worker, member_api, member):
    from apps.control.services import record_owner

    mine, other = io_echo.delay("mine"), io_echo.delay("other")
    record_owner(mine.id, member)
    wait_state(mine.id, states.SUCCESS)
    wait_state(other.id, states.SUCCESS)
    listed = [r["task_id"] for r in member_api.get("/api/v1/tasks/").json()["results"]]
    assert listed == [mine.id]
    assert member_api.get(f"/api/v1/tasks/{other.id}/").status_code == 404
    assert TaskRecord.objects.get(task_id=mine.id).owner == member


def test_tasks_enqueued_in_a_confirmed_batch_are_queued_in_the_ledger(recorder):
    # Their task-sent events leave as one "task.multi" message when the batch ends; sent_at and the queue
    # come only from task-sent (a worker of an earlier test may already be running them).
    from apps.core.bulk import confirmed_batch, enqueue_many

    with confirmed_batch():
        single = io_echo.delay("in a batch")
    derived = enqueue_many(io_echo.s(f"bulk-{i}") for i in range(3))  # the last two from a template
    for result in (single, *derived):
        record = wait_for(lambda: TaskRecord.objects.filter(task_id=result.id, sent_at__isnull=False).first(),
                          timeout=45, message=f"the task-sent event of {result.id}")
        assert record.name == "tests.io.echo" and record.queue == "ops_trace"
    assert TaskRecord.objects.get(task_id=derived[2].id).call == {"args": ["bulk-2"], "kwargs": {}}
