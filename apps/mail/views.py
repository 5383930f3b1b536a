import base64
import binascii

from drf_spectacular.utils import extend_schema
from rest_framework import status
from rest_framework.decorators import api_view
from rest_framework.response import Response

from apps.mail import selectors, services
from apps.mail.serializers import BatchIn, BatchOut, MessageIn, MessageOut


@extend_schema(request=MessageIn, responses={201: MessageOut, 200: MessageOut})
@api_view(["POST"])
def send(request):
    """Store a message in the outbox and enqueue it. 201 when created, 200 when the idempotency key
    already named a message (nothing new is sent), 400 with {"error", "field"} for bad input."""
    incoming = MessageIn(data=request.data)
    if not incoming.is_valid():
        field, errors = next(iter(incoming.errors.items()))
        return Response({"error": f"{field}: {errors}", "field": field, "details": incoming.errors}, status=400)
    data = incoming.validated_data
    try:
        attachments = [services.AttachmentInput(a["filename"], base64.b64decode(a["content_base64"], validate=True),
                                                a["mimetype"]) for a in data["attachments"]]
    except (binascii.Error, ValueError):
        return Response({"error": "attachments: content_base64 is not valid base64", "field": "attachments"}, 400)
    try:
        message, created = services.enqueue(
            to=data["to"], cc=data["cc"], bcc=data["bcc"], subject=data["subject"], body=data["body"],
            html=data["html"], template=data["template"], context=data["context"], headers=data["headers"],
            attachments=attachments, idempotency_key=data.get("idempotency_key"), bulk=data["bulk"],
        )
    except services.MailInputError as exc:
        return Response({"error": str(exc), "field": exc.field}, status=400)
    return Response(MessageOut(message).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(request=BatchIn, responses={201: BatchOut, 200: BatchOut})
@api_view(["POST"])
def send_batch(request):
    """Store many bulk messages (a newsletter) and enqueue them, MAIL_BULK_BATCH_SIZE to a task message.
    201 when any message was created, 200 when every idempotency key named a stored message; 400 with
    {"error", "field"} (``messages[i].<field>``) for bad input, and then nothing is stored; 429 when the
    bulk queue is full (the rows are stored: repeating the call with the same keys enqueues them)."""
    incoming = BatchIn(data=request.data)
    if not incoming.is_valid():
        field, errors = next(iter(incoming.errors.items()))
        return Response({"error": f"{field}: {errors}", "field": field, "details": incoming.errors}, status=400)
    try:
        stored = services.enqueue_bulk(incoming.validated_data["messages"])
    except services.MailInputError as exc:
        return Response({"error": str(exc), "field": exc.field}, status=400)
    created = sum(was_created for _, was_created in stored)
    body = {"created": created,
            "messages": [{"id": m.pk, "status": m.status, "created": c} for m, c in stored]}
    return Response(BatchOut(body).data, status=status.HTTP_201_CREATED if created else status.HTTP_200_OK)


@extend_schema(responses={200: MessageOut})
@api_view(["GET"])
def detail(request, message_id: int):
    message = selectors.message_by_id(message_id)
    if message is None:
        return Response({"error": f"no message with id {message_id}"}, status=404)
    return Response(MessageOut(message).data)
