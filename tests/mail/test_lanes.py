"""Transactional before bulk: a separate lane (queue mail) beside the bulk lane (mail_bulk).

Quorum queues on RabbitMQ 3.10 have no priorities; each queue has its own consumer and prefetch, so a
transactional message never waits behind the bulk backlog, only for a free green thread.
"""
import time
import uuid

import pytest

from apps.mail import services
from apps.mail.models import Message, Status
from apps.mail.tasks import bulk_send_message
from tests.support import rabbit
from tests.support.workers import wait_for

pytestmark = [pytest.mark.django_db(transaction=True), pytest.mark.slow]

BULK = 5000


def publish_bulk(ids):
    from project.celery import app

    with app.producer_or_acquire() as producer:
        for pk in ids:
            bulk_send_message.apply_async((pk,), producer=producer)


def send_a_transactional_message(address: str) -> tuple[Message, float]:
    """Enqueue a password reset and wait until it is SENT: (its row, the seconds it took)."""
    started = time.monotonic()
    message, _ = services.enqueue(to=[address], subject="Password reset", body="link")
    row = wait_for(lambda: Message.objects.filter(pk=message.pk, status=Status.SENT).first(), timeout=60,
                   interval=0.05, message="the transactional message to be sent")
    return row, time.monotonic() - started


def purge_bulk(broker_url: str) -> None:
    from kombu import Connection

    with Connection(broker_url) as conn:
        conn.default_channel.queue_purge("mail_bulk")


def test_transactional_overtakes_5000_waiting_bulk_messages(start_mail_worker, mail_broker_url, smtp_server):
    # bulk.test answers each message after 0.2 s: 5,000 of them keep 20 green threads busy for ~a minute.
    worker = start_mail_worker(IO_CONCURRENCY=20)
    Message.objects.bulk_create([
        Message(idempotency_key=f"bulk-{uuid.uuid4()}", bulk=True, from_email="news@example.com",
                to=[f"r{i}@bulk.test"], subject=f"newsletter {i}", body_text="news", max_attempts=1)
        for i in range(BULK)
    ], batch_size=500)
    publish_bulk(Message.objects.filter(bulk=True, status=Status.QUEUED).values_list("pk", flat=True))
    try:
        waiting_before = rabbit.queue_message_count(mail_broker_url, "mail_bulk")
        assert waiting_before > 1000, "the bulk backlog must be waiting when the transactional message arrives"

        row, took = send_a_transactional_message("reset@accept.test")
        waiting_after = rabbit.queue_message_count(mail_broker_url, "mail_bulk")
        bulk_sent = Message.objects.filter(bulk=True, status=Status.SENT).count()
        print(f"transactional sent in {took:.2f}s; bulk waiting {waiting_before} -> {waiting_after}, "
              f"bulk sent meanwhile {bulk_sent}")
        assert row.status == Status.SENT
        assert waiting_after > 500, "it overtook the backlog instead of waiting for it"
        assert took < 20  # "within a few seconds"; generous for a loaded 2-core machine (figure in the output)
    finally:
        worker.stop()
        purge_bulk(mail_broker_url)
        Message.objects.filter(bulk=True, status=Status.QUEUED).update(status=Status.CANCELLED)


def test_transactional_overtakes_a_newsletter_sent_in_batches(start_mail_worker, mail_broker_url, smtp_server,
                                                              settings, monkeypatch):
    """The same with enqueue_bulk: a batch holds its green thread for the whole batch (25 x 0.2 s here), so a
    transactional message waits for the next batch to end, not for the backlog."""
    from apps.mail.tasks import bulk_send_batch

    monkeypatch.setattr(bulk_send_batch, "soft_time_limit", 60)  # the limits travel in the message
    monkeypatch.setattr(bulk_send_batch, "time_limit", 70)
    settings.MAIL_BULK_BATCH_SIZE = 25
    worker = start_mail_worker(IO_CONCURRENCY=20, MAIL_CLAIM_LEASE=120)
    tag = uuid.uuid4().hex[:6]
    services.enqueue_bulk(dict(to=[f"n{i}@bulk.test"], subject=f"newsletter {i}", body="news", max_attempts=1,
                               idempotency_key=f"nl-{tag}-{i}") for i in range(BULK))
    try:
        def waiting():
            return Message.objects.filter(bulk=True, idempotency_key__startswith=f"nl-{tag}-",
                                          status=Status.QUEUED).count()

        waiting_before = waiting()
        assert waiting_before > 1000, "the newsletter must be waiting when the transactional message arrives"
        row, took = send_a_transactional_message("reset2@accept.test")
        waiting_after = waiting()
        print(f"transactional sent in {took:.2f}s; newsletter messages waiting {waiting_before} -> {waiting_after}")
        assert row.status == Status.SENT
        assert waiting_after > 500, "it overtook the newsletter instead of waiting for it"
        assert took < 20
    finally:
        worker.stop()
        purge_bulk(mail_broker_url)
