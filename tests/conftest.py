"""Shared fixtures: a throwaway RabbitMQ vhost per test session, and real worker processes.

Everything that depends on delivery is tested through the real broker and real `celery worker`
processes started from compose/start/<role>; nothing runs in eager mode.
"""
from __future__ import annotations

import pytest

from tests.support import rabbit
from tests.support.workers import Worker, database_url


@pytest.fixture(scope="session")
def broker_url():
    """A fresh vhost for this session: the tests never see (or disturb) a developer's running stack."""
    with rabbit.own_vhost() as url:
        yield url


@pytest.fixture(scope="session")
def worker_db_url(django_db_setup, django_db_blocker):
    from django.db import connection

    return database_url(connection.settings_dict)


def _worker_factory(broker_url, worker_db_url):
    started: list[Worker] = []

    def start(role: str, env: dict | None = None, wait: bool = True, name: str | None = None) -> Worker:
        worker = Worker(role, broker_url, worker_db_url, name=name, env=env).start()
        started.append(worker)
        return worker.wait_ready() if wait else worker

    return start, started


@pytest.fixture
def start_worker(broker_url, worker_db_url):
    """Factory: start a dedicated worker of a role (cpu/io) with extra environment; stopped after the test."""
    start, started = _worker_factory(broker_url, worker_db_url)
    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def _shared_workers(broker_url, worker_db_url):
    start, started = _worker_factory(broker_url, worker_db_url)
    yield start
    for worker in started:
        worker.stop()


@pytest.fixture(scope="session")
def cpu_worker(_shared_workers):
    """A prefork worker on the dataset queue (2 children), shared by the session."""
    return _shared_workers("cpu", env={"CPU_CONCURRENCY": "2"})


@pytest.fixture(scope="session")
def smtp_sink():
    """A real SMTP server for the session (aiosmtpd) that accepts everything: the shared io worker's mail
    goes here, as the local stack's goes to its sink. Yields (host, port, list of received envelopes)."""
    import socket

    from aiosmtpd.controller import Controller

    received = []

    class Accept:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    controller = Controller(Accept(), hostname="127.0.0.1", port=port)
    controller.start()
    yield "127.0.0.1", port, received
    controller.stop()


@pytest.fixture(scope="session")
def io_worker(_shared_workers, smtp_sink):
    """An eventlet worker on mail, mail_bulk and ops_trace, shared by the session; mail goes to smtp_sink."""
    host, port, _ = smtp_sink
    return _shared_workers("io", env={"IO_CONCURRENCY": "50", "EMAIL_HOST": host, "EMAIL_PORT": str(port)})


@pytest.fixture
def effects(tmp_path):
    """A file that test tasks append a line to each time their body runs."""
    path = tmp_path / "effects.log"

    class Effects:
        def __init__(self):
            self.path = str(path)

        def lines(self) -> list[str]:
            return path.read_text().splitlines() if path.exists() else []

        def count(self, text: str = "") -> int:
            return sum(text in line for line in self.lines())

    return Effects()


# Tests whose outcome does not depend on the database backend: bin/test runs them in the SQLite pass only
# (the PostgreSQL pass deselects the marker), which keeps CI under an hour. Files, not single tests, so a new
# test in one of them is covered the same way.
ONCE_PER_RUN = {
    "tests/core/test_kubernetes.py",  # manifests and schemas, no database at all
    "tests/core/test_worker_probes.py",  # probe files written by a worker's own timer
    "tests/core/test_graceful_shutdown.py",  # what a worker does with SIGTERM
    "tests/core/test_run_command.py",  # bin/run starts its own stack on its own SQLite file
    "tests/control/test_console_browser.py",  # a browser driving the page
    "tests/control/test_fuzz.py",  # the API schema against itself
    "tests/control/test_transient_broker_errors.py",  # RabbitMQ answers, not the database
}


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("::", 1)[0] in ONCE_PER_RUN:
            item.add_marker(pytest.mark.once)


def _never_the_deadlock_victim(sender, connection, **kwargs):
    """PostgreSQL: the flush after each transactional test (one TRUNCATE of every table) can deadlock with
    a worker or the recorder still writing what the test left in flight; a CI run lost two tests' teardowns
    that way. The session that first waits ``deadlock_timeout`` breaks the cycle by failing itself, so the
    test process waits longer than the platform's processes (1 s default): they fail and retry their own
    work (the recorder replays its batch, a task retries), as they must after any deadlock."""
    if connection.vendor != "postgresql":
        return
    from django.db import DatabaseError

    try:
        with connection.cursor() as cursor:
            cursor.execute("SET deadlock_timeout = '10s'")
    except DatabaseError:  # only a superuser may set it (CI's postgres is); others keep the race
        pass


def pytest_configure(config):
    from django.db.backends.signals import connection_created

    connection_created.connect(_never_the_deadlock_victim, weak=False)
