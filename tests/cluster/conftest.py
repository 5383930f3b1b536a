"""The cluster cases: a 3-node RabbitMQ cluster (bin/cluster), worker hosts as network namespaces running
the real start scripts, and the publisher (this test process) outside them.

Every case here is marked ``cluster``; bin/test runs them in their own pass. A machine that cannot run
them (no root, no rabbitmq-server package) makes them FAIL with the reason: they never skip.
"""
from __future__ import annotations

import pytest

from tests.support import cluster, rabbit
from tests.support.workers import database_url

HEARTBEAT = 10  # seconds, for the cluster's workers: "resumes within two heartbeats" is then 20 s

# Mail on the worker hosts: a real SMTP server (aiosmtpd) on the bridge, and delivery bounds short enough that
# a message whose worker was cut off is taken over within the case: the claim lease outlives the hard limit
# (settings: "a SENDING row older than this lost its worker"), and each SMTP operation is bounded below both.
MAIL_ENV = {
    "EMAIL_TIMEOUT": "8",
    "MAIL_SEND_SOFT_TIME_LIMIT": "12",
    "MAIL_SEND_TIME_LIMIT": "16",
    "MAIL_CLAIM_LEASE": "20",
    "MAIL_RETRY_BACKOFF_BASE": "0.5",
    "MAIL_RETRY_BACKOFF_MAX": "2",
    "MAIL_DOMAIN_RATE": "0",  # unlimited: the case measures delivery, not the rate limit
}


@pytest.fixture(scope="session")
def live_cluster():
    """The cluster, up: started for the session (and removed after) unless someone already runs it."""
    missing = cluster.missing_requirements()
    if missing:
        pytest.fail(f"the cluster cases need {', '.join(missing)}", pytrace=False)
    started_here = not cluster.is_up()
    if started_here:
        cluster.run("up", timeout=600)
    try:
        yield
    finally:
        if started_here:
            cluster.run("down", timeout=120, check=False)


@pytest.fixture(scope="session")
def cluster_vhost(live_cluster):
    """A throwaway vhost on the cluster, with the Celery app (the publisher) pointed at all three nodes."""
    from project.celery import app

    vhost = cluster.create_vhost()
    url = cluster.broker_url(vhost)
    previous = app.conf.broker_url
    rabbit.point_app_at(app, url)
    try:
        yield vhost
    finally:
        rabbit.point_app_at(app, previous)
        cluster.delete_vhost(vhost)


@pytest.fixture(scope="session")
def cluster_db_url(django_db_setup, django_db_blocker):
    from django.db import connection

    if connection.vendor != "sqlite":
        # Worker hosts reach the database through the shared filesystem; PostgreSQL listens on 127.0.0.1 only.
        pytest.fail("the cluster cases run on SQLite (bin/test's cluster pass); this run uses "
                    f"{connection.vendor}", pytrace=False)
    return database_url(connection.settings_dict)


@pytest.fixture(scope="session")
def smtp_sink(live_cluster):
    """The real SMTP server the worker hosts deliver to. A host namespace reaches the root namespace only
    through the bridge, so the server listens on the bridge's address (tests/support/cluster.py)."""
    from tests.mail.smtp_servers import Behaviour, CountingController
    from tests.support.net import free_port

    controller = CountingController(Behaviour(), hostname=cluster.BRIDGE_ADDRESS,
                                    port=free_port(cluster.BRIDGE_ADDRESS))
    controller.start()
    try:
        yield controller
    finally:
        controller.stop()


def host_worker_env(smtp_sink, **extra) -> dict:
    """Environment of every worker on a worker host: the cluster's heartbeat and the SMTP sink."""
    return {"CELERY_BROKER_HEARTBEAT": str(HEARTBEAT), "EMAIL_HOST": cluster.BRIDGE_ADDRESS,
            "EMAIL_PORT": str(smtp_sink.port), **MAIL_ENV, **{k: str(v) for k, v in extra.items()}}


@pytest.fixture
def sender_mail_limits():
    """Celery writes the *sender's* task time limits into each message and the worker honours those: give
    this process the limits of MAIL_ENV while a case sends mail."""
    from apps.mail.tasks import bulk_send_message, send_message

    saved = [(t, t.soft_time_limit, t.time_limit) for t in (send_message, bulk_send_message)]
    for task in (send_message, bulk_send_message):
        task.soft_time_limit = int(MAIL_ENV["MAIL_SEND_SOFT_TIME_LIMIT"])
        task.time_limit = int(MAIL_ENV["MAIL_SEND_TIME_LIMIT"])
    yield
    for task, soft, hard in saved:
        task.soft_time_limit, task.time_limit = soft, hard


@pytest.fixture(scope="session")
def worker_hosts(live_cluster):
    """Two worker hosts (network namespaces on the cluster's bridge): cpu1 and io1."""
    hosts = {"cpu1": 21, "io1": 22}
    for name, octet in hosts.items():
        cluster.run("host-up", name, str(octet))
    try:
        yield list(hosts)
    finally:
        for name in hosts:
            cluster.run("host-down", name, check=False)


@pytest.fixture(scope="session")
def host_workers(cluster_vhost, cluster_db_url, worker_hosts, smtp_sink):
    """A prefork worker on host cpu1 and an eventlet worker on host io1, both given the node list."""
    from kombu import Connection

    from apps.core.broker import declare_dead_letter_queues
    from project import topology

    # The topology first, from one connection to node 1, as a deploy step would: quorum queue leaders are
    # placed on the declaring client's node, so every lane's leader starts on rabbit@...11 (the kill case
    # needs one node leading both dataset and mail). Workers, each on a node of its own, then find them.
    with Connection(cluster.node_url(1, cluster_vhost)) as connection:
        channel = connection.channel()
        for queue in topology.work_queues():
            queue(channel).declare()
        declare_dead_letter_queues(connection)
    url = cluster.broker_url(cluster_vhost)
    workers = {
        "cpu": cluster.HostWorker("cpu1", "cpu", url, cluster_db_url, env=host_worker_env(smtp_sink, CPU_CONCURRENCY=2)),
        "io": cluster.HostWorker("io1", "io", url, cluster_db_url, env=host_worker_env(smtp_sink, IO_CONCURRENCY=20)),
    }
    try:
        for worker in workers.values():
            worker.start()
        for worker in workers.values():
            worker.wait_ready(timeout=120)
        yield workers
    finally:
        for worker in workers.values():
            worker.stop()
