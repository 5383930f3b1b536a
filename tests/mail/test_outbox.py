"""The outbox without a worker: what is stored, what is refused, idempotency, the guarded transitions."""
import json
from contextlib import nullcontext

import pytest
from django.core import mail as django_mail
from django.core.mail import EmailMultiAlternatives
from django.core.management import CommandError, call_command
from django.db import connection, transaction
from django.test.utils import CaptureQueriesContext
from rest_framework.test import APIClient

from apps.mail import services, throttle
from apps.mail.models import Message, Status
from apps.mail.services import AttachmentInput, MailInputError

pytestmark = pytest.mark.django_db(transaction=True)


@pytest.fixture(autouse=True)
def outbox_backend(settings):
    """Django's test environment swaps EMAIL_BACKEND for locmem; put the project's back."""
    settings.EMAIL_BACKEND = "apps.mail.backends.OutboxEmailBackend"


@pytest.fixture(autouse=True)
def no_publish(monkeypatch):
    """These tests check storage; what reaches RabbitMQ is tested in test_delivery.py with a real worker."""
    published = []
    monkeypatch.setattr(services, "_publish_after_commit", lambda message: published.append(message.pk))
    return published


def test_enqueue_stores_every_field_and_publishes_once_after_commit(no_publish):
    message, created = services.enqueue(to=["a@example.com"], cc=["c@example.com"], subject="Hi", body="text",
                                        html="<p>html</p>", headers={"X-Tag": "t1"}, idempotency_key="k-1",
                                        attachments=[AttachmentInput("a.txt", b"abc", "text/plain")])
    assert created
    row = Message.objects.get(pk=message.pk)
    assert (row.status, row.to, row.cc, row.subject, row.body_text, row.body_html, row.headers, row.attempts) == \
        (Status.QUEUED, ["a@example.com"], ["c@example.com"], "Hi", "text", "<p>html</p>", {"X-Tag": "t1"}, 0)
    assert row.idempotency_key == "k-1" and row.task_id and row.created_at
    assert [(a.filename, bytes(a.content), a.size) for a in row.attachments.all()] == [("a.txt", b"abc", 3)]
    assert no_publish == [message.pk]


def test_same_idempotency_key_never_makes_a_second_message(no_publish):
    first, created1 = services.enqueue(to=["a@example.com"], subject="one", body="x", idempotency_key="same")
    second, created2 = services.enqueue(to=["b@example.com"], subject="two", body="y", idempotency_key="same")
    # the key decides, whatever the repeat carries: even input that would be refused under a new key
    third, created3 = services.enqueue(to=["not-an-address"], subject="three", body="z", idempotency_key="same")
    assert (created1, created2, created3) == (True, False, False)
    assert second.pk == third.pk == first.pk and (second.subject, third.subject) == ("one", "one")
    assert Message.objects.count() == 1 and no_publish == [first.pk]


def test_a_new_message_is_one_insert_and_a_repeat_its_key_lookup(no_publish):
    """The HTTP enqueue path pays per statement: a new message, keyed or not, is one INSERT (get_or_create in
    a transaction was 7; a key lookup first was 2); a repeat of a key is the refused INSERT and the lookup."""
    for key, expected in (("few-1", ["INSERT"]), (None, ["INSERT"]), ("few-1", ["INSERT", "SELECT"])):
        with CaptureQueriesContext(connection) as queries:
            services.enqueue(to=["a@example.com"], subject="s", body="b", idempotency_key=key)
        assert [q["sql"].split()[0] for q in queries.captured_queries] == expected, queries.captured_queries
    assert len(no_publish) == 2 and Message.objects.count() == 2


@pytest.mark.parametrize("in_callers_transaction", [False, True])
def test_a_key_stored_by_a_concurrent_request_first_returns_that_message(
        no_publish, monkeypatch, in_callers_transaction):
    """The race get_or_create used to absorb: another request inserts the same key while this one validates
    its input. The first stored message stands, and
    a caller's own transaction survives the duplicate key (the savepoint takes the IntegrityError)."""
    validate = services.validation.recipients

    def concurrent_insert(*args):
        validate(*args)
        Message.objects.create(idempotency_key="raced", to=["first@example.com"], subject="first",
                               task_id="t-first")

    monkeypatch.setattr(services.validation, "recipients", concurrent_insert)
    with transaction.atomic() if in_callers_transaction else nullcontext():
        message, created = services.enqueue(to=["second@example.com"], subject="second", body="b",
                                            idempotency_key="raced")
        assert Message.objects.count() == 1  # the caller's transaction still works
    assert not created and (message.subject, message.task_id) == ("first", "t-first")
    assert list(Message.objects.values_list("subject", flat=True)) == ["first"] and no_publish == []


