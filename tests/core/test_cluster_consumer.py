"""The worker's consumer leaves out Celery's delayed-delivery step (apps/core/consumer.py says why)."""
from celery.worker.consumer import Consumer

from apps.core.consumer import CELERY_DELAYED_DELIVERY_STEP, DeclareTopology, PlatformConsumer


def test_celerys_delayed_delivery_step_is_still_where_the_platform_removes_it_from():
    # If an upgrade renames or moves the step, the filter below silently stops working: fail here instead.
    assert CELERY_DELAYED_DELIVERY_STEP in Consumer.Blueprint.default_steps


def test_the_platform_consumer_runs_without_it_and_declares_the_delay_topology_itself():
    assert CELERY_DELAYED_DELIVERY_STEP not in PlatformConsumer.Blueprint.default_steps
    assert set(Consumer.Blueprint.default_steps) - set(PlatformConsumer.Blueprint.default_steps) == {CELERY_DELAYED_DELIVERY_STEP}
    assert DeclareTopology.requires  # DeclareTopology is added to every worker by PlatformConsumer.__init__
