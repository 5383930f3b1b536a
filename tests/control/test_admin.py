"""Admin pages: the ledger, dead letters and paused queues render; pausing from the admin is audited."""
import pytest

from apps.control import services
from apps.control.models import ControlAction, PausedQueue, TaskRecord

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def admin_client(client, django_user_model):
    user = django_user_model.objects.create_superuser("root", password="x")
    client.force_login(user)
    return client


def test_changelists_render(io_worker, admin_client):
    TaskRecord.objects.create(task_id="a1", name="tests.io.echo", state="SUCCESS")
    for url in ["/admin/control/taskrecord/", "/admin/control/deadletter/", "/admin/control/pausedqueue/",
                "/admin/control/controlaction/", "/admin/control/taskrecord/a1/live/", "/console/tasks/a1/"]:
        assert admin_client.get(url, follow=True).status_code == 200, url


def test_pause_and_resume_from_the_admin(io_worker, admin_client):
    try:
        response = admin_client.post("/admin/control/pausedqueue/add/", {"queue": "mail_bulk", "reason": "outage"})
        assert response.status_code == 302
        paused = PausedQueue.objects.get(queue="mail_bulk")
        assert ControlAction.objects.filter(action="queue.pause", actor_name="root", target="mail_bulk").exists()
        response = admin_client.post("/admin/control/pausedqueue/", {
            "action": "delete_selected", "_selected_action": [paused.pk], "post": "yes"})
        assert response.status_code == 302
        assert not PausedQueue.objects.exists()
        assert ControlAction.objects.filter(action="queue.resume", actor_name="root").exists()
    finally:
        if PausedQueue.objects.filter(queue="mail_bulk").exists():
            services.resume_queue("mail_bulk")
