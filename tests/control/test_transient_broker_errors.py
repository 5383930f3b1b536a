"""Transient broker errors (issue 20): a quorum queue that is declared but not serving yet, or whose Raft member
is down, answers ``basic.get`` with 541 INTERNAL_ERROR "noproc" and closes the whole connection. Outside
Celery's own retry paths the platform retries that briefly on a fresh connection; if it persists, the admin
page says "unavailable: <reason>", the API answers 503 and commands exit 1 with one line. Never a 500.

Reproduced two ways, both deterministic in what they check:
* the queue's Raft member is stopped with ``rabbitmqctl eval`` (``rabbit.quorum_member_down``): every
  ``basic.get`` fails until it is restarted;
* a queue is read while another connection declares it (the race CI met): a bare ``basic.get`` hits
  "noproc" in a good share of tries here (measured: 43 of 100), the platform's drain in none.
"""
import os
import subprocess
import sys
import threading
import uuid
from pathlib import Path

import amqp.exceptions
import pytest
from django.conf import settings
from kombu import Connection

from apps.control import deadletters, selectors
from apps.control.models import DeadLetter
from apps.core.broker import BrokerSession, BrokerUnavailable, queue_depths
from apps.core.health import health_report
from project import topology
from tests.support import rabbit

ROOT = Path(settings.BASE_DIR)

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def vhost_url():
    """A vhost of its own with the topology declared and serving, the app pointed at it; no worker."""
    with rabbit.own_vhost("platform-test-transient") as url:
        with Connection(url) as connection:
            channel = connection.channel()
            for queue in (*topology.work_queues(), *topology.dead_letter_queues()):
                queue(channel).declare()
        rabbit.wait_serving(url, topology.all_queue_names())
        yield url


def _dead_letter(url: str, queue: str, task_id: str) -> None:
    """A message in ``queue`` (e.g. mail.dead) as if dead-lettered from its lane."""
    rabbit.publish_raw(url, topology.dead_letter_exchange().name, queue.removesuffix(topology.DEAD_LETTER_SUFFIX),
                       b"[[], {}, {}]", headers={"task": "tests.cpu.echo", "id": task_id})


def test_the_noproc_error_is_real_and_connection_level(vhost_url):
    """The premise: with the member down a bare basic.get raises 541 and the connection is gone."""
    with rabbit.quorum_member_down(vhost_url, "dataset.dead"):
        with Connection(vhost_url) as connection:
            with pytest.raises(amqp.exceptions.InternalError, match="noproc"):
                connection.channel().basic_get(queue="dataset.dead")
            assert not connection.connected


def test_admin_changelist_says_unavailable_and_still_lists_what_is_stored(vhost_url, admin_client):
    _dead_letter(vhost_url, "mail.dead", "stored-before")
    assert admin_client.get("/admin/control/deadletter/").status_code == 200
    assert DeadLetter.objects.filter(task_id="stored-before").exists()
    _dead_letter(vhost_url, "mail.dead", "stored-during")
    with rabbit.quorum_member_down(vhost_url, "dataset.dead"):
        response = admin_client.get("/admin/control/deadletter/", follow=True)
    assert response.status_code == 200
    text = response.content.decode()
    assert "dead-letter queue dataset.dead unavailable:" in text.lower() and "noproc" in text
    assert "stored-before" in text and "stored-during" in text  # the other queues were drained all the same


def test_api_answers_503_with_the_reason_and_recovers(vhost_url, api):
    _dead_letter(vhost_url, "dataset.dead", "api-1")
    with rabbit.quorum_member_down(vhost_url, "dataset.dead"):
        response = api.get("/api/v1/dead-letters/")
        assert response.status_code == 503, response.content
        assert response.json()["code"] == "unavailable"
        assert "dataset.dead unavailable" in response.json()["detail"] and "noproc" in response.json()["detail"]
        assert response["Retry-After"]
        stats = api.get("/api/v1/queues/")
        assert stats.status_code == 200, stats.content
        [dataset] = [q for q in stats.json()["queues"] if q["name"] == "dataset"]
        assert dataset["unavailable"] is None or "dataset.dead" in dataset["unavailable"]
    response = api.get("/api/v1/dead-letters/")  # the member is back: the letter is drained and listed
    assert response.status_code == 200
    assert [row["task_id"] for row in response.json()["results"]] == ["api-1"]


def test_dlq_command_exits_1_with_one_line(vhost_url, worker_db_url):
    env = {**os.environ, "DJANGO_SETTINGS_MODULE": "project.settings.test", "CELERY_BROKER_URL": vhost_url,
           "DATABASE_URL": worker_db_url}
    with rabbit.quorum_member_down(vhost_url, "mail.dead"):
        result = subprocess.run([sys.executable, "manage.py", "dlq", "list"], cwd=ROOT, env=env,
                                capture_output=True, text=True, timeout=120)
    assert result.returncode == 1, result.stdout + result.stderr
    assert "Traceback" not in result.stderr
    [line] = [line for line in result.stderr.splitlines() if line.strip()]
    assert line.startswith("CommandError: dead-letter queue mail.dead unavailable:") and "noproc" in line, line


