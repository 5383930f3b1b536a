from django.db import models


class BeatLease(models.Model):
    """Which beat process may dispatch periodic tasks, until when (see apps/core/leader.py)."""

    name = models.CharField(primary_key=True, max_length=64)
    holder = models.CharField(max_length=255, blank=True)
    acquired_at = models.DateTimeField()
    expires_at = models.DateTimeField()

    def __str__(self):
        return f"{self.name}: {self.holder or 'nobody'} until {self.expires_at:%H:%M:%S}"
