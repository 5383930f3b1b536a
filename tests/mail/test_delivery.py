"""Delivery through the real broker, a real io worker (eventlet, or threads with IO_POOL) and real SMTP servers."""
import signal
import time
from email import message_from_bytes

import pytest
from django.core import mail as django_mail
from django.core.management import call_command

from apps.mail import services
from apps.mail.models import Message, Status
from apps.mail.tasks import send_message
from tests.support.workers import IO_POOL, wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def send(to, **kwargs) -> Message:
    message, _ = services.enqueue(to=[to], subject=kwargs.pop("subject", f"to {to}"), body="hello", **kwargs)
    return message


def final(message: Message, timeout: float = 60, states=("SENT", "FAILED", "TIMED_OUT")) -> Message:
    return wait_for(lambda: Message.objects.filter(pk=message.pk, status__in=states).first(), timeout=timeout,
                    message=f"message {message.pk} to reach {states} (now "
                            f"{Message.objects.get(pk=message.pk).status})")


def test_accepted_message_is_sent_once_with_the_servers_reply(mail_worker, smtp_server):
    message = send("ok1@accept.test", subject="Receipt #1", html="<p>hi</p>")
    row = final(message)
    assert row.status == Status.SENT and row.attempts == 1
    assert row.smtp_code == 250 and row.smtp_reply.startswith("2.0.0 Ok: queued as TEST")
    assert row.sent_at and row.smtp_accepted_at and row.claimed_by.split(":")[1] == str(mail_worker.pid)
    [received] = smtp_server.behaviour.messages_to("ok1@accept.test")
    parsed = message_from_bytes(received.content)
    assert parsed["Subject"] == "Receipt #1" and parsed["Message-ID"] == row.message_id_header


def test_connections_are_reused_within_the_worker(mail_worker, smtp_server):
    final(send("warmup@accept.test"))
    before = smtp_server.behaviour.connections
    for i in range(5):  # one after another: each finds the previous one's idle connection
        final(send(f"reuse{i}@accept.test"))
    assert smtp_server.behaviour.connections - before <= 1


def test_4xx_is_retried_with_backoff_then_sent(mail_worker, smtp_server):
    row = final(send("t+2@tempfail.test"))
    assert (row.status, row.attempts) == (Status.SENT, 3)
    assert len(smtp_server.behaviour.messages_to("t+2@tempfail.test")) == 1


def test_4xx_until_attempts_run_out_is_failed_and_visible(mail_worker):
    row = final(send("always@tempfail.test", max_attempts=2))
    assert (row.status, row.attempts, row.smtp_code) == (Status.FAILED, 2, 451)
    assert "gave up after 2 attempts" in row.last_error and "try again later" in row.smtp_reply


def test_5xx_fails_at_once_with_the_reply(mail_worker, smtp_server):
    row = final(send("nobody@reject.test"))
    assert (row.status, row.attempts, row.smtp_code) == (Status.FAILED, 1, 550)
    assert "no such user" in row.smtp_reply
    assert smtp_server.behaviour.messages_to("nobody@reject.test") == []


def test_dropped_connection_is_retried(mail_worker, smtp_server):
    row = final(send("d+1@drop.test"))
    # Dropped at RCPT once. On a fresh connection that is a failed attempt and a retry; on a reused idle
    # connection the worker reconnects at once (nothing was sent). Either way: one delivery.
    assert row.status == Status.SENT and row.attempts in (1, 2)
    assert smtp_server.behaviour.tries[("rcpt", "d+1@drop.test")] == 2
    assert len(smtp_server.behaviour.messages_to("d+1@drop.test")) == 1


def test_hung_conversation_ends_by_time_limit_and_is_retried(mail_worker, smtp_server):
    # The server hangs 30 s at RCPT on the first try; the socket timeout is 30 s, the task's soft limit 3 s:
    # only the eventlet time limit can end it, and the green thread is free again.
    row = final(send("s+1@slow.test"))
    assert (row.status, row.attempts) == (Status.SENT, 2)
    assert len(smtp_server.behaviour.messages_to("s+1@slow.test")) == 1
    assert "soft time limit (3s) exceeded" in row.last_error


def test_no_reply_after_data_is_timed_out_not_resent(mail_worker, smtp_server):
    row = final(send("x@slowdata.test"))
    assert (row.status, row.attempts) == (Status.TIMED_OUT, 1)
    assert "no reply after the end of DATA" in row.last_error
    assert smtp_server.behaviour.rcpt_seen.count("x@slowdata.test") == 1  # one conversation only


