"""The HTTP API: authentication, staff-only control, JSON errors for bad input (and nothing changed),
stats, workers, pool restart, worker shutdown, metrics."""
import pytest

from apps.control import states
from apps.control.models import ControlAction, TaskRecord
from tests.control.conftest import wait_state
from tests.support.tasks import cpu_sleep, io_echo
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def ledger_row():
    return TaskRecord.objects.create(task_id="t-1", name="tests.io.echo", queue="ops_trace", state=states.SUCCESS)


def unchanged(fn):
    """Run fn and show nothing was written: no audit entry, the ledger the same."""
    before = (ControlAction.objects.count(), list(TaskRecord.objects.order_by("id").values()))
    response = fn()
    assert (ControlAction.objects.count(), list(TaskRecord.objects.order_by("id").values())) == before
    return response


@pytest.mark.parametrize("header", [None, "Token wrong-token", "Bearer x"])
def test_missing_or_wrong_token_is_401_json(client, header, ledger_row):
    kwargs = {"HTTP_AUTHORIZATION": header} if header else {}
    response = client.get("/api/v1/tasks/", **kwargs)
    assert response.status_code == 401
    assert response.json()["code"] in ("not_authenticated", "authentication_failed") and response.json()["detail"]


def test_control_endpoints_are_staff_only(member_api, ledger_row):
    for method, url in [("post", "/api/v1/tasks/t-1/cancel/"), ("post", "/api/v1/tasks/t-1/retry/"),
                        ("get", "/api/v1/stats/"), ("get", "/api/v1/workers/"), ("post", "/api/v1/queues/mail/pause/"),
                        ("get", "/api/v1/dead-letters/"), ("post", "/api/v1/dead-letters/purge/"),
                        ("get", "/api/v1/metrics/"), ("get", "/api/v1/audit/")]:
        response = unchanged(lambda: getattr(member_api, method)(url))
        assert response.status_code == 403, url
        assert response.json()["code"] == "permission_denied"


@pytest.mark.parametrize("params, field", [
    ({"state": "BOGUS"}, "state"), ({"queue": "nope"}, "queue"), ({"since": "yesterday"}, "since"),
    ({"page_size": "10000"}, "page_size"), ({"page_size": "0"}, "page_size"), ({"page": "-1"}, "page"),
    ({"page": "abc"}, "page"), ({"since": "2026-02-01T00:00:00Z", "until": "2026-01-01T00:00:00Z"}, "until")])
def test_malformed_filters_are_400_and_say_what_was_wrong(api, params, field, ledger_row):
    response = api.get("/api/v1/tasks/", params)
    assert response.status_code == 400
    body = response.json()
    assert field in body and body["code"] == "invalid" and field in body["detail"]


def test_oversized_page_size_names_the_limit(api):
    response = api.get("/api/v1/tasks/", {"page_size": 501})
    assert response.status_code == 400 and "500" in response.json()["detail"]


def test_unknown_ids_are_404_json(api):
    for url in ["/api/v1/tasks/nope/", "/api/v1/dead-letters/123456/"]:
        response = api.get(url)
        assert response.status_code == 404 and url.rstrip("/").rsplit("/", 1)[-1] in response.json()["detail"]
    for url in ["/api/v1/tasks/nope/cancel/", "/api/v1/tasks/nope/retry/", "/api/v1/dead-letters/123456/replay/",
                "/api/v1/workers/nobody@nowhere/shutdown/", "/api/v1/workers/nobody@nowhere/pool-restart/"]:
        response = unchanged(lambda: api.post(url, {}, format="json"))
        assert response.status_code == 404, (url, response.json())
        assert response.json()["code"] == "not_found"


def test_unknown_url_under_api_is_json_404(api):
    response = api.get("/api/v1/no-such-thing/")
    assert response.status_code == 404 and response["Content-Type"].startswith("application/json")
    assert "/api/v1/no-such-thing/" in response.json()["detail"]


def test_bad_body_is_400(api, ledger_row):
    TaskRecord.objects.filter(task_id="t-1").update(state=states.STARTED)
    response = unchanged(lambda: api.post("/api/v1/tasks/t-1/cancel/", {"force": "maybe"}, format="json"))
    assert response.status_code == 400 and "force" in response.json()["detail"]
    response = api.post("/api/v1/tasks/t-1/cancel/", "{not json", content_type="application/json")
    assert response.status_code == 400 and response.json()["code"] == "parse_error"


