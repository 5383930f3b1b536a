"""The task page (the console's, where the admin's old progress address now leads) as rendered before any
WebSocket message: the three defects of issue 16 (404 right after enqueue, no task name, "SUCCESS merging")."""
import pytest

from apps.control import states
from apps.control.consumers import _snapshot
from apps.control.live import message_for
from apps.control.models import TaskRecord

pytestmark = pytest.mark.django_db


@pytest.fixture
def admin_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", "root@example.com", "x")
    client.force_login(user)
    return client


def page(admin_client, task_id: str) -> str:
    response = admin_client.get(f"/admin/control/taskrecord/{task_id}/live/", HTTP_HOST="127.0.0.1", follow=True)
    assert response.status_code == 200
    assert response.redirect_chain[-1][0] == f"/console/tasks/{task_id}/"
    return response.content.decode()


def test_right_after_enqueue_the_page_waits_instead_of_404(admin_client):
    html = page(admin_client, "not-recorded-yet")  # the recorder has not written the row yet
    assert 'data-task="not-recorded-yet"' in html and "waiting for its first event" in html


def test_a_running_task_shows_its_name_queue_and_step(admin_client):
    TaskRecord.objects.create(task_id="t-run", name="datasets.start_import", queue="dataset", state=states.PROGRESS,
                              progress_step="profiling")
    html = page(admin_client, "t-run")
    assert '<span id="task-name">datasets.start_import</span>' in html
    assert "<dt>queue</dt><dd>dataset</dd>" in html
    assert '<span id="step">profiling</span>' in html  # the step shows while it runs
    # Live messages carry the name and queue too, for a page opened before the recorder knew them.
    sent = message_for({"type": "task-sent", "uuid": "t-run", "name": "datasets.start_import", "queue": "dataset",
                        "timestamp": 1.0})
    assert sent["name"] == "datasets.start_import" and sent["queue"] == "dataset"


def test_a_finished_task_shows_its_final_state_without_its_last_step(admin_client):
    record = TaskRecord.objects.create(task_id="t-done", name="datasets.finish_import", queue="dataset",
                                       state=states.SUCCESS, progress_step="merging")
    html = page(admin_client, "t-done")
    assert '<span id="step"></span>' in html and "merging" not in html  # not "SUCCESS merging"
    assert _snapshot(record)["step"] == "" and _snapshot(record)["state"] == states.SUCCESS
