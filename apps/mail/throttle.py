"""Per-recipient-domain send rate shared by every io worker process, kept in the database.

GCRA (a token bucket written as one timestamp per domain): the row is locked (SELECT ... FOR UPDATE
on PostgreSQL; SQLite's IMMEDIATE transactions serialize writers anyway), so every process draws from
the same budget. Called inside the claim transaction: a throttled claim rolls back with it.
"""
from __future__ import annotations

from django.conf import settings

from apps.mail.models import DomainThrottle


def rate_for(domain: str) -> float:
    return float(settings.MAIL_DOMAIN_RATES.get(domain, settings.MAIL_DOMAIN_RATE))


def reserve(domains: list[str], now: float) -> float:
    """Reserve one send for each domain; return 0.0, or the seconds to wait (nothing reserved then).

    Must run inside a transaction (the caller's), so the reservations commit or roll back with it.
    """
    waits, rows = [], []
    for domain in sorted(set(domains)):  # a fixed lock order: no deadlock between multi-domain messages
        rate = rate_for(domain)
        if rate <= 0:
            continue  # 0 = unlimited
        row, _ = DomainThrottle.objects.select_for_update().get_or_create(domain=domain)
        interval = 1.0 / rate
        new_tat = max(row.next_free_at, now) + interval
        allowance = settings.MAIL_DOMAIN_BURST * interval  # a quiet domain may take this many at once
        waits.append(max(0.0, new_tat - now - allowance))
        row.next_free_at = new_tat
        rows.append(row)
    wait = max(waits, default=0.0)
    if wait == 0.0:
        for row in rows:
            DomainThrottle.objects.filter(pk=row.pk).update(next_free_at=row.next_free_at)
    return wait


def domain_of(address: str) -> str:
    return address.rsplit("@", 1)[-1].lower()
