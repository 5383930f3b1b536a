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
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Mapping
from contextlib import nullcontext
from dataclasses import dataclass
from datetime import timedelta
from email.utils import formatdate

from django.conf import settings
from django.core.mail import EmailMultiAlternatives
from django.db import DEFAULT_DB_ALIAS, IntegrityError, connection, connections, transaction
from django.db.models import F, Q
from django.db.models.functions import Now
from django.template import TemplateDoesNotExist
from django.template.loader import render_to_string
from django.utils import timezone

from apps.core.amqp import QueueFull
from apps.mail import sent, smtp, throttle, validation
from apps.mail.models import FINAL_STATES, Attachment, Message, Status
from apps.mail.validation import MailInputError
from project.celery import app

logger = logging.getLogger(__name__)

__all__ = ["MailInputError", "enqueue", "enqueue_bulk", "cancel", "resend", "deliver", "deliver_batch", "requeue_stale"]


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
    idempotency_key = _clean_key(idempotency_key)
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


def _clean_key(idempotency_key) -> str | None:
    if idempotency_key is None:
        return None
    idempotency_key = validation.no_line_breaks("idempotency_key", str(idempotency_key)).strip()
    if not idempotency_key or len(idempotency_key) > 200:
        raise MailInputError("idempotency_key", "must be 1 to 200 characters")
    return idempotency_key


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


# --- many bulk messages at once (a newsletter) -----------------------------------------------------------

# The fields of one message in enqueue_bulk (enqueue's keywords, less attachments: a batch carries rows only).
BULK_FIELDS = frozenset({"to", "cc", "bcc", "reply_to", "from_email", "subject", "body", "html", "headers",
                         "template", "context", "idempotency_key", "max_attempts"})
_KEY_LOOKUP_CHUNK = 1000  # keys per SELECT: SQLite bounds the parameters of one statement


def enqueue_bulk(messages: Iterable[Mapping]) -> list[tuple[Message, bool]]:
    """Store many bulk messages and enqueue their delivery MAIL_BULK_BATCH_SIZE to a task message
    (mail.bulk_send_batch), after commit. Returns (message, created) per input, in order.

    Every message gets what enqueue(bulk=True) gives one: validation, the idempotency key (a key already
    stored answers with the stored message, created=False, and nothing is sent again; the same key twice in
    one call is refused), the outbox row and its guarded delivery. All or nothing: bad input anywhere raises
    MailInputError naming the message (``messages[3].to``) and nothing is stored. If RabbitMQ refuses a batch
    (queue full) the rows stay QUEUED marked "delivery not enqueued" and QueueFull is raised: calling again
    with the same keys publishes them, and mail.requeue_stale does later.
    """
    items = list(messages)
    keys = []
    for i, item in enumerate(items):
        if not isinstance(item, Mapping):
            raise MailInputError(f"messages[{i}]", "must be an object with the fields of one message")
        unknown = sorted(set(item) - BULK_FIELDS)
        if unknown:
            hint = " (a message with attachments is enqueued on its own)" if "attachments" in unknown else ""
            raise MailInputError(f"messages[{i}].{unknown[0]}", f"not a field of a bulk message{hint}")
        try:
            keys.append(_clean_key(item.get("idempotency_key")))
        except MailInputError as exc:
            raise MailInputError(f"messages[{i}].{exc.field}", exc.message) from exc
    repeated = [k for k, n in Counter(k for k in keys if k is not None).items() if n > 1]
    if repeated:
        at = keys.index(repeated[0], keys.index(repeated[0]) + 1)
        raise MailInputError(f"messages[{at}].idempotency_key", f"{repeated[0]!r} appears twice in this call")

    for _ in range(3):  # a concurrent call may store one of our keys between the lookup and the insert
        stored = _stored_by_key([k for k in keys if k is not None])
        new_rows = [(i, _bulk_row(i, item, key)) for i, (item, key) in enumerate(zip(items, keys))
                    if key not in stored]
        batches = _in_batches([row for _, row in new_rows])
        if not batches:
            break
        try:
            with transaction.atomic():
                Message.objects.bulk_create([row for _, row in new_rows], batch_size=1000)
                transaction.on_commit(lambda: _publish_batches(batches))
            break
        except IntegrityError:
            continue
    else:
        raise MailInputError("idempotency_key", "keys kept being taken by concurrent calls; try again")

    results: list[tuple[Message, bool] | None] = [None] * len(items)
    for i, row in new_rows:
        results[i] = (row, True)
    for i, key in enumerate(keys):
        if results[i] is None:
            results[i] = (stored[key], False)
    not_enqueued = [m for m in stored.values() if m.status == Status.QUEUED and m.last_error.startswith(NOT_ENQUEUED)]
    for message in not_enqueued:  # refused earlier (queue full): this repeat publishes them, as enqueue does
        _publish_now(message)
    return results