def test_a_second_delivery_of_a_sent_message_does_not_send_again(mail_worker, smtp_server):
    row = final(send("dup@accept.test"))
    assert row.status == Status.SENT
    # What RabbitMQ does after a worker died before its ack: deliver the task message again.
    again = send_message.apply_async((row.pk,)).get(timeout=30)
    assert again == "SKIPPED: already SENT"
    assert len(smtp_server.behaviour.messages_to("dup@accept.test")) == 1
    assert Message.objects.get(pk=row.pk).attempts == 1


def test_worker_killed_mid_conversation_is_redelivered_and_sent_once(mail_worker, start_mail_worker, smtp_server,
                                                                    monkeypatch):
    monkeypatch.setattr(send_message, "soft_time_limit", 60)  # the limits travel in the message
    monkeypatch.setattr(send_message, "time_limit", 70)
    # A second worker takes the message and hangs at RCPT (its time limits are long); kill -9 it there.
    from project.celery import app

    victim = start_mail_worker(MAIL_SEND_SOFT_TIME_LIMIT=60, MAIL_SEND_TIME_LIMIT=70, IO_CONCURRENCY=2)
    app.control.cancel_consumer("mail", destination=[mail_worker.nodename], reply=True)  # the victim takes it
    try:
        message = send("k+1@slow.test")
        wait_for(lambda: "k+1@slow.test" in smtp_server.behaviour.rcpt_seen, timeout=30, message="RCPT")
        victim.kill(signal.SIGKILL)
    finally:
        app.control.add_consumer("mail", destination=[mail_worker.nodename], reply=True)
    assert Message.objects.get(pk=message.pk).status == Status.SENDING
    # RabbitMQ redelivers to the surviving worker; it waits out the dead worker's lease, then sends.
    row = final(message, timeout=90)
    assert (row.status, row.attempts) == (Status.SENT, 2)
    assert len(smtp_server.behaviour.messages_to("k+1@slow.test")) == 1


def test_django_send_mail_is_delivered(mail_worker, smtp_server, settings):
    settings.EMAIL_BACKEND = "apps.mail.backends.OutboxEmailBackend"
    django_mail.send_mail("Password reset", "link", "noreply@example.com", ["pw@accept.test"])
    row = final(Message.objects.get(to=["pw@accept.test"]))
    assert row.status == Status.SENT and len(smtp_server.behaviour.messages_to("pw@accept.test")) == 1


def test_mail_send_command_waits_for_the_outcome(mail_worker, smtp_server, capsys):
    call_command("mail_send", "--to", "cmd@accept.test", "--subject", "cmd", "--template", "demo",
                 "--context", '{"number": 3}', "--idempotency-key", "cmd-1", "--wait", "--timeout", "60")
    assert "SENT" in capsys.readouterr().out
    call_command("mail_send", "--to", "cmd@accept.test", "--subject", "cmd", "--body", "x",
                 "--idempotency-key", "cmd-1")
    assert "already exists" in capsys.readouterr().out
    assert len(smtp_server.behaviour.messages_to("cmd@accept.test")) == 1


def test_a_task_killed_while_it_waits_for_the_reply_to_data_is_timed_out_not_left_to_resend(
        mail_worker, smtp_server):
    # A cluster case: the io worker lost the broker and cancelled its running tasks (eventlet kills the
    # green thread) while one waited for the reply to the end of DATA; the row stayed SENDING, its lease
    # expired, another worker sent the mail again, and the server had it twice.
    message = send("killed@slowdata.test")
    wait_for(lambda: "killed@slowdata.test" in smtp_server.behaviour.rcpt_seen, timeout=30, message="the RCPT")
    row = wait_for(lambda: Message.objects.filter(pk=message.pk, status=Status.SENDING).first(), timeout=10,
                   message="the claim")
    time.sleep(0.5)  # the end of DATA follows the RCPT within milliseconds; the soft time limit is 3 s
    from project.celery import app

    app.control.revoke(row.task_id, terminate=True)
    row = final(message, timeout=20)
    # A thread cannot be killed (Celery's threads pool refuses to terminate a task): there the soft time limit
    # ends the wait, with the same outcome.
    ended_by = "interrupted after the end of DATA" if IO_POOL == "eventlet" else "no reply after the end of DATA"
    assert row.status == Status.TIMED_OUT and ended_by in row.last_error, row.last_error
    assert smtp_server.behaviour.rcpt_seen.count("killed@slowdata.test") == 1
