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
from typing import NamedTuple

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

class Limits(NamedTuple):
    """The configured ingestion limits, read once per batch (``read_limits()``), not per event and attribute:
    ``conf.get`` goes through Django's LazySettings, which was a third of normalise's time when every event
    and attribute read it (docs/tracing.md, "where direct trace ingestion's time goes")."""

    max_attributes: int
    max_attribute_length: int
    max_attributes_bytes: int
    max_future_skew_ns: int
    max_past_age_ns: int


def read_limits() -> Limits:
    return Limits(conf.get("TRACING_MAX_ATTRIBUTES"), conf.get("TRACING_MAX_ATTRIBUTE_LENGTH"),
                  conf.get("TRACING_MAX_ATTRIBUTES_BYTES"), int(conf.get("TRACING_MAX_FUTURE_SKEW") * 1e9),
                  int(conf.get("TRACING_MAX_PAST_AGE") * 1e9))


def _clean_text(value: str, limit: int, what: str, issues: list) -> str:
    """Text PostgreSQL and the collector accept: no NUL, no lone surrogates, at most ``limit`` chars."""
    if value.isascii() and len(value) <= limit and "\x00" not in value:  # nearly always: nothing to do
        return value
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


_PLAIN_TYPES = frozenset({str, int, float, bool, type(None)})
_STR = frozenset({str})
_compact_json = json.JSONEncoder(separators=(",", ":"), allow_nan=False).encode
KEY_MAX = 256


def plain_json(attributes: dict, limits: Limits) -> str | None:
    """The attributes' compact JSON text if ingestion stores them exactly as they are, else None.

    The fast path for nearly every event, checked with C-level operations on the object and on the one JSON
    text that is then stored (``services._insert`` reuses it): at most ``max_attributes`` string keys; values
    str, int, float, bool or None (a list or object goes the slow way); no NaN/Infinity (the encoder
    refuses them); no ``\\u`` escape in the text, so every key and string is ASCII without NUL or other
    control characters below U+0020 except the escaped ones JSON writes as ``\\n`` etc. (a literal
    backslash-u in a value also lands here: it only costs the slow path); keys of at most 256 and strings of
    at most ``max_attribute_length`` characters; integers within int64; the text within
    ``max_attributes_bytes``. Anything else is decided by the slow path, which notes what it changes.
    """
    if len(attributes) > limits.max_attributes or not _STR.issuperset(map(type, attributes)):
        return None
    types = set(map(type, attributes.values()))
    if not _PLAIN_TYPES.issuperset(types):
        return None
    try:
        text = _compact_json(attributes)
    except ValueError:  # NaN or Infinity
        return None
    size = len(text)
    if size > limits.max_attributes_bytes or "\\u" in text:
        return None
    if size > KEY_MAX and max(map(len, attributes)) > KEY_MAX:
        return None
    if size > limits.max_attribute_length and str in types and \
            max(len(value) for value in attributes.values() if type(value) is str) > limits.max_attribute_length:
        return None
    if int in types:
        for value in attributes.values():
            if type(value) is int and not -(2**63) <= value < 2**63:
                return None
    return text


def clean_attributes(attributes, issues: list, what: str = "attributes", limits: Limits | None = None) -> dict:
    return _attributes(attributes, issues, what, limits or read_limits())[0]


def _attributes(attributes, issues: list, what: str, limits: Limits) -> tuple[dict, str | None]:
    """(stored attributes, their JSON text or None when it is not known yet)."""
    if attributes is None:
        return {}, "{}"
    if not isinstance(attributes, dict):
        issues.append(f"{what}: expected an object, got {type(attributes).__name__}; dropped")
        return {}, "{}"
    text = plain_json(attributes, limits)
    if text is not None:
        return attributes, text
    max_count, limit, max_bytes = limits.max_attributes, limits.max_attribute_length, limits.max_attributes_bytes
    items = list(attributes.items())
    if len(items) > max_count:
        issues.append(f"{what}: {len(items)} attributes, kept the first {max_count}")
        items = items[:max_count]
    cleaned, used = {}, 2
    for key, value in items:
        key = _clean_text(str(key), KEY_MAX, f"{what} key", issues)
        value = _clean_value(value, key, limit, issues)
        size = len(json.dumps({key: value}, separators=(",", ":")))
        if used + size > max_bytes:
            issues.append(f"{what}: over {max_bytes} bytes of JSON; dropped {key!r} and the rest")
            break
        cleaned[key] = value
        used += size
    return cleaned, None


