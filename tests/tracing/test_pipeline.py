"""End to end through real processes: this test process records and publishes, a real eventlet io worker
(and a prefork cpu worker) run the tasks and ingest the batches, a real OTLP/HTTP receiver gets the spans."""
import os
import uuid

import pytest

from apps.tracing import api as tracing
from apps.tracing.models import ExportStatus, RejectedEvent, TraceEvent
from apps.tracing.tasks import export_pending, ingest
from tests.support.tracing_tasks import trace_chain, trace_fail, trace_retry_once
from tests.support.workers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]


def flush(stack):
    assert stack["buffer"] is not None, "tracing is disabled in the test process (TRACING_ENABLED)"
    assert stack["buffer"].flush(), "the test process could not publish its spans"


def by_name(spans):
    out = {}
    for span in spans:
        out.setdefault(span["name"], []).append(span)
    return out


def test_a_request_its_task_and_the_sub_tasks_form_one_trace_at_the_collector(tracing_stack, otlp_receiver,
                                                                             client, settings):
    settings.ROOT_URLCONF = "tests.tracing.urls"
    trace_id = client.get("/trace-test/start/", {"depth": 2}).json()["trace_id"]
    assert len(trace_id) == 32
    flush(tracing_stack)

    def arrived():
        names = by_name(otlp_receiver.in_trace(trace_id))
        return len(names.get("run/tests.io.trace_chain", [])) == 3 and names.get("run/tests.cpu.trace_leaf") \
            and names.get("cpu.leaf") and len(names.get("chain.visit", [])) == 3 and names
    spans = wait_for(arrived, timeout=90, message="the chain's spans at the OTLP receiver")
    ids = {s["span_id"]: s for group in spans.values() for s in group}

    def parent(span):
        return ids.get(span["parent_span_id"])

    (request,) = [s for s in ids.values() if not s["parent_span_id"]]
    assert request["scope"] == "opentelemetry.instrumentation.django" and request["kind"] == 2  # SERVER
    assert request["attributes"]["platform.kind"] == "request"
    root_id = request["span_id"]
    # request -> apply_async/tests.io.trace_chain -> run/... -> chain.step -> apply_async -> run/... (x3)
    runs = sorted(spans["run/tests.io.trace_chain"], key=lambda s: s["start_ns"])
    assert parent(parent(runs[0]))["span_id"] == root_id
    for upper, lower in zip(runs, runs[1:]):
        publish = parent(lower)
        assert publish["name"] == "apply_async/tests.io.trace_chain"
        step = parent(publish)
        assert step["name"] == "chain.step" and parent(step)["span_id"] == upper["span_id"]
    leaf = spans["run/tests.cpu.trace_leaf"][0]
    assert parent(parent(leaf))["name"] == "chain.step" and parent(parent(parent(leaf)))["span_id"] == runs[-1]["span_id"]
    assert parent(spans["cpu.leaf"][0])["span_id"] == leaf["span_id"]
    for visit in spans["chain.visit"]:
        assert visit["attributes"]["platform.kind"] == "audit" and parent(visit)["name"] == "chain.step"

    # Task spans: queue wait, worker, queue, outcome; io runs on the eventlet worker, the leaf on prefork.
    io, cpu = tracing_stack["io"], tracing_stack["cpu"]
    for run in runs:
        attributes = run["attributes"]
        assert attributes["platform.queue_wait_ms"] >= 0
        assert attributes["celery.queue"] == "ops_trace" and attributes["celery.worker"] == io.nodename
        assert attributes["celery.state"] == "SUCCESS"
    assert leaf["attributes"]["celery.queue"] == "dataset" and leaf["attributes"]["celery.worker"] == cpu.nodename
    assert {s["service"] for s in ids.values()} == {"task-platform"}

    # And the same trace is stored, as a tree, and marked exported.
    wait_for(lambda: TraceEvent.objects.filter(trace_id=trace_id, export_status=ExportStatus.EXPORTED).count() == len(ids),
             timeout=60, message="every span of the trace stored and marked exported")


def test_failures_and_retries_are_in_the_task_spans(tracing_stack, otlp_receiver):
    with tracing.span("test.failures"):
        trace_id = tracing.current_trace_id()
        trace_fail.delay("boom for the span")
        trace_retry_once.delay()
    flush(tracing_stack)

    def arrived():
        names = by_name(otlp_receiver.in_trace(trace_id))
        return len(names.get("run/tests.io.trace_retry_once", [])) == 2 and names.get("run/tests.io.trace_fail") and names
    spans = wait_for(arrived, timeout=90, message="the failing and retried tasks' spans")
    failed = spans["run/tests.io.trace_fail"][0]
    assert failed["status_code"] == 2 and "boom for the span" in failed["status_message"]  # STATUS_CODE_ERROR
    assert "exception" in failed["events"]
    first, second = sorted(spans["run/tests.io.trace_retry_once"], key=lambda s: s["start_ns"])
    assert "first attempt fails" in first["attributes"]["celery.retry.reason"]
    assert first["attributes"]["celery.state"] == "RETRY" and second["attributes"]["celery.state"] == "SUCCESS"
    assert second["attributes"]["celery.retries"] == 1


