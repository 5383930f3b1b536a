"""The event record: the JSON dict that travels from a recording process to ingestion.

Version 1, one dict per span or audit event::

    {"trace_id": 32 hex, "span_id": 16 hex, "parent_span_id": 16 hex or "", "name": str,
     "kind": operation|audit|task|publish|request|other, "span_kind": internal|server|client|producer|consumer,
     "service": str, "scope": str, "start_ns": int, "end_ns": int (unix epoch ns),
     "status": unset|ok|error, "status_message": str, "attributes": {str: JSON}, "events": [...]}

``from_span`` builds it from a finished OpenTelemetry span (in the buffer's flusher thread, not in the
caller). ``normalise`` is ingestion's gate: it returns model fields plus the list of what it changed, or
raises ``InvalidEvent`` with what was wrong. Nothing in it raises anything else on any JSON input.
"""
from __future__ import annotations

import json
import math
import re
from datetime import datetime, timezone

from opentelemetry.sdk.trace import ReadableSpan
from opentelemetry.trace import SpanKind, StatusCode

from apps.tracing import conf

KIND_AUDIT = "audit"
KIND_ATTRIBUTE = "platform.kind"  # set by the recording API on operation and audit spans
KINDS = {"operation", "audit", "task", "publish", "request", "other"}
SPAN_KINDS = {"internal", "server", "client", "producer", "consumer"}
STATUSES = {"unset", "ok", "error"}
_HEX32 = re.compile(r"[0-9a-f]{32}")
_HEX16 = re.compile(r"[0-9a-f]{16}")
_STATUS_NAMES = {StatusCode.UNSET: "unset", StatusCode.OK: "ok", StatusCode.ERROR: "error"}
_SPAN_KIND_NAMES = {kind: kind.name.lower() for kind in SpanKind}
_PRIMITIVES = (str, bool, int, float)
NAME_MAX = 200


class InvalidEvent(ValueError):
    """The event cannot be stored; the message says why."""


def _kind_of(span: ReadableSpan) -> str:
    declared = span.attributes.get(KIND_ATTRIBUTE) if span.attributes else None
    if declared in KINDS:
        return declared
    scope = span.instrumentation_scope.name if span.instrumentation_scope else ""
    if "celery" in scope:
        return "task" if span.kind is SpanKind.CONSUMER else "publish"
    if "django" in scope or "asgi" in scope or "wsgi" in scope:
        return "request"
    return "operation" if span.kind is SpanKind.INTERNAL else "other"


def from_span(span: ReadableSpan, service: str) -> dict:
    context = span.context
    parent = span.parent
    return {
        "trace_id": format(context.trace_id, "032x"),
        "span_id": format(context.span_id, "016x"),
        "parent_span_id": format(parent.span_id, "016x") if parent is not None and parent.is_valid else "",
        "name": span.name,
        "kind": _kind_of(span),
        "span_kind": _SPAN_KIND_NAMES.get(span.kind, "internal"),
        "service": service,
        "scope": span.instrumentation_scope.name if span.instrumentation_scope else "",
        "start_ns": span.start_time,
        "end_ns": span.end_time,
        "status": _STATUS_NAMES.get(span.status.status_code, "unset"),
        "status_message": span.status.description or "",
        "attributes": dict(span.attributes or {}),
        "events": [
            {"name": event.name, "time_ns": event.timestamp, "attributes": dict(event.attributes or {})}
            for event in span.events
        ],
    }


def estimated_size(record: dict) -> int:
    """Roughly the record's JSON size, without encoding it (the flusher runs beside the caller's code).

    Attribute values from the SDK are primitives or lists of them. Non-ASCII text can grow up to 6x in
    JSON (\\uXXXX); the byte bound leaves room for that below the 4 MiB message guard, and a batch the
    guard still refuses is split (buffer.BufferedSpanProcessor.flush).
    """
    size = 420 + len(record["name"]) + len(record["status_message"])
    for key, value in record["attributes"].items():
        size += len(key) + (len(value) if isinstance(value, str) else 24 * len(value) if isinstance(value, (list, tuple)) else 12) + 6
    for event in record["events"]:
        size += 80 + sum(len(k) + len(str(v)) + 6 for k, v in event["attributes"].items())
    return size


