"""Bulk messages in batches: enqueue_bulk (storage, refusals) and mail.bulk_send_batch through a real worker."""
import threading
from datetime import timedelta

import pytest
from django.utils import timezone

from apps.core.amqp import QueueFull
from apps.mail import sent, services
from apps.mail.models import Message, Status
from apps.mail.services import MailInputError
from apps.mail.tasks import bulk_send_batch
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def newsletter(n: int, domain: str = "accept.test", tag: str = "nl", **extra) -> list[dict]:
    return [dict(to=[f"{tag}{i}@{domain}"], subject=f"issue {i}", body="news", idempotency_key=f"{tag}-{i}", **extra)
            for i in range(n)]


@pytest.fixture
def batches_published(monkeypatch):
    published = []
    monkeypatch.setattr(services, "_publish_batches", lambda batches: published.append(
        [[row.pk for row in batch] for batch in batches]))
    return published


# --- storage: no worker ---------------------------------------------------------------------------------

def test_enqueue_bulk_stores_bulk_rows_and_publishes_batches_once_after_commit(settings, batches_published):
    settings.MAIL_BULK_BATCH_SIZE = 3
    stored = services.enqueue_bulk(newsletter(7))
    assert [created for _, created in stored] == [True] * 7
    rows = list(Message.objects.order_by("pk"))
    assert [r.pk for r in rows] == [m.pk for m, _ in stored]
    assert all(r.bulk and r.status == Status.QUEUED and r.to == [f"nl{i}@accept.test"] for i, r in enumerate(rows))
    [batches] = batches_published
    assert [len(b) for b in batches] == [3, 3, 1] and sum(batches, []) == [r.pk for r in rows]
    # each row names the task message that carries it: one id per batch
    assert [len({r.task_id for r in rows if r.pk in b}) for b in batches] == [1, 1, 1]
    assert len({r.task_id for r in rows}) == 3


def test_enqueue_bulk_answers_a_stored_key_with_the_stored_message(batches_published):
    services.enqueue_bulk(newsletter(2))
    again = services.enqueue_bulk(newsletter(3))  # two repeats and one new
    assert [created for _, created in again] == [False, False, True]
    assert Message.objects.count() == 3
    assert [len(sum(b, [])) for b in batches_published] == [2, 1]


@pytest.mark.parametrize("messages, field, words", [
    (newsletter(2) + [dict(to=["not-an-address"], subject="s", body="b")], "messages[2].to", "address"),
    ([dict(to=["a@accept.test"], subject="s")], "messages[0].body", "required"),
    ([dict(to=["a@accept.test"], subject="s", body="b", attachments=[])], "messages[0].attachments",
     "enqueued on its own"),
    ([dict(to=["a@accept.test"], subject="s", body="b", max_attempts=0)], "messages[0].max_attempts", "1 to 100"),
    (["just a string"], "messages[0]", "must be an object"),
    (newsletter(2) + newsletter(1), "messages[2].idempotency_key", "appears twice"),
    ([dict(to=["a@accept.test"], subject="s", body="b", idempotency_key="x\ny")], "messages[0].idempotency_key",
     "line breaks"),
])
def test_enqueue_bulk_refuses_bad_input_naming_the_message_and_stores_nothing(messages, field, words,
                                                                              batches_published):
    with pytest.raises(MailInputError) as refused:
        services.enqueue_bulk(messages)
    assert refused.value.field == field and words in refused.value.message
    assert Message.objects.count() == 0 and batches_published == []


def test_a_refused_batch_stays_queued_and_a_repeat_enqueues_it(settings, monkeypatch):
    """RabbitMQ refuses (queue full) at the broker edge; the rows are kept, marked, and a repeat publishes."""
    settings.MAIL_BULK_BATCH_SIZE = 2
    calls = []

    def full(self, args=None, kwargs=None, **options):
        calls.append(args)
        raise QueueFull("queue mail_bulk is full")

    monkeypatch.setattr("celery.canvas.Signature.apply_async", full)
    with pytest.raises(QueueFull, match="3 bulk messages are stored"):
        services.enqueue_bulk(newsletter(3))
    assert all(r.status == Status.QUEUED and r.last_error.startswith(services.NOT_ENQUEUED)
               for r in Message.objects.all())
    monkeypatch.setattr("celery.canvas.Signature.apply_async", lambda self, args=None, **o: calls.append(args))
    again = services.enqueue_bulk(newsletter(3))
    assert [created for _, created in again] == [False] * 3
    assert sorted(a[0] for a in calls[1:]) == sorted(Message.objects.values_list("pk", flat=True))
    assert not Message.objects.exclude(last_error="").exists()


