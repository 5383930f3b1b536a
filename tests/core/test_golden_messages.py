"""Golden messages: a message the platform derives from a template (apps/core/single.py, apps/core/bulk.py) is
the message Celery's own code builds for the same call, header for header, property for property, byte for byte.

Each case makes the same call twice with the same ids and the same clock: once through Celery's own path
(``celery.Task.apply_async``, or Celery's send path inside a confirmed batch for ``enqueue_many``), once through
the platform's (a template made first by an earlier call of the task with other arguments, one hour earlier).
Both are captured where py-amqp takes them (``Channel._basic_publish``: the frames are built from what it gets),
on a throwaway vhost. A header Celery sets per call that a template copied stale fails here.

What may differ, and why (nothing else):
* a derived message leaves out the six optional protocol-2 headers that are empty for a plain call (``shadow``,
  ``eta``, ``expires``, ``group_index``, ``stamped_headers``, ``stamps``): workers read each with the same
  default; 35 us per call (docs/benchmarks.md). Checked: only those, and only when empty.
* properties that are None are not compared as keys: py-amqp does not put a None property on the wire.

These tests run on the versions pinned in ``apps.core.compat.DERIVATION_TESTED_ON``; the derivation is used only
on those (tests/core/test_compat.py checks the pins and the fallback).
"""
from __future__ import annotations

from collections import namedtuple
from contextlib import contextmanager
from datetime import datetime, timedelta, timezone
from itertools import count
from unittest import mock

import amqp
import pytest
from celery import Task, chord, group, shared_task, signals

from apps.core import bulk, compat, delays, single
from apps.core.bulk import confirmed_batch, enqueue_many
from apps.core.events import UnconfirmedEventDispatcher
from project.celery import app
from tests.support import rabbit

pytestmark = pytest.mark.django_db(transaction=True)

Wire = namedtuple("Wire", "exchange routing_key headers properties body")
OPTIONAL_WHEN_EMPTY = {"shadow", "eta", "expires", "group_index", "stamped_headers", "stamps"}


@shared_task(name="tests.io.golden")
def golden(*args, **kwargs):
    return None


@shared_task(name="tests.io.golden_other")
def golden_other(*args, **kwargs):
    return None


@shared_task(name="tests.io.golden_shadow", shadow_name=lambda task, args, kwargs, options: f"shadow-{args[0]}")
def golden_shadow(*args, **kwargs):
    return None


@shared_task(name="tests.io.golden_expires", expires=60)
def golden_expires(*args, **kwargs):
    return None


@shared_task(name="tests.io.golden_strict")
def golden_strict(value):
    return value


CALLS_IN_TASK = {}  # what golden_parent does, by name (its argument)


@shared_task(name="tests.io.golden_parent", bind=True)
def golden_parent(self, what):
    return CALLS_IN_TASK[what]()


@pytest.fixture(scope="module")
def vhost():
    with rabbit.own_vhost("platform-test-golden") as url:
        yield url


@pytest.fixture
def clock():
    """Celery's clock (``app.now``) and the delay levels' clock, set by the test: a template made at one time
    and a call made at another show any time-dependent header copied stale."""
    now = {"value": datetime.now(timezone.utc).replace(microsecond=250_000)}
    real_seconds_until = delays.seconds_until
    with mock.patch.object(app, "now", lambda: now["value"]), \
            mock.patch.object(delays, "seconds_until", lambda eta, now_=None: real_seconds_until(eta, now["value"])):
        yield now


@pytest.fixture
def derivation(vhost):
    """The derivation on (as on the pinned versions), no templates, and a count of derived messages.

    The process's publish-signal receivers are set aside (tracing's, when a test earlier in the session turned
    it on: they stamp span ids and times, which differ between any two publishes); receivers are compared
    here with deterministic ones of the tests' own."""
    previous = getattr(compat, "_derivation", None)
    compat._derivation = True
    single._templates.clear()
    with mock.patch.object(single, "derive_message", wraps=single.derive_message) as single_derived, \
            mock.patch.object(bulk, "derive_message", wraps=bulk.derive_message) as bulk_derived, \
            mock.patch.object(signals.before_task_publish, "receivers", []), \
            mock.patch.object(signals.after_task_publish, "receivers", []):
        yield lambda: single_derived.call_count + bulk_derived.call_count
    single._templates.clear()
    compat._derivation = previous


