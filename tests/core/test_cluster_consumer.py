"""The worker's consumer leaves out Celery's delayed-delivery step, and runs without Mingle and Gossip
(apps/core/consumer.py says why)."""
import inspect

import pytest
from celery.worker.consumer import Consumer
from celery.worker.consumer.gossip import Gossip
from celery.worker.consumer.mingle import Mingle

from apps.core.consumer import CELERY_DELAYED_DELIVERY_STEP, DeclareTopology, PlatformConsumer
from tests.support import rabbit
from tests.support.workers import Worker


def test_celerys_delayed_delivery_step_is_still_where_the_platform_removes_it_from():
    # If an upgrade renames or moves the step, the filter below silently stops working: fail here instead.
    assert CELERY_DELAYED_DELIVERY_STEP in Consumer.Blueprint.default_steps


def test_the_platform_consumer_runs_without_it_and_declares_the_delay_topology_itself():
    assert CELERY_DELAYED_DELIVERY_STEP not in PlatformConsumer.Blueprint.default_steps
    assert set(Consumer.Blueprint.default_steps) - set(PlatformConsumer.Blueprint.default_steps) == {CELERY_DELAYED_DELIVERY_STEP}
    assert DeclareTopology.requires  # DeclareTopology is added to every worker by PlatformConsumer.__init__


def test_mingle_and_gossip_still_take_the_options_the_platform_turns_them_off_with():
    assert "without_mingle" in inspect.signature(Mingle.__init__).parameters
    assert "without_gossip" in inspect.signature(Gossip.__init__).parameters


@pytest.mark.django_db(transaction=True)
def test_workers_of_both_pools_consume_without_mingle_and_gossip(broker_url, worker_db_url):
    # Their own vhost: only these workers' queues are listed.
    with rabbit.own_vhost("platform-steps") as url:
        vhost = url.rsplit("/", 1)[1]
        workers = [Worker(role, url, worker_db_url).start() for role in ("cpu", "io")]
        try:
            for worker in workers:
                worker.wait_ready()
            queues = [name for name, in rabbit.list_table(vhost, "queues", "name")]
        finally:
            for worker in workers:
                worker.stop()
    for worker in workers:
        log = worker.log()
        assert "Prefetch count is now static" in log and "mingle:" not in log  # consumed, without Mingle
    assert len([name for name in queues if name.endswith(".celery.pidbox")]) == 2  # remote control kept
    assert not [name for name in queues if name.startswith("celeryev.")], queues  # Gossip's, one per worker
