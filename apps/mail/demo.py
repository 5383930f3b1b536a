"""Demo work for `manage.py demo` (registered in apps.py): a probe, and a transactional message.

Transactional only: bulk delivery stores no result row, and the demo counts result rows.
"""
from __future__ import annotations

from apps.mail import services
from apps.mail.tasks import probe


def enqueue_send(i: int) -> str:
    # One attempt: without an SMTP server (e.g. in tests) the demo fails at once with
    # "cannot connect to host:port" instead of retrying for minutes.
    message, _ = services.enqueue(
        to=[f"demo{i}@example.com"], subject=f"Demo transactional message {i}",
        template="demo", context={"number": i, "lane": "transactional"}, max_attempts=1,
    )
    return message.task_id


def enqueue_probe(i: int) -> str:
    return probe.delay().id
