"""Control-plane fixtures: the event recorder and a web process as real processes, API users and tokens."""
from __future__ import annotations

import urllib.request

import pytest
from rest_framework.authtoken.models import Token
from rest_framework.test import APIClient

from apps.control.models import TaskRecord
from tests.support.net import free_port
from tests.support.workers import ProcessRole, wait_for


@pytest.fixture(scope="session")
def recorder(broker_url, worker_db_url):
    """compose/start/recorder: Celery task events -> ledger."""
    process = ProcessRole("recorder", broker_url, worker_db_url).start()
    wait_for(lambda: "recording task events" in process.log() or not process.alive(), timeout=60,
             message="the recorder to start")
    assert process.alive(), process.log()[-3000:]
    yield process
    process.stop()


class Web:
    def __init__(self, process: ProcessRole, port: int):
        self.process, self.port = process, port
        self.url = f"http://127.0.0.1:{port}"
        self.ws = f"ws://127.0.0.1:{port}"


def start_web(broker_url, db_url) -> Web:
    port = free_port()
    process = ProcessRole("web", broker_url, db_url, env={"WEB_PORT": str(port), "LOG_LEVEL": "WARNING"}).start()

    def up():
        if not process.alive():
            raise AssertionError(process.log()[-3000:])
        try:
            return urllib.request.urlopen(f"http://127.0.0.1:{port}/api/v1/live/", timeout=1).status == 200
        except OSError:
            return False

    wait_for(up, timeout=60, message="the web process to answer")
    return Web(process, port)


@pytest.fixture(scope="session")
def web(broker_url, worker_db_url):
    server = start_web(broker_url, worker_db_url)
    yield server
    server.process.stop()


@pytest.fixture
def staff(django_user_model):
    user = django_user_model.objects.create_user("operator", password="x", is_staff=True)
    user.token = Token.objects.create(user=user).key
    return user


@pytest.fixture
def member(django_user_model):
    user = django_user_model.objects.create_user("member", password="x")
    user.token = Token.objects.create(user=user).key
    return user


@pytest.fixture
def api(staff):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {staff.token}")
    return client


@pytest.fixture
def member_api(member):
    client = APIClient()
    client.credentials(HTTP_AUTHORIZATION=f"Token {member.token}")
    return client


def wait_state(task_id: str, *wanted: str, timeout: float = 45) -> TaskRecord:
    def reached():
        record = TaskRecord.objects.filter(task_id=task_id).first()
        return record if record and record.state in wanted else None

    try:
        return wait_for(reached, timeout=timeout, message=f"task {task_id} to reach {wanted}")
    except AssertionError:
        record = TaskRecord.objects.filter(task_id=task_id).first()
        raise AssertionError(f"task {task_id} is {record.state if record else 'not in the ledger'}, wanted {wanted}")