class Sent(list):
    """Task messages as py-amqp is given them, and the fields of their task-sent events (``events``)."""

    events: list


@contextmanager
def wire():
    """Every task message py-amqp is given to send, as it is given, and the task-sent event fields the
    platform hands its event publishers (Celery's dispatcher, a single call's buffer, a batch's list)."""
    sent = Sent()
    sent.events = []
    original = amqp.Channel._basic_publish
    dispatcher_publish = UnconfirmedEventDispatcher.publish
    buffer_add = single.sent_events.add
    prepare = compat.prepare_task_sent_event

    def on_dispatcher(dispatcher, type, fields, *args, **kwargs):
        if type == "task-sent":
            sent.events.append(dict(fields))
        return dispatcher_publish(dispatcher, type, fields, *args, **kwargs)

    def on_buffer(app_, fields):
        sent.events.append(dict(fields))
        return buffer_add(app_, fields)

    def on_prepare(dispatcher, fields):
        sent.events.append(dict(fields))
        return prepare(dispatcher, fields)

    def capture(channel, msg, exchange="", routing_key="", *args, **kwargs):
        properties = dict(msg.properties)
        headers = properties.pop("application_headers", None) or {}
        if "task" in headers:
            properties = {k: v for k, v in properties.items() if v is not None}  # None is not sent
            sent.append(Wire(exchange, routing_key, dict(headers), properties, msg.body))
        return original(channel, msg, exchange, routing_key, *args, **kwargs)

    with mock.patch.object(amqp.Channel, "_basic_publish", capture), \
            mock.patch.object(amqp.Channel, "basic_publish", capture), \
            mock.patch.object(UnconfirmedEventDispatcher, "publish", on_dispatcher), \
            mock.patch.object(single.sent_events, "add", on_buffer), \
            mock.patch.object(compat, "prepare_task_sent_event", on_prepare):
        yield sent


def assert_same(celerys: Sent, derived: Sent, derived_count: int, skip: int = 0) -> None:
    """The same messages (but the first ``skip`` of ``derived``: the template's call), and the same task-sent
    events (the ledger's QUEUED) for them."""
    sent_ids = {wire.headers["id"] for wire in celerys}
    events = [[event for event in side.events if event["uuid"] in sent_ids] for side in (celerys, derived)]
    assert events[1] == events[0] and len(events[0]) == len(celerys)
    derived = list(derived)[skip:]
    assert len(celerys) == len(derived) > 0
    for theirs, ours in zip(celerys, derived):
        assert (ours.exchange, ours.routing_key) == (theirs.exchange, theirs.routing_key)
        assert ours.body == theirs.body
        assert ours.properties == theirs.properties
        left_out = theirs.headers.keys() - ours.headers.keys()
        assert left_out <= OPTIONAL_WHEN_EMPTY and not any(theirs.headers[k] for k in left_out), left_out
        assert ours.headers == {k: v for k, v in theirs.headers.items() if k not in left_out}
    assert derived_count <= len(derived)


@contextmanager
def fixed_uuids():
    sequence = count()

    def next_uuid():
        return f"golden-bulk-{next(sequence):06d}"

    with mock.patch("celery.app.base.uuid", next_uuid), mock.patch("celery.canvas.uuid", next_uuid), \
            mock.patch.object(bulk, "uuid", next_uuid):
        yield


ID = count()


def ids(n: int) -> list[str]:
    return [f"golden-{next(ID):06d}" for _ in range(n)]


def celery_apply_async(task, *args, **kwargs):
    """Celery's own ``apply_async``, not the platform's (apps/core/tasks.py)."""
    return Task.apply_async(task, *args, **kwargs)


