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
    from aiosmtpd.controller import Controller

    from tests.support.net import free_port

    received = []

    class Accept:
        async def handle_DATA(self, server, session, envelope):
            received.append(envelope)
            return "250 OK"

    port = free_port()
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
    "tests/core/test_graceful_shutdown.py",
    "tests/core/test_green_stacks.py",  # what a worker does with SIGTERM
    "tests/core/test_consumer_channel_errors.py",  # what a worker does with a broker channel error
    "tests/core/test_run_command.py",  # bin/run starts its own stack on its own SQLite file
    "tests/control/test_console_browser.py",  # a browser driving the page
    "tests/control/test_fuzz.py",  # the API schema against itself
    "tests/core/test_bench.py",  # the benchmark makes its own SQLite and PostgreSQL databases
    "tests/control/test_transient_broker_errors.py",  # RabbitMQ answers, not the database
    "tests/core/test_bench_http.py",  # the benchmark makes its own PostgreSQL database
    "tests/core/test_golden_messages.py",  # message bytes, built twice in one process
    "tests/core/test_compat.py",  # library names and their behaviour
    "tests/core/test_private_names.py",  # source text
    "tests/core/test_layers.py",  # source text and imports
    "tests/core/test_fast_tier.py",  # the test harness itself
}


# The fast tier (`bin/test --fast`): tests that need no RabbitMQ and no worker. A test needs the broker when
# it uses the session vhost (the ``broker_url`` fixture, directly or through a worker fixture), or when it
# is listed here: these reach RabbitMQ another way (a vhost of their own, rabbitmqctl, bin/run). In the fast
# tier the broker is out of reach on purpose (tests/support/tier.py), so a test missing from this list fails
# at once with a message naming the list, instead of passing against a broker by luck.
NEEDS_BROKER = {
    # whole files: their own vhosts, workers or stacks
    "tests/control/test_fuzz.py",
    "tests/control/test_transient_broker_errors.py",
    "tests/core/test_bench.py",
    "tests/core/test_bench_http.py",
    "tests/core/test_command_backpressure.py",
    "tests/core/test_consumer_channel_errors.py",
    "tests/core/test_golden_messages.py",
    "tests/core/test_graceful_shutdown.py",
    "tests/core/test_green_stacks.py",
    "tests/core/test_run_command.py",
    "tests/core/test_worker_probes.py",
    "tests/datasets/test_bench.py",
    "tests/datasets/test_nothing_stuck.py",
    "tests/mail/test_bench.py",
    "tests/tracing/test_bench.py",
    "tests/tracing/test_pipeline.py",
    # single tests: the API's worker control and pause answer 503 without RabbitMQ; publishing needs it
    "tests/control/test_api.py::test_unknown_ids_are_404_json",
    "tests/control/test_api.py::test_audit_list",
    "tests/control/test_queues_and_cancel.py::test_pause_errors",
    "tests/core/test_bulk.py::test_a_derived_message_over_the_size_limit_is_refused_before_it_is_published",
    "tests/core/test_operator_basics.py::test_local_vhost_creates_the_missing_vhost_with_rabbitmqctl",
    "tests/core/test_single.py::test_a_derived_message_is_celerys_message_but_for_what_is_per_call",
    "tests/core/test_single.py::test_a_derived_call_is_checked_like_celerys_wrong_arguments_and_size",
}


def pytest_addoption(parser):
    parser.addoption("--fast", action="store_true",
                     help="run only the tests that need no RabbitMQ and no worker (bin/test --fast)")


def needs_broker(item) -> bool:
    path = item.nodeid.split("::", 1)[0]
    return ("broker_url" in item.fixturenames or path in NEEDS_BROKER or item.nodeid in NEEDS_BROKER
            or item.get_closest_marker("cluster") is not None)


def pytest_collection_modifyitems(config, items):
    for item in items:
        if item.nodeid.split("::", 1)[0] in ONCE_PER_RUN:
            item.add_marker(pytest.mark.once)
    # Tests of PostgreSQL's own behaviour (marker "postgresql") are deselected on another database, not
    # skipped: the PostgreSQL pass runs them, and a CI run reports no skipped test.
    from django.conf import settings

    if "postgresql" not in settings.DATABASES["default"]["ENGINE"]:
        other = [item for item in items if item.get_closest_marker("postgresql")]
        if other:
            config.hook.pytest_deselected(items=other)
            items[:] = [item for item in items if not item.get_closest_marker("postgresql")]
    if config.getoption("--fast"):
        slow = [item for item in items if needs_broker(item)]
        if slow:
            config.hook.pytest_deselected(items=slow)
            items[:] = [item for item in items if not needs_broker(item)]


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

    if config.getoption("--fast"):
        from tests.support import tier

        tier.enter_fast_tier()

    connection_created.connect(_never_the_deadlock_victim, weak=False)
