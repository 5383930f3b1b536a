"""The beat scheduler: django-celery-beat's DatabaseScheduler, one leader at a time, keeping admin edits.

* Leader lease (apps/core/leader.py): any number of beat processes may run; only the one holding the
  lease dispatches. A standby takes over within PLATFORM_BEAT_LEASE_SECONDS of the leader's death.
* ``beat_sync_every = 1`` (settings): last_run_at is written after every dispatch, so a beat restarted
  after kill -9 does not fire the same slot again. The window left is between the publish and that write.
* DatabaseScheduler.install_default_entries runs ``update_or_create`` for ``celery.backend_cleanup``
  every time beat starts, silently undoing an admin's edit of that row. Our defaults are seeded once and
  never overwritten (apps/core/schedules.py), so that step is skipped.
"""
from __future__ import annotations

import os
import socket
import uuid

from celery.utils.log import get_logger
from django.conf import settings
from django.db import close_old_connections
from django_celery_beat.schedulers import DatabaseScheduler

from apps.core import leader

logger = get_logger(__name__)


class PlatformScheduler(DatabaseScheduler):
    def __init__(self, *args, **kwargs):
        self.holder = f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"
        self.lease_seconds = settings.PLATFORM_BEAT_LEASE_SECONDS
        self.is_leader = False
        super().__init__(*args, **kwargs)

    def install_default_entries(self, data):
        return None

    def tick(self, *args, **kwargs):
        close_old_connections()
        holds = leader.acquire_or_renew(self.holder, self.lease_seconds)
        if holds and not self.is_leader:
            logger.info("beat: %s is now the leader; dispatching", self.holder)
            self._schedule = self.all_as_schedule()  # what the previous leader left in the database
            self._heap = None
        elif self.is_leader and not holds:
            logger.warning("beat: %s lost the lease; standing by", self.holder)
        elif not holds and not self.is_leader and not getattr(self, "_announced_standby", False):
            logger.info("beat: %s standing by (another beat holds the lease)", self.holder)
            self._announced_standby = True
        self.is_leader = holds
        renew_within = self.lease_seconds / 3
        if not holds:
            return renew_within
        return min(super().tick(*args, **kwargs), renew_within)

    def close(self):
        try:
            super().close()
        finally:
            if self.is_leader:
                leader.release(self.holder)
