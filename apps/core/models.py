from django.db import models


class BeatLease(models.Model):
    """Which beat process may dispatch periodic tasks, until when (see apps/core/leader.py)."""

    name = models.CharField(primary_key=True, max_length=64)
    holder = models.CharField(max_length=255, blank=True)
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    def __str__(self):
        return f"{self.name}: {self.holder or 'nobody'} until {self.expires_at:%H:%M:%S}"


class WorkerRecord(models.Model):
    """A worker process seen on this deployment's broker, as the event recorder heard it (apps/core/workers.py).

    ``deployment``: what the worker announces itself as (a digest of the database it works with, or
    PLATFORM_DEPLOYMENT). A worker announcing another deployment, or none at all, consumes our broker but
    does its work against another database: another stack on the same vhost, taking our tasks.
    """

    hostname = models.CharField(max_length=255)
    pid = models.PositiveIntegerField()
    deployment = models.CharField(max_length=64, blank=True)  # "" until its first announcement
    pool = models.CharField(max_length=32, blank=True)
    concurrency = models.PositiveIntegerField(null=True, blank=True)
    queues = models.JSONField(default=list, blank=True)  # the queues it was started with (-Q)
    first_seen_at = models.DateTimeField(auto_now_add=True)
    last_seen_at = models.DateTimeField(null=True, blank=True)  # its newest heartbeat or announcement
    heartbeat_interval = models.FloatField(default=2.0)  # seconds, as the worker announces it (freq)
    active = models.PositiveIntegerField(null=True, blank=True)  # tasks running at the last heartbeat
    processed = models.PositiveIntegerField(null=True, blank=True)  # tasks done since it started
    offline_at = models.DateTimeField(null=True, blank=True)  # it said goodbye (worker-offline)

    class Meta:
        constraints = [models.UniqueConstraint(fields=["hostname", "pid"], name="worker_record_hostname_pid")]
        ordering = ["hostname", "pid"]

    def __str__(self):
        return f"{self.hostname} (pid {self.pid})"
