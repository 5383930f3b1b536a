from __future__ import annotations

from rest_framework import serializers

from apps.control import states
from apps.control.models import ControlAction, DeadLetter, TaskRecord
from apps.core.serializers import OutputModelSerializer
from project import topology

MAX_PAGE_SIZE = 500


class CommaChoices(serializers.CharField):
    """A comma-separated list of choices (``state=FAILURE,LOST``)."""

    def __init__(self, choices, **kwargs):
        self.valid = list(choices)
        super().__init__(**kwargs)

    def to_internal_value(self, data):
        values = [v.strip() for v in super().to_internal_value(data).split(",") if v.strip()]
        bad = [v for v in values if v not in self.valid]
        if bad:
            raise serializers.ValidationError(f"unknown value(s) {', '.join(map(repr, bad))}; choose from {', '.join(self.valid)}")
        return values


class PageParams(serializers.Serializer):
    page = serializers.IntegerField(required=False, min_value=1, max_value=1_000_000, default=1)
    page_size = serializers.IntegerField(required=False, min_value=1, max_value=MAX_PAGE_SIZE, default=50)


class TaskFilterSerializer(PageParams):
    state = CommaChoices(states.ALL, required=False, help_text="comma-separated states")
    name = serializers.CharField(required=False, max_length=255, help_text="exact task name")
    queue = CommaChoices([lane.name for lane in topology.LANES], required=False)
    since = serializers.DateTimeField(required=False, help_text="published at or after (ISO 8601)")
    until = serializers.DateTimeField(required=False, help_text="published before (ISO 8601)")
    retry_of = serializers.CharField(required=False, max_length=255)

    def validate(self, attrs):
        if attrs.get("since") and attrs.get("until") and attrs["since"] > attrs["until"]:
            raise serializers.ValidationError({"until": "must not be before since"})
        return attrs


class TaskSerializer(OutputModelSerializer):
    owner = serializers.SerializerMethodField()
    progress = serializers.SerializerMethodField()

    class Meta:
        model = TaskRecord
        fields = ["task_id", "name", "state", "queue", "worker", "attempts", "retries", "args", "kwargs", "result",
                  "error", "traceback", "progress", "parent_id", "root_id", "retry_of", "eta", "owner",
                  "cancel_requested_at", "sent_at", "started_at", "finished_at", "runtime", "updated_at"]

    def get_owner(self, obj) -> str | None:
        # The owner's username: annotated by the ledger's reads (selectors.with_owner_name), else looked up.
        if hasattr(obj, "owner_username"):
            return obj.owner_username
        return obj.owner.get_username() if obj.owner_id is not None else None

    def get_progress(self, obj) -> dict:
        return {"step": obj.progress_step, "message": obj.progress_message, "current": obj.progress_current,
                "total": obj.progress_total}


class TaskPageSerializer(serializers.Serializer):
    count = serializers.IntegerField()
    page = serializers.IntegerField()
    page_size = serializers.IntegerField()
    pages = serializers.IntegerField()
    results = TaskSerializer(many=True)


class CancelSerializer(serializers.Serializer):
    force = serializers.BooleanField(required=False, default=False,
                                     help_text="also terminate the running process (prefork workers only)")


class ErrorSerializer(serializers.Serializer):
    detail = serializers.CharField()
    code = serializers.CharField()


class DeadLetterSerializer(OutputModelSerializer):
    class Meta:
        model = DeadLetter
        fields = ["id", "dead_letter_queue", "queue", "reason", "detail", "task_id", "task_name", "exchange",
                  "routing_key", "death_count", "dead_at", "stored_at", "replayed_at"]


class DeadLetterDetailSerializer(DeadLetterSerializer):
    body = serializers.SerializerMethodField()

    class Meta(DeadLetterSerializer.Meta):
        fields = DeadLetterSerializer.Meta.fields + ["headers", "properties", "body"]

    def get_body(self, obj) -> str:
        return bytes(obj.body).decode("utf-8", errors="replace")


class DeadLetterFilterSerializer(PageParams):
    queue = CommaChoices([lane.name for lane in topology.LANES], required=False)
    reason = CommaChoices(DeadLetter.REASONS, required=False)
    task_name = serializers.CharField(required=False, max_length=255)
    include_replayed = serializers.BooleanField(required=False, default=False)


class DeadLetterActionSerializer(serializers.Serializer):
    ids = serializers.ListField(child=serializers.IntegerField(min_value=1), required=False, max_length=10_000)
    queue = CommaChoices([lane.name for lane in topology.LANES], required=False)
    reason = CommaChoices(DeadLetter.REASONS, required=False)
    task_name = serializers.CharField(required=False, max_length=255)
    all = serializers.BooleanField(required=False, default=False, help_text="required to act on every dead letter")

    def validate(self, attrs):
        if not (attrs.get("ids") or attrs.get("queue") or attrs.get("reason") or attrs.get("task_name") or attrs.get("all")):
            raise serializers.ValidationError("say which dead letters: ids, queue, reason, task_name, or all=true")
        return attrs


class PauseSerializer(serializers.Serializer):
    reason = serializers.CharField(required=False, allow_blank=True, max_length=500, default="")


class AuditSerializer(OutputModelSerializer):
    class Meta:
        model = ControlAction
        fields = ["id", "at", "actor_name", "action", "target", "params", "outcome"]