def test_depth_readers_keep_answering_while_a_member_is_down_and_a_get_says_why(vhost_url):
    with rabbit.quorum_member_down(vhost_url, "dataset"):
        # A passive declare still answers for a queue whose member is down; basic.get is what fails. The
        # depth readers only declare passively, so they keep answering.
        assert {d.name for d in queue_depths(topology.all_queue_names()) if d.unavailable} == set()
        with pytest.raises(BrokerUnavailable, match="queue dataset unavailable: .*noproc"):
            with BrokerSession(vhost_url, attempts=2, pause=0.05) as session:
                session.call("queue dataset", lambda channel: channel.basic_get(queue="dataset"))
    report = health_report()
    assert not [p for p in report["problems"] if "unavailable" in p], report["problems"]
    assert all(q["unavailable"] is None for q in selectors.queues_status())


def test_a_queue_read_while_it_is_being_declared_never_fails_the_drain(vhost_url):
    """The CI flake: a drain racing the declare of a dead-letter queue. Each try declares a fresh one from
    another connection while the drain reads it; without the retry about 4 in 10 tries fail with noproc."""
    failures = []
    for attempt in range(12):
        name = f"race-{uuid.uuid4().hex[:6]}.dead"
        declared = threading.Event()

        def declare():
            with Connection(vhost_url) as connection:
                rabbit.quorum_queue(name)(connection.channel()).declare()
            declared.set()

        thread = threading.Thread(target=declare)
        thread.start()
        try:
            deadline_tries = 0
            while not declared.is_set() and deadline_tries < 400:  # read as soon as it exists
                deadline_tries += 1
                try:
                    deadletters.drain(url=vhost_url, queues=[name])
                except BrokerUnavailable as exc:
                    failures.append(str(exc))
                    break
            deadletters.drain(url=vhost_url, queues=[name])
        finally:
            thread.join(30)
    assert failures == []



def zero_answers_for_dataset(monkeypatch, count: int, after: float) -> list:
    """Replace the first ``count`` passive-declare answers for ``dataset`` by RabbitMQ's answer for a leader
    that did not reply (0 messages, 0 consumers), given ``after`` seconds; returns the real answers replaced."""
    import time

    real, zeroed = amqp.Channel.queue_declare, []

    def zero_answer(self, queue="", passive=False, *args, **kwargs):
        answer = real(self, queue, passive, *args, **kwargs)
        if passive and queue == topology.DATASET and len(zeroed) < count:
            zeroed.append(answer)
            time.sleep(after)
            return type(answer)(answer[0], 0, 0)
        return answer

    monkeypatch.setattr(amqp.Channel, "queue_declare", zero_answer)
    return zeroed


def test_a_quorum_queue_answering_zero_is_asked_again(vhost_url, monkeypatch):
    """RabbitMQ 3.x answers a passive declare of a quorum queue with 0 messages and 0 consumers when the
    queue's Raft leader does not reply within 250 ms (``rabbit_quorum_queue:stat/2`` maps the timeout to
    {ok, 0, 0}); a loaded CI run's health check then saw no consumer on a queue that had two. A leader that
    is slow on cue cannot be staged, so the first answer for ``dataset`` is replaced by that zero answer;
    every answer comes from RabbitMQ. A queue that really is empty still reads as empty."""
    for _ in range(3):
        rabbit.publish_raw(vhost_url, topology.DATASET, topology.DATASET, b"[[], {}, {}]",
                           headers={"task": "tests.cpu.echo", "id": uuid.uuid4().hex})
    zeroed = zero_answers_for_dataset(monkeypatch, count=1, after=0.0)
    dataset, mail = queue_depths([topology.DATASET, topology.MAIL], url=vhost_url)
    assert zeroed and (dataset.messages, dataset.consumers) == (3, 0)
    assert (mail.messages, mail.consumers) == (0, 0) and mail.unavailable is None


def test_zero_answers_as_slow_as_the_leader_timeout_are_asked_again_past_three(vhost_url, monkeypatch):
    """Three zero answers were once not enough: a loaded local run's health check again saw no consumer on a
    queue that had two. A zero answer that took RabbitMQ's 250 ms leader timeout is asked again within a
    budget; here the first five answers for ``dataset`` are replaced by that answer (zero, after 250 ms)."""
    for _ in range(2):
        rabbit.publish_raw(vhost_url, topology.DATASET, topology.DATASET, b"[[], {}, {}]",
                           headers={"task": "tests.cpu.echo", "id": uuid.uuid4().hex})
    zeroed = zero_answers_for_dataset(monkeypatch, count=5, after=0.25)
    dataset, mail = queue_depths([topology.DATASET, topology.MAIL], url=vhost_url)
    assert len(zeroed) == 5 and (dataset.messages, dataset.consumers) == (2, 0)
    assert (mail.messages, mail.consumers) == (0, 0) and mail.unavailable is None
