"""Writes of the mail app: storing messages (the ways in) and delivering them (the io worker).

Never twice, never lost:
* the idempotency key is unique: enqueueing the same key again returns the stored message;
* a worker *claims* a message with a conditional UPDATE (QUEUED -> SENDING, or a SENDING whose lease
  expired because its worker died) and records the outcome with another conditional UPDATE guarded
  by its own claim, so two deliveries of one task message cannot both talk to the SMTP server;
* the task is published after commit; a QUEUED row whose publish was lost is re-enqueued by
  ``requeue_stale`` (a periodic task).
The one window left (SMTP server accepted, SENT not yet committed) is described in docs/mail.md.

Delivery tasks are published by their pinned names (``app.signature``), not imported: tasks.py imports
this module, and importing it back would be a cycle.
"""
from __future__ import annotations

import functools
import logging
import os
import random
import socket
import threading
import time
import uuid
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from email.utils import formatdate

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import IntegrityError, connection, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.template import TemplateDoesNotExist
from django.template.loader import render_to_string
from django.utils import timezone

from apps.core.amqp import QueueFull
from apps.mail import smtp, throttle, validation
from apps.mail.models import FINAL_STATES, Attachment, Message, Status
from apps.mail.validation import MailInputError
from project.celery import app

logger = logging.getLogger(__name__)

__all__ = ["MailInputError", "enqueue", "cancel", "resend", "deliver", "requeue_stale"]


# --- ways in -------------------------------------------------------------------------------------------

@dataclass(frozen=True)
class AttachmentInput:
    filename: str
    content: bytes
    mimetype: str = "application/octet-stream"


def render_template(template: str, context: dict) -> tuple[str, str]:
    """(text, html) from templates mail/<template>.txt and/or mail/<template>.html; at least one must exist."""
    validation.template_name(template)
    bodies = []
    for ext in ("txt", "html"):
        name = f"mail/{template}.{ext}"
        try:
            bodies.append(render_to_string(name, context))
        except TemplateDoesNotExist as exc:
            if exc.args and exc.args[0] != name:  # an {% include %} inside the template is missing
                raise MailInputError("template", f"template {name} failed to render: {exc!r}") from exc
            bodies.append(None)
        except Exception as exc:  # syntax errors, failing filters: the caller's template is broken
            raise MailInputError("template", f"template {name} failed to render: {exc!r}") from exc
    text, html = bodies
    if text is None and html is None:
        raise MailInputError("template", f"template {template!r} not found (looked for mail/{template}.txt "
                                         f"and mail/{template}.html)")
    return text or "", html or ""


def enqueue(*, to, subject: str, body: str = "", html: str = "", from_email: str | None = None, cc=None,
            bcc=None, reply_to=None, headers: dict | None = None, template: str = "", context: dict | None = None,
            attachments: list[AttachmentInput] | None = None, idempotency_key: str | None = None,
            bulk: bool = False, max_attempts: int | None = None) -> tuple[Message, bool]:
    """Store a message and enqueue its delivery after commit. Returns (message, created).

    The same idempotency key returns the message stored first (created=False) and stores nothing new; if
    RabbitMQ refused that message's delivery task (queue full: the caller got QueueFull, HTTP 429), the
    repeat publishes it now, and raises QueueFull again if the queue is still full.
    Bad input raises MailInputError before anything is stored.
    """
    if idempotency_key is not None:
        idempotency_key = validation.no_line_breaks("idempotency_key", str(idempotency_key)).strip()
        if not idempotency_key or len(idempotency_key) > 200:
            raise MailInputError("idempotency_key", "must be 1 to 200 characters")
    try:
        fields = _validated(to=to, cc=cc, bcc=bcc, reply_to=reply_to, from_email=from_email, subject=subject,
                            body=body, html=html, headers=headers, template=template, context=context,
                            attachments=attachments)
    except MailInputError:
        existing = _stored_under(idempotency_key)  # the key decides: a repeat answers with what it stored
        if existing is None:
            raise
        return existing, False

    # INSERT first, the key looked up only when it is taken: a new message is one statement (the HTTP
    # enqueue path pays per statement: 7 with get_or_create in a transaction, issue 19). A transaction only
    # where one is needed: attachments are more rows, and inside a caller's transaction a duplicate key must
    # not break it (the savepoint takes the IntegrityError).
    needs_transaction = bool(attachments) or connection.in_atomic_block
    try:
        with transaction.atomic() if needs_transaction else nullcontext():
            message = Message.objects.create(
                idempotency_key=idempotency_key or f"auto-{uuid.uuid4()}", bulk=bulk, **fields,
                max_attempts=max_attempts or settings.MAIL_MAX_ATTEMPTS, task_id=str(uuid.uuid4()),
            )
            Attachment.objects.bulk_create([
                Attachment(message=message, filename=a.filename, mimetype=a.mimetype, content=a.content,
                           size=len(a.content)) for a in attachments or []
            ])
            _publish_after_commit(message)
    except IntegrityError:
        # The key is taken: a repeat, or a concurrent request that stored it first. The first message stands.
        existing = _stored_under(idempotency_key)
        if existing is None:
            raise
        return existing, False
    return message, True