def _stored_by_key(keys: list[str]) -> dict[str, Message]:
    stored = {}
    for start in range(0, len(keys), _KEY_LOOKUP_CHUNK):
        chunk = keys[start:start + _KEY_LOOKUP_CHUNK]
        stored.update((m.idempotency_key, m) for m in Message.objects.filter(idempotency_key__in=chunk))
    return stored


def _bulk_row(i: int, item: Mapping, key: str | None) -> Message:
    try:
        fields = _validated(to=item.get("to"), cc=item.get("cc"), bcc=item.get("bcc"), reply_to=item.get("reply_to"),
                            from_email=item.get("from_email"), subject=item.get("subject", ""),
                            body=item.get("body", ""), html=item.get("html", ""), headers=item.get("headers"),
                            template=item.get("template", ""), context=item.get("context"), attachments=None)
        max_attempts = item.get("max_attempts")
        if max_attempts is not None and (type(max_attempts) is not int or not 1 <= max_attempts <= 100):
            raise MailInputError("max_attempts", "must be a whole number from 1 to 100")
    except MailInputError as exc:
        raise MailInputError(f"messages[{i}].{exc.field}", exc.message) from exc
    return Message(idempotency_key=key or f"auto-{uuid.uuid4()}", bulk=True, **fields,
                   max_attempts=max_attempts or settings.MAIL_MAX_ATTEMPTS)


def _in_batches(rows: list[Message]) -> list[list[Message]]:
    """Cut the rows into delivery batches; each row records the id of the task message that carries it."""
    size = settings.MAIL_BULK_BATCH_SIZE
    batches = [rows[start:start + size] for start in range(0, len(rows), size)]
    for batch in batches:
        task_id = str(uuid.uuid4())
        for row in batch:
            row.task_id = task_id
    return batches


def _publish_batches(batches: list[list[Message]]) -> None:
    task = app.signature("mail.bulk_send_batch")
    for n, batch in enumerate(batches):
        try:
            task.apply_async(([row.pk for row in batch],), task_id=batch[0].task_id)
        except QueueFull as exc:  # the rows are committed: they stay QUEUED, marked, for a repeat or requeue_stale
            refused = batches[n:]
            Message.objects.filter(task_id__in=[b[0].task_id for b in refused], status=Status.QUEUED).update(
                last_error=f"{NOT_ENQUEUED}{exc}", updated_at=Now())
            raise QueueFull(f"{sum(map(len, refused))} bulk messages are stored (QUEUED) but their delivery was not enqueued: "
                            f"{exc}; calling again with the same idempotency keys enqueues them, or "
                            "mail.requeue_stale when the queue has room") from exc


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


def _claimable(now) -> Q:
    """QUEUED and due, or SENDING under a lease that expired (its worker died)."""
    lease_expired = now - timedelta(seconds=settings.MAIL_CLAIM_LEASE)
    due = Q(next_attempt_at__isnull=True) | Q(next_attempt_at__lte=now + timedelta(seconds=1))
    return Q(status=Status.QUEUED) & due | Q(status=Status.SENDING, claimed_at__lt=lease_expired)


