"""Bulk enqueue: every message confirmed before returning, and refusals reported by task id."""
import json

import pytest

from apps.core.bulk import BulkPublishError, enqueue_many
from tests.support import rabbit
from tests.support.tasks import io_echo, io_mark
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def test_enqueue_many_confirms_every_message_and_each_runs_once(io_worker, effects):
    results = enqueue_many(io_mark.s(effects.path, str(i)) for i in range(300))
    assert len({r.id for r in results}) == 300
    wait_for(lambda: len(effects.lines()) == 300, timeout=120, message="300 bulk tasks to run")
    assert sorted(int(line.split()[2]) for line in effects.lines()) == list(range(300))


def test_a_full_queue_refuses_the_overflow_and_enqueue_many_names_what_was_refused(broker_url):
    # A tiny bounded quorum queue (no consumer): about 5 fit, the rest are nacked by RabbitMQ (reject-publish).
    # Quorum queues enforce the bound approximately: a publish already in flight may still be accepted.
    tiny = rabbit.quorum_queue("bulk-test-tiny", max_length=5)
    signatures = [io_mark.s("/dev/null", str(i)).set(**rabbit.routed_to(tiny)) for i in range(50)]
    with pytest.raises(BulkPublishError, match=r"\d+ of 50 messages refused by RabbitMQ") as refused:
        enqueue_many(signatures)
    accepted = rabbit.queue_message_count(broker_url, "bulk-test-tiny")
    assert 5 <= accepted < 50  # what was accepted is kept (the bound is approximate, see above)
    assert len(refused.value.refused) == 50 - accepted and refused.value.unconfirmed == []
    # The pooled connection is still good for the next caller.
    assert len(enqueue_many([io_mark.s("/dev/null", "after")])) == 1


def test_confirm_tracking_keeps_an_earlier_nack_when_a_later_ack_covers_its_range():
    from collections import defaultdict

    from apps.core.bulk import _ConfirmTracker

    class Channel:
        events = defaultdict(set)

    channel = Channel()
    tracker = _ConfirmTracker(channel)
    tracker.published = 6
    [ack] = channel.events["basic_ack"]
    [nack] = channel.events["basic_nack"]
    ack(2, True)    # 1, 2 accepted
    nack(4, True)   # 3, 4 refused
    ack(6, True)    # 5, 6 accepted; must not flip 3 and 4
    assert [tracker.state(tag) for tag in range(1, 7)] == ["acked", "acked", "nacked", "nacked", "acked", "acked"]
    assert tracker.settled()


def test_messages_derived_from_a_template_carry_their_own_id_arguments_and_reprs(io_worker):
    # After the first io_echo, enqueue_many derives the others from the message Celery built (apps/core/bulk.py).
    from django_celery_results.models import TaskResult

    results = enqueue_many(io_echo.s(f"value-{i}") for i in range(20))
    assert len({r.id for r in results}) == 20
    assert [r.get(timeout=60)["value"] for r in results] == [f"value-{i}" for i in range(20)]
    rows = {row.task_id: row for row in TaskResult.objects.filter(task_id__in=[r.id for r in results])}
    for i, result in enumerate(results):
        assert json.loads(rows[result.id].task_args) == repr((f"value-{i}",))  # its own argsrepr, not the template's
        assert rows[result.id].task_name == "tests.io.echo"


def test_a_derived_message_over_the_size_limit_is_refused_before_it_is_published(settings):
    from apps.core.amqp import MessageTooLarge

    too_big = "x" * (settings.PLATFORM_MAX_MESSAGE_BYTES + 1)
    with pytest.raises(MessageTooLarge, match="over the limit"):
        enqueue_many([io_mark.s("/dev/null", "small"), io_mark.s("/dev/null", too_big)])


def test_task_messages_sent_inside_a_confirmed_batch_join_it_groups_and_chords_included(io_worker, effects):
    from celery import chord, group

    from apps.core.bulk import confirmed_batch

    with confirmed_batch() as batch:
        single = io_mark.delay(effects.path, "single")
        grouped = group(io_mark.s(effects.path, f"group-{i}") for i in range(5)).apply_async()
        chorded = chord([io_echo.s(f"part-{i}") for i in range(3)])(io_echo.s())
        assert batch.tasks, "the messages went on the batch's channel"
    sent = {task_id for _, task_id in batch.tasks}
    assert {single.id, *(r.id for r in grouped.results), *(r.id for r in chorded.parent.results)} == sent
    assert all(batch.state(tag) == "acked" for tag, _ in batch.tasks)  # all confirmed when the block ended
    wait_for(lambda: len(effects.lines()) == 6, timeout=60, message="the single and group tasks to run")
    assert [part["value"] for part in chorded.get(timeout=60)["value"]] == ["part-0", "part-1", "part-2"]


def test_a_refusal_inside_a_confirmed_batch_is_raised_when_it_ends_naming_the_task(broker_url):
    from apps.core.bulk import confirmed_batch

    tiny = rabbit.quorum_queue("batch-test-tiny", max_length=3)
    rabbit.declare_over_bound(broker_url, tiny)  # 4 messages: publishes from any new channel are refused
    ids = []
    with pytest.raises(BulkPublishError, match=r"\d+ of 10 messages refused by RabbitMQ") as refused:
        with confirmed_batch():
            for i in range(10):  # no QueueFull here: the nacks are read when the batch ends
                ids.append(io_mark.apply_async(("/dev/null", str(i)), **rabbit.routed_to(tiny)).id)
    accepted = rabbit.queue_message_count(broker_url, "batch-test-tiny") - 4
    assert refused.value.refused and set(refused.value.refused) <= set(ids)
    assert len(refused.value.refused) == 10 - accepted and refused.value.unconfirmed == []


def test_an_error_inside_a_confirmed_batch_propagates_after_what_was_published_is_settled(io_worker, effects):
    from apps.core.bulk import confirmed_batch

    with pytest.raises(ZeroDivisionError):
        with confirmed_batch() as batch:
            io_mark.delay(effects.path, "before the error")
            1 / 0
    assert [batch.state(tag) for tag, _ in batch.tasks] == ["acked"]
    wait_for(lambda: len(effects.lines()) == 1, timeout=60, message="the task published before the error")
    # Outside a batch, apply_async waits for its own confirm again; the pooled connection still works.
    assert io_echo.delay("after").get(timeout=60)["value"] == "after"