def _ns(value, what: str) -> int:
    if type(value) is int:
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or \
            (isinstance(value, float) and not math.isfinite(value)):
        raise InvalidEvent(f"{what} must be a number of nanoseconds since the Unix epoch, got {value!r:.80}")
    return int(value)


def _id(value, pattern: re.Pattern, what: str) -> str:
    if type(value) is str and pattern.fullmatch(value) and value.strip("0"):  # already lower case
        return value
    if not isinstance(value, str) or not pattern.fullmatch(value.lower()) or not value.strip("0"):
        digits = 32 if pattern is _HEX32 else 16
        raise InvalidEvent(f"{what} must be {digits} hex digits, not all zero; got {value!r:.80}")
    return value.lower()


def _choice(record: dict, key: str, default: str, allowed: set, fallback: str, issues: list) -> str:
    value = record.get(key, default)
    if type(value) is str and value in allowed:
        return value
    # Anything else, including a value that is not a string at all (a list would not even be hashable).
    issues.append(f"{key} {value!r:.40} is unknown; stored as {fallback!r}")
    return fallback


def _text(record: dict, key: str, limit: int, issues: list) -> str:
    value = record.get(key) or ""
    return _clean_text(value if isinstance(value, str) else str(value), limit, key, issues)


def to_datetime(ns: int) -> datetime:
    return datetime.fromtimestamp(ns / 1e9, tz=timezone.utc)


ATTRIBUTES_JSON = "attributes_json"  # key of ``normalise``'s result: (the attributes object, its JSON text)


def normalise(record, now_ns: int, limits: Limits | None = None) -> dict:
    """Model fields for one record (including ``issues``), or InvalidEvent.

    ``limits``: read them once per batch (``read_limits()``); without them they are read here. The result also
    holds ``ATTRIBUTES_JSON``: the attributes object and its JSON text when the fast path produced it, so
    storage serialises each event's attributes once; storage uses the text only while ``attributes`` is
    still that very object.
    """
    if not isinstance(record, dict):
        raise InvalidEvent(f"an event must be a JSON object, got {type(record).__name__}")
    if limits is None:
        limits = read_limits()
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
    future = now_ns + limits.max_future_skew_ns
    past = now_ns - limits.max_past_age_ns
    if not past <= start_ns <= future:
        duration = min(end_ns - start_ns, 24 * 3600 * 10**9)
        issues.append(
            f"start_ns {start_ns} is too far in the {'future' if start_ns > future else 'past'} "
            f"(allowed: {past}..{future}); times moved to the time of ingestion, duration kept"
        )
        start_ns, end_ns = now_ns - duration, now_ns

    kind = _choice(record, "kind", "operation", KINDS, "other", issues)
    span_kind = _choice(record, "span_kind", "internal", SPAN_KINDS, "internal", issues)
    status = _choice(record, "status", "unset", STATUSES, "unset", issues)

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
                "attributes": _attributes(event.get("attributes"), issues, "event attributes", limits)[0],
            })
    service = _text(record, "service", 100, issues)
    scope = _text(record, "scope", 200, issues)
    status_message = _text(record, "status_message", 4000, issues)
    attributes, attributes_json = _attributes(record.get("attributes"), issues, "attributes", limits)
    return {
        "trace_id": trace_id,
        "span_id": span_id,
        "parent_span_id": parent,
        "name": name,
        "kind": kind,
        "span_kind": span_kind,
        "service": service,
        "scope": scope,
        "start_ns": start_ns,
        "end_ns": end_ns,
        "start_time": to_datetime(start_ns),
        "status": status,
        "status_message": status_message,
        "attributes": attributes,
        "events": clean_events,
        "issues": issues,
        ATTRIBUTES_JSON: (attributes, attributes_json),
    }