# (name, the template call, the call, how many of its messages are derived). A call gets ``apply`` (the
# platform's apply_async or Celery's) and fixed ids.
SINGLE_CASES = [
    ("positional", lambda apply, i: apply(golden, ("template", 0), task_id=i[0]),
     lambda apply, i: apply(golden, ("a", 1, [2.5, None, True]), task_id=i[1]), 1),
    ("keyword", None, lambda apply, i: apply(golden, kwargs={"x": 1, "y": {"z": [1, "2"]}}, task_id=i[1]), 1),
    ("both, args as a list", None, lambda apply, i: apply(golden, ["a", "b"], {"k": "v"}, task_id=i[1]), 1),
    ("unicode", None, lambda apply, i: apply(golden, ("żółw 🐢 \u2028", "\x00"), {"ключ": "値"}, task_id=i[1]), 1),
    ("large, reprs truncated", None,
     lambda apply, i: apply(golden, ("x" * 100_000, list(range(5000))), {"big": "y" * 50_000}, task_id=i[1]), 1),
    ("nested deeper than the repr levels", None,
     lambda apply, i: apply(golden, ([[[["deep", {"deeper": [1]}]]]],), {"n": [[[[2]]]]}, task_id=i[1]), 1),
    ("no arguments", None, lambda apply, i: apply(golden, task_id=i[1]), 1),
    ("countdown, direct", None, lambda apply, i: apply(golden, ("c",), task_id=i[1], countdown=0.5), 0),
    ("countdown, delay levels", None, lambda apply, i: apply(golden, ("c",), task_id=i[1], countdown=3600), 0),
    ("eta", None, lambda apply, i: apply(golden, ("e",), task_id=i[1],
                                         eta=datetime(2030, 1, 2, 3, 4, 5, tzinfo=timezone.utc)), 0),
    ("expires in seconds", None, lambda apply, i: apply(golden, ("x",), task_id=i[1], expires=60), 0),
    ("expires as a time", None, lambda apply, i: apply(golden, ("x",), task_id=i[1],
                                                       expires=datetime(2030, 1, 1, tzinfo=timezone.utc)), 0),
    ("priority", None, lambda apply, i: apply(golden, ("p",), task_id=i[1], priority=5), 0),
    ("custom headers", None, lambda apply, i: apply(golden, ("h",), task_id=i[1], headers={"x-custom": "v"}), 0),
    ("link and errback", None, lambda apply, i: apply(golden, ("l",), task_id=i[1], link=golden_other.s("ok"),
                                                      link_error=golden_other.s("failed")), 0),
    ("shadow name per call", None, lambda apply, i: apply(golden, ("s",), task_id=i[1], shadow="shadowed"), 0),
    ("shadow name of the task", lambda apply, i: apply(golden_shadow, ("first",), task_id=i[0]),
     lambda apply, i: apply(golden_shadow, ("second",), task_id=i[1]), 0),
    ("default expires of the task", lambda apply, i: apply(golden_expires, ("first",), task_id=i[0]),
     lambda apply, i: apply(golden_expires, ("second",), task_id=i[1]), 0),
]


@pytest.mark.parametrize("name,template_call,call,derived", SINGLE_CASES, ids=[case[0] for case in SINGLE_CASES])
def test_a_single_call_sends_the_message_celery_builds(vhost, clock, derivation, name, template_call, call, derived):
    template_call = template_call or SINGLE_CASES[0][1]
    call_ids = ids(2)
    call_time = clock["value"]
    with wire() as celerys:
        call(celery_apply_async, call_ids)
    clock["value"] = call_time - timedelta(hours=1, seconds=0.5)  # the template is an hour older
    with wire() as ours:
        template_call(lambda task, *args, **kwargs: task.apply_async(*args, **kwargs), ids(2))
        clock["value"] = call_time
        call(lambda task, *args, **kwargs: task.apply_async(*args, **kwargs), call_ids)
    assert_same(celerys, ours, derivation(), skip=1)
    assert derivation() == derived  # the cases with options go through Celery, the plain ones are derived


def test_a_single_call_after_the_first_on_a_connection_goes_straight_to_the_channel_and_is_the_same(
        vhost, clock, derivation):
    # The first derived call publishes through kombu (declaring the queue), the next ones on the channel.
    call_ids = ids(3)
    with wire() as celerys:
        for task_id, value in zip(call_ids, ("one", "two", "three")):
            celery_apply_async(golden, (value,), task_id=task_id)
    with wire() as ours, mock.patch.object(compat, "publish_prepared", wraps=compat.publish_prepared) as direct:
        golden.apply_async(("template",))
        for task_id, value in zip(call_ids, ("one", "two", "three")):
            golden.apply_async((value,), task_id=task_id)
    assert_same(celerys, ours, derivation(), skip=1)
    assert derivation() == 3 and direct.call_count >= 2


@contextmanager
def receiver(function):
    signals.before_task_publish.connect(function, weak=False)
    try:
        yield
    finally:
        signals.before_task_publish.disconnect(function)


