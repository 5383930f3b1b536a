from django.http import JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, extend_schema
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from apps.core.health import health_report


def wants_live(request) -> bool:
    """``?live=1``: ask the workers now (a broadcast that waits for replies) instead of the recorder's view."""
    return request.query_params.get("live", "").lower() in ("1", "true", "yes")


@extend_schema(responses={200: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT},
               parameters=[OpenApiParameter("live", OpenApiTypes.BOOL, description="ask the workers now (slower)")])
@api_view(["GET"])
@permission_classes([IsAdminUser])
def health(request):
    """Broker, database, workers per role and queue depths (staff only: it names hosts and queues).
    Workers as the event recorder last heard them, each with its age; ``?live=1`` asks them now."""
    report = health_report(live=wants_live(request))
    return Response(report, status=200 if report["ok"] else 503)


def liveness(request):
    """Unauthenticated liveness probe for load balancers: the web process answers."""
    return JsonResponse({"status": "ok"})