def test_template_is_rendered_at_enqueue():
    message, _ = services.enqueue(to=["a@example.com"], subject="Demo", template="demo", context={"number": 7,
                                                                                                   "lane": "x"})
    assert "demo message 7" in message.body_text and "<strong>7</strong>" in message.body_html
    assert message.template == "demo" and message.context == {"number": 7, "lane": "x"}


@pytest.fixture
def broken_template(settings, tmp_path):
    (tmp_path / "mail").mkdir()
    (tmp_path / "mail" / "broken.txt").write_text("{% load nosuchlib %}hello")
    (tmp_path / "mail" / "raises.txt").write_text("{{ value|date:'Y' }}{% include 'mail/missing-part.txt' %}")
    settings.TEMPLATES = [{**settings.TEMPLATES[0], "DIRS": [tmp_path]}]


BAD_INPUTS = {
    "invalid address": (dict(to=["not-an-address"]), "to", "not a valid email address"),
    "empty recipient list": (dict(to=[]), "to", "at least one recipient"),
    "header injection in subject": (dict(subject="Hi\r\nBcc: victim@example.com"), "subject", "line breaks"),
    "header injection in recipient": (dict(to=["a@example.com\nBcc: victim@example.com"]), "to", "line breaks"),
    "header injection in a header": (dict(headers={"X-A": "v\r\nBcc: v@example.com"}), "headers.X-A", "line breaks"),
    "missing template": (dict(template="no-such-template", body=""), "template", "not found"),
    "template that fails to render": (dict(template="broken", body=""), "template", "failed to render"),
    "template include that is missing": (dict(template="raises", body=""), "template", "failed to render"),
    "attachment over the limit": (dict(attachments=[AttachmentInput("big.bin", b"x" * 2048)]), "attachments",
                                  "over the limit of 1024 bytes"),
}


@pytest.mark.parametrize("case", BAD_INPUTS, ids=list(BAD_INPUTS))
def test_bad_input_is_refused_at_enqueue_with_a_clear_error(case, settings, broken_template, no_publish):
    settings.MAIL_MAX_ATTACHMENT_BYTES = 1024
    services.enqueue(to=["ok@example.com"], subject="fine", body="fine", idempotency_key="other")  # untouched
    overrides, field, text = BAD_INPUTS[case]
    kwargs = {"to": ["a@example.com"], "subject": "s", "body": "b", **overrides}
    with pytest.raises(MailInputError) as err:
        services.enqueue(**kwargs)
    assert err.value.field == field and text in str(err.value)
    assert list(Message.objects.values_list("idempotency_key", "status")) == [("other", Status.QUEUED)]
    assert len(no_publish) == 1


def test_django_send_mail_goes_through_the_outbox(no_publish):
    sent = django_mail.send_mail("Reset", "your link", "noreply@example.com", ["user@example.com"])
    assert sent == 1
    row = Message.objects.get()
    assert (row.subject, row.body_text, row.from_email, row.to, row.bulk) == \
        ("Reset", "your link", "noreply@example.com", ["user@example.com"], False)
    assert no_publish == [row.pk]


def test_email_message_send_keeps_html_attachments_and_control_headers():
    email = EmailMultiAlternatives("News", "text part", "news@example.com", ["u@example.com"], bcc=["b@example.com"],
                                   headers={"X-Idempotency-Key": "newsletter-1", "X-Mail-Lane": "bulk", "X-C": "1"})
    email.attach_alternative("<b>html part</b>", "text/html")
    email.attach("r.csv", "a,b\n", "text/csv")
    assert email.send() == 1
    assert email.send() == 1  # same idempotency key: stored once
    row = Message.objects.get()
    assert (row.idempotency_key, row.bulk, row.body_html, row.bcc, row.headers) == \
        ("newsletter-1", True, "<b>html part</b>", ["b@example.com"], {"X-C": "1"})
    assert [(a.filename, bytes(a.content)) for a in row.attachments.all()] == [("r.csv", b"a,b\n")]


