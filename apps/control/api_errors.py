"""JSON errors for the whole API: DRF's handler plus a one-line ``detail`` and a ``code`` everywhere.

DRF's own keys are kept (``detail``, or one key per invalid field), so existing clients keep working;
``detail`` becomes a sentence that says what was wrong even for field errors. The middleware does the
same for what DRF never sees under /api/: unknown URLs (404) and unhandled exceptions (500).
"""
from __future__ import annotations

import logging

from apps.core.amqp import QueueFull
from apps.core.broker import TRANSIENT_ERRORS, BrokerUnavailable, describe

from django.core.exceptions import SuspiciousOperation
from django.http import JsonResponse
from rest_framework import exceptions
from rest_framework.views import exception_handler

from apps.control.errors import ControlError

logger = logging.getLogger(__name__)


def _flatten(data, prefix="") -> list[str]:
    if isinstance(data, dict):
        return [line for key, value in data.items() for line in _flatten(value, f"{prefix}{key}: " if key != "non_field_errors" else prefix)]
    if isinstance(data, list):
        return [line for value in data for line in _flatten(value, prefix)]
    return [f"{prefix}{data}"]


def json_exception_handler(exc, context):
    if isinstance(exc, ControlError):
        from rest_framework.response import Response

        headers = {"Retry-After": "10"} if exc.status == 503 else None  # unavailable: worth asking again soon
        return Response({"detail": exc.message, "code": exc.code}, status=exc.status, headers=headers)
    if isinstance(exc, QueueFull):  # backpressure: the queue is at its bound, nothing was enqueued
        from rest_framework.response import Response

        return Response({"detail": str(exc), "code": "queue_full"}, status=429,
                        headers={"Retry-After": str(exc.retry_after_seconds)})
    if isinstance(exc, BrokerUnavailable):  # already says what could not be served and why
        from rest_framework.response import Response

        return Response({"detail": str(exc), "code": "unavailable"}, status=503, headers={"Retry-After": "10"})
    if isinstance(exc, TRANSIENT_ERRORS):  # RabbitMQ down, not answering, or closed the connection (e.g. 541)
        from rest_framework.response import Response

        logger.warning("Broker unavailable in %s: %s", context.get("request") and context["request"].path, exc)
        return Response({"detail": f"RabbitMQ is not reachable or not serving: {describe(exc)}", "code": "unavailable"},
                        status=503, headers={"Retry-After": "10"})
    if isinstance(exc, SuspiciousOperation):  # too many fields, body too big: the client's fault, not a 500
        exc = exceptions.ParseError(f"request rejected: {exc}")
    response = exception_handler(exc, context)
    if response is None:
        return None  # a real bug: the middleware answers 500 in JSON
    data = response.data
    if isinstance(exc, exceptions.ValidationError) and isinstance(data, (dict, list)):
        fields = data if isinstance(data, dict) else {"non_field_errors": data}
        response.data = {**fields, "detail": "invalid input: " + "; ".join(_flatten(fields)), "code": "invalid"}
    elif isinstance(data, dict):
        codes = exc.get_codes() if isinstance(exc, exceptions.APIException) else None
        response.data = {**data, "code": codes if isinstance(codes, str) else getattr(exc, "default_code", "error")}
    return response


class JsonApiErrorsMiddleware:
    """Under /api/: 404 for unknown URLs and 500 for crashes as JSON, never Django's HTML pages."""

    def __init__(self, get_response):
        self.get_response = get_response

    def __call__(self, request):
        response = self.get_response(request)
        if request.path.startswith("/api/") and response.status_code == 404 \
                and not response.get("Content-Type", "").startswith("application/json"):
            return JsonResponse({"detail": f"no API endpoint at {request.path}", "code": "not_found"}, status=404)
        return response

    def process_exception(self, request, exception):
        if not request.path.startswith("/api/"):
            return None
        logger.exception("Unhandled error in %s %s", request.method, request.path)
        return JsonResponse({"detail": "internal server error; it has been logged", "code": "server_error"},
                            status=500)
