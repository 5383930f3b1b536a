"""Stored events to OTLP/HTTP: rebuilt as SDK spans, encoded by OpenTelemetry's own protobuf encoder, POSTed.

One request per batch, with a short timeout and no retry loop here: a failed export leaves the rows
pending and the next export task tries again, so an outage never holds a green thread for long.
"""
from __future__ import annotations

import json
from collections.abc import Iterable

import requests
from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import Event, ReadableSpan
from opentelemetry.sdk.util.instrumentation import InstrumentationScope
from opentelemetry.trace import SpanContext, SpanKind, Status, StatusCode, TraceFlags

_KINDS = {kind.name.lower(): kind for kind in SpanKind}
_resources: dict[str, Resource] = {}  # one Resource per service, so the encoder groups spans under it
_STATUS = {"unset": StatusCode.UNSET, "ok": StatusCode.OK, "error": StatusCode.ERROR}


class ExportFailed(Exception):
    """The collector is unreachable or answered with a retryable error; try again later."""


class ExportRejected(Exception):
    """The collector refused the batch as invalid (HTTP 400): retrying the same data will not help."""


def _otel_value(value):
    """OTLP attributes are primitives or homogeneous lists of them; anything else travels as JSON text."""
    if isinstance(value, (str, bool, int, float)):
        return value
    if isinstance(value, list) and value and all(isinstance(v, type(value[0])) for v in value) \
            and isinstance(value[0], (str, bool, int, float)):
        return value
    return json.dumps(value)


def _attributes(attributes: dict) -> dict:
    return {key: _otel_value(value) for key, value in attributes.items() if value is not None}


def to_readable_span(event) -> ReadableSpan:
    service = event.service or "unknown"
    resource = _resources.get(service) or _resources.setdefault(service, Resource({"service.name": service}))
    context = SpanContext(int(event.trace_id, 16), int(event.span_id, 16), is_remote=False,
                          trace_flags=TraceFlags(TraceFlags.SAMPLED))
    parent = SpanContext(int(event.trace_id, 16), int(event.parent_span_id, 16), is_remote=False) \
        if event.parent_span_id else None
    attributes = _attributes(event.attributes)
    attributes["platform.kind"] = event.kind
    if event.issues:
        attributes["platform.ingestion_issues"] = json.dumps(event.issues)
    return ReadableSpan(
        name=event.name,
        context=context,
        parent=parent,
        resource=resource,
        attributes=attributes,
        events=[Event(e["name"], _attributes(e.get("attributes") or {}), e.get("time_ns")) for e in event.events],
        kind=_KINDS.get(event.span_kind, SpanKind.INTERNAL),
        status=Status(_STATUS.get(event.status, StatusCode.UNSET), event.status_message or None)
        if event.status == "error" else Status(_STATUS.get(event.status, StatusCode.UNSET)),
        start_time=event.start_ns,
        end_time=event.end_ns,
        instrumentation_scope=InstrumentationScope(event.scope or "apps.tracing"),
    )


def export(events: Iterable, endpoint: str, timeout: float) -> None:
    """POST one ExportTraceServiceRequest; raise ExportFailed / ExportRejected unless the collector took it."""
    body = encode_spans([to_readable_span(event) for event in events]).SerializeToString()
    try:
        response = requests.post(endpoint, data=body, timeout=timeout,
                                 headers={"Content-Type": "application/x-protobuf"})
    except requests.RequestException as exc:
        raise ExportFailed(f"collector at {endpoint} unreachable: {exc.__class__.__name__}: {exc}") from exc
    if response.status_code == 400:
        raise ExportRejected(f"collector at {endpoint} rejected the batch (400): {response.text[:500]}")
    if not 200 <= response.status_code < 300:
        raise ExportFailed(f"collector at {endpoint} answered {response.status_code}: {response.text[:200]}")
