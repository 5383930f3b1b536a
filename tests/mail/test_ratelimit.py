"""A send rate per recipient domain that holds across io worker processes together."""
import pytest

from apps.mail import services
from apps.mail.models import Message, Status
from tests.support.workers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

RATE, BURST, COUNT = 2.0, 1, 10


def test_domain_rate_is_shared_by_two_worker_processes(start_mail_worker, smtp_server):
    # Every mail test worker has throttle.test=2/s, burst 1 (conftest.worker_env): these two, and the
    # shared mail worker if it runs, all draw from the one budget in the database.
    workers = [start_mail_worker(IO_CONCURRENCY=5), start_mail_worker(IO_CONCURRENCY=5)]
    messages = [services.enqueue(to=[f"r{i}@throttle.test"], subject=f"t{i}", body="b")[0] for i in range(COUNT)]
    wait_for(lambda: Message.objects.filter(pk__in=[m.pk for m in messages], status=Status.SENT).count() == COUNT,
             timeout=120, message="all throttled messages to be sent")

    arrivals = sorted(r.at for r in smtp_server.behaviour.received if r.rcpt_tos[0].endswith("@throttle.test"))
    senders = {m.claimed_by.split(":")[1] for m in Message.objects.filter(pk__in=[m.pk for m in messages])}
    span = arrivals[-1] - arrivals[0]
    print(f"{COUNT} messages at {RATE}/s (burst {BURST}) from processes {senders}: span {span:.2f}s")
    # Per-process limits would let two processes send twice as fast (~2.2 s for 10). A shared budget
    # cannot be faster than (COUNT - BURST) / RATE = 4.5 s, however loaded the machine is.
    assert span >= (COUNT - BURST) / RATE - 0.3
    assert len(senders) >= 2  # several processes sent, from one budget
    for worker in workers:
        worker.stop()