def test_events_recorded_during_a_collector_outage_are_exported_when_it_returns(tracing_stack, otlp_receiver):
    otlp_receiver.stop()
    try:
        with tracing.span("test.outage"):
            trace_id = tracing.current_trace_id()
            for i in range(30):
                tracing.audit("outage.event", actor="test", target=f"item:{i}")
        flush(tracing_stack)
        wait_for(lambda: TraceEvent.objects.filter(trace_id=trace_id).exclude(export_error="").count() == 31,
                 timeout=60, message="the events stored with the failed export recorded")
        # The outage blocks nothing else on the queue: a batch and a task still run meanwhile.
        other = ingest.delay([{"trace_id": uuid.uuid4().hex, "span_id": "c" * 16, "name": "meanwhile",
                               "start_ns": 1_700_000_000_000_000_000}], "meanwhile")
        assert other.get(timeout=30)["stored"] == 1
        assert TraceEvent.objects.filter(trace_id=trace_id, export_status=ExportStatus.PENDING).count() == 31
        assert otlp_receiver.in_trace(trace_id) == []
    finally:
        otlp_receiver.start()
    export_pending.delay()  # what the "Trace export" schedule does every 15 s
    wait_for(lambda: len(otlp_receiver.in_trace(trace_id)) == 31, timeout=60, message="the catch-up export")
    assert len(otlp_receiver.named("outage.event")) >= 30
    wait_for(lambda: not TraceEvent.objects.filter(trace_id=trace_id).exclude(export_status=ExportStatus.EXPORTED).exists(),
             timeout=30, message="all outage events marked exported")
    assert len({s["span_id"] for s in otlp_receiver.in_trace(trace_id)}) == 31  # each once


def test_bad_batches_never_crash_ingestion_and_redelivery_stores_nothing_twice(tracing_stack):
    good = {"trace_id": uuid.uuid4().hex, "span_id": os.urandom(8).hex(), "name": "ok", "start_ns": 1,
            "attributes": {"blob": "x" * 100_000, "nan": float("nan"), "nested": {"a": object.__name__}}}
    batch = [good, {"trace_id": "bad", "span_id": "1" * 16, "name": "x", "start_ns": 1}, 42,
             {**good, "span_id": os.urandom(8).hex(), "name": "fut\x00ure", "start_ns": 2**62}]
    first = ingest.delay(batch, "bad-batch").get(timeout=30)
    again = ingest.delay(batch, "bad-batch").get(timeout=30)  # redelivered: same ids
    assert (first["stored"], first["rejected"]) == (2, 2) and again["received"] == 4
    assert ingest.delay("not a list", "worse-batch").get(timeout=30)["rejected"] == 1
    stored = {e.name: e for e in TraceEvent.objects.filter(trace_id=good["trace_id"])}
    assert set(stored) == {"ok", "fut\ufffdure"}
    assert len(stored["ok"].attributes["blob"]) == 4096 and stored["ok"].attributes["nan"] == "nan"
    assert any("too far in the past" in i for i in stored["ok"].issues)
    assert any("too far in the future" in i for i in stored["fut\ufffdure"].issues)
    assert RejectedEvent.objects.filter(batch_id__in=["bad-batch", "worse-batch"]).count() == 3
    assert tracing_stack["io"].alive()


def test_sentry_receives_task_errors_when_sentry_dsn_is_set(tracing_stack, sentry_sink):
    trace_fail.delay("reported to sentry")
    wait_for(lambda: any("reported to sentry" in (v.get("value") or "") for v in sentry_sink.exceptions()),
             timeout=60, message="the task's exception at the Sentry sink")
    value = next(v for v in sentry_sink.exceptions() if "reported to sentry" in (v.get("value") or ""))
    assert value["type"] == "ValueError"
    assert value.get("mechanism", {}).get("type") == "celery"


def test_an_asgi_request_starts_the_trace_too(tracing_stack, otlp_receiver, async_client, settings):
    """Under Django's ASGI handler (PLATFORM_WEB_HTTP=asgi; WebSockets always) the request span and its task
    are linked as under WSGI, which the web role serves plain HTTP on (project/asgi.py)."""
    from asgiref.sync import async_to_sync

    settings.ROOT_URLCONF = "tests.tracing.urls"
    response = async_to_sync(async_client.get)("/trace-test/start/", {"depth": 0})
    trace_id = response.json()["trace_id"]
    flush(tracing_stack)
    spans = wait_for(lambda: by_name(otlp_receiver.in_trace(trace_id)).get("run/tests.io.trace_chain")
                     and by_name(otlp_receiver.in_trace(trace_id)), timeout=60, message="the ASGI request's trace")
    ids = {s["span_id"]: s for group in spans.values() for s in group}
    (request,) = [s for s in ids.values() if not s["parent_span_id"]]
    assert request["kind"] == 2 and request["attributes"]["platform.kind"] == "request"
    run = spans["run/tests.io.trace_chain"][0]
    assert ids[ids[run["parent_span_id"]]["parent_span_id"]]["span_id"] == request["span_id"]


def test_a_broker_outage_in_the_recording_process_keeps_events_and_they_arrive_after(tracing_stack):
    """The real publish path against an unreachable broker: the caller is not blocked, events are kept."""
    import time

    from project.celery import app
    from tests.support.rabbit import point_app_at

    buffer = tracing_stack["buffer"]
    buffer.flush()
    point_app_at(app, "amqp://guest:guest@127.0.0.1:1//")  # nothing listens on port 1: refused
    try:
        started = time.monotonic()
        with tracing.span("test.broker_down"):
            trace_id = tracing.current_trace_id()
            for i in range(5):
                tracing.audit("broker_down.event", actor="test", target=f"item:{i}")
        assert time.monotonic() - started < 1  # recording never waits for the broker
        failures = buffer.publish_failures
        assert buffer.flush() is False
        assert buffer.publish_failures > failures and buffer.waiting >= 6
    finally:
        point_app_at(app, tracing_stack["url"])
    assert buffer.flush() is True
    wait_for(lambda: TraceEvent.objects.filter(trace_id=trace_id).count() == 6, timeout=60,
             message="the events kept during the broker outage, stored")
