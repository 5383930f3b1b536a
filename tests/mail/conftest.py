"""Mail test fixtures: real SMTP servers and eventlet io workers on a vhost of the mail tests' own.

The mail tests use their own RabbitMQ vhost so no other io worker of the session (pointed at no SMTP
server) can take their messages.
"""
from __future__ import annotations

import pytest

from tests.mail.smtp_servers import start_server
from tests.support import rabbit
from tests.support.workers import Worker


@pytest.fixture(scope="package")
def smtp_server():
    controller = start_server()
    yield controller
    controller.stop()


@pytest.fixture(scope="package")
def mail_broker_url(broker_url):
    with rabbit.own_vhost("platform-test-mail") as url:
        yield url


def worker_env(smtp_server, **extra) -> dict:
    return {
        "EMAIL_HOST": "127.0.0.1",
        "EMAIL_PORT": str(smtp_server.port),
        "EMAIL_TIMEOUT": "30",
        "MAIL_SEND_SOFT_TIME_LIMIT": "3",  # the slow servers hang 30 s: the time limit must end it
        "MAIL_SEND_TIME_LIMIT": "6",
        "MAIL_CLAIM_LEASE": "8",
        "MAIL_RETRY_BACKOFF_BASE": "0.5",
        "MAIL_RETRY_BACKOFF_MAX": "2",
        "MAIL_DOMAIN_RATE": "0",  # unlimited, except throttle.test (test_ratelimit.py), the same in every worker
        "MAIL_DOMAIN_RATES": "throttle.test=2",
        "MAIL_DOMAIN_BURST": "1",
        "IO_CONCURRENCY": "20",
        "IO_DB_POOL_MAX_SIZE": "4",  # test_eventlet_db.py bounds connections by it
        **{k: str(v) for k, v in extra.items()},
    }


@pytest.fixture(scope="package", autouse=True)
def sender_time_limits():
    """Celery writes the *sender's* task time limits into each message, and the worker honours those:
    give this process the limits the test workers are started with."""
    from apps.mail.tasks import bulk_send_message, send_message

    saved = [(t, t.soft_time_limit, t.time_limit) for t in (send_message, bulk_send_message)]
    for task in (send_message, bulk_send_message):
        task.soft_time_limit, task.time_limit = 3, 6
    yield
    for task, soft, hard in saved:
        task.soft_time_limit, task.time_limit = soft, hard


@pytest.fixture(scope="package")
def start_mail_worker(mail_broker_url, worker_db_url, smtp_server):
    started: list[Worker] = []

    def start(**env) -> Worker:
        worker = Worker("io", mail_broker_url, worker_db_url, env=worker_env(smtp_server, **env)).start()
        started.append(worker)
        return worker.wait_ready()

    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="package")
def mail_worker(start_mail_worker):
    return start_mail_worker()