def _validated(*, to, cc, bcc, reply_to, from_email, subject, body, html, headers, template, context,
               attachments) -> dict:
    """The message's fields as stored, or MailInputError naming the first bad one."""
    to, cc, bcc = (validation.addresses(f, v) for f, v in (("to", to), ("cc", cc), ("bcc", bcc)))
    validation.recipients(to, cc, bcc)
    reply_to = validation.addresses("reply_to", reply_to)
    from_email = validation.address("from_email", from_email or settings.DEFAULT_FROM_EMAIL)
    if not isinstance(subject, str):
        raise MailInputError("subject", "must be text")
    validation.no_line_breaks("subject", subject)
    headers = validation.headers(headers)
    context = context or {}
    if not isinstance(context, dict):
        raise MailInputError("context", "must be a JSON object")
    if template:
        body, html = render_template(template, context)
    elif not body and not html:
        raise MailInputError("body", "a body, an HTML body or a template is required")
    for attachment in attachments or []:
        validation.no_line_breaks("attachments", attachment.filename)
        validation.attachment_size(attachment.filename, len(attachment.content))
    return dict(from_email=from_email, to=to, cc=cc, bcc=bcc, reply_to=reply_to, subject=subject, body_text=body,
                body_html=html, template=template, context=context, headers=headers)


def _stored_under(idempotency_key: str | None) -> Message | None:
    """The message stored under this key, if any. If RabbitMQ refused its delivery task (queue full: that
    caller got QueueFull, HTTP 429), this repeat publishes it now (and raises QueueFull if still full)."""
    existing = Message.objects.filter(idempotency_key=idempotency_key).first() if idempotency_key else None
    if existing and existing.status == Status.QUEUED and existing.last_error.startswith(NOT_ENQUEUED):
        _publish_now(existing)  # the client's retry after 429, not requeue_stale minutes later
    return existing


# What last_error of a QUEUED message starts with while its delivery task is not in RabbitMQ (refused).
NOT_ENQUEUED = "delivery not enqueued: "


def _publish_now(message: Message) -> None:
    """Publish the message's delivery task. A refusal (queue full) is written on the row, which stays QUEUED:
    a repeat with the same idempotency key publishes it again, and mail.requeue_stale does later. A second
    task message for one row is harmless: the claim admits one delivery."""
    task = app.signature("mail.bulk_send_message" if message.bulk else "mail.send_message")
    pk = message.pk
    try:
        task.apply_async((pk,), task_id=message.task_id)
    except QueueFull as exc:  # the row is committed: it stays QUEUED
        Message.objects.filter(pk=pk, status=Status.QUEUED).update(last_error=f"{NOT_ENQUEUED}{exc}",
                                                                   updated_at=Now())
        raise QueueFull(f"message {pk} is stored (QUEUED) but its delivery was not enqueued: {exc}; a retry "
                        "with the same idempotency key enqueues it, or mail.requeue_stale when the queue has room"
                        ) from exc
    if message.last_error.startswith(NOT_ENQUEUED):
        Message.objects.filter(pk=pk, status=Status.QUEUED, last_error__startswith=NOT_ENQUEUED).update(
            last_error="", updated_at=Now())


def _publish_after_commit(message: Message) -> None:
    transaction.on_commit(lambda: _publish_now(message))


def cancel(message_id: int) -> bool:
    """QUEUED -> CANCELLED; False when the message is already being sent or finished."""
    return bool(Message.objects.filter(pk=message_id, status=Status.QUEUED)
                .update(status=Status.CANCELLED, last_error="cancelled by an operator", updated_at=Now()))


def resend(message_id: int) -> bool:
    """FAILED/TIMED_OUT/CANCELLED -> QUEUED with a fresh attempt budget, enqueued after commit.

    A SENT message is never resent (that would be sending it twice); enqueue a new message instead.
    """
    with transaction.atomic():
        updated = Message.objects.filter(
            pk=message_id, status__in=[Status.FAILED, Status.TIMED_OUT, Status.CANCELLED]
        ).update(status=Status.QUEUED, attempts=0, next_attempt_at=None, claimed_by="", claimed_at=None,
                 task_id=str(uuid.uuid4()), updated_at=Now())
        if updated:
            _publish_after_commit(Message.objects.get(pk=message_id))
    return bool(updated)


