"""A test-only web endpoint that enqueues a task chain, so a trace can start at a real Django request."""
from django.http import JsonResponse
from django.urls import path

from apps.tracing import api as tracing


def start_chain(request):
    from tests.support.tracing_tasks import trace_chain

    trace_chain.delay(int(request.GET.get("depth", 2)), cpu_leaf=True)
    return JsonResponse({"trace_id": tracing.current_trace_id()})


urlpatterns = [path("trace-test/start/", start_chain)]
