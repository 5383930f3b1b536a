"""HTTP API: /api/v1/tracing/events/ (filtered list) and /api/v1/tracing/traces/<trace_id>/ (span tree)."""
from __future__ import annotations

import re

from django.utils.dateparse import parse_datetime
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework import status
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.tracing import selectors
from apps.tracing.models import TraceEvent

_TRACE_ID = re.compile(r"[0-9a-fA-F]{32}")
MAX_LIMIT = 500


def _error(message: str, code=status.HTTP_400_BAD_REQUEST) -> Response:
    """The API's one error shape (apps/control/api_errors.py): a sentence in ``detail`` and a ``code``."""
    return Response({"detail": message, "code": "not_found" if code == status.HTTP_404_NOT_FOUND else "invalid"},
                    status=code)


class EventListView(APIView):
    """Events, newest first. Filters: trace_id, name (contains), status, kind, since, until (ISO 8601), limit."""

    @extend_schema(
        parameters=[OpenApiParameter(name, OpenApiTypes.STR, description=text) for name, text in (
            ("trace_id", "32 hex digits"), ("name", "substring of the span name"), ("status", "unset, ok or error"),
            ("kind", "operation, audit, task, publish, request or other"),
            ("since", "ISO 8601; spans started at or after"), ("until", "ISO 8601; spans started before"),
            ("limit", f"1..{MAX_LIMIT}, default 100"))],
        responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT},
    )
    def get(self, request):
        params = request.query_params
        trace_id = params.get("trace_id", "")
        if trace_id and not _TRACE_ID.fullmatch(trace_id):
            return _error(f"trace_id must be 32 hex digits, got {trace_id!r}")
        status_value = params.get("status", "")
        if status_value and status_value not in TraceEvent.Status.values:
            return _error(f"status must be one of {', '.join(TraceEvent.Status.values)}, got {status_value!r}")
        kind = params.get("kind", "")
        if kind and kind not in TraceEvent.Kind.values:
            return _error(f"kind must be one of {', '.join(TraceEvent.Kind.values)}, got {kind!r}")
        times = {}
        for key in ("since", "until"):
            if params.get(key):
                parsed = parse_datetime(params[key])
                if parsed is None:
                    return _error(f"{key} must be an ISO 8601 date-time, got {params[key]!r}")
                times[key] = parsed
        try:
            limit = int(params.get("limit", 100))
        except ValueError:
            return _error(f"limit must be an integer, got {params.get('limit')!r}")
        if not 1 <= limit <= MAX_LIMIT:
            return _error(f"limit must be between 1 and {MAX_LIMIT}, got {limit}")
        rows = selectors.events(trace_id=trace_id, name=params.get("name", ""), status=status_value, kind=kind,
                                **times)[:limit]
        return Response({"results": [
            {"trace_id": e.trace_id, "span_id": e.span_id, "parent_span_id": e.parent_span_id, "name": e.name,
             "kind": e.kind, "status": e.status, "service": e.service, "start_time": e.start_time.isoformat(),
             "duration_ms": round(e.duration_ms, 3), "attributes": e.attributes, "issues": e.issues,
             "export_status": e.export_status}
            for e in rows
        ]})


class TraceView(APIView):
    """One trace as a tree of spans with offsets and durations (ms)."""

    @extend_schema(responses={200: OpenApiTypes.OBJECT, 400: OpenApiTypes.OBJECT, 404: OpenApiTypes.OBJECT})
    def get(self, request, trace_id: str):
        if not _TRACE_ID.fullmatch(trace_id):
            return _error(f"trace_id must be 32 hex digits, got {trace_id!r}")
        trace = selectors.trace_tree(trace_id)
        if trace is None:
            return _error(f"no events recorded for trace {trace_id.lower()}", status.HTTP_404_NOT_FOUND)
        return Response(trace.as_dict())
