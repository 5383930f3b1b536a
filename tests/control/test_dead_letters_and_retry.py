"""Dead letters through the real broker: classified, browsed, replayed with confirms, purged; retry; LOST."""
import json
import uuid
from datetime import timedelta

import pytest
from django.core.management import call_command
from django.utils import timezone

from apps.control import services, states
from apps.control.models import ControlAction, DeadLetter, TaskRecord
from tests.control.conftest import wait_state
from tests.support import rabbit
from tests.support.control_tasks import io_reject_unless
from tests.support.tasks import cpu_crash, io_echo, io_flaky
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def celery_message(task: str, args=(), task_id=None):
    task_id = task_id or str(uuid.uuid4())
    headers = {"lang": "py", "task": task, "id": task_id, "root_id": task_id, "parent_id": None, "retries": 0,
               "argsrepr": repr(tuple(args)), "kwargsrepr": "{}", "origin": "test", "ignore_result": False}
    body = json.dumps([list(args), {}, {"callbacks": None, "errbacks": None, "chain": None, "chord": None}]).encode()
    return task_id, headers, body


def drained(queue: str, **filters) -> list[DeadLetter]:
    def found():
        services.refresh_dead_letters()
        return list(DeadLetter.objects.filter(queue=queue, **filters))

    return wait_for(found, timeout=45, message=f"a dead letter from {queue} {filters}")


def test_unknown_task_is_classified_and_its_replay_is_refused(io_worker, api, broker_url):
    task_id, headers, body = celery_message("tests.io.gone_for_good")
    rabbit.publish_raw(broker_url, "ops_trace", "ops_trace", body, headers=headers)
    [letter] = drained("ops_trace", task_id=task_id)
    assert letter.reason == "unknown_task" and letter.dead_letter_queue == "ops_trace.dead"
    assert (letter.exchange, letter.routing_key) == ("ops_trace", "ops_trace")
    assert rabbit.queue_message_count(broker_url, "ops_trace.dead") == 0  # moved into the store, not copied

    listed = api.get("/api/v1/dead-letters/", {"reason": "unknown_task"}).json()
    assert [r["task_id"] for r in listed["results"]] == [task_id]
    detail = api.get(f"/api/v1/dead-letters/{letter.id}/").json()
    assert detail["headers"]["task"] == "tests.io.gone_for_good" and "x-death" in detail["headers"]

    response = api.post(f"/api/v1/dead-letters/{letter.id}/replay/")
    assert response.status_code == 409 and "no longer exists" in response.json()["detail"]
    letter.refresh_from_db()
    assert letter.replayed_at is None  # nothing changed
    assert api.get("/api/v1/dead-letters/999999/").status_code == 404


def test_pickle_is_classified_as_rejected(io_worker, broker_url):
    task_id, headers, _ = celery_message("tests.io.echo")
    rabbit.publish_raw(broker_url, "ops_trace", "ops_trace", b"\x80\x04K\x01.", headers=headers,
                       content_type="application/x-python-serialize", content_encoding="binary")
    [letter] = drained("ops_trace", task_id=task_id)
    assert letter.reason == "rejected" and "not accepted" in letter.detail


def test_a_task_that_rejects_itself_is_an_exception_and_replays_to_its_route(
        recorder, io_worker, api, effects, tmp_path, broker_url):
    flag = tmp_path / "flag"
    result = io_reject_unless.delay(str(flag), effects.path)
    [letter] = drained("ops_trace", task_id=result.id)
    assert letter.reason == "exception" and effects.count("rejected") == 1
    wait_state(result.id, states.FAILURE)  # the ledger says where it went
    assert "dead-lettered to ops_trace.dead" in TaskRecord.objects.get(task_id=result.id).error

    flag.write_text("go")
    response = api.post("/api/v1/dead-letters/replay/", {"reason": "exception"}, format="json")
    assert response.status_code == 200 and response.json()["replayed"] == [letter.id]
    wait_for(lambda: effects.count("ran") == 1, timeout=30, message="the replayed task to run")
    wait_state(result.id, states.SUCCESS)
    assert ControlAction.objects.filter(action="deadletter.replay", actor_name="operator").exists()
    assert api.get("/api/v1/dead-letters/", {"reason": "exception"}).json()["count"] == 0


