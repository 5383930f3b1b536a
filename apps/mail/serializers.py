from rest_framework import serializers

from apps.core.serializers import OutputModelSerializer
from apps.mail.models import Message


class AttachmentIn(serializers.Serializer):
    filename = serializers.CharField(max_length=255)
    content_base64 = serializers.CharField()
    mimetype = serializers.CharField(default="application/octet-stream")


class MessageIn(serializers.Serializer):
    to = serializers.ListField(child=serializers.CharField(), allow_empty=True)
    cc = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    bcc = serializers.ListField(child=serializers.CharField(), required=False, default=list)
    subject = serializers.CharField(allow_blank=True, trim_whitespace=False)
    body = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    html = serializers.CharField(required=False, allow_blank=True, default="", trim_whitespace=False)
    template = serializers.CharField(required=False, allow_blank=True, default="")
    context = serializers.DictField(required=False, default=dict)
    headers = serializers.DictField(child=serializers.CharField(trim_whitespace=False), required=False, default=dict)
    attachments = AttachmentIn(many=True, required=False, default=list)
    idempotency_key = serializers.CharField(required=False, max_length=200)
    bulk = serializers.BooleanField(required=False, default=False)


class MessageOut(OutputModelSerializer):
    class Meta:
        model = Message
        fields = ["id", "idempotency_key", "status", "bulk", "from_email", "to", "cc", "subject", "template",
                  "attempts", "max_attempts", "last_error", "smtp_code", "smtp_reply", "task_id", "created_at",
                  "updated_at", "next_attempt_at", "sent_at"]


class BatchIn(serializers.Serializer):
    """Each message has the fields of MessageIn less attachments and bulk (services.BULK_FIELDS); they are
    checked by services.enqueue_bulk, whose errors name the message (``messages[3].to``)."""
    messages = serializers.ListField(child=serializers.DictField(), min_length=1, max_length=10_000)


class BatchMessageOut(serializers.Serializer):
    id = serializers.IntegerField()
    status = serializers.CharField()
    created = serializers.BooleanField()


class BatchOut(serializers.Serializer):
    created = serializers.IntegerField(help_text="messages stored by this call (the rest were stored earlier)")
    messages = BatchMessageOut(many=True)