def requeue_stale(limit: int = 500) -> int:
    """Re-enqueue messages nobody is working on: QUEUED long past due (publish lost), or SENDING whose
    lease expired (worker died). Duplicate task messages are harmless: the claim admits one."""
    now = timezone.now()
    overdue = now - timedelta(seconds=settings.MAIL_REQUEUE_AFTER)
    stale = Message.objects.filter(
        Q(status=Status.QUEUED, created_at__lt=overdue) & (Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lt=overdue))
        | Q(status=Status.SENDING, claimed_at__lt=now - timedelta(seconds=settings.MAIL_CLAIM_LEASE))
    ).order_by("id")[:limit]
    count = 0
    for message in stale:
        _publish_after_commit(message)
        count += 1
    return count


# --- delivery (the io worker) --------------------------------------------------------------------------

@dataclass(frozen=True)
class Outcome:
    status: str  # SENT, FAILED, TIMED_OUT, RETRY, THROTTLED, BUSY, SKIPPED
    detail: str = ""
    retry_in: float = 0.0  # seconds, for RETRY/THROTTLED/BUSY


class _Throttled(Exception):
    def __init__(self, wait: float):
        self.wait = wait


def worker_label(task_id: str = "") -> str:
    return f"{socket.gethostname()}:{os.getpid()}:{task_id}"[:200]


def _claim(message_id: int, me: str) -> tuple[Message | None, Outcome | None]:
    """Take the message for one SMTP attempt, or say why not. Reserves the domain rate in the same transaction."""
    now = timezone.now()
    lease_expired = now - timedelta(seconds=settings.MAIL_CLAIM_LEASE)
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + timedelta(seconds=1))
    claimable = Q(status=Status.QUEUED) & due | Q(status=Status.SENDING, claimed_at__lt=lease_expired)
    try:
        with transaction.atomic():
            if not Message.objects.filter(Q(pk=message_id) & claimable).update(
                    status=Status.SENDING, attempts=F("attempts") + 1, claimed_at=now, claimed_by=me,
                    updated_at=now):
                return None, _why_not_claimed(message_id, now)
            message = Message.objects.get(pk=message_id)
            wait = throttle.reserve([throttle.domain_of(a) for a in message.recipients], time.time())
            if wait > 0:
                raise _Throttled(wait)  # rolls the claim back too
            message.loaded_attachments = list(message.attachments.all())
            return message, None
    except _Throttled as throttled:
        return None, Outcome("THROTTLED", f"domain rate limit: {throttled.wait:.2f}s", throttled.wait)


def _why_not_claimed(message_id: int, now) -> Outcome:
    message = Message.objects.filter(pk=message_id).values("status", "next_attempt_at", "claimed_at").first()
    if message is None:
        return Outcome("SKIPPED", "no such message")
    if message["status"] in FINAL_STATES:
        return Outcome("SKIPPED", f"already {message['status']}")
    if message["status"] == Status.SENDING:  # another delivery holds a live lease (e.g. a redelivery after a crash)
        expires = message["claimed_at"] + timedelta(seconds=settings.MAIL_CLAIM_LEASE)
        return Outcome("BUSY", "being sent by another delivery", max(1.0, (expires - now).total_seconds() + 1))
    return Outcome("SKIPPED", "not due yet: a scheduled retry will send it")


def build_email(message: Message) -> EmailMultiAlternatives:
    email = EmailMultiAlternatives(
        subject=message.subject, body=message.body_text, from_email=message.from_email, to=message.to,
        cc=message.cc, bcc=message.bcc, reply_to=message.reply_to,
        headers={"Message-ID": message.message_id_header, "Date": formatdate(localtime=False), **message.headers},
    )
    if message.body_html:
        if message.body_text:
            email.attach_alternative(message.body_html, "text/html")
        else:
            email.body, email.content_subtype = message.body_html, "html"
    # Loaded by the claim (an empty list is loaded too: not a reason to ask the database again).
    attachments = getattr(message, "loaded_attachments", None)
    for attachment in message.attachments.all() if attachments is None else attachments:
        email.attach(attachment.filename, bytes(attachment.content), attachment.mimetype)
    return email


def _release_db_connection() -> None:
    """Give the pooled PostgreSQL connection back before a network conversation of unknown length,
    so -c 500 green threads share a few connections. Without a pool (SQLite) keep it: reconnecting
    costs more than it frees."""
    if getattr(connection, "pool", None) is not None and not connection.in_atomic_block:
        connection.close()


