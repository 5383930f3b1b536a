"""A plain apply_async after the first of its task is sent from a per-process template (apps/core/single.py):
same message as Celery builds but for what is per call; checked through the broker and a real worker."""
import json

import pytest
from celery import signals
from django_celery_results.models import TaskResult
from kombu import Connection

from apps.core import single
from apps.core.amqp import MessageTooLarge, QueueFull
from project import topology
from tests.support import rabbit
from tests.support.tasks import io_lineage, io_spawn

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture
def fresh_template():
    single._templates.pop(io_lineage.name, None)
    yield
    single._templates.pop(io_lineage.name, None)


def test_plain_calls_after_the_first_carry_their_own_id_arguments_reprs_and_lineage(io_worker, fresh_template):
    first = io_lineage.delay("first")  # through Celery; its message becomes the template
    assert io_lineage.name in single._templates
    derived = [io_lineage.delay(f"value-{i}") for i in range(5)] + [io_lineage.apply_async(kwargs={"value": "kw"})]
    for result, value in zip([first, *derived], ["first", *(f"value-{i}" for i in range(5)), "kw"]):
        ran = result.get(timeout=60)
        assert ran["value"] == value and ran["id"] == result.id
        assert ran["parent_id"] is None and ran["root_id"] == result.id  # its own root, like Celery's
    rows = {row.task_id: row for row in TaskResult.objects.filter(task_id__in=[r.id for r in derived])}
    assert json.loads(rows[derived[0].id].task_args) == repr(("value-0",))  # its own argsrepr
    assert json.loads(rows[derived[-1].id].task_kwargs) == repr({"value": "kw"})


def test_a_derived_message_is_celerys_message_but_for_what_is_per_call(fresh_template):
    # The derived call is published on the channel directly (not through kombu's Producer.publish) and
    # without the optional headers that say nothing: compare both messages as RabbitMQ holds them. (A
    # derived message against the one Celery builds for the same call: tests/core/test_golden_messages.py.)
    with rabbit.own_vhost("platform-test-single-wire") as url:
        celerys = io_lineage.delay("first")  # through Celery: declares the queue, records the template
        derived = io_lineage.delay("second")
        first, second = rabbit.get_messages(url, "ops_trace")
    assert (first.headers["id"], second.headers["id"]) == (celerys.id, derived.id)
    empty_optional = {"shadow", "eta", "expires", "group_index", "stamped_headers", "stamps"}
    assert empty_optional <= first.headers.keys()  # Celery sends them...
    assert not empty_optional & second.headers.keys()  # ...the derived message leaves them out
    # Protocol-2 headers only: publish-signal receivers (tracing, when a test earlier in the session turned it on)
    # stamp per-call headers of their own, compared with Celery's per call in tests/core/test_golden_messages.py.
    protocol = {"lang", "task", "id", "group", "retries", "timelimit", "root_id", "parent_id", "argsrepr",
                "kwargsrepr", "origin", "ignore_result", "replaced_task_nesting"} | empty_optional
    per_call = {"id", "root_id", "argsrepr"}
    assert {k: v for k, v in second.headers.items() if k in protocol - per_call} == {
        k: v for k, v in first.headers.items() if k in protocol - per_call - empty_optional}
    assert (second.headers["root_id"], second.headers["argsrepr"]) == (derived.id, "('second',)")
    for name in ("content_type", "content_encoding", "delivery_mode", "reply_to", "priority"):
        assert second.properties[name] == first.properties[name], name
    assert second.properties["delivery_mode"] == 2  # persistent
    assert second.properties["correlation_id"] == derived.id
    assert json.loads(second.body) == [["second"], {}, json.loads(first.body)[2]]


def test_plain_calls_from_a_running_task_take_celerys_path_and_keep_their_parent(io_worker, fresh_template):
    io_lineage.delay("template").get(timeout=60)  # a template exists; calls from inside a task must not use it
    spawn = io_spawn.delay(3)
    for child_id in spawn.get(timeout=60):
        ran = io_lineage.AsyncResult(child_id).get(timeout=60)
        assert ran["parent_id"] == spawn.id and ran["root_id"] == spawn.id


