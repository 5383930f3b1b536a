"""Operator commands from day one: health, demo, preflight, seed_schedules."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
from django.conf import settings

from project import topology

ROOT = Path(settings.BASE_DIR)
DEAD_BROKER = "amqp://guest:guest@127.0.0.1:1//"  # nothing listens on port 1

pytestmark = pytest.mark.django_db(transaction=True)


def manage(*args, broker_url, worker_db_url, timeout=180):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.test", "CELERY_BROKER_URL": broker_url,
           "DATABASE_URL": worker_db_url}
    return subprocess.run([sys.executable, "manage.py", *args], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=timeout)


def test_health_reports_both_roles_with_pools_queues_and_depths(cpu_worker, io_worker, broker_url, worker_db_url):
    # --live: no recorder runs here to hear heartbeats (tests/control/test_fast_status.py covers that path).
    result = manage("health", "--live", "--json", broker_url=broker_url, worker_db_url=worker_db_url)
    report = json.loads(result.stdout)
    assert result.returncode == 0, result.stdout + result.stderr
    assert report["ok"] and report["broker"] == "ok" and report["database"].startswith("ok")
    by_node = {w["hostname"]: w for w in report["workers"]}
    assert by_node[cpu_worker.nodename]["pool"] == "prefork"
    assert by_node[cpu_worker.nodename]["queues"] == ["dataset"]
    assert by_node[io_worker.nodename]["pool"] == "eventlet"
    assert by_node[io_worker.nodename]["queues"] == ["mail", "mail_bulk", "ops_trace"]
    assert {q["name"] for q in report["queues"]} == set(topology.all_queue_names())
    assert all(isinstance(q["messages"], int) for q in report["queues"])


def test_health_exits_non_zero_with_one_clear_line_when_the_broker_is_down(worker_db_url):
    result = manage("health", broker_url=DEAD_BROKER, worker_db_url=worker_db_url)
    assert result.returncode == 1
    assert "RabbitMQ is not reachable at amqp://guest:**@127.0.0.1:1//" in result.stdout + result.stderr
    assert "rabbitmq-server -detached" in result.stdout + result.stderr


def test_preflight_says_in_one_line_how_to_start_rabbitmq(worker_db_url):
    result = manage("preflight", broker_url=DEAD_BROKER, worker_db_url=worker_db_url)
    assert result.returncode == 1
    [line] = result.stderr.strip().splitlines()
    assert line.startswith("CommandError: RabbitMQ is not reachable") and "start it with" in line


def test_health_exits_non_zero_when_a_role_has_no_worker(broker_url, worker_db_url):
    # In a fresh vhost with no worker consuming it, both roles are missing.
    from tests.support import rabbit

    vhost = rabbit.create_vhost("platform-test-empty")
    try:
        result = manage("health", "--live", "--json", broker_url=rabbit.vhost_url(vhost), worker_db_url=worker_db_url)
        fast = manage("health", "--json", broker_url=rabbit.vhost_url(vhost), worker_db_url=worker_db_url)
    finally:
        rabbit.delete_vhost(vhost)
    report = json.loads(result.stdout)
    assert result.returncode == 1
    assert "no cpu worker online (start compose/start/cpu)" in report["problems"]
    assert "no io worker online (start compose/start/io)" in report["problems"]
    # Without --live the answer comes from the recorder, and there is none on this vhost: it says so.
    assert fast.returncode == 1
    assert any(p.startswith("the event recorder is not running") for p in json.loads(fast.stdout)["problems"])


def test_demo_completes_every_task_on_every_queue(cpu_worker, io_worker, broker_url, worker_db_url):
    result = manage("demo", "--count", "3", "--timeout", "150", broker_url=broker_url, worker_db_url=worker_db_url)
    assert result.returncode == 0, result.stdout + result.stderr
    lines = {line.split()[0]: line.split() for line in result.stdout.splitlines() if line.split()}
    for queue in ("dataset", "mail", "ops_trace"):
        done, failed, pending = map(int, lines[queue][1:4])
        assert done >= 3 and failed == 0 and pending == 0, result.stdout
    assert "tasks done in" in result.stdout


def test_demo_refuses_a_bad_count(worker_db_url, broker_url):
    result = manage("demo", "--count", "0", broker_url=broker_url, worker_db_url=worker_db_url)
    assert result.returncode == 1 and "--count must be at least 1" in result.stderr
