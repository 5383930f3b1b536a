"""`manage.py queue pause|resume|status NAME` against real workers."""
import pytest
from django.core.management import CommandError, call_command

from apps.control import selectors
from apps.control.models import ControlAction, PausedQueue
from tests.support.workers import wait_for

pytestmark = pytest.mark.django_db(transaction=True)


def consumed(nodename):
    return next((set(w["queues"]) for w in selectors.workers(live=True) if w["hostname"] == nodename), set())


def test_queue_command(io_worker, capsys):
    try:
        call_command("queue", "pause", "mail_bulk", "--reason", "provider down")
        assert "paused mail_bulk" in capsys.readouterr().out
        wait_for(lambda: "mail_bulk" not in consumed(io_worker.nodename), timeout=20, message="mail_bulk cancelled")
        call_command("queue", "status")
        out = capsys.readouterr().out
        assert "mail_bulk    PAUSED" in out and "mail         running" in out
        with pytest.raises(CommandError, match="already paused"):
            call_command("queue", "pause", "mail_bulk")
        with pytest.raises(CommandError, match="unknown queue 'nope'"):
            call_command("queue", "pause", "nope")
        call_command("queue", "resume", "mail_bulk")
        wait_for(lambda: "mail_bulk" in consumed(io_worker.nodename), timeout=20, message="mail_bulk consumed again")
        with pytest.raises(CommandError, match="not paused"):
            call_command("queue", "resume", "mail_bulk")
    finally:
        if PausedQueue.objects.filter(queue="mail_bulk").exists():
            call_command("queue", "resume", "mail_bulk")
    assert list(ControlAction.objects.values_list("action", flat=True).order_by("id")) == ["queue.pause", "queue.resume"]
    assert ControlAction.objects.first().actor_name.startswith("cli:")