def test_a_poison_message_ends_in_delivery_limit(cpu_worker, effects):
    result = cpu_crash.delay(effects.path)
    [letter] = wait_for(lambda: drained("dataset", task_id=result.id), timeout=120, message="delivery limit")
    assert letter.reason == "delivery_limit"
    assert effects.count("crash") >= 3


def test_dlq_command_list_replay_and_purge(io_worker, broker_url, capsys):
    task_id, headers, body = celery_message("tests.io.gone_for_good")
    rabbit.publish_raw(broker_url, "ops_trace", "ops_trace", body, headers=headers)
    [letter] = drained("ops_trace", task_id=task_id)
    call_command("dlq", "list", "--queue", "ops_trace")
    assert task_id in capsys.readouterr().out
    call_command("dlq", "show", str(letter.id))
    assert '"reason": "unknown_task"' in capsys.readouterr().out
    with pytest.raises(Exception, match="no longer exists"):
        call_command("dlq", "replay", str(letter.id))
    with pytest.raises(Exception, match="give ids or a filter"):
        call_command("dlq", "purge")
    call_command("dlq", "purge", "--reason", "unknown_task")
    assert not DeadLetter.objects.filter(pk=letter.pk).exists()
    assert ControlAction.objects.filter(action="deadletter.purge", actor_name__startswith="cli:").exists()


def test_dead_letter_action_needs_a_selection(api):
    response = api.post("/api/v1/dead-letters/purge/", {}, format="json")
    assert response.status_code == 400 and "say which dead letters" in response.json()["detail"]


def test_retry_republishes_the_call_under_a_new_linked_id(recorder, io_worker, api, effects):
    failed = io_flaky.apply_async(args=[effects.path, 5, "ValueError"])
    wait_state(failed.id, states.FAILURE)
    response = api.post(f"/api/v1/tasks/{failed.id}/retry/")
    assert response.status_code == 202
    new_id = response.json()["task_id"]
    assert new_id != failed.id and response.json()["retry_of"] == failed.id
    wait_state(new_id, states.FAILURE)  # the same call, run again (and failing again)
    assert effects.count("attempt 0") == 2
    assert api.get("/api/v1/tasks/", {"retry_of": failed.id}).json()["count"] == 1

    running_or_unknown = api.post("/api/v1/tasks/unknown-id/retry/")
    assert running_or_unknown.status_code == 404


def test_retry_of_an_active_task_is_refused(api):
    TaskRecord.objects.create(task_id="still-queued", name="tests.io.echo", state=states.QUEUED,
                              call={"args": [1], "kwargs": {}})
    response = api.post("/api/v1/tasks/still-queued/retry/")
    assert response.status_code == 409 and "QUEUED" in response.json()["detail"]
    assert TaskRecord.objects.count() == 1


def test_sweeper_marks_lost_only_what_nobody_holds(io_worker, broker_url):
    old = timezone.now() - timedelta(hours=2)
    TaskRecord.objects.create(task_id="vanished", name="x", queue="mail_bulk", state=states.QUEUED)
    TaskRecord.objects.create(task_id="due-later", name="x", queue="mail_bulk", state=states.QUEUED,
                              eta=timezone.now() + timedelta(hours=1))
    TaskRecord.objects.create(task_id="recent", name="x", queue="mail_bulk", state=states.STARTED)
    TaskRecord.objects.filter(task_id__in=["vanished", "due-later"]).update(updated_at=old)

    # A message waiting in a queue: its task is not LOST, whatever the ledger says.
    services.pause_queue("mail")
    try:
        waiting = io_echo.apply_async(args=[1], queue="mail", exchange="mail", routing_key="mail")
        wait_for(lambda: rabbit.queue_message_count(broker_url, "mail") >= 1, timeout=10, message="a waiting message")
        TaskRecord.objects.create(task_id=waiting.id, name="tests.io.echo", queue="mail", state=states.QUEUED)
        TaskRecord.objects.filter(task_id=waiting.id).update(updated_at=old)

        lost = services.sweep_lost(lost_after=600)
        assert TaskRecord.objects.get(task_id=waiting.id).state == states.QUEUED
    finally:
        services.resume_queue("mail")
    assert lost == ["vanished"]
    assert TaskRecord.objects.get(task_id="vanished").state == states.LOST
    assert TaskRecord.objects.get(task_id="due-later").state == states.QUEUED
    assert TaskRecord.objects.get(task_id="recent").state == states.STARTED


