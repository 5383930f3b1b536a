"""Pause/resume across all workers (and a worker restart), and cancel: queued, cooperative, forced."""
import time

import psutil
import pytest

from apps.control import selectors, services, states
from apps.control.models import ControlAction, PausedQueue, TaskRecord
from project.celery import app
from tests.control.conftest import wait_state
from tests.support.control_tasks import io_steps
from tests.support.tasks import cpu_sleep, io_echo, io_mark
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def consumed_by(nodename: str) -> set[str]:
    for worker in selectors.workers(live=True):
        if worker["hostname"] == nodename:
            return set(worker["queues"])
    return set()


@pytest.fixture
def resume_all():
    yield
    for name in list(PausedQueue.objects.values_list("queue", flat=True)):
        services.resume_queue(name)


def test_pause_survives_a_worker_restart_and_resume_runs_the_backlog(
        recorder, io_worker, start_worker, api, effects, resume_all):
    assert api.post("/api/v1/queues/mail/pause/", {"reason": "SMTP outage"}, format="json").status_code == 200
    wait_for(lambda: "mail" not in consumed_by(io_worker.nodename), timeout=20, message="io worker to stop consuming mail")
    assert {"mail_bulk", "ops_trace"} <= consumed_by(io_worker.nodename)  # the other lanes keep running

    waiting = io_mark.apply_async(args=[effects.path, "mail"], queue="mail", exchange="mail", routing_key="mail")
    assert io_echo.delay("ops still runs").get(timeout=30)["value"] == "ops still runs"

    fresh = start_worker("io", env={"IO_CONCURRENCY": "5"})  # a worker started during the pause
    try:
        assert "mail" not in consumed_by(fresh.nodename) and "ops_trace" in consumed_by(fresh.nodename)
        time.sleep(2)
        assert effects.count("mail") == 0
        assert wait_state(waiting.id, states.QUEUED).state == states.QUEUED
        assert [q for q in api.get("/api/v1/queues/").json()["queues"] if q["name"] == "mail"][0]["paused"] is True

        assert api.post("/api/v1/queues/mail/resume/").status_code == 200
        wait_state(waiting.id, states.SUCCESS)
        assert effects.count("mail") == 1
        wait_for(lambda: "mail" in consumed_by(fresh.nodename) and "mail" in consumed_by(io_worker.nodename),
                 timeout=20, message="both workers to consume mail again")
    finally:
        fresh.stop()
    actions = list(ControlAction.objects.filter(target="mail").values_list("action", "actor_name"))
    assert ("queue.pause", "operator") in actions and ("queue.resume", "operator") in actions


def test_resume_never_adds_a_queue_to_a_worker_that_did_not_have_it(cpu_worker, io_worker, resume_all):
    services.pause_queue("mail")
    services.resume_queue("mail")
    assert "mail" not in consumed_by(cpu_worker.nodename)


def test_pause_errors(api, resume_all):
    assert api.post("/api/v1/queues/nope/pause/").status_code == 404
    services.pause_queue("mail_bulk")
    response = api.post("/api/v1/queues/mail_bulk/pause/")
    assert response.status_code == 409 and "already paused" in response.json()["detail"]
    services.resume_queue("mail_bulk")
    assert api.post("/api/v1/queues/mail_bulk/resume/").status_code == 409


def test_a_cancelled_queued_task_never_starts(recorder, io_worker, api, effects, resume_all):
    services.pause_queue("mail")
    queued = io_mark.apply_async(args=[effects.path, "cancelled"], queue="mail", exchange="mail", routing_key="mail")
    wait_state(queued.id, states.QUEUED)
    response = api.post(f"/api/v1/tasks/{queued.id}/cancel/", {}, format="json")
    assert response.status_code == 202 and response.json()["state"] == "CANCELLED"
    services.resume_queue("mail")
    wait_for(lambda: not TaskRecord.objects.get(task_id=queued.id).provisional, timeout=30,
             message="the worker to confirm the revoke")
    assert TaskRecord.objects.get(task_id=queued.id).state == states.CANCELLED
    assert effects.count("cancelled") == 0
    assert ControlAction.objects.filter(action="task.cancel", target=queued.id, actor_name="operator").exists()


