"""The outbox: every message is a row before it is a task, and its status is the truth about it."""
from __future__ import annotations

import hashlib

from django.db import models


class Status(models.TextChoices):
    QUEUED = "QUEUED", "queued"  # stored, waiting for (or between) delivery attempts
    SENDING = "SENDING", "sending"  # claimed by one worker, SMTP conversation in progress
    SENT = "SENT", "sent"  # the SMTP server accepted it (its reply is in smtp_reply)
    FAILED = "FAILED", "failed"  # permanent failure, or transient failures ran out of attempts
    TIMED_OUT = "TIMED_OUT", "timed out"  # no reply to the end of DATA: maybe delivered, never resent blindly
    CANCELLED = "CANCELLED", "cancelled"  # cancelled before it was sent


# States a message is never taken out of by a worker: only an operator (resend) may.
FINAL_STATES = (Status.SENT, Status.FAILED, Status.TIMED_OUT, Status.CANCELLED)


class Message(models.Model):
    idempotency_key = models.CharField(max_length=200, unique=True)  # the same key never makes a second message
    bulk = models.BooleanField(default=False)  # bulk lane (mail_bulk) or transactional lane (mail)
    from_email = models.CharField(max_length=320)
    to = models.JSONField(default=list)
    cc = models.JSONField(default=list, blank=True)
    bcc = models.JSONField(default=list, blank=True)
    reply_to = models.JSONField(default=list, blank=True)
    subject = models.CharField(max_length=998)
    body_text = models.TextField(blank=True)
    body_html = models.TextField(blank=True)
    template = models.CharField(max_length=200, blank=True)
    context = models.JSONField(default=dict, blank=True)
    headers = models.JSONField(default=dict, blank=True)

    status = models.CharField(max_length=16, choices=Status.choices, default=Status.QUEUED, db_index=True)
    attempts = models.PositiveIntegerField(default=0)  # SMTP conversations started
    max_attempts = models.PositiveIntegerField(default=6)  # settings.MAIL_MAX_ATTEMPTS unless the caller says
    task_id = models.CharField(max_length=64, blank=True)  # the delivery task (its result is in django-celery-results)
    last_error = models.TextField(blank=True)
    smtp_code = models.PositiveSmallIntegerField(null=True, blank=True)
    smtp_reply = models.TextField(blank=True)  # the server's last reply, verbatim

    created_at = models.DateTimeField(auto_now_add=True)
    updated_at = models.DateTimeField(auto_now=True)
    next_attempt_at = models.DateTimeField(null=True, blank=True)  # when a retry is due
    claimed_at = models.DateTimeField(null=True, blank=True)  # start of the current SENDING lease
    claimed_by = models.CharField(max_length=200, blank=True)  # worker node and pid that holds the lease
    smtp_accepted_at = models.DateTimeField(null=True, blank=True)  # when the server said 250 to DATA
    sent_at = models.DateTimeField(null=True, blank=True)  # when SENT was committed

    class Meta:
        indexes = [models.Index(fields=["status", "next_attempt_at"])]
        ordering = ["-id"]

    def __str__(self) -> str:
        return f"#{self.pk} {self.status} {self.subject[:40]!r} to {', '.join(self.to)[:60]}"

    @property
    def recipients(self) -> list[str]:
        return [*self.to, *self.cc, *self.bcc]

    @property
    def message_id_header(self) -> str:
        """Stable across attempts, so a receiver can drop a copy sent again after the unavoidable window."""
        domain = self.from_email.rsplit("@", 1)[-1].strip(">") or "localhost"
        digest = hashlib.sha1(self.idempotency_key.encode()).hexdigest()[:16]
        return f"<outbox-{self.pk}.{digest}@{domain}>"


class Attachment(models.Model):
    message = models.ForeignKey(Message, related_name="attachments", on_delete=models.CASCADE)
    filename = models.CharField(max_length=255)
    mimetype = models.CharField(max_length=200, default="application/octet-stream")
    content = models.BinaryField()
    size = models.PositiveIntegerField()


class DomainThrottle(models.Model):
    """One row per recipient domain: a GCRA token bucket shared by every io worker process.

    ``next_free_at`` is the theoretical arrival time (epoch seconds) of the next message at the
    domain's rate; it is read and moved under a row lock, so all processes draw from one budget.
    """

    domain = models.CharField(max_length=255, primary_key=True)
    next_free_at = models.FloatField(default=0.0)
