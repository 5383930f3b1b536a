"""HTTP API of the control plane (/api/v1/...). Thin: validate, call a selector or a service, serialize."""
from __future__ import annotations

import math

from django.http import HttpResponse
from django.utils import timezone
from drf_spectacular.types import OpenApiTypes
from drf_spectacular.utils import OpenApiParameter, OpenApiResponse, extend_schema, inline_serializer
from rest_framework import serializers
from rest_framework.parsers import JSONParser
from rest_framework.permissions import IsAdminUser, IsAuthenticated
from rest_framework.response import Response
from rest_framework.views import APIView

from apps.control import metrics, selectors, services
from apps.control.errors import NotFound
from apps.control.models import ControlAction, DeadLetter
from apps.control.serializers import (
    AuditSerializer,
    CancelSerializer,
    DeadLetterActionSerializer,
    DeadLetterDetailSerializer,
    DeadLetterFilterSerializer,
    DeadLetterSerializer,
    ErrorSerializer,
    PageParams,
    PauseSerializer,
    TaskFilterSerializer,
    TaskPageSerializer,
    TaskSerializer,
)
from apps.core.views import wants_live

ERRORS = {code: OpenApiResponse(ErrorSerializer) for code in (400, 401, 403, 404, 409, 503)}
ANY = inline_serializer("AnyObject", fields={}, required=False)
LIVE = OpenApiParameter("live", OpenApiTypes.BOOL, description="ask the workers now (a broadcast: slower)")


class ControlView(APIView):
    parser_classes = [JSONParser]  # JSON bodies only; anything else is a clear 415


def _validated(serializer_cls, data):
    serializer = serializer_cls(data=data)
    serializer.is_valid(raise_exception=True)
    return serializer.validated_data


def _page(queryset, params, serializer_cls) -> dict:
    count = queryset.count()
    size, page = params["page_size"], params["page"]
    items = queryset[(page - 1) * size: page * size]
    return {"count": count, "page": page, "page_size": size, "pages": math.ceil(count / size) if count else 0,
            "results": serializer_cls(items, many=True).data}


class TaskListView(ControlView):
    permission_classes = [IsAuthenticated]

    @extend_schema(parameters=[TaskFilterSerializer], responses={200: TaskPageSerializer, **ERRORS},
                   summary="List tasks (staff: all; others: their own)", operation_id="tasks_list")
    def get(self, request):
        params = _validated(TaskFilterSerializer, request.query_params)
        qs = selectors.with_owner_name(selectors.tasks_visible_to(request.user))
        if params.get("state"):
            qs = qs.filter(state__in=params["state"])
        if params.get("queue"):
            qs = qs.filter(queue__in=params["queue"])
        if params.get("name"):
            qs = qs.filter(name=params["name"])
        if params.get("since"):
            qs = qs.filter(sent_at__gte=params["since"])
        if params.get("until"):
            qs = qs.filter(sent_at__lt=params["until"])
        if params.get("retry_of"):
            qs = qs.filter(retry_of=params["retry_of"])
        return Response(_page(qs, params, TaskSerializer))


def _task_for(request, task_id):
    record = selectors.task_visible_to(request.user, task_id)
    if record is None:
        raise NotFound(f"no task with id {task_id!r}")
    return record


class TaskDetailView(ControlView):
    permission_classes = [IsAuthenticated]

    @extend_schema(responses={200: TaskSerializer, **ERRORS}, summary="One task's state, progress and result")
    def get(self, request, task_id):
        return Response(TaskSerializer(_task_for(request, task_id)).data)


class TaskCancelView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=CancelSerializer, responses={202: TaskSerializer, **ERRORS},
                   summary="Cancel a queued or running task")
    def post(self, request, task_id):
        params = _validated(CancelSerializer, request.data)
        record = services.cancel_task(task_id, actor=request.user, force=params["force"])
        return Response(TaskSerializer(record).data, status=202)


class TaskRetryView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=None, responses={202: TaskSerializer, **ERRORS},
                   summary="Republish a finished task's call under a new id (retry_of = the old id)")
    def post(self, request, task_id):
        return Response(TaskSerializer(services.retry_task(task_id, actor=request.user)).data, status=202)


class StatsView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: ANY, **ERRORS}, parameters=[LIVE],
                   summary="Counts per state and queue, queue depths, workers (as last heard; ?live=1 asks them)")
    def get(self, request):
        return Response({**selectors.state_counts(), "queues": _queues_or_error(),
                         "workers": selectors.workers(live=wants_live(request)), **_sources(request)})


def _sources(request) -> dict:
    """How old each part of the answer is: the client can tell a fresh fact from a remembered one."""
    return {"checked_at": timezone.now().isoformat(), "queues_source": "RabbitMQ passive declares, now",
            "workers_source": "broadcast inspection, now" if wants_live(request) else
            "heartbeats recorded by the event recorder (seen_seconds_ago: age of each); running tasks from the ledger"}


