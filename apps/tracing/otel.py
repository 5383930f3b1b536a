"""OpenTelemetry wiring for every platform process: tracer provider, buffer, Celery and Django instrumentation.

``setup()`` runs from TracingConfig.ready() (web, workers, beat, commands). It installs:
* a TracerProvider whose spans end in the BufferedSpanProcessor (apps/tracing/buffer.py), which publishes
  batches to ``tracing.ingest`` on the ops_trace queue;
* CeleryInstrumentor: a span per task publish and per task run, context propagated in message headers,
  so a request, the task it enqueues and that task's sub-tasks form one trace;
* DjangoInstrumentor: a span per request;
* two signal handlers that add what Celery's instrumentation lacks: the publish time in a message header,
  and at task start the time the message waited in the queue (``platform.queue_wait_ms``).
The ingestion and export tasks are not traced (``PlatformSampler``): their spans would be published as new
ingestion tasks, which would make spans of their own, forever.
"""
from __future__ import annotations

import atexit
import json
import time
import uuid

from celery import signals
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.context import _SUPPRESS_INSTRUMENTATION_KEY
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import SpanLimits, TracerProvider
from opentelemetry.sdk.trace.sampling import ALWAYS_ON, Decision, ParentBased, Sampler, SamplingResult

from apps.tracing import conf
from apps.tracing.buffer import BufferedSpanProcessor
from apps.tracing.tasks import ingest

PUBLISHED_AT_HEADER = "platform_published_at"  # unix seconds, set by the publisher
QUEUE_WAIT_ATTRIBUTE = "platform.queue_wait_ms"

_state: dict = {}


class PlatformSampler(Sampler):
    """Record everything (parent-based), except the tracing pipeline's own tasks and its publishing thread."""

    def __init__(self, untraced_tasks):
        self._untraced = frozenset(untraced_tasks)
        self._delegate = ParentBased(ALWAYS_ON)
        self._drop = SamplingResult(Decision.DROP)

    def should_sample(self, parent_context, trace_id, name, kind=None, attributes=None, links=None, trace_state=None):
        # Celery's spans are named "run/<task>" and "apply_async/<task>".
        if name.partition("/")[2] in self._untraced or \
                otel_context.get_value(_SUPPRESS_INSTRUMENTATION_KEY, parent_context):
            return self._drop
        return self._delegate.should_sample(parent_context, trace_id, name, kind, attributes, links, trace_state)

    def get_description(self) -> str:
        return f"PlatformSampler(untraced={sorted(self._untraced)})"


encode_batch = json.JSONEncoder(separators=(",", ":"), default=repr).encode


def publish_batch(records: list[dict]) -> None:
    """Send one batch to the ops_trace queue (one retry on a dropped connection; the buffer keeps it otherwise)."""
    token = otel_context.attach(otel_context.set_value(_SUPPRESS_INSTRUMENTATION_KEY, True))
    try:
        # The batch travels as one JSON text, not as a list in the message: the worker decodes a message body
        # twice (the consumer, then the pool) with kombu's Python object_hook on every JSON object; a long string
        # is cheap to decode, and ingestion decodes it once with the C decoder (services.ingest_batch). Values
        # the encoder does not know (none are expected from the SDK) become their repr().
        # No result row: with result_extended every result would store the whole batch again as its args.
        ingest.apply_async(args=(encode_batch(records), uuid.uuid4().hex), retry_policy={"max_retries": 1},
                           ignore_result=True, argsrepr=f"[<{len(records)} trace events>]")
    finally:
        otel_context.detach(token)


def processor() -> BufferedSpanProcessor | None:
    return _state.get("processor")


def setup(force: bool = False) -> BufferedSpanProcessor | None:
    """Install tracing in this process (idempotent). Returns the buffer, or None when tracing is off.

    ``force`` installs it even with TRACING_ENABLED off (the tracing tests do, in the test process).
    """
    if "processor" in _state:
        _state["processor"].enabled = True
        return _state["processor"]
    if not (force or conf.get("TRACING_ENABLED")):
        return None
    from opentelemetry.instrumentation.celery import CeleryInstrumentor
    from opentelemetry.instrumentation.django import DjangoInstrumentor

    service = conf.get("TRACING_SERVICE_NAME")
    buffer = BufferedSpanProcessor(
        publish=publish_batch,
        service=service,
        max_events=conf.get("TRACING_BUFFER_MAX_EVENTS"),
        flush_events=conf.get("TRACING_FLUSH_EVENTS"),
        flush_bytes=conf.get("TRACING_FLUSH_BYTES"),
        flush_interval=conf.get("TRACING_FLUSH_INTERVAL"),
    )
    provider = TracerProvider(
        resource=Resource.create({"service.name": service}),
        sampler=PlatformSampler(conf.get("TRACING_UNTRACED_TASKS")),
        # The SDK truncates long strings and caps the attribute count before anything is buffered.
        span_limits=SpanLimits(max_span_attributes=conf.get("TRACING_MAX_ATTRIBUTES"),
                               max_attribute_length=conf.get("TRACING_MAX_ATTRIBUTE_LENGTH")),
    )
    provider.add_span_processor(buffer)
    trace.set_tracer_provider(provider)
    CeleryInstrumentor().instrument(tracer_provider=provider)
    DjangoInstrumentor().instrument(tracer_provider=provider)
    # Connected after the instrumentation's own handlers, so the task's span is current in prerun.
    signals.before_task_publish.connect(stamp_publish_time, weak=False)
    signals.task_prerun.connect(record_queue_wait, weak=False)
    signals.worker_process_shutdown.connect(flush_at_shutdown, weak=False)
    signals.worker_shutdown.connect(flush_at_shutdown, weak=False)
    atexit.register(buffer.flush)
    _state["processor"] = buffer
    _state["provider"] = provider
    return buffer


def stamp_publish_time(headers=None, **kwargs) -> None:
    if headers is not None:
        headers[PUBLISHED_AT_HEADER] = time.time()


def record_queue_wait(task=None, **kwargs) -> None:
    """Time from publish (or from the ETA, for delayed tasks) to the start of this run."""
    if task is None:
        return
    request = task.request
    published = getattr(request, PUBLISHED_AT_HEADER, None)
    span = trace.get_current_span()
    if not isinstance(published, (int, float)) or not span.is_recording():
        return
    now = time.time()
    due = published
    eta = request.eta
    if eta:
        from datetime import datetime

        try:
            due = max(published, datetime.fromisoformat(eta).timestamp() if isinstance(eta, str) else eta.timestamp())
        except (TypeError, ValueError):
            pass
    span.set_attribute(QUEUE_WAIT_ATTRIBUTE, round(max(0.0, now - due) * 1000, 3))
    span.set_attribute("platform.published_at", published)
    span.set_attribute("celery.queue", (request.delivery_info or {}).get("routing_key") or "")
    span.set_attribute("celery.worker", request.hostname or "")
    span.set_attribute("celery.retries", request.retries or 0)


def flush_at_shutdown(**kwargs) -> None:
    buffer = processor()
    if buffer is not None:
        buffer.flush()