def stamp_every_call(headers=None, properties=None, **kwargs):
    headers["x-golden-stamp"] = f"{headers['id']} {headers['argsrepr']}"


def stamp_the_template_only(headers=None, properties=None, **kwargs):
    if "template" in headers["argsrepr"]:
        headers["x-golden-first"] = "only the template call"


def raise_priority(headers=None, properties=None, **kwargs):
    properties["priority"] = 7


def raise_priority_of_the_template_only(headers=None, properties=None, **kwargs):
    if "template" in headers["argsrepr"]:
        properties["priority"] = 9


@pytest.mark.parametrize("function", [stamp_every_call, stamp_the_template_only, raise_priority,
                                      raise_priority_of_the_template_only])
def test_what_publish_signal_receivers_do_is_done_per_derived_call(vhost, clock, derivation, function):
    call_ids = ids(2)
    with receiver(function):
        with wire() as celerys:
            for task_id, value in zip(call_ids, ("one", "two")):
                celery_apply_async(golden, (value,), task_id=task_id)
        with wire() as ours:
            golden.apply_async(("template",))
            for task_id, value in zip(call_ids, ("one", "two")):
                golden.apply_async((value,), task_id=task_id)
    assert_same(celerys, ours, derivation(), skip=1)
    assert derivation() == 2


def test_headers_a_library_adds_around_celerys_apply_async_are_never_copied(vhost, clock, derivation):
    # Sentry's Celery integration wraps Task.apply_async and adds per-call headers (trace, enqueue time): a
    # template would carry the first call's. Such a call is not made into a template: Celery builds each one.
    original = Task.apply_async
    stamps = count()

    def wrapped(self, *args, **kwargs):
        kwargs["headers"] = {**(kwargs.get("headers") or {}), "x-enqueued": next(stamps)}
        return original(self, *args, **kwargs)

    call_ids = ids(2)
    with mock.patch.object(Task, "apply_async", wrapped):
        with wire() as celerys:
            next(stamps)  # the template call below takes one stamp: the compared calls get the same ones
            for task_id, value in zip(call_ids, ("one", "two")):
                celery_apply_async(golden, (value,), task_id=task_id)
        stamps = count()
        with wire() as ours:
            golden.apply_async(("template",))
            for task_id, value in zip(call_ids, ("one", "two")):
                golden.apply_async((value,), task_id=task_id)
    assert_same(celerys, ours, derivation(), skip=1)
    assert derivation() == 0


def test_group_and_chord_members_are_celerys_messages(vhost, clock, derivation):
    from django_celery_results.models import ChordCounter

    def canvas():
        ChordCounter.objects.all().delete()  # the chord's group id is the same in both runs
        with fixed_uuids():  # member, group and chord ids: the same on both sides
            group([golden.s(1), golden.s(2)]).apply_async()
            chord([golden.s(3), golden.s(4)], golden_other.s()).apply_async()

    with wire() as celerys:
        canvas()
    with wire() as ours:
        golden.apply_async(("template",))
        canvas()
    assert_same(celerys, ours, derivation(), skip=1)
    assert derivation() == 0  # canvas members go through Celery
    assert len({wire.headers["group"] for wire in ours[1:]}) == 2


def test_a_call_from_inside_a_running_task_is_celerys_message(vhost, clock, derivation):
    call_ids, parent_ids = ids(2), ids(2)
    CALLS_IN_TASK["one call"] = lambda: golden.apply_async(("child",), task_id=call_ids[1]).id
    with wire() as ours:
        golden.apply_async(("template",))
        golden_parent.apply(("one call",), task_id=parent_ids[0])
    CALLS_IN_TASK["one call"] = lambda: celery_apply_async(golden, ("child",), task_id=call_ids[1]).id
    with wire() as celerys:
        golden_parent.apply(("one call",), task_id=parent_ids[0])
    assert_same(celerys, ours, derivation(), skip=1)
    assert derivation() == 0
    assert ours[1].headers["parent_id"] == ours[1].headers["root_id"] == parent_ids[0]