# --- normalisation (caller side, cheap) ------------------------------------------------------------

def caller_attributes(attributes: dict) -> dict:
    """Attributes from application code, made acceptable to OpenTelemetry (str/bool/int/float and lists).

    Anything else (dicts, datetimes, model instances, None …) becomes its JSON text, or its repr() when
    it is not JSON-serialisable, and the key is listed in ``tracing.normalised`` so the change is visible.
    """
    changed = None
    for key, value in attributes.items():
        if isinstance(value, _PRIMITIVES):
            continue
        if isinstance(value, (list, tuple)) and all(isinstance(item, _PRIMITIVES) for item in value) \
                and len({type(item) for item in value}) <= 1:
            continue
        if changed is None:
            attributes = dict(attributes)
            changed = []
        try:
            attributes[key] = json.dumps(value, allow_nan=False)
        except (TypeError, ValueError):
            attributes[key] = repr(value)
        changed.append(key)
    if changed:
        attributes["tracing.normalised"] = changed
    return attributes


# --- normalisation (ingestion side, the gate) ------------------------------------------------------

def _clean_text(value: str, limit: int, what: str, issues: list) -> str:
    """Text PostgreSQL and the collector accept: no NUL, no lone surrogates, at most ``limit`` chars."""
    if "\x00" in value:
        value = value.replace("\x00", "\ufffd")
        issues.append(f"{what}: NUL characters replaced")
    try:
        value.encode("utf-8")
    except UnicodeEncodeError:
        value = value.encode("utf-8", "replace").decode("utf-8")
        issues.append(f"{what}: invalid unicode (lone surrogates) replaced")
    if len(value) > limit:
        issues.append(f"{what}: truncated from {len(value)} to {limit} characters")
        value = value[:limit]
    return value


def _clean_value(value, key: str, limit: int, issues: list, depth: int = 0):
    if value is None or isinstance(value, bool):
        return value
    if isinstance(value, str):
        return _clean_text(value, limit, f"attribute {key!r}", issues)
    if isinstance(value, int):
        if -(2**63) <= value < 2**63:
            return value
        issues.append(f"attribute {key!r}: integer outside int64 stored as text")
        return str(value)
    if isinstance(value, float):
        if math.isfinite(value):
            return value
        issues.append(f"attribute {key!r}: {value} is not valid JSON, stored as text")
        return str(value)
    if isinstance(value, list) and depth == 0:
        return [_clean_value(item, key, limit, issues, depth + 1) for item in value]
    # Nested objects (or lists in lists): kept as their JSON text so every exporter can carry them.
    try:
        text = json.dumps(value, allow_nan=False, default=str)
    except (TypeError, ValueError):
        text = repr(value)
    issues.append(f"attribute {key!r}: nested value stored as JSON text")
    return _clean_text(text, limit, f"attribute {key!r}", issues)


def _plain(value) -> bool:
    """A value ingestion stores as it is: short clean ASCII text, int64, finite float, bool, None."""
    kind = type(value)
    if kind is str:
        return len(value) <= 256 and value.isascii() and "\x00" not in value
    if kind is int:
        return -(2**63) <= value < 2**63
    if kind is float:
        return math.isfinite(value)
    return kind is bool or value is None


def clean_attributes(attributes, issues: list, what: str = "attributes") -> dict:
    if attributes is None:
        return {}
    if not isinstance(attributes, dict):
        issues.append(f"{what}: expected an object, got {type(attributes).__name__}; dropped")
        return {}
    max_count = conf.get("TRACING_MAX_ATTRIBUTES")
    limit = conf.get("TRACING_MAX_ATTRIBUTE_LENGTH")
    max_bytes = conf.get("TRACING_MAX_ATTRIBUTES_BYTES")
    if len(attributes) <= max_count and all(map(_plain, attributes)) and all(map(_plain, attributes.values())):
        # Fast path (nearly every event): nothing to change if the whole object fits the byte budget.
        if len(json.dumps(attributes, separators=(",", ":"))) <= max_bytes:
            return attributes
    items = list(attributes.items())
    if len(items) > max_count:
        issues.append(f"{what}: {len(items)} attributes, kept the first {max_count}")
        items = items[:max_count]
    cleaned, used = {}, 2
    for key, value in items:
        key = _clean_text(str(key), 256, f"{what} key", issues)
        value = _clean_value(value, key, limit, issues)
        size = len(json.dumps({key: value}, separators=(",", ":")))
        if used + size > max_bytes:
            issues.append(f"{what}: over {max_bytes} bytes of JSON; dropped {key!r} and the rest")
            break
        cleaned[key] = value
        used += size
    return cleaned


