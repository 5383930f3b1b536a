"""Backpressure: a full queue refuses publishes fast and clearly; what was accepted stays; publishing recovers."""
import time

import pytest

from apps.core.amqp import QueueFull
from tests.support import rabbit
from tests.support.tasks import io_echo, io_mark

pytestmark = pytest.mark.django_db(transaction=True)


def test_publishing_to_a_full_queue_fails_fast_with_a_clear_error(broker_url):
    tiny = rabbit.quorum_queue("bp-tiny", max_length=3)
    send = lambda i: io_mark.apply_async(("/dev/null", str(i)), **rabbit.routed_to(tiny))  # noqa: E731
    accepted, refused = [], []
    for i in range(10):
        started = time.monotonic()
        try:
            accepted.append(send(i).id)
        except QueueFull as exc:
            assert time.monotonic() - started < 5  # an answer, not an unbounded wait
            assert "queue bp-tiny is full" in str(exc) and "nothing was enqueued, retry later" in str(exc)
            refused.append(i)
    assert refused, "a bounded queue must refuse once full"
    assert rabbit.queue_message_count(broker_url, "bp-tiny") == len(accepted)  # accepted ones are kept
    assert [m.headers["id"] for m in rabbit.get_messages(broker_url, "bp-tiny")] == accepted


def test_publishing_recovers_after_a_refusal(io_worker, broker_url):
    tiny = rabbit.quorum_queue("bp-tiny-2", max_length=1)
    with pytest.raises(QueueFull):
        for i in range(5):
            io_mark.apply_async(("/dev/null", str(i)), **rabbit.routed_to(tiny))
    assert io_echo.delay("after a refusal").get(timeout=30)["value"] == "after a refusal"


def test_a_refusal_is_answered_by_its_first_nack(broker_url, monkeypatch):
    # py-amqp lists a nack as a recoverable *connection* error: kombu's retry then reconnected and published
    # the refused message 3 more times (apps/core/compat.py, entry 4). One refusal is one publish now. On
    # Celery's path (routing options: not derived) kombu's pooled Producer closes the connection an exception
    # passed through, so the refused publish itself connects once (the refusal before it closed its connection).
    tiny = rabbit.quorum_queue("bp-once", max_length=1)
    send = lambda i: io_mark.apply_async(("/dev/null", str(i)), **rabbit.routed_to(tiny))  # noqa: E731
    accepted = 0
    with pytest.raises(QueueFull):  # a quorum queue refuses once over its bound (it may take one more first)
        for i in range(5):
            send(i)
            accepted += 1
    for attempt in range(2):
        with rabbit.counting_publishes_and_connects(monkeypatch) as wire, pytest.raises(QueueFull):
            send(10 + attempt)
        assert (wire.publishes, wire.connects) == (1, 1), f"refusal {attempt + 1}: {wire}"
    assert rabbit.queue_message_count(broker_url, "bp-once") == accepted
