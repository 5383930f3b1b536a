"""The live progress page (admin) as rendered before any WebSocket message: the three defects of issue 16."""
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
    response = admin_client.get(f"/admin/control/taskrecord/{task_id}/live/", HTTP_HOST="127.0.0.1")
    assert response.status_code == 200
    return response.content.decode()


def test_right_after_enqueue_the_page_waits_instead_of_404(admin_client):
    html = page(admin_client, "not-recorded-yet")  # the recorder has not written the row yet
    assert 'data-task="not-recorded-yet"' in html and "waiting for its first event" in html
    assert '<span id="where" hidden>' in html  # no "on queue" with an empty queue


def test_a_running_task_shows_its_name_and_queue(admin_client):
    TaskRecord.objects.create(task_id="t-run", name="datasets.start_import", queue="dataset", state=states.PROGRESS,
                              progress_step="profiling")
    html = page(admin_client, "t-run")
    assert '<strong id="name">datasets.start_import</strong>' in html
    assert '<span id="where">on queue <code id="queue">dataset</code>' in html
    assert '<span id="progress">' in html  # the step shows while it runs
    # Live messages carry the name and queue too, for a page opened before the recorder knew them.
    sent = message_for({"type": "task-sent", "uuid": "t-run", "name": "datasets.start_import", "queue": "dataset",
                        "timestamp": 1.0})
    assert sent["name"] == "datasets.start_import" and sent["queue"] == "dataset"


def test_a_finished_task_shows_its_final_state_without_its_last_step(admin_client):
    record = TaskRecord.objects.create(task_id="t-done", name="datasets.finish_import", queue="dataset",
                                       state=states.SUCCESS, progress_step="merging")
    html = page(admin_client, "t-done")
    assert '<span id="progress" hidden>' in html  # not "SUCCESS - merging"
    assert _snapshot(record)["step"] == "" and _snapshot(record)["state"] == states.SUCCESS
    assert "FINAL.includes(m.state)" in html  # and a live final state hides the step as well