def test_backend_raises_bad_input_unless_fail_silently():
    with pytest.raises(MailInputError):
        django_mail.send_mail("Hi\nBcc: x@example.com", "b", "f@example.com", ["u@example.com"])
    assert django_mail.send_mail("Hi\nBcc: x@example.com", "b", "f@example.com", ["u@example.com"],
                                 fail_silently=True) == 0
    assert Message.objects.count() == 0


def test_transitions_are_guarded():
    queued, _ = services.enqueue(to=["a@example.com"], subject="s", body="b")
    sent, _ = services.enqueue(to=["a@example.com"], subject="s", body="b")
    Message.objects.filter(pk=sent.pk).update(status=Status.SENT)
    assert services.cancel(queued.pk) is True
    assert services.cancel(queued.pk) is False  # already cancelled
    assert services.cancel(sent.pk) is False  # a sent message cannot be cancelled
    assert services.resend(sent.pk) is False  # nor sent again
    assert services.resend(queued.pk) is True
    assert Message.objects.get(pk=queued.pk).status == Status.QUEUED
    assert Message.objects.get(pk=sent.pk).status == Status.SENT


def test_a_claimed_message_cannot_be_claimed_again():
    message, _ = services.enqueue(to=["a@example.com"], subject="s", body="b")
    first, refused = services._claim(message.pk, "worker-a")
    assert first is not None and refused is None
    second, refused = services._claim(message.pk, "worker-b")
    assert second is None and refused.status == "BUSY"
    row = Message.objects.get(pk=message.pk)
    assert (row.status, row.claimed_by, row.attempts) == (Status.SENDING, "worker-a", 1)
    assert services._record(message.pk, "worker-b", status=Status.SENT) is False  # not its claim
    assert services._record(message.pk, "worker-a", status=Status.SENT) is True


def test_domain_throttle_allows_a_burst_then_spaces_messages(settings):
    from django.db import transaction

    settings.MAIL_DOMAIN_RATES = {"example.org": 2.0}
    settings.MAIL_DOMAIN_BURST = 2
    now = 1000.0
    with transaction.atomic():
        waits = [throttle.reserve(["example.org"], now) for _ in range(3)]
    assert waits[:2] == [0.0, 0.0] and waits[2] == pytest.approx(0.5)
    with transaction.atomic():
        assert throttle.reserve(["example.org"], now + 0.5) == 0.0


def test_http_endpoint(django_user_model, no_publish):
    client = APIClient()
    body = {"to": ["a@example.com"], "subject": "Hi", "body": "text", "idempotency_key": "api-1"}
    assert client.post("/api/v1/mail/messages/", body, format="json").status_code in (401, 403)
    client.force_authenticate(django_user_model.objects.create_user("u", password="p"))
    created = client.post("/api/v1/mail/messages/", body, format="json")
    assert created.status_code == 201 and created.json()["status"] == "QUEUED"
    again = client.post("/api/v1/mail/messages/", body, format="json")
    assert again.status_code == 200 and again.json()["id"] == created.json()["id"]
    bad = client.post("/api/v1/mail/messages/", {**body, "idempotency_key": "api-2", "to": ["nope"]}, format="json")
    assert bad.status_code == 400 and bad.json()["field"] == "to" and "nope" in bad.json()["error"]
    detail = client.get(f"/api/v1/mail/messages/{created.json()['id']}/")
    assert detail.status_code == 200 and detail.json()["idempotency_key"] == "api-1"
    assert client.get("/api/v1/mail/messages/999999/").status_code == 404
    assert len(no_publish) == 1


def test_mail_send_command_refuses_bad_input():
    with pytest.raises(CommandError, match="not a valid email address"):
        call_command("mail_send", "--to", "nope", "--subject", "s", "--body", "b")
    with pytest.raises(CommandError, match="--context is not valid JSON"):
        call_command("mail_send", "--to", "a@example.com", "--subject", "s", "--template", "demo", "--context", "{")
    assert Message.objects.count() == 0
    call_command("mail_send", "--to", "a@example.com", "--subject", "s", "--template", "demo",
                 "--context", json.dumps({"number": 1}), "--bulk")
    assert Message.objects.get().bulk is True