def test_http_batches(django_user_model, batches_published):
    from rest_framework.test import APIClient

    client = APIClient()
    body = {"messages": newsletter(3, tag="api")}
    assert client.post("/api/v1/mail/batches/", body, format="json").status_code in (401, 403)
    client.force_authenticate(django_user_model.objects.create_user("u", password="p"))
    created = client.post("/api/v1/mail/batches/", body, format="json")
    assert created.status_code == 201 and created.json()["created"] == 3
    assert [m["status"] for m in created.json()["messages"]] == ["QUEUED"] * 3
    again = client.post("/api/v1/mail/batches/", body, format="json")
    assert again.status_code == 200 and again.json()["created"] == 0
    assert [m["id"] for m in again.json()["messages"]] == [m["id"] for m in created.json()["messages"]]
    bad = client.post("/api/v1/mail/batches/", {"messages": newsletter(1, tag="api2") + [{"to": ["nope"]}]},
                      format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "messages[1].to" and "nope" in bad.json()["error"]
    empty = client.post("/api/v1/mail/batches/", {"messages": []}, format="json")
    assert empty.status_code == 400 and empty.json()["field"] == "messages"
    assert Message.objects.count() == 3 and len(batches_published) == 1


# --- the SENT group writer ------------------------------------------------------------------------------

def _sending(n: int, me: str) -> list[Message]:
    now = timezone.now()
    rows = [Message.objects.create(idempotency_key=f"w-{me}-{i}", bulk=True, from_email="a@example.com",
                                   to=[f"w{i}@example.com"], subject="s", body_text="b", status=Status.SENDING,
                                   claimed_by=me, claimed_at=now, attempts=1) for i in range(n)]
    return rows


def test_the_writer_marks_sent_only_rows_whose_claim_stands():
    mine, theirs = _sending(2, "me"), _sending(1, "another delivery")
    Message.objects.filter(pk=mine[1].pk).update(status=Status.SENT)  # finished already: not written again
    accepted = timezone.now() - timedelta(milliseconds=5)
    rows = [sent.Sent(m.pk, "me", 250, f"2.0.0 ok {m.pk}", accepted) for m in (*mine, *theirs)]
    assert sent.write(rows) == {mine[0].pk}
    first = Message.objects.get(pk=mine[0].pk)
    assert (first.status, first.smtp_code, first.smtp_reply) == (Status.SENT, 250, f"2.0.0 ok {mine[0].pk}")
    assert first.smtp_accepted_at == accepted and first.sent_at >= accepted
    assert Message.objects.get(pk=theirs[0].pk).status == Status.SENDING


def test_the_writer_gathers_waiting_outcomes_and_survives_a_failed_round(monkeypatch):
    rows = _sending(6, "me")
    writer, rounds, real_write = sent.GroupWriter(), [], sent.write
    gate = threading.Event()

    def slow_write(batch):
        rounds.append(len(batch))
        gate.wait(5)  # the first round is held: the others gather behind it
        return real_write(batch)

    monkeypatch.setattr(sent, "write", slow_write)
    results = {}
    threads = [threading.Thread(target=lambda m=m: results.__setitem__(m.pk, writer.record(
        sent.Sent(m.pk, "me", 250, "ok", timezone.now())))) for m in rows]
    threads[0].start()
    wait_for(lambda: rounds, timeout=5, message="the first round")
    for thread in threads[1:]:
        thread.start()
    wait_for(lambda: len(writer._waiting) == 5, timeout=5, message="five outcomes waiting")
    gate.set()
    for thread in threads:
        thread.join(10)
    assert rounds == [1, 5] and results == {m.pk: True for m in rows}
    assert Message.objects.filter(status=Status.SENT).count() == 6

    def broken(batch):
        raise RuntimeError("database went away")

    monkeypatch.setattr(sent, "write", broken)
    with pytest.raises(RuntimeError, match="went away"):  # the delivery records on its own (services)
        writer.record(sent.Sent(rows[0].pk, "me", 250, "ok", timezone.now()))
    monkeypatch.setattr(sent, "write", real_write)
    extra = _sending(1, "me2")[0]
    assert writer.record(sent.Sent(extra.pk, "me2", 250, "ok", timezone.now())) is True  # the writer lives on


def test_a_second_copy_of_a_batch_claims_nothing_the_first_holds(settings):
    """Two runs of one batch task (a redelivery while the first still runs) carry the same task id: the claim
    token tells them apart, so the second finds the rows busy and sends nothing."""
    settings.MAIL_DOMAIN_RATE = 0
    rows = [Message.objects.create(idempotency_key=f"copy-{i}", bulk=True, from_email="a@example.com",
                                   to=[f"copy{i}@accept.test"], subject="s", body_text="b") for i in range(3)]
    ids = [m.pk for m in rows]
    me = services.worker_label("task-1#first")
    claimed, later = services._claim_batch(ids, me)
    assert [m.pk for m in claimed] == ids and later == []
    second, later = services._claim_batch(ids, services.worker_label("task-1#second"))
    assert second == [] and sorted(pk for pk, _ in later) == ids  # busy: tried again after the lease
    assert all(wait >= 1 for _, wait in later)
    assert set(Message.objects.values_list("claimed_by", flat=True)) == {me}


def test_each_run_of_a_batch_claims_under_a_label_of_its_own(monkeypatch):
    labels = []
    monkeypatch.setattr(services, "_claim_batch", lambda ids, me: (labels.append(me), ([], []))[1])
    services.deliver_batch([1], "task-1")
    services.deliver_batch([1], "task-1")
    assert len(set(labels)) == 2 and all(":task-1#" in label for label in labels)


# --- through a real worker ------------------------------------------------------------------------------

@pytest.fixture
def batch_limits(monkeypatch):
    """The limits travel in the message: the test workers' 3/6 s (their lease is 8 s)."""
    monkeypatch.setattr(bulk_send_batch, "soft_time_limit", 3)
    monkeypatch.setattr(bulk_send_batch, "time_limit", 6)


def final_rows(ids, timeout=60):
    return wait_for(lambda: (rows := list(Message.objects.filter(pk__in=ids).order_by("pk"))) and all(
        r.status in (Status.SENT, Status.FAILED, Status.TIMED_OUT) for r in rows) and rows, timeout=timeout,
        message="every message of the batch to end")


def test_a_batch_sends_each_message_once_and_records_each_outcome(mail_worker, smtp_server, settings, batch_limits):
    settings.MAIL_BULK_BATCH_SIZE = 4
    messages = newsletter(5, tag="b1") + [dict(to=["nobody@reject.test"], subject="s", body="b"),
                                           dict(to=["b1+1@tempfail.test"], subject="s", body="b")]
    stored = services.enqueue_bulk(messages)
    ids = [m.pk for m, _ in stored]
    rows = final_rows(ids)
    by_to = {r.to[0]: r for r in rows}
    assert all(by_to[f"b1{i}@accept.test"].status == Status.SENT for i in range(5))
    assert all(by_to[f"b1{i}@accept.test"].smtp_reply.startswith("2.0.0 Ok") for i in range(5))
    assert (by_to["nobody@reject.test"].status, by_to["nobody@reject.test"].smtp_code) == (Status.FAILED, 550)
    retried = by_to["b1+1@tempfail.test"]  # 451 once: retried on its own task, then sent
    assert (retried.status, retried.attempts) == (Status.SENT, 2)
    for i in range(5):
        assert len(smtp_server.behaviour.messages_to(f"b1{i}@accept.test")) == 1
    assert len(smtp_server.behaviour.messages_to("b1+1@tempfail.test")) == 1
    assert all(r.attempts == 1 for r in rows if r.to[0].endswith("@accept.test"))

    # RabbitMQ delivers the first batch's task message again (its worker died before the ack): nothing is resent
    bulk_send_batch.apply_async((ids[:4],))
    wait_for(lambda: smtp_server.behaviour.messages_to("b1+1@tempfail.test"), timeout=5)
    final_rows(ids)
    for i in range(5):
        assert len(smtp_server.behaviour.messages_to(f"b1{i}@accept.test")) == 1


def test_a_batch_over_its_time_budget_hands_the_rest_to_a_continuation(smtp_server, settings, mail_worker):
    """No conversation starts after the budget: the rest go back to QUEUED, their attempt not counted, and a
    continuation batch (here taken by the worker) sends them."""
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.MAIL_DOMAIN_RATE = "127.0.0.1", smtp_server.port, 0
    rows = [Message.objects.create(idempotency_key=f"budget-{i}", bulk=True, from_email="a@example.com",
                                   to=[f"budget{i}@accept.test"], subject="s", body_text="b") for i in range(3)]
    ids = [m.pk for m in rows]
    result = services.deliver_batch(ids, "t-budget", budget=0)
    assert result.left == ids and result.counts["SENT"] == 0
    rows = final_rows(ids)
    assert all(r.status == Status.SENT and r.attempts == 1 for r in rows)
    assert all(len(smtp_server.behaviour.messages_to(f"budget{i}@accept.test")) == 1 for i in range(3))


@pytest.mark.parametrize("ids", [["1"], [], [0], "12", [1] * 1001])
def test_a_hostile_batch_is_refused_with_a_reason_and_the_worker_lives_on(mail_worker, ids):
    from project.celery import app

    before = len(mail_worker.log())
    bulk_send_batch.apply_async((ids,))
    wait_for(lambda: "message_ids must be a list of 1 to 1000 message ids" in mail_worker.log()[before:], timeout=30,
             message="the refusal in the worker's log")
    assert app.control.ping(destination=[mail_worker.nodename], timeout=5)