def _ns(value, what: str) -> int:
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise InvalidEvent(f"{what} must be a number of nanoseconds since the Unix epoch, got {value!r:.80}")
    return int(value)


def _id(value, pattern: re.Pattern, what: str) -> str:
    if not isinstance(value, str) or not pattern.fullmatch(value.lower()) or not value.strip("0"):
        digits = 32 if pattern is _HEX32 else 16
        raise InvalidEvent(f"{what} must be {digits} hex digits, not all zero; got {value!r:.80}")
    return value.lower()


def to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


def normalise(record, now_ns: int) -> dict:
    """Model fields for one record (including ``issues``), or InvalidEvent."""
    if not isinstance(record, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(record).__name__}")
    issues: list[str] = []
    trace_id = _id(record.get("trace_id"), _HEX32, "trace_id")
    span_id = _id(record.get("span_id"), _HEX16, "span_id")
    parent = record.get("parent_span_id") or ""
    if parent:
        try:
            parent = _id(parent, _HEX16, "parent_span_id")
        except InvalidEvent as exc:
            issues.append(f"{exc}; stored as a root span")
            parent = ""
    name = record.get("name")
    if not isinstance(name, str) or not name.strip():
        raise InvalidEvent(f"name must be a non-empty string, got {name!r:.80}")
    name = _clean_text(name, NAME_MAX, "name", issues)

    start_ns = _ns(record.get("start_ns"), "start_ns")
    end_ns = _ns(record.get("end_ns", start_ns), "end_ns")
    if end_ns < start_ns:
        issues.append(f"end_ns {end_ns} is before start_ns {start_ns}; set to start_ns")
        end_ns = start_ns
    future = now_ns + int(conf.get("TRACING_MAX_FUTURE_SKEW") * 1e9)
    past = now_ns - int(conf.get("TRACING_MAX_PAST_AGE") * 1e9)
    if not past <= start_ns <= future:
        duration = min(end_ns - start_ns, 24 * 3600 * 10**9)
        issues.append(
            f"start_ns {start_ns} is too far in the {'future' if start_ns > future else 'past'} "
            f"(allowed: {past}..{future}); times moved to the time of ingestion, duration kept"
        )
        start_ns, end_ns = now_ns - duration, now_ns

    kind = record.get("kind", "operation")
    if kind not in KINDS:
        issues.append(f"kind {kind!r:.40} is unknown; stored as 'other'")
        kind = "other"
    span_kind = record.get("span_kind", "internal")
    if span_kind not in SPAN_KINDS:
        issues.append(f"span_kind {span_kind!r:.40} is unknown; stored as 'internal'")
        span_kind = "internal"
    status = record.get("status", "unset")
    if status not in STATUSES:
        issues.append(f"status {status!r:.40} is unknown; stored as 'unset'")
        status = "unset"

    events = record.get("events") or []
    if not isinstance(events, list):
        issues.append("events: expected a list; dropped")
        events = []
    clean_events = []
    for event in events[:32]:
        if isinstance(event, dict):
            clean_events.append({
                "name": _clean_text(str(event.get("name", "")), NAME_MAX, "event name", issues),
                "time_ns": event.get("time_ns") if isinstance(event.get("time_ns"), int) else start_ns,
                "attributes": clean_attributes(event.get("attributes"), issues, "event attributes"),
            })

    def text(key: str, limit: int) -> str:
        value = record.get(key) or ""
        return _clean_text(value if isinstance(value, str) else str(value), limit, key, issues)

    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": kind,
        "span_kind": span_kind,
        "service": text("service", 100),
        "scope": text("scope", 200),
        "start_ns": start_ns,
        "end_ns": end_ns,
        "start_time": to_datetime(start_ns),
        "status": status,
        "status_message": text("status_message", 4000),
        "attributes": clean_attributes(record.get("attributes"), issues),
        "events": clean_events,
        "issues": issues,
    }
