"""The ledger's merge rules for out-of-order events (pure logic, no broker)."""
import time

import pytest

from apps.control import ledger, states
from apps.control.models import TaskRecord
from apps.control.redaction import REDACTED

T0 = time.time()


def ev(kind, offset=0.0, **fields):
    return {"type": kind, "uuid": "t1", "timestamp": T0 + offset, **fields}


def apply(*events):
    record = TaskRecord(task_id="t1")
    for event in events:
        ledger.apply_event(record, event)
    return record


def test_normal_life():
    record = apply(ev("task-sent", 0, name="tests.io.echo", queue="ops_trace", args="(1,)", kwargs="{}"),
                   ev("task-started", 1, hostname="io@h"), ev("task-succeeded", 2, result="1", runtime=0.5))
    assert (record.state, record.queue, record.worker, record.attempts) == (states.SUCCESS, "ops_trace", "io@h", 1)
    assert record.call == {"args": [1], "kwargs": {}}
    assert record.runtime == 0.5 and record.started_at and record.finished_at


def test_late_task_sent_does_not_move_a_running_task_back():
    record = apply(ev("task-started", 1), ev("task-sent", 0, name="x"))
    assert record.state == states.STARTED and record.name == "x"


def test_task_sent_newer_than_task_started_does_not_requeue():
    # Celery sends task-sent only after the publish is confirmed: its timestamp can follow task-started.
    record = apply(ev("task-started", 1), ev("task-sent", 2, name="x"))
    assert record.state == states.STARTED


def test_final_state_is_sticky():
    record = apply(ev("task-succeeded", 2), ev("task-started", 3))
    assert record.state == states.SUCCESS


@pytest.mark.parametrize("exception, state", [
    ("TaskCancelled('x')", states.CANCELLED), ("TimeLimitExceeded(5)", states.TIMED_OUT),
    ("SoftTimeLimitExceeded()", states.TIMED_OUT), ("ValueError('bad')", states.FAILURE)])
def test_failures_are_classified(exception, state):
    assert apply(ev("task-started", 1), ev("task-failed", 2, exception=exception)).state == state


def test_retry_then_queued_again_then_success():
    record = apply(ev("task-sent", 0), ev("task-started", 1), ev("task-retried", 2, exception="ConnectionError()"),
                   ev("task-sent", 3, retries=1), ev("task-started", 4), ev("task-succeeded", 5))
    assert record.state == states.SUCCESS and record.attempts == 2 and record.retries == 1


def test_control_plane_cancel_is_provisional_and_revoke_confirms_it():
    record = apply(ev("task-sent", 0))
    record.state, record.provisional, record.cancel_requested_at = states.CANCELLED, True, "now"
    ledger.apply_event(record, ev("task-sent", 0.5))  # a task-sent arriving after the cancel
    assert record.state == states.CANCELLED
    ledger.apply_event(record, ev("task-revoked", 2))
    assert record.state == states.CANCELLED and not record.provisional


def test_lost_is_replaced_by_what_really_happened():
    record = apply(ev("task-sent", 0))
    record.state, record.provisional = states.LOST, True
    ledger.apply_event(record, ev("task-succeeded", 900))
    assert record.state == states.SUCCESS


def test_revoke_not_asked_by_the_control_plane_is_revoked():
    assert apply(ev("task-sent", 0), ev("task-revoked", 1, expired=True)).state == states.REVOKED


def test_progress_fields():
    record = apply(ev("task-started", 1), ev("task-progress", 2, step="parse", message="10 of 20", current=10, total=20))
    assert (record.state, record.progress_step, record.progress_current, record.progress_total) == \
        (states.PROGRESS, "parse", 10, 20)


def test_sensitive_arguments_are_redacted_but_the_call_is_kept_for_retry():
    record = apply(ev("task-sent", 0, name="tests.io.secret", args="('ann', 's3cret')",
                      kwargs="{'password': 'hunter2', 'x': 1}"))
    assert "s3cret" not in record.args and REDACTED in record.args and "'ann'" in record.args
    assert "hunter2" not in record.kwargs and "'x': 1" in record.kwargs
    assert record.call == {"args": ["ann", "s3cret"], "kwargs": {"password": "hunter2", "x": 1}}


def test_truncated_repr_gives_no_call():
    record = apply(ev("task-sent", 0, name="x", args="('aaaa...", kwargs="{}"))
    assert record.call is None and record.args == "('aaaa..."


@pytest.mark.django_db
def test_record_events_keeps_rows_written_by_the_control_plane(django_user_model):
    from apps.control.recorder import record_events
    from apps.control.services import record_owner

    owner = django_user_model.objects.create_user("owner")
    record_owner("t1", owner)
    events = [ev("task-sent", 0, name="tests.io.echo", queue="ops_trace", args="(1,)", kwargs="{}"),
              {**ev("task-started", 1), "uuid": "t2"}, ev("task-succeeded", 2, result="1", runtime=0.1)]
    assert record_events(events) == 2
    one, two = TaskRecord.objects.get(task_id="t1"), TaskRecord.objects.get(task_id="t2")
    assert (one.state, one.owner, one.queue) == (states.SUCCESS, owner, "ops_trace")
    assert two.state == states.STARTED and two.owner is None
    record_events([{**ev("task-succeeded", 3), "uuid": "t2"}])
    assert TaskRecord.objects.get(task_id="t2").state == states.SUCCESS


@pytest.mark.django_db
def test_a_row_created_between_read_and_insert_is_updated_not_lost(monkeypatch):
    """record_owner may insert the row after the recorder looked for it: the insert conflicts."""
    from apps.control import recorder

    real_select = TaskRecord.objects.select_for_update
    calls = []

    class ReadThenRace:
        def filter(self, **kwargs):
            rows = list(real_select().filter(**kwargs))  # the recorder's read: nothing yet
            TaskRecord.objects.create(task_id="t1", retry_of="set-by-api")  # the concurrent writer
            return rows

    def select_for_update():
        calls.append(1)
        return ReadThenRace() if len(calls) == 1 else real_select()

    monkeypatch.setattr(TaskRecord.objects, "select_for_update", select_for_update)
    recorder.record_events([ev("task-sent", 0, name="n"), ev("task-succeeded", 1)])
    record = TaskRecord.objects.get(task_id="t1")
    assert (record.state, record.name, record.retry_of) == (states.SUCCESS, "n", "set-by-api")
    assert len(calls) == 2  # the slow path ran


def test_a_late_event_of_the_life_before_a_replay_is_ignored():
    # A CI run: the worker's task-failed (sent before it dead-lettered the message) reached the recorder
    # after the replay had reopened the task, and FAILURE (sticky) hid the replayed run's SUCCESS.
    from datetime import datetime, timezone

    record = apply(ev("task-started", 1, hostname="io@a"))
    record.state, record.reopened_at = states.QUEUED, datetime.fromtimestamp(T0 + 3, tz=timezone.utc)
    for event in (ev("task-started", 4, hostname="io@b"), ev("task-failed", 2, exception="Reject('x')"),
                  ev("task-succeeded", 5, result="ok")):
        ledger.apply_event(record, event)
    assert (record.state, record.worker, record.result, record.error) == (states.SUCCESS, "io@b", "ok", "")


def test_a_truncated_repr_is_shown_but_not_kept_as_a_call():
    # Celery truncates argsrepr past 1 KiB with "...": it parses as Ellipsis, which is not JSON.
    record = apply(ev("task-sent", 0, name="x", args="([1, 2, ...],)", kwargs="{}", retries="many"))
    assert record.call is None and "..." in record.args and record.retries == 0
