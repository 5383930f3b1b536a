"""The control plane's records: the task ledger, dead letters, paused queues and the audit trail."""
from __future__ import annotations

from django.conf import settings
from django.db import models

from apps.control import states


class TaskRecord(models.Model):
    """One row per task id, from publication to its final state; written by the event recorder."""

    task_id = models.CharField(max_length=255, unique=True)
    name = models.CharField(max_length=255, blank=True, db_index=True)
    state = models.CharField(max_length=16, choices=states.CHOICES, default=states.QUEUED, db_index=True)
    queue = models.CharField(max_length=255, blank=True, db_index=True)
    worker = models.CharField(max_length=255, blank=True)
    attempts = models.PositiveIntegerField(default=0)  # executions started (retries + 1 once running)
    retries = models.PositiveIntegerField(default=0)  # the request's retry counter as last published
    # Display copies, with sensitive arguments replaced by "[redacted]" (apps/control/redaction.py).
    args = models.TextField(blank=True)
    kwargs = models.TextField(blank=True)
    # The call as published, for "retry": JSON, null when it could not be recovered (truncated repr).
    # Never exposed by the API or the admin.
    call = models.JSONField(null=True, blank=True)
    result = models.TextField(blank=True)
    error = models.TextField(blank=True)
    traceback = models.TextField(blank=True)
    progress_step = models.CharField(max_length=255, blank=True)
    progress_message = models.TextField(blank=True)
    progress_current = models.FloatField(null=True, blank=True)
    progress_total = models.FloatField(null=True, blank=True)
    parent_id = models.CharField(max_length=255, blank=True)
    root_id = models.CharField(max_length=255, blank=True)
    retry_of = models.CharField(max_length=255, blank=True, db_index=True)  # operator retry: the old id
    eta = models.DateTimeField(null=True, blank=True)
    owner = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="task_records")
    cancel_requested_at = models.DateTimeField(null=True, blank=True)
    sent_at = models.DateTimeField(null=True, blank=True, db_index=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)
    runtime = models.FloatField(null=True, blank=True)  # seconds, as the worker measured it
    last_event_at = models.DateTimeField(null=True, blank=True)  # timestamp of the newest event applied
    # True while the state was set by the control plane (CANCELLED of a queued task, LOST) and no worker
    # event has confirmed it yet: a later event that tells what really happened may still replace it.
    provisional = models.BooleanField(default=False)
    # Set when a dead-letter replay reopens the task: the time its letter was stored. Every event of the
    # life before (a worker's late task-failed) is older, every event of the replayed run newer; older
    # events are ignored, so a late one cannot put back the old final state.
    reopened_at = models.DateTimeField(null=True, blank=True)
    updated_at = models.DateTimeField(auto_now=True)

    class Meta:
        indexes = [models.Index(fields=["state", "queue"]), models.Index(fields=["owner", "sent_at"])]
        ordering = ["-sent_at", "-id"]

    def __str__(self) -> str:
        return f"{self.name or '?'}[{self.task_id}] {self.state}"

    @property
    def finished(self) -> bool:
        """In a final state: its last progress step ("merging") no longer describes it."""
        return self.state in states.TERMINAL


class DeadLetter(models.Model):
    """A message taken off ``<queue>.dead`` into the database (snapshot), so it can be browsed safely.

    The broker message is acked only after this row is committed: a crash in between leaves a duplicate
    in the queue (deduplicated by ``fingerprint``), never a loss.
    """

    REASONS = ["exception", "delivery_limit", "rejected", "unknown_task", "expired", "maxlen", "unknown"]

    fingerprint = models.CharField(max_length=64, unique=True)  # sha256 of headers+body+death time
    dead_letter_queue = models.CharField(max_length=255, db_index=True)
    queue = models.CharField(max_length=255, db_index=True)  # the source queue
    reason = models.CharField(max_length=32, choices=[(r, r) for r in REASONS], db_index=True)
    detail = models.TextField(blank=True)  # why, in words
    task_id = models.CharField(max_length=255, blank=True, db_index=True)
    task_name = models.CharField(max_length=255, blank=True, db_index=True)
    exchange = models.CharField(max_length=255, blank=True)  # original route, for replay
    routing_key = models.CharField(max_length=255, blank=True)
    headers = models.JSONField(default=dict)
    properties = models.JSONField(default=dict)
    body = models.BinaryField()
    death_count = models.PositiveIntegerField(default=1)
    dead_at = models.DateTimeField(null=True, blank=True)
    stored_at = models.DateTimeField(auto_now_add=True)
    replayed_at = models.DateTimeField(null=True, blank=True)
    replayed_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                    related_name="+")

    class Meta:
        ordering = ["-stored_at", "-id"]

    def __str__(self) -> str:
        return f"{self.dead_letter_queue}: {self.task_name or '?'}[{self.task_id}] ({self.reason})"


class PausedQueue(models.Model):
    """A queue no worker consumes until resumed; re-applied by every worker at start (apps/control/worker.py)."""

    queue = models.CharField(max_length=255, unique=True)
    paused_at = models.DateTimeField(auto_now_add=True)
    paused_by = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                                  related_name="+")
    reason = models.CharField(max_length=500, blank=True)

    def __str__(self) -> str:
        return f"{self.queue} (paused)"


class ControlAction(models.Model):
    """The audit trail: who did which control action, to what, with which outcome."""

    at = models.DateTimeField(auto_now_add=True, db_index=True)
    actor = models.ForeignKey(settings.AUTH_USER_MODEL, null=True, blank=True, on_delete=models.SET_NULL,
                              related_name="+")
    actor_name = models.CharField(max_length=255)  # kept when the user is deleted; "cli:<os user>" from commands
    action = models.CharField(max_length=64, db_index=True)
    target = models.CharField(max_length=500, blank=True)
    params = models.JSONField(default=dict, blank=True)
    outcome = models.JSONField(default=dict, blank=True)

    class Meta:
        ordering = ["-at", "-id"]

    def __str__(self) -> str:
        return f"{self.at:%Y-%m-%d %H:%M:%S} {self.actor_name} {self.action} {self.target}"