def test_publish_signal_receivers_see_and_change_each_derived_message(io_worker, fresh_template):
    # Tracing stamps headers in before_task_publish: what a receiver adds must reach the worker.
    seen = []

    def stamp(headers=None, **kwargs):
        seen.append(headers["id"])
        headers["x-test-probe"] = f"stamped {headers['id']}"

    signals.before_task_publish.connect(stamp, weak=False)
    try:
        results = [io_lineage.delay(f"v{i}") for i in range(3)]
    finally:
        signals.before_task_publish.disconnect(stamp)
    assert seen == [r.id for r in results]
    assert [r.get(timeout=60)["probe"] for r in results] == [f"stamped {r.id}" for r in results]


def test_a_derived_call_is_checked_like_celerys_wrong_arguments_and_size(settings, fresh_template):
    io_lineage.delay("template")
    with pytest.raises(TypeError):
        io_lineage.delay()  # missing "value": refused before anything is published
    with pytest.raises(MessageTooLarge, match="over the limit"):
        io_lineage.delay("x" * (settings.PLATFORM_MAX_MESSAGE_BYTES + 1))


def test_a_derived_publish_into_a_full_queue_raises_queue_full(broker_url, fresh_template, monkeypatch):
    io_lineage.delay("template")  # the template is made against the normal broker
    with rabbit.own_vhost("platform-test-single-full") as url:
        vhost = url.rsplit("/", 1)[1]
        rabbit.rabbitmqctl("set_policy", "-p", vhost, "--apply-to", "queues", "--priority", "10", "test-full",
                           "^ops_trace$", '{"max-length": 0, "overflow": "reject-publish"}')
        with Connection(url) as conn:
            for queue in topology.work_queues():
                queue(conn.channel()).declare()
        rabbit.wait_serving(url, [lane.name for lane in topology.LANES])
        rabbit.publish_raw(url, "ops_trace", "ops_trace", b"[[], {}, {}]", headers={"task": "filler", "id": "fill"})
        with pytest.raises(QueueFull, match=r"tests.io.lineage\[.*\]: queue ops_trace is full"):
            io_lineage.delay("refused")
        # The nack is the answer: no republish over new connections (apps/core/compat.py, entry 4). The refusal
        # before it left its pooled connection to be replaced, so this one connects once.
        with rabbit.counting_publishes_and_connects(monkeypatch) as wire, pytest.raises(QueueFull):
            io_lineage.delay("refused again")
        assert (wire.publishes, wire.connects) == (1, 1), wire
        assert rabbit.queue_message_count(url, "ops_trace") == 1  # only the filler


def test_a_derived_call_after_a_refusal_on_celerys_path_still_publishes(io_worker, fresh_template):
    # kombu closes a pooled connection an exception passed through; the kept producer must not outlive it.
    from tests.support.tasks import io_mark

    io_lineage.delay("template").get(timeout=60)
    tiny = rabbit.quorum_queue("single-tiny", max_length=1)
    with pytest.raises(QueueFull):
        for i in range(5):
            io_mark.apply_async(("/dev/null", str(i)), **rabbit.routed_to(tiny))
    assert io_lineage.delay("after").get(timeout=60)["value"] == "after"


def test_task_sent_events_over_the_bound_are_dropped_counted_and_logged_once(broker_url, caplog):
    import logging

    from apps.core.events import SentEventBuffer
    from project.celery import app

    buffer = SentEventBuffer(interval=3600, max_events=2)  # flushed by hand here
    for i in range(5):
        buffer.add(app, {"uuid": f"bound-{i}", "name": "tests.io.lineage"})
    assert [event["uuid"] for event in buffer.events] == ["bound-0", "bound-1"] and buffer.dropped == 3
    with caplog.at_level(logging.WARNING, logger="apps.core.events"):
        buffer.flush()  # publishes the two kept, says how many it could not keep
        buffer.add(app, {"uuid": "bound-5", "name": "tests.io.lineage"})
        buffer.flush()
    assert caplog.text.count("dropped 3 task-sent events: more than 2 were waiting") == 1
    assert "dropped 1" not in caplog.text and "dropped 2" not in caplog.text  # the kept ones were published
    assert buffer.events == [] and buffer.dropped == 3