def test_requeue_stale_picks_up_lost_publishes_and_dead_workers_only(settings, no_publish):
    from datetime import timedelta

    from django.utils import timezone

    settings.MAIL_REQUEUE_AFTER, settings.MAIL_CLAIM_LEASE = 60, 120
    old = timezone.now() - timedelta(seconds=600)
    lost, fresh, dead, live, sent = (services.enqueue(to=["a@example.com"], subject="s", body="b")[0] for _ in range(5))
    Message.objects.filter(pk=lost.pk).update(created_at=old)  # QUEUED long ago: its publish was lost
    Message.objects.filter(pk=dead.pk).update(status=Status.SENDING, claimed_at=old)  # its worker died
    Message.objects.filter(pk=live.pk).update(status=Status.SENDING, claimed_at=timezone.now())
    Message.objects.filter(pk=sent.pk).update(status=Status.SENT, created_at=old)
    no_publish.clear()
    assert services.requeue_stale() == 2
    assert sorted(no_publish) == sorted([lost.pk, dead.pk])


@pytest.mark.parametrize("attached", [0, 2])
def test_a_delivery_reads_the_attachments_once_with_the_claim(settings, smtp_server, attached):
    """The claim loads the attachments; building the message must not ask again, not even when there are
    none (an empty list once did: one query more per message, 9% of a delivery's time in the profile)."""
    settings.EMAIL_HOST, settings.EMAIL_PORT, settings.MAIL_DOMAIN_RATE = "127.0.0.1", smtp_server.port, 0
    address = f"attachments-{attached}@example.com"
    message, _ = services.enqueue(to=[address], subject="Hi", body="text", attachments=[
        AttachmentInput(f"a{i}.txt", f"content {i}".encode(), "text/plain") for i in range(attached)])
    with CaptureQueriesContext(connection) as queries:
        assert services.deliver(message.pk, "t-attachments").status == "SENT"
    assert len([q for q in queries.captured_queries if "mail_attachment" in q["sql"]]) == 1
    [received] = smtp_server.behaviour.messages_to(address)
    assert all(f"a{i}.txt".encode() in received.content for i in range(attached))


def test_claims_in_flight_leave_a_fifth_of_the_pool_to_accepted_deliveries():
    pool = {"ENGINE": "django.db.backends.postgresql", "OPTIONS": {"pool": {"max_size": 30}}}
    assert services.claims_in_flight(pool) == 24
    assert services.claims_in_flight({"OPTIONS": {"pool": {"max_size": 4}}}) == 3
    assert services.claims_in_flight({"OPTIONS": {"pool": {"max_size": 1}}}) == 1
    assert services.claims_in_flight({"OPTIONS": {"pool": True}}) is None  # psycopg_pool's own default size
    assert services.claims_in_flight({"OPTIONS": {}}) is None


@pytest.mark.parametrize("bound", [3, None])
def test_no_more_claims_run_at_once_than_the_bound(monkeypatch, bound):
    """Nine deliveries on nine threads (the threads pool; under eventlet the same semaphore is green): with a
    pool, at most ``claims_in_flight`` of them are inside their claim at any moment."""
    import threading
    import time

    inside, most, changed, release = [0], [0], threading.Condition(), threading.Event()

    def held_claim(message_id, me):
        with changed:
            inside[0] += 1
            most[0] = max(most[0], inside[0])
            changed.notify_all()
        release.wait(timeout=10)  # every claim that can get in is in before the first one leaves
        with changed:
            inside[0] -= 1
        return None, services.Outcome("SKIPPED", "no such message")

    monkeypatch.setattr(services, "claims_in_flight", lambda database=None: bound)
    monkeypatch.setattr(services, "_claim", held_claim)
    threads = [threading.Thread(target=services.deliver, args=(i,)) for i in range(9)]
    for thread in threads:
        thread.start()
    expected = bound or len(threads)
    with changed:
        assert changed.wait_for(lambda: inside[0] >= expected, timeout=10)
    time.sleep(0.3)  # room for one claim too many to get in, were the bound not kept
    release.set()
    for thread in threads:
        thread.join(timeout=10)
    assert most[0] == expected and inside[0] == 0