def test_sweeper_leaves_a_task_a_worker_is_running(recorder, cpu_worker, effects):
    from tests.support.tasks import cpu_sleep

    running = cpu_sleep.delay(8, effects.path)
    wait_state(running.id, states.STARTED)
    TaskRecord.objects.filter(task_id=running.id).update(updated_at=timezone.now() - timedelta(hours=2))
    assert running.id not in services.sweep_lost(lost_after=600)
    assert TaskRecord.objects.get(task_id=running.id).state == states.STARTED
    wait_state(running.id, states.SUCCESS, timeout=60)


def test_housekeeping_tasks_run_on_the_io_worker(io_worker, broker_url):
    """The seeded schedules' tasks work where beat sends them (ops_trace, eventlet): the sweep asks the
    workers (including the one running it) and the broker; the drain moves dead letters."""
    from apps.control.tasks import drain_dead_letters, sweep_lost
    from apps.core.schedules import default_schedules

    assert {"control.sweep_lost", "control.drain_dead_letters"} <= {s.task for s in default_schedules()}
    task_id, headers, body = celery_message("tests.io.gone_for_good")
    rabbit.publish_raw(broker_url, "dead_letter", "mail_bulk", body, headers=headers)  # straight into mail_bulk.dead
    assert drain_dead_letters.delay().get(timeout=60) >= 1
    assert DeadLetter.objects.get(task_id=task_id).reason == "unknown"
    assert sweep_lost.delay().get(timeout=60) == 0


def test_replay_is_one_confirmed_batch_and_a_refused_letter_stays_stored_with_the_reason(broker_url):
    # Letters go back, alternately, to a bounded queue already over its bound (no consumer) and to an open
    # one. Quorum queues enforce the bound approximately (the first publishes over it may be accepted),
    # so the test checks that what RabbitMQ refused, and only that, stays stored.
    from kombu import Connection

    with Connection(broker_url) as connection:
        rabbit.quorum_queue("replay-test-open")(connection.default_channel).declare()
    rabbit.wait_serving(broker_url, ["replay-test-open"])
    rabbit.declare_over_bound(broker_url, rabbit.quorum_queue("replay-test-full", max_length=3))  # 4 messages
    letters = {"replay-test-full": [], "replay-test-open": []}
    for i in range(60):
        queue = "replay-test-full" if i % 2 else "replay-test-open"
        task_id, headers, body = celery_message("tests.io.echo", args=(f"replayed-{i}",))
        letters[queue].append(DeadLetter.objects.create(
            fingerprint=f"replay-test-{i}", dead_letter_queue=f"{queue}.dead", queue=queue, reason="exception",
            task_id=task_id, task_name="tests.io.echo", exchange=queue, routing_key=queue, headers=headers,
            properties={"content_type": "application/json"}, body=body))

    outcome = services.replay_dead_letters([*letters["replay-test-full"], *letters["replay-test-open"]])

    refused = {s["id"] for s in outcome["skipped"]}
    assert refused and refused <= {letter.id for letter in letters["replay-test-full"]}
    assert all(s["code"] == "queue_full" and s["reason"].startswith("refused by RabbitMQ: queue replay-test-full is full")
               for s in outcome["skipped"])
    assert {letter.id for letter in letters["replay-test-open"]} <= set(outcome["replayed"])
    assert len(outcome["replayed"]) + len(refused) == 60
    assert rabbit.queue_message_count(broker_url, "replay-test-open") == 30
    assert rabbit.queue_message_count(broker_url, "replay-test-full") == 4 + 30 - len(refused)
    assert not DeadLetter.objects.filter(pk__in=refused, replayed_at__isnull=False).exists()  # replay them later
    assert DeadLetter.objects.filter(pk__in=outcome["replayed"], replayed_at__isnull=False).count() == 60 - len(refused)

    # One letter (the API's single replay): the refusal is a QueueFull (HTTP 429); the command exits 1.
    from django.core.management.base import CommandError

    from apps.core.amqp import QueueFull

    with pytest.raises(QueueFull, match="not replayed: refused by RabbitMQ: queue replay-test-full is full"):
        services.replay_one(sorted(refused)[0])
    with pytest.raises(CommandError, match=r"dead letter\(s\) not replayed: RabbitMQ refused them"):
        call_command("dlq", "replay", "--queue", "replay-test-full")
    assert not DeadLetter.objects.filter(pk__in=refused, replayed_at__isnull=False).exists()
