"""The operator console without a browser: who may see it, CSRF, audit, and panels that degrade to
"unavailable: <reason>" instead of a 500 (the browser tests are in test_console_browser.py)."""
import pytest
from amqp.exceptions import InternalError
from django.test import Client

from apps.control import selectors, services
from apps.control.console import snapshot
from apps.control.models import ControlAction, DeadLetter, PausedQueue, TaskRecord

pytestmark = pytest.mark.django_db(transaction=True)

NOPROC = InternalError("Queue 'dataset' in vhost '/t': timeout waiting for a leader (noproc)", (50, 10), 541)


def test_console_and_its_actions_are_for_staff_only(client, member):
    for user in (None, member):
        if user:
            client.force_login(user)
        response = client.get("/console/")
        assert response.status_code == 302 and response.url.startswith("/admin/login/")
        response = client.post("/console/queues/mail/pause/", {"reason": "x"})
        assert response.status_code == 302 and response.url.startswith("/admin/login/")
        assert client.get("/console/tasks/abc/").status_code == 302
    assert not PausedQueue.objects.exists() and not ControlAction.objects.exists()


def test_actions_need_the_csrf_token_and_are_audited(staff, broker_url):
    browser = Client(enforce_csrf_checks=True)
    browser.force_login(staff)
    assert browser.post("/console/queues/mail_bulk/pause/", {"reason": "x"}).status_code == 403
    assert not PausedQueue.objects.exists()

    page = browser.get("/console/")
    token = page.cookies["csrftoken"].value
    try:
        response = browser.post("/console/queues/mail_bulk/pause/", {"reason": "newsletter stuck",
                                                                    "csrfmiddlewaretoken": token})
        assert response.status_code == 302 and response.url == "/console/"
        assert PausedQueue.objects.get(queue="mail_bulk").reason == "newsletter stuck"
        action = ControlAction.objects.get(action="queue.pause")
        assert (action.actor_name, action.target) == ("operator", "mail_bulk")
        again = browser.post("/console/queues/mail_bulk/pause/", {"csrfmiddlewaretoken": token}, follow=True)
        assert "already paused" in again.content.decode()  # the service's refusal, shown on the page
    finally:
        PausedQueue.objects.filter(queue="mail_bulk").exists() and services.resume_queue("mail_bulk")


def test_a_broker_error_makes_one_panel_unavailable_not_the_page(monkeypatch, staff, client, broker_url):
    monkeypatch.setattr(selectors, "queue_depth_map", lambda: (_ for _ in ()).throw(NOPROC))
    TaskRecord.objects.create(task_id="t-1", name="tests.io.echo", queue="ops_trace", state="RETRY")
    data = snapshot.build({})
    assert data["queues"]["unavailable"].startswith("InternalError: 541") and "noproc" in data["queues"]["unavailable"]
    assert data["scheduled"][0]["task_id"] == "t-1"  # the other panels still show
    assert set(data["charts"]["queues"]) == {"dataset", "mail", "mail_bulk", "ops_trace"}

    def refuse():
        raise NOPROC

    monkeypatch.setattr(services.deadletters, "drain", refuse)
    client.force_login(staff)
    response = client.get("/console/")
    assert response.status_code == 200
    page = response.content.decode()
    assert "unavailable: 541" in page and "(noproc)" in page


def test_task_page_shows_the_redacted_call_and_the_dataset_extension(staff, client):
    record = TaskRecord.objects.create(task_id="t-2", name="tests.io.secret", queue="ops_trace", state="FAILURE",
                                       args="['alice', '[redacted]']", kwargs="{'password': '[redacted]'}",
                                       call={"args": ["alice", "s3cret"], "kwargs": {"password": "hunter2"}},
                                       traceback="Traceback (most recent call last):\n  ValueError: boom")
    client.force_login(staff)
    page = client.get(f"/console/tasks/{record.task_id}/").content.decode()
    assert "[redacted]" in page and "s3cret" not in page and "hunter2" not in page
    assert "ValueError: boom" in page
    assert "waiting for its first event" in client.get("/console/tasks/nope/").content.decode()  # not recorded yet
    assert client.get(f"/admin/control/taskrecord/{record.task_id}/live/").url == f"/console/tasks/{record.task_id}/"
    assert not DeadLetter.objects.exists()


def test_task_page_links_the_trace_of_the_tasks_run(staff, client):
    from django.utils import timezone

    from apps.tracing.models import TraceEvent

    now = timezone.now()
    record = TaskRecord.objects.create(task_id="t-3", name="tests.io.echo", queue="ops_trace", state="SUCCESS",
                                       sent_at=now, finished_at=now)
    trace_id = "ab" * 16
    for task_id, trace in (("t-other", "cd" * 16), ("t-3", trace_id)):
        TraceEvent.objects.create(trace_id=trace, span_id="1" * 16, name="run/tests.io.echo", start_ns=0, end_ns=1,
                                  start_time=now, received_at=now, attributes={"messaging.message.id": task_id})
    client.force_login(staff)
    page = client.get(f"/console/tasks/{record.task_id}/").content.decode()
    assert f'href="/api/v1/tracing/traces/{trace_id}/"' in page and "cd" * 16 not in page


def test_oldest_age_leaves_out_tasks_due_later():
    from datetime import timedelta

    from django.utils import timezone

    now = timezone.now()
    TaskRecord.objects.create(task_id="waiting", queue="mail", state="QUEUED", sent_at=now - timedelta(seconds=30))
    TaskRecord.objects.create(task_id="due-later", queue="mail", state="QUEUED", sent_at=now - timedelta(seconds=90),
                              eta=now + timedelta(minutes=10))
    TaskRecord.objects.create(task_id="only-later", queue="ops_trace", state="QUEUED", sent_at=now, eta=now + timedelta(minutes=1))
    ages = selectors.oldest_queued_age(now)
    assert ages == {"mail": 30.0}  # the countdown task is under "scheduled", not waiting in the queue