def _record(message_id: int, me: str, **fields) -> bool:
    """Write an attempt's outcome, only if our claim still stands (guards against a stale worker)."""
    for attempt in range(5):
        try:
            return bool(Message.objects.filter(pk=message_id, status=Status.SENDING, claimed_by=me)
                        .update(updated_at=Now(), **fields))
        except Exception:  # the database blipped: the outcome must not be lost, try again shortly
            if attempt == 4:
                raise
            logger.warning("recording the outcome of message %s failed, retrying", message_id, exc_info=True)
            time.sleep(0.5 * (attempt + 1))
    return False


def backoff(attempts: int) -> float:
    """Exponential with full jitter: base * 2^(attempts-1), capped, times a random factor in [0.5, 1]."""
    delay = min(settings.MAIL_RETRY_BACKOFF_MAX, settings.MAIL_RETRY_BACKOFF_BASE * 2 ** max(0, attempts - 1))
    return delay * random.uniform(0.5, 1.0)


def claims_in_flight(database: dict | None = None) -> int | None:
    """How many deliveries of this process may hold a pooled connection for their claim at once: the pool's
    size less a fifth of it (at least one connection), so a delivery the SMTP server has accepted finds a
    connection for its SENT update at once instead of queueing behind up to -c claims (measured at -c 500,
    pool 30: the accepted -> SENT window was ~1 s at p50, docs/mail.md). None without a pool (SQLite, or
    PostgreSQL with one connection per thread)."""
    pool = (database or settings.DATABASES["default"]).get("OPTIONS", {}).get("pool")
    size = pool.get("max_size") if isinstance(pool, dict) else None
    if not size:
        return None
    return max(1, size - max(1, size // 5))


@functools.cache
def _claim_slots(bound: int) -> threading.BoundedSemaphore:
    return threading.BoundedSemaphore(bound)  # green under eventlet: Celery patches threading first


def _claim_slot():
    bound = claims_in_flight()
    return nullcontext() if bound is None else _claim_slots(bound)


def deliver(message_id: int, task_id: str = "") -> Outcome:
    """One delivery attempt of a stored message. Never raises for SMTP trouble: the outcome says what next."""
    me = worker_label(task_id)
    with _claim_slot():  # the claim and building the message: up to handing the pooled connection back
        message, refused = _claim(message_id, me)
        if refused:
            _release_db_connection()  # a throttled delivery may sleep before its next claim: not on a connection
            return refused
        try:
            email = build_email(message)
            data = email.message().as_bytes(linesep="\r\n")
        except Exception as exc:  # a stored message that cannot be built will never be sendable
            _record(message_id, me, status=Status.FAILED, last_error=f"cannot build the message: {exc!r}")
            return Outcome("FAILED", f"cannot build the message: {exc!r}")
        _release_db_connection()

    try:
        accepted = smtp.send(message.from_email, email.recipients(), data)
    except smtp.PermanentFailure as exc:
        _record(message_id, me, status=Status.FAILED, last_error=str(exc), smtp_code=exc.code,
                smtp_reply=exc.reply)
        return Outcome("FAILED", str(exc))
    except smtp.AcceptanceUnknown as exc:
        # The server may have the message. Sending it again could deliver it twice: stop and show it.
        _record(message_id, me, status=Status.TIMED_OUT, last_error=str(exc))
        if exc.interrupted is not None:
            raise exc.interrupted  # recorded; the task stops as it was told to
        return Outcome("TIMED_OUT", str(exc))
    except smtp.TransientFailure as exc:
        if message.attempts >= message.max_attempts:
            detail = f"gave up after {message.attempts} attempts: {exc}"
            _record(message_id, me, status=Status.FAILED, last_error=detail, smtp_code=exc.code,
                    smtp_reply=exc.reply)
            return Outcome("FAILED", detail)
        delay = backoff(message.attempts)
        _record(message_id, me, status=Status.QUEUED, last_error=str(exc), smtp_code=exc.code, smtp_reply=exc.reply,
                next_attempt_at=timezone.now() + timedelta(seconds=delay), claimed_by="")
        return Outcome("RETRY", str(exc), delay)
    except Exception as exc:  # a bug, not the server: make it visible instead of leaving the row SENDING
        _record(message_id, me, status=Status.FAILED, last_error=f"unexpected error while sending: {exc!r}")
        raise

    accepted_at = timezone.now()
    # The unavoidable window is from the server's 250 above to this commit: one UPDATE.
    if not _record(message_id, me, status=Status.SENT, smtp_code=accepted.code, smtp_reply=accepted.reply,
                   smtp_accepted_at=accepted_at, sent_at=Now()):
        logger.error("message %s was accepted by the SMTP server but our claim was gone", message_id)
    return Outcome("SENT", accepted.reply)
