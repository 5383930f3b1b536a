"""The recording API for application code.

    from apps.tracing import api as tracing

    with tracing.span("dataset.parse", dataset_id=7):       # an operation span (child of the current one)
        ...
    @tracing.traced("mail.render")                           # the same, around a function
    def render(...): ...
    tracing.audit("dataset.delete", actor="user:3", target="dataset:7", reason="duplicate")

Nothing here touches the database or the broker: spans end in the in-memory buffer (apps/tracing/buffer.py).
Attribute values that OpenTelemetry cannot carry (dicts, datetimes, objects, None) are converted to text
and listed in the span's ``tracing.normalised`` attribute (records.caller_attributes).
"""
from __future__ import annotations

import functools
import time

from opentelemetry import trace

from apps.tracing.records import KIND_ATTRIBUTE, caller_attributes

_tracer = None


def tracer() -> trace.Tracer:
    global _tracer
    if _tracer is None or isinstance(_tracer, trace.ProxyTracer):
        _tracer = trace.get_tracer("apps.tracing")
    return _tracer


def span(name: str, **attributes):
    """An operation span around a block (``with span(...) as s``); exceptions mark it as an error and propagate."""
    attributes[KIND_ATTRIBUTE] = "operation"
    return tracer().start_as_current_span(name, attributes=caller_attributes(attributes))


def traced(name: str | None = None, **attributes):
    """Decorator: run the function inside ``span(name or module.qualname)``."""

    def decorate(function):
        span_name = name or f"{function.__module__}.{function.__qualname__}"

        @functools.wraps(function)
        def wrapper(*args, **kwargs):
            with span(span_name, **attributes):
                return function(*args, **kwargs)

        return wrapper

    return decorate


def audit(action: str, *, actor: str, target: str = "", **attributes) -> None:
    """Record that ``actor`` did ``action`` to ``target`` (e.g. "user:3", "dataset.delete", "dataset:7")."""
    attributes.update({KIND_ATTRIBUTE: "audit", "audit.actor": str(actor), "audit.action": action,
                       "audit.target": str(target)})
    now = time.time_ns()
    tracer().start_span(action, attributes=caller_attributes(attributes), start_time=now).end(end_time=now)


def current_trace_id() -> str:
    """The current trace id (32 hex digits), or "" outside any span."""
    context = trace.get_current_span().get_span_context()
    return format(context.trace_id, "032x") if context.is_valid else ""
