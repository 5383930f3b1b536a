from django.http import JsonResponse
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import extend_schema
from rest_framework.decorators import api_view, permission_classes
from rest_framework.permissions import IsAdminUser
from rest_framework.response import Response

from apps.core.health import health_report


@extend_schema(responses={200: OpenApiTypes.OBJECT, 503: OpenApiTypes.OBJECT})
@api_view(["GET"])
@permission_classes([IsAdminUser])
def health(request):
    """Broker, database, workers per role and queue depths (staff only: it names hosts and queues)."""
    report = health_report()
    return Response(report, status=200 if report["ok"] else 503)


def liveness(request):
    """Unauthenticated liveness probe for load balancers: the web process answers."""
    return JsonResponse({"status": "ok"})