def test_stats_and_workers(recorder, io_worker, cpu_worker, api):
    wait_state(io_echo.delay(1).id, states.SUCCESS)
    stats = api.get("/api/v1/stats/").json()
    assert stats["by_state"]["SUCCESS"] >= 1 and stats["by_queue"]["ops_trace"]["SUCCESS"] >= 1
    assert {q["name"] for q in stats["queues"]} == {"dataset", "mail", "mail_bulk", "ops_trace"}

    def announced():  # as the recorder heard them; right after a test's flush, the next announcement (<= 5 s)
        workers = {w["hostname"]: w for w in api.get("/api/v1/workers/").json()["workers"]}
        return all(workers.get(w.nodename, {}).get("pool", "?") != "?" for w in (cpu_worker, io_worker)) and workers

    workers = wait_for(announced, timeout=30, interval=0.5, message="both workers in /workers/")
    assert workers[cpu_worker.nodename]["pool"] == "prefork" and workers[cpu_worker.nodename]["concurrency"] == 2
    assert workers[io_worker.nodename]["pool"] == "eventlet"
    assert workers[io_worker.nodename]["queues"] == ["mail", "mail_bulk", "ops_trace"]


def test_workers_show_active_tasks(recorder, cpu_worker, api, effects):
    running = cpu_sleep.delay(15, effects.path)
    wait_for(lambda: effects.count("start"), timeout=30, message="the task to start")

    def listed():  # each inspect reply has a 1.5 s window: a loaded machine can miss one
        workers = {w["hostname"]: w for w in api.get("/api/v1/workers/").json()["workers"]}
        return running.id in [t["id"] for t in workers.get(cpu_worker.nodename, {}).get("active_tasks", [])]

    wait_for(listed, timeout=12, interval=1, message="the running task in the worker's active tasks")
    running.get(timeout=60)


def test_pool_restart_and_shutdown(start_worker, api):
    worker = start_worker("cpu", env={"CPU_CONCURRENCY": "1"})
    children = worker.children()
    response = api.post(f"/api/v1/workers/{worker.nodename}/pool-restart/")
    assert response.status_code == 202, response.json()
    wait_for(lambda: worker.children() and set(worker.children()) != set(children), timeout=30,
             message="new pool children")
    response = api.post(f"/api/v1/workers/{worker.nodename}/shutdown/")
    assert response.status_code == 202
    wait_for(lambda: not worker.alive(), timeout=30, message="the worker to exit")
    assert list(ControlAction.objects.filter(target=worker.nodename).values_list("action", flat=True).order_by("id")) \
        == ["worker.pool_restart", "worker.shutdown"]


def test_metrics(recorder, io_worker, api, broker_url):
    wait_state(io_echo.delay(1).id, states.SUCCESS)

    def eventlet_worker_known():  # workers come from the recorder's registry: wait for the io worker's announcement
        text = api.get("/api/v1/metrics/").content.decode()
        return 'platform_workers_online{pool="eventlet"} 0.0' not in text

    wait_for(eventlet_worker_known, timeout=30, interval=0.5, message="the io worker in the registry")
    response = api.get("/api/v1/metrics/")
    assert response.status_code == 200 and response["Content-Type"].startswith("text/plain")
    text = response.content.decode()
    for line in ['platform_queue_messages{queue="ops_trace"}', 'platform_queue_messages{queue="ops_trace.dead"}',
                 'platform_queue_oldest_message_age_seconds{queue="mail.dead"}', 'platform_broker_up 1.0',
                 'platform_task_runtime_seconds_bucket{le="+Inf",name="tests.io.echo"}',
                 'platform_tasks{queue="ops_trace",state="SUCCESS"}', 'platform_workers_online{pool="eventlet"}',
                 'platform_queue_paused{queue="mail"} 0.0']:
        assert line in text, line
    online = [l for l in text.splitlines() if l.startswith('platform_workers_online{pool="eventlet"}')][0]
    assert float(online.split()[-1]) >= 1


def test_audit_list(api):
    from apps.control import services

    services.pause_queue("mail_bulk")
    services.resume_queue("mail_bulk")
    body = api.get("/api/v1/audit/").json()
    assert [r["action"] for r in body["results"][:2]] == ["queue.resume", "queue.pause"]


def test_schema_is_served(api):
    response = api.get("/api/v1/schema/", HTTP_ACCEPT="application/json")
    assert response.status_code == 200
    assert "/api/v1/tasks/{task_id}/cancel/" in response.json()["paths"]
