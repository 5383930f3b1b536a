"""Fast status: health, stats and workers answer from what the recorder already heard (no broadcast),
say how old each fact is, and flag what is not part of this deployment; --live / ?live=1 asks the workers."""
import json
import os
import re
import subprocess
import sys

import pytest
from django.conf import settings
from kombu import Connection

from apps.core import workers as registry
from apps.core.health import health_report
from tests.support.workers import database_url, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def no_broadcast(monkeypatch):
    """Call it to make any broadcast inspection fail the test: the fast path must not wait for replies."""
    from project.celery import app

    def refuse(*args, **kwargs):
        raise AssertionError("the fast path sent a broadcast inspection")

    def forbid():
        monkeypatch.setattr(app.control, "broadcast", refuse)
        monkeypatch.setattr(app.control, "inspect", refuse)
    return forbid


def known(nodename: str) -> dict | None:
    return next((w for w in registry.known_workers() if w["hostname"] == nodename), None)


def test_health_answers_from_heartbeats_without_asking_the_workers(recorder, start_worker, no_broadcast, monkeypatch):
    cpu, io = start_worker("cpu", env={"CPU_CONCURRENCY": "1"}), start_worker("io", env={"IO_CONCURRENCY": "5"})
    wait_for(lambda: known(cpu.nodename) and known(io.nodename) and known(io.nodename)["pool"] != "?", timeout=30,
             message="both workers announced through the recorder")

    no_broadcast()
    report = health_report()
    by_node = {w["hostname"]: w for w in report["workers"]}
    assert by_node[cpu.nodename]["pool"] == "prefork" and by_node[cpu.nodename]["queues"] == ["dataset"]
    assert by_node[cpu.nodename]["concurrency"] == 1
    assert by_node[io.nodename]["pool"] == "eventlet"
    assert by_node[io.nodename]["queues"] == ["mail", "mail_bulk", "ops_trace"]
    assert not by_node[cpu.nodename]["foreign"] and not by_node[io.nodename]["foreign"]
    assert 0 <= by_node[cpu.nodename]["seen_seconds_ago"] < 15  # how old the news is, per worker
    assert "heartbeats" in report["workers_source"] and "passive declares" in report["queues_source"]
    assert report["recorders"] == 1
    assert report["roles"]["cpu"]["online"] >= 1 and report["roles"]["io"]["online"] >= 1

    # A stopped worker drops out once its goodbye (worker-offline) is recorded.
    monkeypatch.undo()
    cpu.stop()
    wait_for(lambda: known(cpu.nodename) is None, timeout=30, message="the stopped worker to drop out")


def test_api_status_endpoints_answer_without_a_broadcast_and_say_how_old(recorder, start_worker, api, no_broadcast):
    cpu = start_worker("cpu", env={"CPU_CONCURRENCY": "1"})
    wait_for(lambda: known(cpu.nodename), timeout=30, message="the worker announced")
    no_broadcast()
    for url in ("/api/v1/workers/", "/api/v1/stats/"):
        body = api.get(url).json()
        worker = next(w for w in body["workers"] if w["hostname"] == cpu.nodename)
        assert "seen_seconds_ago" in worker and worker["active_tasks"] == [] and body["checked_at"]
        assert "heartbeats" in body["workers_source"]
    health = api.get("/api/v1/health/").json()
    assert cpu.nodename in {w["hostname"] for w in health["workers"]} and "elapsed_ms" in health


def test_live_asks_the_workers(recorder, start_worker, api, broker_url):
    cpu = start_worker("cpu", env={"CPU_CONCURRENCY": "1"})
    body = api.get("/api/v1/workers/?live=1").json()
    assert "broadcast" in body["workers_source"]
    assert next(w for w in body["workers"] if w["hostname"] == cpu.nodename)["pool"] == "prefork"
    from django.db import connection

    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.test", "CELERY_BROKER_URL": broker_url,
           "DATABASE_URL": database_url(connection.settings_dict)}
    result = subprocess.run([sys.executable, "manage.py", "health", "--live", "--json"], cwd=settings.BASE_DIR, env=env,
                            capture_output=True, text=True, timeout=60)
    report = json.loads(result.stdout)
    assert "broadcast" in report["workers_source"] and cpu.nodename in {w["hostname"] for w in report["workers"]}


def test_health_flags_a_worker_of_another_deployment_and_a_stray_consumer(recorder, start_worker, broker_url):
    from project.celery import app

    ours = start_worker("io", env={"IO_CONCURRENCY": "5"})
    # Another stack's worker on our vhost: same code, another database (here: another deployment id).
    stranger = start_worker("cpu", env={"CPU_CONCURRENCY": "1", "PLATFORM_DEPLOYMENT": "another-stack"})
    # Every worker on the vhost announced (its queues recorded), the session's shared ones too: the table is
    # emptied between tests, and one known from a heartbeat but not yet announced accounts for no queue (a CI
    # run: "mail_bulk has 3 consumer(s) ... account for 1" with the session's io worker unannounced).
    running = {name for reply in app.control.ping(timeout=1.0) for name in reply}
    assert {ours.nodename, stranger.nodename} <= running
    wait_for(lambda: all((known(name) or {}).get("queues") for name in running) and known(stranger.nodename)["foreign"],
             timeout=30, message="every running worker's announcement recorded")
    with Connection(broker_url) as connection:  # and a bare consumer on mail_bulk that no worker accounts for
        channel = connection.channel()
        channel.basic_consume(queue="mail_bulk", callback=lambda message: None)
        report = health_report()
        channel.close()
    problems = "\n".join(report["problems"])
    assert not report["ok"]
    assert f"worker {stranger.nodename}" in problems and "not part of this deployment" in problems
    assert not known(ours.nodename)["foreign"]
    # Every consumer beyond what our workers account for is flagged (the session's workers may be running too).
    for queue in ("mail_bulk", "dataset"):
        found = re.search(rf"queue {queue} has (\d+) consumer\(s\) but this deployment's workers account for (\d+)",
                          problems)
        assert found and int(found[1]) == int(found[2]) + 1, problems