def _claim(message_id: int, me: str) -> tuple[Message | None, Outcome | None]:
    """Take the message for one SMTP attempt, or say why not. Reserves the domain rate in the same transaction."""
    now = timezone.now()
    try:
        with transaction.atomic():
            if not Message.objects.filter(Q(pk=message_id) & _claimable(now)).update(
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
    db = connections[DEFAULT_DB_ALIAS]  # once: each attribute of the proxy looks the connection up again
    if db.connection is not None and getattr(db, "pool", None) is not None and not db.in_atomic_block:
        db.close()


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
        built = _build_or_fail(message, me)
        _release_db_connection()
    return built if isinstance(built, Outcome) else _send_claimed(message, me, *built)


def _build_or_fail(message: Message, me: str) -> tuple[list[str], bytes] | Outcome:
    """(recipients, the message's bytes), or FAILED recorded: a stored message that cannot be built never will be."""
    try:
        email = build_email(message)
        return email.recipients(), email.message().as_bytes(linesep="\r\n")
    except Exception as exc:
        _record(message.pk, me, status=Status.FAILED, last_error=f"cannot build the message: {exc!r}")
        return Outcome("FAILED", f"cannot build the message: {exc!r}")


def _send_claimed(message: Message, me: str, recipients: list[str], data: bytes) -> Outcome:
    """The SMTP conversation of a claimed message and its recorded outcome."""
    message_id = message.pk
    try:
        accepted = smtp.send(message.from_email, recipients, data)
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
    # The unavoidable window is from the server's 250 above to this commit: the wait for the process's SENT
    # writer and one UPDATE for every outcome waiting (apps/mail/sent.py).
    try:
        recorded = sent.writer.record(sent.Sent(message_id, me, accepted.code, accepted.reply, accepted_at))
    except Exception:  # the group write failed: this delivery records its own outcome, with _record's retries
        recorded = _record(message_id, me, status=Status.SENT, smtp_code=accepted.code, smtp_reply=accepted.reply,
                           smtp_accepted_at=accepted_at, sent_at=Now())
    if not recorded:
        logger.error("message %s was accepted by the SMTP server but our claim was gone", message_id)
    return Outcome("SENT", accepted.reply)


# --- a batch of bulk messages in one task -----------------------------------------------------------------

@dataclass
class BatchResult:
    counts: Counter  # outcome status -> messages
    later: list[tuple[int, float]]  # (message id, seconds): to be delivered by a task of their own
    left: list[int]  # claimed but not started within the time budget: handed back, for a continuation batch


def deliver_batch(message_ids: list[int], task_id: str = "", budget: float = 30.0) -> BatchResult:
    """Deliver bulk messages one after another in one task, over the pooled SMTP connection.

    What one delivery does, amortised: one claim for the batch (a conditional UPDATE of every row that is
    claimable, each under the same guards as deliver's claim, and one SELECT of the rows won and their
    attachments), then per message the conversation and its own outcome UPDATE right after the server's
    reply (the never-twice window stays one statement per message). The claim carries a token of this run,
    so a second copy of the batch (a redelivery) claims nothing that this one holds. No conversation starts
    after ``budget`` seconds: the rest are handed back (QUEUED, their attempt not counted) in ``left``.
    """
    me = worker_label(f"{task_id}#{uuid.uuid4().hex[:8]}")
    result = BatchResult(Counter(), [], [])
    with _claim_slot():
        claimed, result.later = _claim_batch(message_ids, me)
        _release_db_connection()
    result.counts["SKIPPED"] = len(set(message_ids)) - len(claimed) - len(result.later)
    pending = deque(claimed)
    started = time.monotonic()
    try:
        while pending and time.monotonic() - started < budget:
            message = pending.popleft()  # from here its outcome is recorded, never handed back
            # Built just before its conversation, not all at the claim: at -c 500 every batch building 25
            # messages at once kept the SENT writer from its turn for seconds (bench/mail_throughput.py).
            built = _build_or_fail(message, me)
            outcome = built if isinstance(built, Outcome) else _send_claimed(message, me, *built)
            _release_db_connection()  # the next conversation takes 100 ms or more: not on a pooled connection
            result.counts[outcome.status] += 1
            if outcome.status == "RETRY":
                result.later.append((message.pk, outcome.retry_in))
    finally:
        if pending:  # over budget, or interrupted: nothing of these was sent
            result.left = [message.pk for message in pending]
            _unclaim(result.left, me)
            _release_db_connection()
        _publish_rest(result)
    return result


def _publish_rest(result: BatchResult) -> None:
    """Publish what the batch leaves: a continuation batch for the messages handed back, a delayed single
    delivery for each retry, throttled or busy message. A refused publish leaves the row QUEUED (or SENDING
    under a lease): mail.requeue_stale enqueues it later, so a failure here is logged, never raised."""
    try:
        if result.left:
            app.signature("mail.bulk_send_batch").apply_async((result.left,))
        single = app.signature("mail.bulk_send_message")
        for message_id, delay in result.later:
            single.apply_async((message_id,), countdown=delay)
    except Exception:
        logger.warning("could not enqueue the rest of a mail batch (%d left, %d later); mail.requeue_stale will",
                       len(result.left), len(result.later), exc_info=True)


def _claim_batch(message_ids: list[int], me: str) -> tuple[list[Message], list[tuple[int, float]]]:
    """(claimed messages with their attachments loaded, [(id, wait)] of those to try again later)."""
    now = timezone.now()
    later = []
    with transaction.atomic():
        Message.objects.filter(Q(pk__in=message_ids) & _claimable(now)).update(
            status=Status.SENDING, attempts=F("attempts") + 1, claimed_at=now, claimed_by=me, updated_at=now)
        claimed = list(Message.objects.filter(pk__in=message_ids, status=Status.SENDING, claimed_by=me).order_by("pk"))
        throttled = {}
        for message in claimed:
            wait = throttle.reserve([throttle.domain_of(a) for a in message.recipients], time.time())
            if wait > 0:
                throttled[message.pk] = wait
        if throttled:  # not this time: as if never claimed (the claim of a single delivery rolls back instead)
            _unclaim(list(throttled), me)
            claimed = [m for m in claimed if m.pk not in throttled]
            later.extend(throttled.items())
        attachments = defaultdict(list)
        if claimed:
            for attachment in Attachment.objects.filter(message_id__in=[m.pk for m in claimed]):
                attachments[attachment.message_id].append(attachment)
        for message in claimed:
            message.loaded_attachments = attachments[message.pk]
    if len(claimed) + len(later) < len(set(message_ids)):
        later.extend(_busy_elsewhere(set(message_ids) - {m.pk for m in claimed} - set(throttled), now))
    return claimed, later


def _busy_elsewhere(message_ids: set[int], now) -> list[tuple[int, float]]:
    """Messages held under another delivery's live lease (e.g. this batch redelivered after its worker died):
    try each again when that lease has run out, as deliver's BUSY does. The rest are final or not due."""
    lease = timedelta(seconds=settings.MAIL_CLAIM_LEASE)
    return [(pk, max(1.0, (claimed_at + lease - now).total_seconds() + 1))
            for pk, claimed_at in Message.objects.filter(pk__in=message_ids, status=Status.SENDING)
            .values_list("pk", "claimed_at")]


def _unclaim(message_ids: list[int], me: str) -> None:
    """Hand claimed messages back untouched: QUEUED, the attempt not counted (no conversation started)."""
    Message.objects.filter(pk__in=message_ids, status=Status.SENDING, claimed_by=me).update(
        status=Status.QUEUED, attempts=F("attempts") - 1, claimed_by="", claimed_at=None, updated_at=Now())
