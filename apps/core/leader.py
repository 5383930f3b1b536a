"""A lease in the database that makes one beat process the leader; the others stand by.

The leader renews the lease on every scheduler tick (at most every ``max_interval`` seconds). A standby
takes over once the lease has expired: after a leader dies, dispatching resumes within the lease
duration plus one tick. Acquire and renew are one conditional UPDATE, so two beats can never both hold it.
"""
from __future__ import annotations

from datetime import timedelta

from django.db import IntegrityError, transaction
from django.db.models import Q
from django.utils import timezone

from apps.core.models import BeatLease

LEASE_NAME = "beat"


def acquire_or_renew(holder: str, ttl_seconds: float, name: str = LEASE_NAME) -> bool:
    """True if ``holder`` holds the lease for the next ``ttl_seconds``."""
    now = timezone.now()
    try:
        with transaction.atomic():
            BeatLease.objects.get_or_create(
                name=name, defaults={"holder": "", "acquired_at": now, "expires_at": now - timedelta(seconds=1)})
    except IntegrityError:
        pass  # another beat created it at the same moment; the UPDATE below decides
    expires = now + timedelta(seconds=ttl_seconds)
    renewed = BeatLease.objects.filter(name=name, holder=holder, expires_at__gte=now).update(expires_at=expires)
    if renewed:
        return True
    return bool(BeatLease.objects.filter(Q(name=name) & (Q(expires_at__lt=now) | Q(holder=holder)))
                .update(holder=holder, acquired_at=now, expires_at=expires))


def release(holder: str, name: str = LEASE_NAME) -> None:
    """Give the lease up at once (clean shutdown), so a standby need not wait for it to expire."""
    BeatLease.objects.filter(name=name, holder=holder).update(expires_at=timezone.now() - timedelta(seconds=1))
