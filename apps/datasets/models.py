"""A dataset is one import of one tabular file: each re-import of the same name is a new version (row)."""
from __future__ import annotations

from django.db import models


class Status(models.TextChoices):
    QUEUED = "QUEUED", "queued"
    RUNNING = "RUNNING", "running"
    READY = "READY", "ready"  # the profile is complete and stored
    FAILED = "FAILED", "failed"
    CANCELLED = "CANCELLED", "cancelled"
    TIMED_OUT = "TIMED_OUT", "timed out"


ACTIVE_STATUSES = (Status.QUEUED, Status.RUNNING)


class Dataset(models.Model):
    name = models.CharField(max_length=200)
    version = models.PositiveIntegerField()
    source_path = models.CharField(max_length=1000, help_text="the file as given (a path, or the stored upload)")
    options = models.JSONField(default=dict, blank=True, help_text="per-import overrides (chunk_bytes, time limits)")

    status = models.CharField(max_length=10, choices=Status.choices, default=Status.QUEUED, db_index=True)
    stage = models.CharField(max_length=40, default="queued")
    rows_processed = models.BigIntegerField(default=0)
    rows_total = models.BigIntegerField(null=True, blank=True, help_text="line count from the scan (progress only)")
    chunks_total = models.PositiveIntegerField(default=0)
    chunks_done = models.PositiveIntegerField(default=0)

    error = models.TextField(blank=True)
    error_row = models.BigIntegerField(null=True, blank=True, help_text="1-based line of the file")
    error_column = models.CharField(max_length=200, blank=True)

    plan = models.JSONField(null=True, blank=True, help_text="what the scan found: format, encoding, chunks, schema")
    profile = models.JSONField(null=True, blank=True, help_text="set only together with status READY")
    row_count = models.BigIntegerField(null=True, blank=True)
    column_count = models.PositiveIntegerField(null=True, blank=True)

    task_id = models.CharField(max_length=64, unique=True, help_text="the task whose SUCCESS means the import finished")
    start_task_id = models.CharField(max_length=64, blank=True)
    chunk_task_ids = models.JSONField(default=list, blank=True)

    # The watchdog (services.recover_stuck): how often it re-published the start task, and when last.
    requeues = models.PositiveIntegerField(default=0)
    requeued_at = models.DateTimeField(null=True, blank=True)

    created_at = models.DateTimeField(auto_now_add=True)
    started_at = models.DateTimeField(null=True, blank=True)
    finished_at = models.DateTimeField(null=True, blank=True)

    class Meta:
        ordering = ["-created_at", "-id"]
        constraints = [models.UniqueConstraint(fields=["name", "version"], name="dataset_name_version_unique")]

    def __str__(self) -> str:
        return f"{self.name} v{self.version}"

    @property
    def is_active(self) -> bool:
        return self.status in ACTIVE_STATUSES

    @property
    def progress_percent(self) -> int | None:
        if not self.rows_total:
            return None
        return min(100, int(100 * self.rows_processed / self.rows_total))