def _queues_or_error():
    return selectors.queues_status()  # RabbitMQ unreachable: Unavailable, a 503 with the reason


class WorkerListView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: ANY, **ERRORS}, parameters=[LIVE],
                   summary="Online workers: pool, concurrency, queues, active tasks (as last heard; ?live=1 asks them)")
    def get(self, request):
        sources = _sources(request)
        del sources["queues_source"]
        return Response({"workers": selectors.workers(live=wants_live(request)), **sources})


class WorkerPoolRestartView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=None, responses={202: ANY, **ERRORS}, summary="Restart a worker's pool (prefork)")
    def post(self, request, hostname):
        return Response(services.restart_pool(hostname, actor=request.user), status=202)


class WorkerShutdownView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=None, responses={202: ANY, **ERRORS}, summary="Warm shutdown of one worker")
    def post(self, request, hostname):
        return Response(services.shutdown_worker(hostname, actor=request.user), status=202)


class QueueListView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: ANY, **ERRORS}, summary="Work queues: paused or not, depths, dead letters")
    def get(self, request):
        return Response({"queues": _queues_or_error()})


class QueuePauseView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=PauseSerializer, responses={200: ANY, **ERRORS},
                   summary="Pause a queue on every worker (kept across worker restarts)")
    def post(self, request, name):
        params = _validated(PauseSerializer, request.data)
        services.pause_queue(name, actor=request.user, reason=params["reason"])
        return Response({"queue": name, "paused": True})


class QueueResumeView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=None, responses={200: ANY, **ERRORS}, summary="Resume a paused queue on every worker")
    def post(self, request, name):
        outcome = services.resume_queue(name, actor=request.user)
        return Response({"queue": name, "paused": False, **outcome})


def _dead_letters(params):
    return selectors.dead_letters_matching(ids=params.get("ids"), queues=params.get("queue"),
                                           reasons=params.get("reason"), task_name=params.get("task_name"))


class DeadLetterListView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(parameters=[DeadLetterFilterSerializer], responses={200: ANY, **ERRORS},
                   summary="Dead letters (drains <queue>.dead into the store first)", operation_id="dead_letters_list")
    def get(self, request):
        params = _validated(DeadLetterFilterSerializer, request.query_params)
        services.refresh_dead_letters()
        qs = _dead_letters(params)
        if not params["include_replayed"]:
            qs = qs.filter(replayed_at__isnull=True)
        return Response(_page(qs, params, DeadLetterSerializer))


def _dead_letter(letter_id) -> DeadLetter:
    letter = DeadLetter.objects.filter(pk=letter_id).first()
    if letter is None:
        raise NotFound(f"no dead letter with id {letter_id}")
    return letter


class DeadLetterDetailView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(responses={200: DeadLetterDetailSerializer, **ERRORS}, summary="One dead letter with headers and body")
    def get(self, request, letter_id):
        return Response(DeadLetterDetailSerializer(_dead_letter(letter_id)).data)


class DeadLetterReplayOneView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=None, responses={200: ANY, **ERRORS}, summary="Replay one dead letter to its original route")
    def post(self, request, letter_id):
        return Response(services.replay_one(letter_id, actor=request.user))


class DeadLetterReplayView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=DeadLetterActionSerializer, responses={200: ANY, **ERRORS},
                   summary="Replay many dead letters (by ids or filter)", operation_id="dead_letters_replay_many")
    def post(self, request):
        params = _validated(DeadLetterActionSerializer, request.data)
        services.refresh_dead_letters()
        letters = _dead_letters(params).filter(replayed_at__isnull=True)
        return Response(services.replay_dead_letters(list(letters[:10_000]), actor=request.user))


class DeadLetterPurgeView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(request=DeadLetterActionSerializer, responses={200: ANY, **ERRORS},
                   summary="Delete dead letters (by ids or filter) for good")
    def post(self, request):
        params = _validated(DeadLetterActionSerializer, request.data)
        services.refresh_dead_letters()
        qs = _dead_letters(params)
        filters = {k: v for k, v in params.items() if v}
        return Response({"deleted": services.purge_dead_letters(qs, actor=request.user, filters=filters)})


class AuditListView(ControlView):
    permission_classes = [IsAdminUser]

    @extend_schema(parameters=[PageParams], responses={200: ANY, **ERRORS}, summary="Who did which control action")
    def get(self, request):
        params = _validated(PageParams, request.query_params)
        return Response(_page(ControlAction.objects.all(), params, AuditSerializer))


class MetricsView(ControlView):
    """Prometheus text format. Staff token: ``authorization: {type: Token, credentials: <token>}``."""

    permission_classes = [IsAdminUser]

    @extend_schema(responses={(200, "text/plain"): OpenApiTypes.STR, **ERRORS}, summary="Prometheus metrics")
    def get(self, request):
        body, content_type = metrics.render()
        return HttpResponse(body, content_type=content_type)
