"""The peer for mail delivery: django-post-office (the outbox library Django users reach for), on the same
database server and the same SMTP server as bench/mail_throughput.py, in the same run.

Run by bench/mail_throughput.py in a process of its own (post_office must be an installed app there, never
in the platform's settings):

    DJANGO_SETTINGS_MODULE=bench.post_office_settings python bench/post_office_peer.py N PROCESSES

Stores N queued emails (as ``mail.send(priority="medium")`` would, in one bulk insert), then times its
``send_queued_mail --processes PROCESSES`` until every one is sent; prints one JSON line.
"""
from __future__ import annotations

import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))


def main() -> None:
    messages, processes = int(sys.argv[1]), int(sys.argv[2])
    import django

    django.setup()
    from django.conf import settings
    from django.core.management import call_command
    from post_office.models import PRIORITY, STATUS, Email

    call_command("migrate", "post_office", verbosity=0)
    Email.objects.all().delete()  # an earlier run's, in the same scratch database
    Email.objects.bulk_create([
        Email(from_email="bench@example.com", to=[f"user{i}@d{i % 50}.example.com"], subject=f"bench {i}",
              message="hello " * 20, status=STATUS.queued, priority=PRIORITY.medium)
        for i in range(messages)], batch_size=1000)
    started = time.monotonic()
    call_command("send_queued_mail", processes=processes, lockfile=f"/tmp/post-office-bench-{time.time_ns()}")
    seconds = time.monotonic() - started
    sent = Email.objects.filter(status=STATUS.sent).count()
    print(json.dumps({"messages": messages, "sent": sent, "seconds": round(seconds, 2),
                      "per_second": round(sent / seconds, 1), "processes": processes,
                      "threads_per_process": settings.POST_OFFICE["THREADS_PER_PROCESS"],
                      "batch_size": settings.POST_OFFICE["BATCH_SIZE"]}))


if __name__ == "__main__":
    main()