def test_a_worker_started_later_loads_cancellations_from_the_database(start_worker):
    # No broadcast at all: only the ledger knows, as after a restart of every worker.
    TaskRecord.objects.create(task_id="cancelled-before-start", state=states.CANCELLED, provisional=True,
                              cancel_requested_at="2026-01-01T00:00:00Z", queue="dataset")
    TaskRecord.objects.filter(task_id="cancelled-before-start").update(cancel_requested_at=__import__(
        "django.utils.timezone", fromlist=["now"]).now())
    worker = start_worker("cpu", env={"CPU_CONCURRENCY": "1"})
    try:
        from project.celery import app

        # Loaded before the worker's first message (it answered a ping); only the inspect reply may be slow
        # on a loaded machine (a CI run's single 3 s inspect got no reply), so ask until it answers.
        def revoked():
            replies = app.control.inspect([worker.nodename], timeout=3).revoked() or {}
            return replies.get(worker.nodename)

        assert "cancelled-before-start" in wait_for(revoked, timeout=30, message=f"{worker.nodename}'s revoked list")
    finally:
        worker.stop()


def test_a_running_task_stops_cooperatively(recorder, io_worker, api, effects):
    running = io_steps.delay(100, 0.2, effects.path)
    wait_state(running.id, states.PROGRESS)
    assert api.post(f"/api/v1/tasks/{running.id}/cancel/", {}, format="json").status_code == 202
    record = wait_state(running.id, states.CANCELLED, timeout=15)
    assert "TaskCancelled" in record.error
    assert effects.count("start") == 1 and effects.count("end") == 0


def test_forced_termination_on_prefork(recorder, cpu_worker, api, effects):
    running = cpu_sleep.delay(120, effects.path)
    wait_state(running.id, states.STARTED)
    wait_for(lambda: effects.count("start"), timeout=20, message="the task body to start")
    child = wait_for(lambda: next((t["worker_pid"] for tasks in (app.control.inspect(timeout=1).active() or {}).values()
                                   for t in tasks if t["id"] == running.id), None), timeout=20,
                     message="the child running the task")
    response = api.post(f"/api/v1/tasks/{running.id}/cancel/", {"force": True}, format="json")
    assert response.status_code == 202, response.json()
    # The child really goes (a terminate signal the child ignores was once reported as done all the same).
    wait_for(lambda: not psutil.pid_exists(child) or psutil.Process(child).status() == psutil.STATUS_ZOMBIE,
             timeout=20, message=f"child {child} running the cancelled task to exit")
    wait_for(lambda: not TaskRecord.objects.get(task_id=running.id).provisional
             and TaskRecord.objects.get(task_id=running.id).state == states.CANCELLED, timeout=20,
             message="the terminate to be reported")
    assert effects.count("end") == 0
    assert cpu_worker.alive()
    assert cpu_sleep.delay(0).get(timeout=30) == 0  # the pool replaced the child


def test_force_is_refused_on_eventlet(recorder, io_worker, api, effects):
    running = io_steps.delay(30, 0.2, effects.path)
    wait_state(running.id, states.STARTED, states.PROGRESS)
    response = api.post(f"/api/v1/tasks/{running.id}/cancel/", {"force": True}, format="json")
    assert response.status_code == 400 and "prefork" in response.json()["detail"]
    assert TaskRecord.objects.get(task_id=running.id).cancel_requested_at is None  # nothing changed
    services.cancel_task(running.id)  # clean up cooperatively
    wait_state(running.id, states.CANCELLED, timeout=15)


def test_cancel_of_a_finished_or_unknown_task(recorder, io_worker, api):
    done = io_echo.delay(1)
    wait_state(done.id, states.SUCCESS)
    before = ControlAction.objects.count()
    response = api.post(f"/api/v1/tasks/{done.id}/cancel/", {}, format="json")
    assert response.status_code == 409 and "already finished (SUCCESS)" in response.json()["detail"]
    assert api.post("/api/v1/tasks/no-such-id/cancel/", {}, format="json").status_code == 404
    assert TaskRecord.objects.get(task_id=done.id).state == states.SUCCESS
    assert TaskRecord.objects.get(task_id=done.id).cancel_requested_at is None
    assert ControlAction.objects.count() == before