# enqueue_many: the first message of each task is Celery's, the next ones derived from it. Celery's side sends
# the same signatures inside a confirmed batch (Celery's send path, no templates). The ids come from one counter
# for both sides, and the clock moves an hour after the first message.
def later_after_the_first(clock, signatures):
    start = clock["value"]
    clock["value"] = start - timedelta(hours=1)
    for i, signature in enumerate(signatures):
        yield signature
        if i == 0:
            clock["value"] = start


BULK_SIGNATURES = {
    "plain, one task": lambda: [golden.s(i, f"v{i}", k=[i] * i) for i in range(6)],
    "two tasks interleaved": lambda: [(golden if i % 2 else golden_other).s("ż" * i, n=i) for i in range(8)],
    "arguments of every size": lambda: [golden.s(*(["x" * 3000] * i), **{f"k{j}": "y" * 2000 for j in range(i)})
                                        for i in range(5)],
    "with options between plain ones": lambda: [
        golden.s(0), golden.s(1).set(priority=3), golden.s(2).set(countdown=5), golden.s(3, headers={"a": 1}),
        golden.s(4).set(expires=30), golden.s(5).set(link=golden_other.s()), golden.s(6)],
    "tasks that must not be derived": lambda: [golden_shadow.s(f"a{i}") for i in range(3)] +
                                              [golden_expires.s(i) for i in range(3)],
}
BULK_DERIVED = {"plain, one task": 5, "two tasks interleaved": 6, "arguments of every size": 4,
                "with options between plain ones": 2, "tasks that must not be derived": 0}


def celerys_batch(signatures):
    with confirmed_batch():
        for signature in signatures:
            signature.apply_async()


@pytest.mark.parametrize("case", list(BULK_SIGNATURES))
def test_enqueue_many_sends_the_messages_celery_builds(vhost, clock, derivation, case):
    start = clock["value"]
    with wire() as celerys, fixed_uuids():
        celerys_batch(later_after_the_first(clock, BULK_SIGNATURES[case]()))
    clock["value"] = start
    with wire() as ours, fixed_uuids():
        enqueue_many(later_after_the_first(clock, BULK_SIGNATURES[case]()))
    assert_same(celerys, ours, derivation())
    assert derivation() == BULK_DERIVED[case]


@pytest.mark.parametrize("function", [stamp_every_call, stamp_the_template_only, raise_priority,
                                      raise_priority_of_the_template_only])
def test_enqueue_many_sends_publish_signals_per_derived_message(vhost, clock, derivation, function):
    signatures = lambda: [golden.s("template")] + [golden.s(i) for i in range(3)]  # noqa: E731
    with receiver(function):
        with wire() as celerys, fixed_uuids():
            celerys_batch(signatures())
        with wire() as ours, fixed_uuids():
            enqueue_many(signatures())
    assert_same(celerys, ours, derivation())
    assert derivation() == 3


def test_enqueue_many_from_inside_a_running_task_derives_the_children_of_that_task(vhost, clock, derivation):
    parent_id = ids(1)[0]
    signatures = lambda: [golden.s(i, i * "ß") for i in range(4)]  # noqa: E731
    CALLS_IN_TASK["many"] = lambda: [r.id for r in enqueue_many(signatures())]
    with wire() as ours, fixed_uuids():
        children = golden_parent.apply(("many",), task_id=parent_id).get()
    CALLS_IN_TASK["many"] = lambda: celerys_batch(signatures())
    with wire() as celerys, fixed_uuids():
        golden_parent.apply(("many",), task_id=parent_id)
    assert_same(celerys, ours, derivation())
    assert derivation() == 3
    assert {(w.headers["parent_id"], w.headers["root_id"]) for w in ours} == {(parent_id, parent_id)}
    assert [w.headers["id"] for w in ours] == children


def test_a_derived_call_with_wrong_arguments_is_refused_as_celery_refuses_it(vhost, clock, derivation):
    with pytest.raises(TypeError) as celerys:
        celery_apply_async(golden_strict, ("one", "two"))
    with wire() as ours:
        golden_strict.apply_async(("template",))
        with pytest.raises(TypeError) as single_call:
            golden_strict.apply_async(("one", "two"))
        with pytest.raises(TypeError) as bulk_call:
            enqueue_many([golden_strict.s("template"), golden_strict.s("one", "two")])
    assert str(single_call.value) == str(bulk_call.value) == str(celerys.value)
    assert [w.headers["argsrepr"] for w in ours] == ["('template',)", "('template',)"]  # nothing else was sent
